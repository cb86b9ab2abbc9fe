"""Repository of retention: deletes what is older than the retention period, a batch at a time.

Each function deletes at most ``limit`` rows in one statement (its own short transaction on an
autocommit connection) and returns how many went, so the caller can stop between batches. Rows
locked by live work are skipped, never waited for.
"""

from __future__ import annotations

from datetime import datetime

from shared_code.db.pool import Connection

__all__ = [
    "delete_closed_conversations",
    "delete_event_failures",
    "delete_message_statuses",
    "delete_messages",
    "delete_webhook_events",
]


async def _delete(conn: Connection, statement: str, cutoff: datetime, limit: int) -> int:
    cursor = await conn.execute(statement, {"cutoff": cutoff, "limit": limit})
    return cursor.rowcount


async def delete_messages(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Messages created before ``cutoff`` (replies to them keep their rows: the reference is
    set to NULL by the foreign key)."""
    return await _delete(
        conn,
        """
        DELETE FROM whatsapp_messages WHERE id IN (
            SELECT id FROM whatsapp_messages WHERE created_at < %(cutoff)s
            ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
        """,
        cutoff,
        limit,
    )


async def delete_message_statuses(conn: Connection, cutoff: datetime, limit: int) -> int:
    return await _delete(
        conn,
        """
        DELETE FROM whatsapp_message_statuses s USING (
            SELECT wamid, status FROM whatsapp_message_statuses WHERE received_at < %(cutoff)s
            ORDER BY received_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) old
        WHERE s.wamid = old.wamid AND s.status = old.status
        """,
        cutoff,
        limit,
    )


async def delete_webhook_events(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Raw webhook bodies first received before ``cutoff``, whatever their status."""
    return await _delete(
        conn,
        """
        DELETE FROM whatsapp_webhook_events WHERE id IN (
            SELECT id FROM whatsapp_webhook_events WHERE received_at < %(cutoff)s
            ORDER BY received_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
        """,
        cutoff,
        limit,
    )


async def delete_event_failures(conn: Connection, cutoff: datetime, limit: int) -> int:
    return await _delete(
        conn,
        """
        DELETE FROM whatsapp_event_failures WHERE id IN (
            SELECT id FROM whatsapp_event_failures WHERE last_failed_at < %(cutoff)s
            ORDER BY last_failed_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
        """,
        cutoff,
        limit,
    )


async def delete_closed_conversations(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Conversations closed before ``cutoff`` with no message left (contacts stay: erasing a
    person is the management API's erasure, not retention)."""
    return await _delete(
        conn,
        """
        DELETE FROM whatsapp_conversations WHERE id IN (
            SELECT v.id FROM whatsapp_conversations v
            WHERE v.status = 'closed' AND v.closed_at < %(cutoff)s
              AND NOT EXISTS (SELECT 1 FROM whatsapp_messages m WHERE m.conversation_id = v.id)
            ORDER BY v.closed_at, v.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
        """,
        cutoff,
        limit,
    )
