"""Repository of outbound messages: replies waiting to be sent, and what each send attempt did."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection
from shared_code.db.statuses import fold_statuses, storable_error_code
from shared_code.ratelimit import Decision, RateCharge, decision_of
from shared_code.telemetry import current_traceparent

__all__ = [
    "CALLBACK_PREFIX",
    "NewOutbound",
    "OutboundRow",
    "adopt_wamid",
    "begin_attempts",
    "callback_data_for",
    "find_by_idempotency_key",
    "insert_outbound",
    "load_outbound",
    "outbound_id_from_callback",
    "record_blocked",
    "record_failed",
    "record_requeue",
    "record_sends",
    "replace_content",
    "wamid_reported_for",
]

# Meta echoes ``biz_opaque_callback_data`` in every status webhook of the message, which is how an
# ambiguous send (timeout after the request left) finds out whether it reached WhatsApp.
CALLBACK_PREFIX = "outbound:"


def callback_data_for(outbound_id: int) -> str:
    return f"{CALLBACK_PREFIX}{outbound_id}"


def outbound_id_from_callback(data: str | None) -> int | None:
    if not data or not data.startswith(CALLBACK_PREFIX):
        return None
    digits = data[len(CALLBACK_PREFIX) :]
    return int(digits) if digits.isdigit() else None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOutbound:
    conversation_id: int
    phone_number_id: str
    contact_wa_id: str
    message_type: str
    text_body: str | None
    content: Mapping[str, Any]
    idempotency_key: str
    agent: str | None = None
    reply_to_message_id: int | None = None
    # Why the row exists (see migration 0006): what the messaging policy lets through depends
    # on it, e.g. only an "opt_out_confirmation" still goes to a contact who opted out.
    purpose: str = "reply"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundRow:
    id: int
    conversation_id: int
    phone_number_id: str
    contact_wa_id: str
    message_type: str
    content: dict[str, Any]
    wamid: str | None
    status: str
    send_attempts: int
    send_started_at: datetime | None
    next_attempt_at: datetime | None
    requeue_count: int
    gave_up_at: datetime | None
    # When the first earlier unsent reply of the conversation is due, if there is one: replies
    # leave in the order they were written, so a later one waits for the earlier ones.
    earlier_unsent_due: datetime | None
    now: datetime
    # What the messaging policy decides on (shared_code/policy.py: outbound_block).
    purpose: str | None
    contact_opted_out: bool
    marketing_stopped: bool
    # The contact's last message to this business number: the customer-service window.
    contact_last_inbound_at: datetime | None

    @property
    def settled(self) -> bool:
        """Meta accepted it, or it failed for good: nothing more to send."""
        return self.wamid is not None or self.status != "pending"


async def insert_outbound(conn: Connection, message: NewOutbound) -> tuple[int, bool]:
    """Insert once per idempotency key (and touch the conversation); returns (row id, created)."""
    cursor = await conn.execute(
        """
        WITH inserted AS (
            INSERT INTO whatsapp_messages
                (conversation_id, direction, phone_number_id, contact_wa_id, message_type,
                 text_body, content, status, idempotency_key, agent, reply_to_message_id, purpose,
                 trace_context)
            VALUES (%s, 'outbound', %s, %s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id, conversation_id
        ),
        touched AS (
            UPDATE whatsapp_conversations c SET last_message_at = now(), updated_at = now()
            FROM inserted i WHERE c.id = i.conversation_id
        )
        SELECT id FROM inserted
        """,
        (
            message.conversation_id,
            message.phone_number_id,
            message.contact_wa_id,
            message.message_type,
            message.text_body,
            Jsonb(dict(message.content)),
            message.idempotency_key,
            message.agent,
            message.reply_to_message_id,
            message.purpose,
            current_traceparent(),
        ),
    )
    row = await cursor.fetchone()
    if row is not None:
        return int(row[0]), True
    # The row committed by the conflicting insert may be newer than this statement's snapshot:
    # read it with a statement of its own.
    existing = await find_by_idempotency_key(conn, message.idempotency_key)
    assert existing is not None  # the conflict proves it exists, and rows are never deleted
    return existing, False


async def find_by_idempotency_key(conn: Connection, key: str) -> int | None:
    cursor = await conn.execute(
        "SELECT id FROM whatsapp_messages WHERE idempotency_key = %s", (key,)
    )
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


_LOAD = """
SELECT m.id, m.conversation_id, m.phone_number_id, m.contact_wa_id, m.message_type,
       m.content, m.wamid, m.status, m.send_attempts, m.send_started_at,
       m.next_attempt_at, m.requeue_count, m.gave_up_at,
       (SELECT COALESCE(e.next_attempt_at, clock_timestamp()) FROM whatsapp_messages e
        WHERE e.conversation_id = m.conversation_id AND e.direction = 'outbound'
          AND e.wamid IS NULL AND e.status = 'pending' AND e.id < m.id
        ORDER BY e.id LIMIT 1) AS earlier_unsent_due,
       clock_timestamp() AS now,
       m.purpose,
       COALESCE(c.opted_out, false) AS contact_opted_out,
       COALESCE(c.preferences->'marketing_messages'->>'value' = 'stop'
                AND (m.purpose = 'marketing'
                     OR EXISTS (SELECT 1 FROM whatsapp_message_templates t
                                WHERE m.message_type = 'template'
                                  AND t.name = m.content->'template'->>'name'
                                  AND t.language = m.content->'template'->'language'->>'code'
                                  AND t.category = 'MARKETING')), false) AS marketing_stopped,
       (SELECT max(w.last_inbound_at) FROM whatsapp_conversations w
        WHERE w.contact_id = v.contact_id AND w.phone_number_id = m.phone_number_id)
           AS contact_last_inbound_at
FROM whatsapp_messages m
JOIN whatsapp_conversations v ON v.id = m.conversation_id
LEFT JOIN whatsapp_contacts c ON c.id = v.contact_id
WHERE m.id = %(id)s AND m.direction = 'outbound'
"""

# The same row, and the send charged to the rate limits in the same round trip when the row is
# plainly ready to go: nothing sent or failed yet, no request possibly in flight, not re-queued
# for later, no earlier reply of the conversation waiting, and for the charged number and user.
# The charge is its own transaction's work (rate_limit_acquire commits asynchronously; reading
# the row adds nothing to commit). A row the messaging policy will refuse (opted-out contact,
# closed customer-service window for a non-template) is not charged: the sender refuses it,
# or turns it into a template and charges that apart. The condition is on the row alone, so it
# filters the row's scan below the join and the function is never called for a row that is not ready (a test
# holds PostgreSQL to that: a condition inside a LATERAL subquery did not stop the call).
_LOAD_AND_CHARGE = sql.SQL(
    """
WITH loaded AS ({load}),
charged AS (
    SELECT d.allowed, d.retry_after, d.refused_by, d.decided_at
    FROM loaded, {call} AS d
    WHERE loaded.wamid IS NULL AND loaded.status = 'pending' AND loaded.gave_up_at IS NULL
      AND loaded.send_started_at IS NULL AND loaded.earlier_unsent_due IS NULL
      AND (loaded.next_attempt_at IS NULL
           OR loaded.next_attempt_at <= loaded.now + make_interval(secs => %(early)s))
      AND loaded.phone_number_id = %(number)s AND loaded.contact_wa_id = %(recipient)s
      AND (NOT loaded.contact_opted_out OR loaded.purpose = 'opt_out_confirmation')
      AND NOT loaded.marketing_stopped
      AND (loaded.message_type = 'template'
           OR loaded.contact_last_inbound_at > loaded.now - make_interval(secs => %(window)s))
)
SELECT loaded.*, charged.* FROM loaded LEFT JOIN charged ON true
"""
).format(load=sql.SQL(_LOAD), call=sql.SQL(RateCharge.CALL))


async def load_outbound(
    conn: Connection,
    outbound_id: int,
    charge: RateCharge | None = None,
    *,
    early_tolerance: timedelta = timedelta(0),
    customer_service_window: timedelta = timedelta(hours=24),
) -> tuple[OutboundRow | None, Decision | None]:
    """The row, and with ``charge`` the rate-limit decision for sending it now, taken in the same
    round trip when the row is ready to send (its ``next_attempt_at`` at most
    ``early_tolerance`` ahead) and the messaging policy will let it go as it is (the sender
    passes :data:`shared_code.policy.CUSTOMER_SERVICE_WINDOW`); the decision is None when no
    charge was made."""
    cursor = conn.cursor(row_factory=dict_row)
    if charge is None:
        await cursor.execute(_LOAD, {"id": outbound_id})
    else:
        await cursor.execute(
            _LOAD_AND_CHARGE,
            {
                "id": outbound_id,
                "early": early_tolerance.total_seconds(),
                "number": charge.phone_number_id,
                "recipient": charge.recipient,
                "window": customer_service_window.total_seconds(),
                **charge.parameters,
            },
        )
    columns = await cursor.fetchone()
    if columns is None:
        return None, None
    # Without a charge the statement has no decision columns; with one they are NULL when the
    # row was not ready and the limits were not asked.
    decision_columns = [columns.pop(name, None) for name in _DECISION_COLUMNS]
    decision = None if decision_columns[0] is None else decision_of(decision_columns)
    return OutboundRow(**columns), decision


_DECISION_COLUMNS = ("allowed", "retry_after", "refused_by", "decided_at")


async def begin_attempts(conn: Connection, outbound_ids: Sequence[int]) -> list[int]:
    """Record that a request is about to leave for each row (the rows of several concurrent
    sends share the statement and its synchronous commit); returns each row's attempt number,
    in the order given."""
    cursor = await conn.execute(
        """
        UPDATE whatsapp_messages m
        SET send_attempts = m.send_attempts + 1, send_started_at = clock_timestamp(),
            updated_at = now()
        FROM unnest(%s::bigint[]) AS b (id)
        WHERE m.id = b.id
        RETURNING m.id, m.send_attempts
        """,
        (list(outbound_ids),),
    )
    attempts = {int(row_id): int(attempt) for row_id, attempt in await cursor.fetchall()}
    missing = [row_id for row_id in outbound_ids if row_id not in attempts]
    if missing:
        # Rows are never deleted: a missing one is a caller's bug, not a state to carry on from.
        raise LookupError(f"no outbound message with id {missing[0]}")
    return [attempts[row_id] for row_id in outbound_ids]


async def record_sends(conn: Connection, sends: Sequence[tuple[int, str]]) -> None:
    """Record the wamids Meta returned, as (row id, wamid) pairs, in one statement."""
    cursor = await conn.execute(
        """
        UPDATE whatsapp_messages m
        SET wamid = s.wamid,
            status = CASE WHEN whatsapp_status_rank(m.status) < whatsapp_status_rank('sent')
                          THEN 'sent' ELSE m.status END,
            sent_at = COALESCE(m.sent_at, clock_timestamp()),
            send_started_at = NULL, next_attempt_at = NULL,
            error_code = NULL, error_title = NULL, error_details = NULL, updated_at = now()
        FROM unnest(%s::bigint[], %s::text[]) AS s (id, wamid)
        WHERE m.id = s.id AND m.wamid IS NULL
        RETURNING s.wamid,
                  EXISTS (SELECT 1 FROM whatsapp_message_statuses h WHERE h.wamid = s.wamid)
        """,
        ([row_id for row_id, _ in sends], [wamid for _, wamid in sends]),
    )
    for wamid, early_statuses in await cursor.fetchall():
        if early_statuses:
            # Status webhooks that arrived before the wamid was known wait in the history.
            await fold_statuses(conn, wamid)


async def adopt_wamid(conn: Connection, outbound_id: int, wamid: str) -> bool:
    """A status webhook proved an ambiguous send reached WhatsApp: take its wamid."""
    cursor = await conn.execute(
        """
        UPDATE whatsapp_messages
        SET wamid = %s, send_started_at = NULL, next_attempt_at = NULL, updated_at = now()
        WHERE id = %s AND direction = 'outbound' AND wamid IS NULL
        """,
        (wamid, outbound_id),
    )
    adopted = cursor.rowcount == 1
    if adopted:
        await fold_statuses(conn, wamid)
    return adopted


async def wamid_reported_for(conn: Connection, outbound_id: int) -> str | None:
    """The wamid of a status webhook that echoed this row's callback data, if one came."""
    cursor = await conn.execute(
        "SELECT wamid FROM whatsapp_message_statuses WHERE biz_opaque_callback_data = %s LIMIT 1",
        (callback_data_for(outbound_id),),
    )
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def record_failed(
    conn: Connection,
    outbound_id: int,
    *,
    code: int | None,
    title: str,
    details: str | None,
    gave_up: bool = False,
) -> None:
    """A permanent error, or ``gave_up`` after the last allowed attempt."""
    await conn.execute(
        """
        UPDATE whatsapp_messages
        SET status = 'failed', failed_at = clock_timestamp(), error_code = %s, error_title = %s,
            error_details = %s, send_started_at = NULL, next_attempt_at = NULL,
            gave_up_at = CASE WHEN %s THEN clock_timestamp() END, updated_at = now()
        WHERE id = %s AND wamid IS NULL
        """,
        (storable_error_code(code), title, details, gave_up, outbound_id),
    )


async def record_blocked(conn: Connection, outbound_id: int, *, reason: str, title: str) -> None:
    """The messaging policy refused the row: failed, never sent, ``reason`` a stable code."""
    await conn.execute(
        """
        UPDATE whatsapp_messages
        SET status = 'failed', failed_at = clock_timestamp(), error_code = NULL,
            error_title = %s, error_details = NULL, blocked_by_policy = %s,
            send_started_at = NULL, next_attempt_at = NULL, updated_at = now()
        WHERE id = %s AND wamid IS NULL
        """,
        (title, reason, outbound_id),
    )


async def replace_content(conn: Connection, outbound_id: int, content: Mapping[str, Any]) -> None:
    """Send something else in the row's place (a template once the window has closed); the row
    keeps its ``text_body``, so the conversation still shows what the answer was."""
    await conn.execute(
        """
        UPDATE whatsapp_messages SET content = %s, message_type = %s, updated_at = now()
        WHERE id = %s AND wamid IS NULL
        """,
        (Jsonb(dict(content)), str(content.get("type")), outbound_id),
    )


async def record_requeue(
    conn: Connection,
    outbound_id: int,
    *,
    delay_seconds: float,
    keep_in_flight: bool = False,
    code: int | None = None,
    title: str | None = None,
) -> tuple[int, datetime]:
    """Note that the row is re-queued ``delay_seconds`` from now; returns (requeue count, due).

    ``keep_in_flight`` keeps ``send_started_at``: the last request may have reached Meta.
    """
    cursor = await conn.execute(
        """
        UPDATE whatsapp_messages
        SET requeue_count = requeue_count + 1,
            next_attempt_at = clock_timestamp() + make_interval(secs => %(delay)s),
            send_started_at = CASE WHEN %(keep)s THEN send_started_at END,
            error_code = COALESCE(%(code)s, error_code),
            error_title = COALESCE(%(title)s, error_title),
            updated_at = now()
        WHERE id = %(id)s
        RETURNING requeue_count, next_attempt_at
        """,
        {
            "delay": delay_seconds,
            "keep": keep_in_flight,
            "code": storable_error_code(code),
            "title": title,
            "id": outbound_id,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), row[1]
