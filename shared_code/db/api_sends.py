"""Repository of sends made through the management API: who they go to, what was asked (for
idempotency), and how many users the business started conversations with (Meta's daily limit)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared_code.db.pool import Connection

__all__ = [
    "BUSINESS_INITIATED_WINDOW",
    "BusinessInitiatedUsage",
    "SentRow",
    "business_initiated_usage",
    "contact_id_by_wa_id",
    "contact_wa_id",
    "ensure_contact",
    "load_sent_row",
    "mark_api_send",
]

# Meta counts unique users reached outside their customer-service window in a moving 24 hours.
BUSINESS_INITIATED_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class SentRow:
    id: int
    conversation_id: int
    status: str
    request_sha256: bytes | None
    contact_id: int


async def load_sent_row(conn: Connection, idempotency_key: str) -> SentRow | None:
    cursor = await conn.execute(
        """
        SELECT m.id, m.conversation_id, m.status, m.request_sha256, v.contact_id
        FROM whatsapp_messages m JOIN whatsapp_conversations v ON v.id = m.conversation_id
        WHERE m.idempotency_key = %s
        """,
        (idempotency_key,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    row_id, conversation_id, status, digest, contact_id = row
    return SentRow(
        int(row_id),
        int(conversation_id),
        str(status),
        None if digest is None else bytes(digest),
        int(contact_id),
    )


async def mark_api_send(
    conn: Connection, message_id: int, *, request_sha256: bytes, business_initiated: bool
) -> None:
    await conn.execute(
        "UPDATE whatsapp_messages SET request_sha256 = %s, business_initiated = %s WHERE id = %s",
        (request_sha256, business_initiated, message_id),
    )


async def contact_wa_id(conn: Connection, contact_id: int) -> str | None:
    cursor = await conn.execute("SELECT wa_id FROM whatsapp_contacts WHERE id = %s", (contact_id,))
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def contact_id_by_wa_id(conn: Connection, wa_id: str) -> int | None:
    cursor = await conn.execute("SELECT id FROM whatsapp_contacts WHERE wa_id = %s", (wa_id,))
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def ensure_contact(conn: Connection, wa_id: str) -> int:
    """The contact with this wa_id, created when new (someone the business writes to first)."""
    cursor = await conn.execute(
        """
        INSERT INTO whatsapp_contacts AS c (wa_id) VALUES (%s)
        ON CONFLICT (wa_id) DO UPDATE SET updated_at = c.updated_at
        RETURNING id
        """,
        (wa_id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True, slots=True)
class BusinessInitiatedUsage:
    # Unique users counted now, and whether the one asked about is among them.
    users: int
    includes_recipient: bool
    # When the first of them leaves the moving window (frees a place); None when none counted.
    next_release_at: datetime | None
    now: datetime


async def business_initiated_usage(
    conn: Connection, phone_number_id: str, recipient_wa_id: str
) -> BusinessInitiatedUsage:
    """Unique users sent a business-initiated template from this number in the moving window.

    Run it in the transaction that inserts the next such send: it takes a lock per number until
    that transaction ends, so two sends cannot both take the last place.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('whatsapp-business-initiated:' || %s))",
        (phone_number_id,),
    )
    # A failed send reached no one, so it does not count.
    cursor = await conn.execute(
        """
        SELECT count(*), COALESCE(bool_or(contact_wa_id = %(recipient)s), false),
               min(last_at) + %(window)s, clock_timestamp()
        FROM (
            SELECT contact_wa_id, max(created_at) AS last_at
            FROM whatsapp_messages
            WHERE phone_number_id = %(number)s AND business_initiated
              AND created_at > clock_timestamp() - %(window)s AND status <> 'failed'
            GROUP BY contact_wa_id
        ) AS users
        """,
        {
            "recipient": recipient_wa_id,
            "number": phone_number_id,
            "window": BUSINESS_INITIATED_WINDOW,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    users, includes, release_at, now = row
    return BusinessInitiatedUsage(int(users), bool(includes), release_at, now)
