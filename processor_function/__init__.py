"""Service Bus trigger on the inbound queue: one WhatsApp event per message, in session order."""

from __future__ import annotations

import azure.functions as func

from shared_code.redelivery import pause_before_redelivery
from shared_code.runtime import get_services_or_pause

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
        await services.processor.handle(message.get_body())
    except Exception as error:
        await pause_before_redelivery(error, message.delivery_count or 1)
        raise
