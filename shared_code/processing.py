"""The processor: turns one queued webhook event into rows, then hands messages to routing.

Delivery statuses normally never reach the queue: the webhook intake applies them itself with
:class:`StatusRecorder` (they need no order and no agent, and applying one is one statement).
The processor applies the statuses the outbox sweeper queued, when the intake could not.

Every step is idempotent because the bus delivers at least once: a known wamid changes nothing,
a known (wamid, status) changes nothing, and statuses fold monotonically whatever their order.
An event that cannot be parsed is logged and dropped (its raw webhook stays stored); a database
failure raises so the bus redelivers, and dead-letters after the maximum delivery count.
"""

from __future__ import annotations

import enum
import logging

from shared_code.db import conversations, outbound, statuses
from shared_code.db.pool import Pool
from shared_code.routing import InboundForRouting, Router
from shared_code.whatsapp.payloads import (
    MessageEvent,
    PayloadError,
    StatusEvent,
    decode_event,
)

logger = logging.getLogger(__name__)

__all__ = ["EventProcessor", "Outcome", "StatusRecorder"]


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    STATUS_APPLIED = "status_applied"
    STATUS_PENDING = "status_pending"  # no message with that wamid yet; kept in the history
    STATUS_DUPLICATE = "status_duplicate"
    REJECTED = "rejected"


class StatusRecorder:
    """Records a delivery status once and folds it onto its outbound message."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def apply(self, event: StatusEvent) -> Outcome:
        status = event.status
        error = status.errors[0] if status.errors else None
        row = statuses.StatusRow(
            wamid=status.id,
            status=status.status,
            status_timestamp=status.timestamp,
            recipient_id=status.recipient_id,
            error_code=error.code if error else None,
            error_title=error.title if error else None,
            error_details=error.details if error else None,
            biz_opaque_callback_data=status.biz_opaque_callback_data,
            payload=status.raw,
        )
        async with self._pool.connection() as conn:
            new, applied = await statuses.record_status(conn, row)
            outbound_id = outbound.outbound_id_from_callback(status.biz_opaque_callback_data)
            if not applied and outbound_id is not None:
                # A send that timed out after its request left did reach WhatsApp: this status
                # carries the wamid the sender never saw.
                applied = await outbound.adopt_wamid(conn, outbound_id, status.id)
        if not new:
            return Outcome.STATUS_DUPLICATE
        if error is not None:
            logger.warning("message status %s with error code %s", status.status, error.code)
        return Outcome.STATUS_APPLIED if applied else Outcome.STATUS_PENDING


class EventProcessor:
    def __init__(self, pool: Pool, router: Router) -> None:
        self._pool = pool
        self._router = router
        self._statuses = StatusRecorder(pool)

    async def handle(self, body: bytes) -> Outcome:
        try:
            event = decode_event(body)
        except PayloadError as error:
            logger.warning("queued event dropped, unreadable: %s", error)
            return Outcome.REJECTED
        if isinstance(event, StatusEvent):
            return await self._statuses.apply(event)
        return await self._store_message(event)

    async def _store_message(self, event: MessageEvent) -> Outcome:
        message = event.message
        row = conversations.InboundMessageRow(
            wamid=message.id,
            phone_number_id=event.phone_number_id,
            contact_wa_id=message.from_,
            profile_name=event.contact.name if event.contact else None,
            message_type=message.type.value,
            text_body=message.text_preview,
            content=message.raw,
            context_wamid=message.context.id if message.context else None,
            whatsapp_timestamp=message.timestamp,
        )
        async with self._pool.connection() as conn:
            stored = await conversations.store_inbound(conn, row)
            outcome = Outcome.STORED
            if stored is None:
                stored = await conversations.find_inbound(conn, message.id)
                outcome = Outcome.DUPLICATE
                if stored is None or stored.routed:
                    return outcome
        await self._router.route(
            InboundForRouting(
                message_id=stored.message_id,
                conversation_id=stored.conversation_id,
                contact_id=stored.contact_id,
                wamid=message.id,
                phone_number_id=event.phone_number_id,
                contact_wa_id=message.from_,
                message_type=message.type.value,
                text=message.text_preview,
                reply_id=message.reply_id,
                first_routing=outcome is Outcome.STORED,
            )
        )
        async with self._pool.connection() as conn:
            await conversations.mark_routed(conn, stored.message_id)
        return outcome
