"""Repository of inbound traffic: contacts, their open conversation and the messages in it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection

__all__ = [
    "AgentContext",
    "HistoryRow",
    "InboundMessageRow",
    "StoredInbound",
    "assign_agent",
    "find_inbound",
    "load_agent_context",
    "mark_routed",
    "store_inbound",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessageRow:
    wamid: str
    phone_number_id: str
    contact_wa_id: str
    profile_name: str | None
    message_type: str
    text_body: str | None
    content: dict[str, object]
    context_wamid: str | None
    whatsapp_timestamp: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredInbound:
    message_id: int
    conversation_id: int
    contact_id: int
    routed: bool


# One round trip, no transaction: contact, current (not closed) conversation and message
# together; after a close, the message opens a new conversation. A known
# wamid touches nothing (the guard), so a redelivered message changes nothing; two first
# deliveries racing each other upsert the same contact and conversation and one message wins.
_STORE_INBOUND = """
WITH contact AS (
    INSERT INTO whatsapp_contacts AS c (wa_id, profile_name, last_inbound_at)
    SELECT %(wa_id)s, %(profile_name)s, %(ts)s
    WHERE NOT EXISTS (SELECT 1 FROM whatsapp_messages WHERE wamid = %(wamid)s)
    ON CONFLICT (wa_id) DO UPDATE
        SET profile_name = COALESCE(EXCLUDED.profile_name, c.profile_name),
            last_inbound_at = GREATEST(c.last_inbound_at, EXCLUDED.last_inbound_at),
            updated_at = now()
    RETURNING id
), conversation AS (
    INSERT INTO whatsapp_conversations AS v (phone_number_id, contact_id, last_message_at, last_inbound_at)
    SELECT %(phone_number_id)s, contact.id, %(ts)s, %(ts)s FROM contact
    ON CONFLICT (phone_number_id, contact_id) WHERE status <> 'closed' DO UPDATE
        SET last_message_at = GREATEST(v.last_message_at, EXCLUDED.last_message_at),
            last_inbound_at = GREATEST(v.last_inbound_at, EXCLUDED.last_inbound_at),
            updated_at = now()
    RETURNING id, contact_id
)
INSERT INTO whatsapp_messages
    (conversation_id, direction, wamid, phone_number_id, contact_wa_id, message_type,
     text_body, content, context_wamid, status, whatsapp_timestamp)
SELECT conversation.id, 'inbound', %(wamid)s, %(phone_number_id)s, %(wa_id)s, %(message_type)s,
       %(text_body)s, %(content)s, %(context_wamid)s, 'received', %(ts)s
FROM conversation
ON CONFLICT (wamid) DO NOTHING
RETURNING id, conversation_id, (SELECT contact_id FROM conversation)
"""


async def store_inbound(conn: Connection, row: InboundMessageRow) -> StoredInbound | None:
    """Insert the message with its contact and conversation; None if the wamid is known."""
    cursor = await conn.execute(
        _STORE_INBOUND,
        {
            "wa_id": row.contact_wa_id,
            "profile_name": row.profile_name,
            "ts": row.whatsapp_timestamp,
            "phone_number_id": row.phone_number_id,
            "wamid": row.wamid,
            "message_type": row.message_type,
            "text_body": row.text_body,
            "content": Jsonb(row.content),
            "context_wamid": row.context_wamid,
        },
    )
    found = await cursor.fetchone()
    if found is None:
        return None
    message_id, conversation_id, contact_id = found
    return StoredInbound(
        message_id=message_id, conversation_id=conversation_id, contact_id=contact_id, routed=False
    )


async def find_inbound(conn: Connection, wamid: str) -> StoredInbound | None:
    cursor = await conn.execute(
        """
        SELECT m.id, m.conversation_id, v.contact_id, m.routed_at IS NOT NULL
        FROM whatsapp_messages m JOIN whatsapp_conversations v ON v.id = m.conversation_id
        WHERE m.wamid = %s AND m.direction = 'inbound'
        """,
        (wamid,),
    )
    found = await cursor.fetchone()
    if found is None:
        return None
    message_id, conversation_id, contact_id, routed = found
    return StoredInbound(
        message_id=message_id, conversation_id=conversation_id, contact_id=contact_id, routed=routed
    )


async def mark_routed(conn: Connection, message_id: int) -> None:
    await conn.execute(
        "UPDATE whatsapp_messages SET routed_at = now(), updated_at = now() "
        "WHERE id = %s AND routed_at IS NULL",
        (message_id,),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryRow:
    direction: str
    message_type: str
    text_body: str | None
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentContext:
    """What an agent is told about a conversation besides the message itself."""

    assigned_agent: str | None
    profile_name: str | None
    history: list[HistoryRow]


async def load_agent_context(
    conn: Connection, conversation_id: int, before_message_id: int, history_limit: int
) -> AgentContext:
    """The conversation's agent, the contact's name and up to ``history_limit`` earlier
    messages, oldest first (the message being answered is not part of its own history)."""
    # One round trip: the conversation's row repeated beside each history row (or once, with
    # NULLs, when there is no history yet).
    cursor = await conn.execute(
        """
        SELECT v.assigned_agent, c.profile_name, h.direction, h.message_type, h.text_body, h.at
        FROM whatsapp_conversations v
        JOIN whatsapp_contacts c ON c.id = v.contact_id
        LEFT JOIN LATERAL (
            SELECT id, direction, message_type, text_body,
                   COALESCE(whatsapp_timestamp, created_at) AS at
            FROM whatsapp_messages
            WHERE conversation_id = v.id AND id < %s
            ORDER BY id DESC LIMIT %s
        ) h ON true
        WHERE v.id = %s
        ORDER BY h.id
        """,
        (before_message_id, history_limit, conversation_id),
    )
    rows = await cursor.fetchall()
    assigned_agent, profile_name = (rows[0][0], rows[0][1]) if rows else (None, None)
    history = [
        HistoryRow(direction=d, message_type=t, text_body=b, at=a)
        for _, _, d, t, b, a in rows
        if d is not None
    ]
    return AgentContext(assigned_agent=assigned_agent, profile_name=profile_name, history=history)


async def assign_agent(conn: Connection, conversation_id: int, agent: str) -> None:
    await conn.execute(
        "UPDATE whatsapp_conversations SET assigned_agent = %s, updated_at = now() "
        "WHERE id = %s AND assigned_agent IS DISTINCT FROM %s",
        (agent, conversation_id, agent),
    )
