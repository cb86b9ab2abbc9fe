"""Repository of a contact's consent: opted out of everything, and Meta's marketing preference.

``whatsapp_contacts.opted_out`` is the bridge's own opt-out (a keyword, or an operator): nothing
but the one confirmation goes to such a contact. ``preferences->'marketing_messages'`` is what
Meta reported in its ``user_preferences`` webhook: ``{"value": "stop" | "resume", "timestamp":
<unix s>}``; while it is ``stop`` no marketing template goes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection

__all__ = [
    "MarketingChange",
    "SendConsent",
    "record_marketing_preference",
    "send_consent",
    "set_opted_out",
]


async def set_opted_out(conn: Connection, contact_id: int, opted_out: bool, *, source: str) -> bool:
    """Opt the contact out (or back in); False when it already was (nothing changed)."""
    cursor = await conn.execute(
        """
        UPDATE whatsapp_contacts
        SET opted_out = %(out)s,
            opted_out_at = CASE WHEN %(out)s THEN now() END,
            opt_out_source = %(source)s, opt_out_changed_at = now(), updated_at = now()
        WHERE id = %(id)s AND opted_out IS DISTINCT FROM %(out)s
        """,
        {"out": opted_out, "source": source, "id": contact_id},
    )
    return cursor.rowcount == 1


@dataclass(frozen=True, slots=True)
class MarketingChange:
    contact_id: int
    # The stored value before and after (None: never reported); equal when nothing changed.
    before: str | None
    after: str | None


async def record_marketing_preference(
    conn: Connection, wa_id: str, value: str, reported_at: datetime
) -> MarketingChange:
    """Store Meta's report unless a later one is stored already (webhooks come in any order).

    Creates the contact when Meta reports on someone who never wrote. Run it in a transaction:
    the contact row stays locked from the read to the write.
    """
    cursor = await conn.execute(
        """
        INSERT INTO whatsapp_contacts AS c (wa_id) VALUES (%s)
        ON CONFLICT (wa_id) DO UPDATE SET updated_at = c.updated_at
        RETURNING id, preferences->'marketing_messages'->>'value',
                  (preferences->'marketing_messages'->>'timestamp')::bigint
        """,
        (wa_id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    contact_id, before, before_timestamp = row
    timestamp = int(reported_at.timestamp())
    if before_timestamp is not None and before_timestamp > timestamp:
        return MarketingChange(int(contact_id), before, before)
    await conn.execute(
        """
        UPDATE whatsapp_contacts
        SET preferences = jsonb_set(preferences, '{marketing_messages}', %s), updated_at = now()
        WHERE id = %s
        """,
        (Jsonb({"value": value, "timestamp": timestamp}), contact_id),
    )
    return MarketingChange(int(contact_id), before, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendConsent:
    """What the policy needs to know before something is sent to a contact on a number."""

    contact_id: int
    opted_out: bool
    marketing_stopped: bool
    # The contact's last message to this business number: the customer-service window.
    last_inbound_at: datetime | None
    now: datetime


async def send_consent(
    conn: Connection, contact_id: int, phone_number_id: str
) -> SendConsent | None:
    """None when there is no such contact."""
    cursor = await conn.execute(
        """
        SELECT c.id, c.opted_out,
               COALESCE(c.preferences->'marketing_messages'->>'value' = 'stop', false),
               (SELECT max(v.last_inbound_at) FROM whatsapp_conversations v
                WHERE v.contact_id = c.id AND v.phone_number_id = %s),
               clock_timestamp()
        FROM whatsapp_contacts c WHERE c.id = %s
        """,
        (phone_number_id, contact_id),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    found_id, opted_out, marketing_stopped, last_inbound_at, now = row
    return SendConsent(
        contact_id=int(found_id),
        opted_out=bool(opted_out),
        marketing_stopped=bool(marketing_stopped),
        last_inbound_at=last_inbound_at,
        now=now,
    )
