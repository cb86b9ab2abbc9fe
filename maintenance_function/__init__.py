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
