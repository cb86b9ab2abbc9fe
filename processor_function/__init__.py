"""Service Bus trigger on the inbound queue: one WhatsApp event per message, in session order."""

from __future__ import annotations

import azure.functions as func

from shared_code.redelivery import pause_before_redelivery
from shared_code.runtime import get_services_or_pause
from shared_code.telemetry import consuming

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    connection="ServiceBusConnection",
    queue_name="%INBOUND_QUEUE_NAME%",
    is_sessions_enabled=True,
)
async def processor_handle_event(message: func.ServiceBusMessage) -> None:
    # Returning completes the message; an exception abandons it, so the bus redelivers it and
    # dead-letters it after the queue's maximum delivery count. A transient failure is given
    # back after a pause that grows with each delivery, so an outage does not burn them all.
    # A failed start waits (a bounded back-off) in get_services_or_pause before it raises.
    services = await get_services_or_pause()
    try:
        with consuming(
            "process event",
            message.application_properties,
            queue=services.settings.inbound_queue_name,
            enqueued_time=message.enqueued_time_utc,
            scheduled_enqueue_time=message.scheduled_enqueue_time_utc,
        ) as span:
            outcome = await services.processor.handle(message.get_body())
            span.set_attribute("bridge.outcome", outcome.value)
    except Exception as error:
        await pause_before_redelivery(error, message.delivery_count or 1)
        raise
