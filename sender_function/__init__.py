"""Service Bus trigger on the outbound queue: sends one agent reply per message, in session order."""

from __future__ import annotations

import azure.functions as func

from shared_code.redelivery import pause_before_redelivery
from shared_code.runtime import get_services_or_pause
from shared_code.telemetry import consuming

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    connection="ServiceBusConnection",
    queue_name="%OUTBOUND_QUEUE_NAME%",
    is_sessions_enabled=True,
)
async def sender_send_message(message: func.ServiceBusMessage) -> None:
    # Back-off is a scheduled copy published by the sender, so returning (complete) is the normal
    # end; SendAttemptsExhausted raises on every delivery so the broker dead-letters the message.
    # A transient failure (the database down) is given back after a growing pause.
    # A failed start waits (a bounded back-off) in get_services_or_pause before it raises.
    services = await get_services_or_pause()
    try:
        with consuming(
            "send message",
            message.application_properties,
            queue=services.settings.outbound_queue_name,
            enqueued_time=message.enqueued_time_utc,
            scheduled_enqueue_time=message.scheduled_enqueue_time_utc,
        ) as span:
            outcome = await services.sender.handle(message.get_body())
            span.set_attribute("bridge.outcome", outcome.value)
    except Exception as error:
        await pause_before_redelivery(error, message.delivery_count or 1)
        raise
