"""What the orchestrator needs to know, beyond the history, before an agent configuration's
away message and greeting: when the message was written, the closed period the conversation last
got an away message for, and whether an agent already answered in the conversation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared_code.db.pool import Connection

__all__ = ["Turn", "load_turn", "note_away_message"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    # WhatsApp's timestamp of the message (when the user wrote it), so a redelivery hours later
    # is judged against the same business hours as the first delivery.
    written_at: datetime
    away_message_period_start: datetime | None
    answered_before: bool


async def load_turn(conn: Connection, message_id: int) -> Turn:
    # "Answered" means an agent's reply (key "reply:<wamid>") to another message of the
    # conversation: neither the away message nor an operator's message counts.
    cursor = await conn.execute(
        """
        SELECT COALESCE(m.whatsapp_timestamp, m.created_at), v.away_message_period_start,
               EXISTS (SELECT 1 FROM whatsapp_messages r
                       WHERE r.conversation_id = m.conversation_id AND r.direction = 'outbound'
                         AND left(r.idempotency_key, 6) = 'reply:'
                         AND r.reply_to_message_id IS DISTINCT FROM m.id)
        FROM whatsapp_messages m JOIN whatsapp_conversations v ON v.id = m.conversation_id
        WHERE m.id = %s
        """,
        (message_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise LookupError(f"message {message_id} does not exist")
    written_at, period_start, answered = row
    return Turn(
        written_at=written_at, away_message_period_start=period_start, answered_before=answered
    )


async def note_away_message(conn: Connection, conversation_id: int, period_start: datetime) -> None:
    await conn.execute(
        "UPDATE whatsapp_conversations SET away_message_period_start = %s "
        "WHERE id = %s AND away_message_period_start IS DISTINCT FROM %s",
        (period_start, conversation_id, period_start),
    )
