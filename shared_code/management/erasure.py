"""``DELETE contacts/{id}``: erase one user from the bridge (GDPR art. 17), leaving an audit row.

What goes: the contact row, every message of their conversations (both directions), those
messages' status history (``whatsapp_message_statuses`` by wamid) and event failures (by the
events' keys, which are wamids), their conversations, and the raw webhook bodies that name them.
What stays: one ``whatsapp_audit_log`` row with the contact's id and counts only.

Order and locks. Everything runs in short transactions of at most :data:`BATCH_SIZE` rows, so
no table is locked for long and the bridge keeps running:

1. unsent outbound rows (``pending``, no wamid) are marked ``failed`` first, in one statement:
   the sender settles a failed row without sending it, so nothing queued for the user leaves
   while the rest is deleted (a request already on its way to Meta cannot be called back);
2. webhook bodies that name the user, found as described below;
3. messages newest first (a reply is newer than what it answers) with their statuses;
4. one last transaction locks the contact, deletes what arrived meanwhile, the conversations and
   the contact, and writes the audit row. Until it commits the contact still exists, so an
   erasure interrupted half-way is finished by calling it again.

Webhook bodies. They are the exact bytes Meta signed (bytea JSON) with no column naming the user,
and no index can look inside them. A user is named in a body only by their wa_id as a JSON string
(``"wa_id"``, ``"from"``, ``"recipient_id"``), so the search is for the bytes ``"<wa_id>"``, and
only in the periods the user was active: each of their conversations' lifetimes (and the
contact's own dates), widened by :data:`EVENT_SEARCH_MARGIN` on each side for events stored
before the processor created the rows (queue backlog, outbox sweeps). The scan walks those
periods by ``(received_at, id)`` in batches. A matching body that names only this user is
deleted; a body that also carries other users' events (Meta batches them) is rewritten without
this user's entries (its sha256 recomputed), so the others' data stay; a body that is not JSON
is deleted. Limits: a body naming the user outside their active periods (a forged or unreadable
webhook long before their first message) is not found; Meta may still post statuses of messages
sent before the erasure, which are then stored again; the broker's own copies (queued messages,
its duplicate-detection history) expire on their own.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

from shared_code.db import audit
from shared_code.db.pool import Connection, Pool
from shared_code.management.problems import NotFound

logger = logging.getLogger(__name__)

__all__ = ["BATCH_SIZE", "ERASE_ACTION", "EVENT_SEARCH_MARGIN", "ErasureReport", "erase_contact"]

BATCH_SIZE: Final = 1000
EVENT_SCAN_BATCH: Final = 2000
EVENT_SEARCH_MARGIN: Final = timedelta(days=1)
ERASE_ACTION: Final = "contact.erase"
# Every state a status webhook can report: the keys of status events are "<wamid>:<status>".
_STATUS_NAMES: Final = ("sent", "delivered", "read", "failed", "deleted", "played", "warning")


class ErasureReport(msgspec.Struct, kw_only=True):
    """What was erased, in counts only (the same as the audit row's details)."""

    contact_id: int
    already_erased: Annotated[
        bool, msgspec.Meta(description="An earlier call erased this contact; nothing was left.")
    ] = False
    messages: int = 0
    message_statuses: int = 0
    outbound_cancelled: Annotated[
        int, msgspec.Meta(description="Queued outbound messages stopped before they were sent.")
    ] = 0
    conversations: int = 0
    webhook_events_deleted: int = 0
    webhook_events_redacted: Annotated[
        int, msgspec.Meta(description="Bodies shared with other users, rewritten without this one.")
    ] = 0
    event_failures: int = 0


@dataclass(slots=True)
class _Contact:
    id: int
    wa_id: str
    periods: list[tuple[datetime, datetime]]


async def erase_contact(pool: Pool, contact_id: int, actor: str) -> ErasureReport:
    """Erase the contact and everything of theirs; see the module docstring. Idempotent: a
    second call answers ``already_erased``; an id that never existed raises :class:`NotFound`."""
    async with pool.connection() as conn:
        contact = await _load(conn, contact_id)
        if contact is None:
            if await _was_erased(conn, contact_id):
                return ErasureReport(contact_id=contact_id, already_erased=True)
            raise NotFound("no contact with this id", code="contact_not_found")
        report = ErasureReport(contact_id=contact_id)
        report.outbound_cancelled = await _cancel_unsent(conn, contact_id)
        await _erase_webhook_events(conn, contact, report)
        while await _delete_message_batch(conn, contact_id, report):
            pass
        await _finish(conn, contact_id, actor, report)
    logger.info(
        "contact %d erased: %d message(s), %d conversation(s), %d webhook event(s) deleted, "
        "%d redacted",
        contact_id,
        report.messages,
        report.conversations,
        report.webhook_events_deleted,
        report.webhook_events_redacted,
    )
    return report


async def _load(conn: Connection, contact_id: int) -> _Contact | None:
    cursor = await conn.execute(
        "SELECT wa_id, created_at, updated_at, opted_out_at FROM whatsapp_contacts WHERE id = %s",
        (contact_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    wa_id, created_at, updated_at, opted_out_at = row
    cursor = await conn.execute(
        "SELECT created_at, greatest(updated_at, last_message_at, closed_at) "
        "FROM whatsapp_conversations WHERE contact_id = %s",
        (contact_id,),
    )
    spans = [(start, end or start) for start, end in await cursor.fetchall()]
    spans.append((created_at, max(d for d in (created_at, updated_at, opted_out_at) if d)))
    return _Contact(id=contact_id, wa_id=wa_id, periods=_merge(spans, EVENT_SEARCH_MARGIN))


def _merge(
    spans: Sequence[tuple[datetime, datetime]], margin: timedelta
) -> list[tuple[datetime, datetime]]:
    """The spans widened by ``margin`` on each side, overlapping ones joined, in order."""
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted((s - margin, e + margin) for s, e in spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


async def _was_erased(conn: Connection, contact_id: int) -> bool:
    cursor = await conn.execute(
        "SELECT 1 FROM whatsapp_audit_log "
        "WHERE target_type = 'contact' AND target_id = %s AND action = %s LIMIT 1",
        (str(contact_id), ERASE_ACTION),
    )
    return await cursor.fetchone() is not None


async def _cancel_unsent(conn: Connection, contact_id: int) -> int:
    cursor = await conn.execute(
        """
        UPDATE whatsapp_messages m
        SET status = 'failed', failed_at = clock_timestamp(), updated_at = clock_timestamp(),
            error_title = 'cancelled: the contact was erased'
        FROM whatsapp_conversations c
        WHERE c.contact_id = %s AND m.conversation_id = c.id AND m.direction = 'outbound'
          AND m.wamid IS NULL AND m.status = 'pending'
        """,
        (contact_id,),
    )
    return max(cursor.rowcount, 0)


# One batch: the newest messages of the contact's conversations, their statuses and the event
# failures keyed by their wamids, in one short transaction.
_DELETE_MESSAGES = """
WITH batch AS (
    SELECT m.id, m.wamid FROM whatsapp_messages m
    WHERE m.conversation_id IN (SELECT id FROM whatsapp_conversations WHERE contact_id = %(contact)s)
    ORDER BY m.id DESC
    LIMIT %(limit)s
), statuses AS (
    DELETE FROM whatsapp_message_statuses s USING batch
    WHERE s.wamid = batch.wamid
    RETURNING 1
), failures AS (
    DELETE FROM whatsapp_event_failures f
    WHERE f.stage IN ('publish', 'process')
      AND f.event_key = ANY(
          SELECT unnest(ARRAY[batch.wamid] || array(
                     SELECT batch.wamid || ':' || name FROM unnest(%(statuses)s::text[]) name))
          FROM batch WHERE batch.wamid IS NOT NULL)
    RETURNING 1
), messages AS (
    DELETE FROM whatsapp_messages m USING batch WHERE m.id = batch.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM statuses),
       (SELECT count(*) FROM failures)
"""


async def _delete_message_batch(conn: Connection, contact_id: int, report: ErasureReport) -> bool:
    """Delete one batch; False once there was nothing left."""
    cursor = await conn.execute(
        _DELETE_MESSAGES,
        {"contact": contact_id, "limit": BATCH_SIZE, "statuses": list(_STATUS_NAMES)},
    )
    row = await cursor.fetchone()
    messages, statuses, failures = (int(v) for v in row) if row else (0, 0, 0)
    report.messages += messages
    report.message_statuses += statuses
    report.event_failures += failures
    return messages > 0


async def _finish(conn: Connection, contact_id: int, actor: str, report: ErasureReport) -> None:
    """Lock the contact, take what arrived during the batches, delete the rest, audit."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT 1 FROM whatsapp_contacts WHERE id = %s FOR UPDATE", (contact_id,)
        )
        if await cursor.fetchone() is None:
            return  # a concurrent erasure finished first; its audit row stands
        # Messages the processor added since the batches (a user writing during the erasure).
        while await _delete_message_batch(conn, contact_id, report):
            pass
        cursor = await conn.execute(
            "DELETE FROM whatsapp_conversations WHERE contact_id = %s", (contact_id,)
        )
        report.conversations += max(cursor.rowcount, 0)
        await conn.execute("DELETE FROM whatsapp_contacts WHERE id = %s", (contact_id,))
        await audit.record(
            conn,
            actor=actor,
            action=ERASE_ACTION,
            target_type="contact",
            target_id=contact_id,
            details=msgspec.to_builtins(report),
        )


# --- webhook bodies ------------------------------------------------------------------------

_SCAN_EVENTS = """
SELECT id, received_at, CASE WHEN position(%(needle)s IN body) > 0 THEN body END
FROM whatsapp_webhook_events
WHERE (received_at, id) > (%(after_at)s, %(after_id)s) AND received_at < %(until)s
ORDER BY received_at, id
LIMIT %(limit)s
"""


async def _erase_webhook_events(conn: Connection, contact: _Contact, report: ErasureReport) -> None:
    needle = b'"' + contact.wa_id.encode() + b'"'
    for start, end in contact.periods:
        after_at, after_id = start, 0
        while True:
            cursor = await conn.execute(
                _SCAN_EVENTS,
                {
                    "needle": needle,
                    "after_at": after_at,
                    "after_id": after_id,
                    "until": end,
                    "limit": EVENT_SCAN_BATCH,
                },
            )
            rows = await cursor.fetchall()
            hits = [(event_id, bytes(body)) for event_id, _, body in rows if body is not None]
            if hits:
                await _erase_bodies(conn, contact.wa_id, hits, report)
            if len(rows) < EVENT_SCAN_BATCH:
                break
            after_id, after_at = rows[-1][0], rows[-1][1]


async def _erase_bodies(
    conn: Connection, wa_id: str, hits: list[tuple[int, bytes]], report: ErasureReport
) -> None:
    to_delete: list[int] = []
    to_rewrite: list[tuple[int, bytes]] = []
    for event_id, body in hits:
        rewritten = without_user(body, wa_id)
        if rewritten is None:
            to_delete.append(event_id)
        elif rewritten != body:
            to_rewrite.append((event_id, rewritten))
    async with conn.transaction():
        if to_delete:
            cursor = await conn.execute(
                "DELETE FROM whatsapp_webhook_events WHERE id = ANY(%s)", (to_delete,)
            )
            report.webhook_events_deleted += max(cursor.rowcount, 0)
            # Failures of these events are this user's too (the bodies named no one else).
            cursor = await conn.execute(
                "DELETE FROM whatsapp_event_failures WHERE webhook_event_id = ANY(%s)", (to_delete,)
            )
            report.event_failures += max(cursor.rowcount, 0)
        for event_id, body in to_rewrite:
            await conn.execute(
                "UPDATE whatsapp_webhook_events SET body = %s, body_sha256 = %s, "
                "reason = coalesce(reason, 'redacted: a contact was erased') WHERE id = %s",
                (body, hashlib.sha256(body).digest(), event_id),
            )
            report.webhook_events_redacted += 1


def without_user(body: bytes, wa_id: str) -> bytes | None:
    """``body`` without the parts that name ``wa_id``; None when nothing else would remain (or
    it is not JSON), i.e. the whole body is the user's and goes."""
    try:
        document: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    kept_items = 0
    for entry in _list(document.get("entry") if isinstance(document, dict) else None):
        for change in _list(entry.get("changes") if isinstance(entry, dict) else None):
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            for key, items in list(value.items()):
                if isinstance(items, list):
                    kept = [item for item in items if not _mentions(item, wa_id)]
                    value[key] = kept
                    kept_items += len(kept)
    rewritten = msgspec.json.encode(document)
    if kept_items == 0 or b'"' + wa_id.encode() + b'"' in rewritten:
        return None
    return rewritten


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _mentions(value: object, wa_id: str) -> bool:
    if isinstance(value, str):
        return value == wa_id
    if isinstance(value, dict):
        return any(_mentions(item, wa_id) for item in value.values())
    if isinstance(value, list):
        return any(_mentions(item, wa_id) for item in value)
    return False
