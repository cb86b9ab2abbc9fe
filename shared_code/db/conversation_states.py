"""Repository of a conversation's lifecycle: open → handoff → open, and closed (for good).

A closed conversation never reopens: the next message opens a new row (see
:mod:`shared_code.db.conversations`), so ``closed_at`` and ``status`` stay true.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from shared_code.db.pool import Connection

__all__ = [
    "ConversationRow",
    "GateState",
    "close_idle",
    "current_conversation_id",
    "gate_state",
    "load_conversation",
    "set_closed",
    "set_handoff",
    "set_open",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationRow:
    id: int
    phone_number_id: str
    contact_id: int
    status: str
    assigned_agent: str | None
    handoff_at: datetime | None
    handoff_by: str | None
    last_message_at: datetime | None
    last_inbound_at: datetime | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    close_reason: str | None


_COLUMNS = """id, phone_number_id, contact_id, status, assigned_agent, handoff_at, handoff_by,
    last_message_at, last_inbound_at, created_at, updated_at, closed_at, close_reason"""


async def load_conversation(
    conn: Connection, conversation_id: int, *, for_update: bool = False
) -> ConversationRow | None:
    cursor = conn.cursor(row_factory=class_row(ConversationRow))
    await cursor.execute(
        f"SELECT {_COLUMNS} FROM whatsapp_conversations WHERE id = %s"  # noqa: S608 - constants
        + (" FOR UPDATE" if for_update else ""),
        (conversation_id,),
    )
    return await cursor.fetchone()


async def _transition(
    conn: Connection, conversation_id: int, set_clause: str, params: dict[str, object]
) -> ConversationRow | None:
    cursor = conn.cursor(row_factory=class_row(ConversationRow))
    await cursor.execute(
        f"UPDATE whatsapp_conversations SET {set_clause}, updated_at = now() "  # noqa: S608
        f"WHERE id = %(id)s RETURNING {_COLUMNS}",
        {**params, "id": conversation_id},
    )
    return await cursor.fetchone()


async def set_handoff(conn: Connection, conversation_id: int, by: str) -> ConversationRow | None:
    return await _transition(
        conn,
        conversation_id,
        "status = 'handoff', handoff_at = now(), handoff_by = %(by)s",
        {"by": by},
    )


async def set_open(conn: Connection, conversation_id: int) -> ConversationRow | None:
    return await _transition(
        conn, conversation_id, "status = 'open', handoff_at = NULL, handoff_by = NULL", {}
    )


async def set_closed(conn: Connection, conversation_id: int, reason: str) -> ConversationRow | None:
    return await _transition(
        conn,
        conversation_id,
        "status = 'closed', closed_at = now(), close_reason = %(reason)s",
        {"reason": reason},
    )


async def close_idle(conn: Connection, *, idle_seconds: float, limit: int) -> int:
    """Close up to ``limit`` conversations without any message for ``idle_seconds``; returns how
    many. Rows locked by a message being stored right now are skipped, not waited for."""
    cursor = await conn.execute(
        """
        WITH idle AS (
            SELECT id FROM whatsapp_conversations
            WHERE status <> 'closed'
              AND COALESCE(last_message_at, created_at)
                  < clock_timestamp() - make_interval(secs => %s)
            ORDER BY COALESCE(last_message_at, created_at), id
            LIMIT %s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE whatsapp_conversations v
        SET status = 'closed', closed_at = now(), close_reason = 'idle', updated_at = now()
        FROM idle WHERE v.id = idle.id
        """,
        (idle_seconds, limit),
    )
    return cursor.rowcount


@dataclass(frozen=True, slots=True)
class GateState:
    """What decides whether an agent may answer a message in a conversation."""

    conversation_status: str
    contact_opted_out: bool


_GATE_STATE = """
SELECT v.status, c.opted_out FROM whatsapp_conversations v
JOIN whatsapp_contacts c ON c.id = v.contact_id
WHERE v.id = %s AND c.id = %s
"""
_GATE_STATE_LOCKED = _GATE_STATE + " FOR UPDATE OF c"


async def gate_state(
    conn: Connection, conversation_id: int, contact_id: int, *, lock_contact: bool
) -> GateState | None:
    """``lock_contact`` holds the contact row until the transaction ends (an opt-out or opt-in
    is about to change it, and two of them must not interleave)."""
    cursor = await conn.execute(
        _GATE_STATE_LOCKED if lock_contact else _GATE_STATE, (conversation_id, contact_id)
    )
    row = await cursor.fetchone()
    return None if row is None else GateState(str(row[0]), bool(row[1]))


async def current_conversation_id(
    conn: Connection, phone_number_id: str, contact_id: int, *, create: bool
) -> int | None:
    """The contact's conversation on this number that is not closed; a new one when ``create``
    (for a business-initiated message to someone whose conversations are all closed)."""
    cursor = await conn.execute(
        "SELECT id FROM whatsapp_conversations "
        "WHERE phone_number_id = %s AND contact_id = %s AND status <> 'closed'",
        (phone_number_id, contact_id),
    )
    row = await cursor.fetchone()
    if row is not None or not create:
        return None if row is None else int(row[0])
    cursor = await conn.execute(
        """
        INSERT INTO whatsapp_conversations AS v (phone_number_id, contact_id)
        VALUES (%s, %s)
        ON CONFLICT (phone_number_id, contact_id) WHERE status <> 'closed'
            DO UPDATE SET updated_at = v.updated_at
        RETURNING id
        """,
        (phone_number_id, contact_id),
    )
    created = await cursor.fetchone()
    assert created is not None
    return int(created[0])
