"""The processor: turns one queued webhook event into rows, then hands messages to routing.

Delivery statuses normally never reach the queue: the webhook intake applies them itself with
:class:`StatusRecorder` (they need no order and no agent, and applying one is one statement).
The processor applies the statuses the outbox sweeper queued, when the intake could not.

Every step is idempotent because the bus delivers at least once: a known wamid changes nothing,
a known (wamid, status) changes nothing, and statuses fold monotonically whatever their order.

Failures are sorted by whether a redelivery can help (:func:`shared_code.redelivery.is_transient`). A lost connection,
a timeout or a broker refusal raises, so the bus redelivers (and dead-letters after its maximum
delivery count). An event that can never be processed — unreadable, or a value PostgreSQL
refuses, or a bug on this input — is poison: retrying it would only burn its deliveries and leave
the user in silence. It is recorded in ``whatsapp_event_failures`` with the reason, and when it
is a message whose sender is known, a bare row of it is stored and the user gets the fallback
text (``AGENT_FALLBACK_MESSAGE``) instead of an answer. Its raw webhook stays stored.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from shared_code import telemetry
from shared_code.db import conversations, event_failures, outbound, statuses
from shared_code.db.pool import Pool
from shared_code.policy import apply_marketing_preference
from shared_code.redelivery import is_transient
from shared_code.routing import InboundForRouting, Router
from shared_code.whatsapp.json_body import UnreadableBody, decode_json_body
from shared_code.whatsapp.payloads import (
    MessageEvent,
    PayloadError,
    PreferenceEvent,
    StatusEvent,
    TemplateStatusEvent,
    decode_event,
)

if TYPE_CHECKING:
    from shared_code.templates import TemplateCatalogue

logger = logging.getLogger(__name__)

__all__ = ["EventProcessor", "Outcome", "StatusRecorder"]


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    STATUS_APPLIED = "status_applied"
    STATUS_PENDING = "status_pending"  # no message with that wamid yet; kept in the history
    STATUS_DUPLICATE = "status_duplicate"
    TEMPLATE_STATUS = "template_status"  # a template's status change, applied to the catalogue
    PREFERENCE_APPLIED = "preference_applied"  # a user's marketing preference (user_preferences)
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
            new, applied, trace_context = await statuses.record_status(conn, row)
            outbound_id = outbound.outbound_id_from_callback(status.biz_opaque_callback_data)
            if not applied and outbound_id is not None:
                # A send that timed out after its request left did reach WhatsApp: this status
                # carries the wamid the sender never saw.
                applied = await outbound.adopt_wamid(conn, outbound_id, status.id)
        if not new:
            return Outcome.STATUS_DUPLICATE
        with telemetry.status_applied(trace_context, status.status, error.code if error else None):
            if error is not None:
                logger.warning("message status %s with error code %s", status.status, error.code)
        return Outcome.STATUS_APPLIED if applied else Outcome.STATUS_PENDING


class EventProcessor:
    def __init__(
        self, pool: Pool, router: Router, templates: TemplateCatalogue | None = None
    ) -> None:
        self._pool = pool
        self._router = router
        self._statuses = StatusRecorder(pool)
        self._templates = templates

    async def handle(self, body: bytes) -> Outcome:
        try:
            event = decode_event(body)
            if isinstance(event, StatusEvent):
                return await self._statuses.apply(event)
            if isinstance(event, TemplateStatusEvent):
                if self._templates is not None:
                    await self._templates.apply_status_update(event)
                return Outcome.TEMPLATE_STATUS
            if isinstance(event, PreferenceEvent):
                await apply_marketing_preference(self._pool, event)
                return Outcome.PREFERENCE_APPLIED
            return await self._store_message(event)
        except Exception as error:
            if is_transient(error):
                raise
            return await self._give_up(body, error)

    async def _give_up(self, body: bytes, error: Exception) -> Outcome:
        """Record a poison event, and give its sender the fallback text if they are known."""
        reason = _reason_of(error)
        identity = _identity_of(body)
        logger.warning(
            "queued %s event is unprocessable (%s); recorded%s",
            identity.kind if identity else "unreadable",
            reason,
            ", fallback queued" if identity and identity.sender else "",
        )
        fallback_queued = False
        if identity is not None and identity.sender is not None:
            try:
                fallback_queued = await self._route_fallback(identity, reason)
            except Exception as fallback_error:
                if is_transient(fallback_error):
                    raise
                reason = f"{reason}; fallback failed: {_reason_of(fallback_error)}"
        async with self._pool.connection() as conn:
            await event_failures.record_failures(
                conn,
                [
                    event_failures.EventFailure(
                        stage="process",
                        reason=reason,
                        webhook_event_id=identity.webhook_event_id if identity else None,
                        kind=identity.kind if identity else None,
                        event_key=identity.key if identity else None,
                        fallback_queued=fallback_queued,
                    )
                ],
            )
        return Outcome.REJECTED

    async def _route_fallback(self, identity: _EventIdentity, reason: str) -> bool:
        """Store a bare row of the message and have the fallback text sent; False when the
        message had already been answered."""
        assert identity.sender is not None and identity.key is not None
        # What the message was and why it could not be processed, so the conversation shows it
        # and the reply has something to answer.
        row = conversations.InboundMessageRow(
            wamid=identity.key,
            phone_number_id=identity.phone_number_id,
            contact_wa_id=identity.sender,
            profile_name=None,
            message_type=identity.message_type or "unknown",
            text_body=None,
            content={"id": identity.key, "type": identity.message_type, "unprocessable": reason},
            context_wamid=None,
            whatsapp_timestamp=datetime.now(UTC),
        )
        _, routed = await self._store_and_route(row, fallback_only=True)
        return routed

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
        outcome, _ = await self._store_and_route(row, reply_id=message.reply_id)
        return outcome

    async def _store_and_route(
        self,
        row: conversations.InboundMessageRow,
        *,
        reply_id: str | None = None,
        fallback_only: bool = False,
    ) -> tuple[Outcome, bool]:
        """Store the message once and route it unless a delivery before already did; returns
        the outcome and whether it was routed now."""
        async with self._pool.connection() as conn:
            stored = await conversations.store_inbound(conn, row)
            outcome = Outcome.STORED
            if stored is None:
                stored = await conversations.find_inbound(conn, row.wamid)
                outcome = Outcome.DUPLICATE
                if stored is None or stored.routed:
                    return outcome, False
        await self._router.route(
            InboundForRouting(
                message_id=stored.message_id,
                conversation_id=stored.conversation_id,
                contact_id=stored.contact_id,
                wamid=row.wamid,
                phone_number_id=row.phone_number_id,
                contact_wa_id=row.contact_wa_id,
                message_type=row.message_type,
                text=row.text_body,
                reply_id=reply_id,
                first_routing=outcome is Outcome.STORED,
                fallback_only=fallback_only,
            )
        )
        async with self._pool.connection() as conn:
            await conversations.mark_routed(conn, stored.message_id)
        return outcome, True


class _Identity(msgspec.Struct, kw_only=True):
    """Just enough of an envelope to know whom to answer; read leniently."""

    kind: str | None = None
    phone_number_id: str | None = None
    webhook_event_id: int | None = None
    message: dict[str, Any] | None = None
    status: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _EventIdentity:
    kind: str
    phone_number_id: str
    webhook_event_id: int | None
    # The bus message's key: the wamid, or "<wamid>:<status>".
    key: str | None
    # Set only for a message whose sender and wamid are known: the one who gets the fallback.
    sender: str | None
    message_type: str | None


def _identity_of(body: bytes) -> _EventIdentity | None:
    try:
        envelope = msgspec.convert(decode_json_body(body).payload, _Identity)
    except (UnreadableBody, msgspec.ValidationError):
        return None
    if envelope.kind not in ("message", "status") or not envelope.phone_number_id:
        return None
    if envelope.kind == "status":
        status = envelope.status or {}
        wamid, state = status.get("id"), status.get("status")
        key = f"{wamid}:{state}" if isinstance(wamid, str) and isinstance(state, str) else None
        return _EventIdentity(
            "status", envelope.phone_number_id, envelope.webhook_event_id, key, None, None
        )
    message = envelope.message or {}
    wamid, sender, message_type = message.get("id"), message.get("from"), message.get("type")
    known = isinstance(wamid, str) and bool(wamid) and isinstance(sender, str) and bool(sender)
    return _EventIdentity(
        "message",
        envelope.phone_number_id,
        envelope.webhook_event_id,
        wamid if isinstance(wamid, str) else None,
        sender if known else None,
        message_type if isinstance(message_type, str) else None,
    )


def _reason_of(error: Exception) -> str:
    # PayloadError names fields and types only; other errors' texts may quote values, so only
    # their class and, for PostgreSQL, the SQLSTATE.
    if isinstance(error, PayloadError):
        return str(error)
    sqlstate = getattr(error, "sqlstate", None)
    return f"{type(error).__name__} (SQLSTATE {sqlstate})" if sqlstate else type(error).__name__
