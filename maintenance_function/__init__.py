"""Timer triggers that keep the bridge healthy."""

from __future__ import annotations

import azure.functions as func

from shared_code.outbox import sweep_outbox
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
    )


@bp.timer_trigger(arg_name="timer", schedule="30 */5 * * * *", run_on_startup=False)
async def maintenance_rate_limit_purge(timer: func.TimerRequest) -> None:
    # Pair-limit rows of recipients whose budget is full again carry no information.
    services = await get_services()
    await services.limiter.purge_idle()
