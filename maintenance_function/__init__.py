"""Timer triggers that keep the bridge healthy."""

from __future__ import annotations

from datetime import timedelta

import azure.functions as func

from shared_code.management.analytics import refresh_rollup
from shared_code.outbox import sweep_outbox
from shared_code.policy import close_idle_conversations
from shared_code.retention import purge_expired
from shared_code.runtime import get_services

bp = func.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="0 * * * * *", run_on_startup=False)
async def maintenance_outbox_sweep(timer: func.TimerRequest) -> None:
    services = await get_services()
    await sweep_outbox(
        services.pool,
        services.bus,
        services.settings.inbound_queue_name,
        min_age_seconds=services.settings.outbox_sweep_min_age_seconds,
        max_publish_attempts=services.settings.outbox_max_publish_attempts,
    )


@bp.timer_trigger(arg_name="timer", schedule="30 */5 * * * *", run_on_startup=False)
async def maintenance_rate_limit_purge(timer: func.TimerRequest) -> None:
    # Pair-limit rows of recipients whose budget is full again carry no information.
    services = await get_services()
    await services.limiter.purge_idle()


@bp.timer_trigger(arg_name="timer", schedule="15 * * * * *", run_on_startup=False)
async def maintenance_template_refresh(timer: func.TimerRequest) -> None:
    # Every minute it only looks at the catalogue's age: an empty one (a fresh start) is read
    # within a minute, a filled one every TEMPLATE_REFRESH_MINUTES.
    services = await get_services()
    await services.templates.refresh_if_due(
        timedelta(minutes=services.settings.template_refresh_minutes)
    )


@bp.timer_trigger(arg_name="timer", schedule="45 */5 * * * *", run_on_startup=False)
async def maintenance_idle_conversations(timer: func.TimerRequest) -> None:
    # Closed conversations make status and closed_at true; the next message opens a new one.
    services = await get_services()
    await close_idle_conversations(
        services.pool, idle_hours=services.settings.policy.idle_close_hours
    )


@bp.timer_trigger(arg_name="timer", schedule="0 20 * * * *", run_on_startup=False)
async def maintenance_retention_purge(timer: func.TimerRequest) -> None:
    # Hourly, in batches of 1,000 rows per short transaction, within a 4-minute budget.
    services = await get_services()
    await purge_expired(services.pool, retention_days=services.settings.policy.retention_days)


@bp.timer_trigger(arg_name="timer", schedule="0 40 3 * * *", run_on_startup=False)
async def maintenance_analytics_rollup(timer: func.TimerRequest) -> None:
    # Stored analytics days are rewritten for a week: statuses and replies that arrived after a
    # day was first stored count too.
    services = await get_services()
    await refresh_rollup(services.pool)
