"""Retention on real PostgreSQL with backdated rows: what is older than the period goes, in
batches, and nothing younger; replies outlive the messages they answered."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from shared_code.db.pool import Pool
from shared_code.retention import purge_expired

pytestmark = pytest.mark.integration

PHONE_NUMBER_ID = "100000000000001"


async def execute(pool: Pool, sql: str, *args: object) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, args)
        return await cursor.fetchall() if cursor.description else []


async def seed(pool: Pool) -> dict[str, int]:
    """Per table, rows 100 days old and rows 10 days old; returns some ids."""
    [(contact_id,)] = await execute(
        pool, "INSERT INTO whatsapp_contacts (wa_id) VALUES ('15551230001') RETURNING id"
    )
    [(old_conversation,)] = await execute(
        pool,
        "INSERT INTO whatsapp_conversations (phone_number_id, contact_id, status, closed_at, "
        "created_at) VALUES (%s, %s, 'closed', now() - interval '95 days', "
        "now() - interval '100 days') RETURNING id",
        PHONE_NUMBER_ID,
        contact_id,
    )
    # Closed long ago too, but one of its messages is recent: it stays.
    [(mixed_conversation,)] = await execute(
        pool,
        "INSERT INTO whatsapp_conversations (phone_number_id, contact_id, status, closed_at) "
        "VALUES (%s, %s, 'closed', now() - interval '95 days') RETURNING id",
        PHONE_NUMBER_ID,
        contact_id,
    )
    [(current_conversation,)] = await execute(
        pool,
        "INSERT INTO whatsapp_conversations (phone_number_id, contact_id, created_at) "
        "VALUES (%s, %s, now() - interval '100 days') RETURNING id",
        PHONE_NUMBER_ID,
        contact_id,
    )
    old_ids = []
    for n in range(5):
        [(message_id,)] = await execute(
            pool,
            "INSERT INTO whatsapp_messages (conversation_id, direction, wamid, phone_number_id, "
            "contact_wa_id, message_type, content, status, created_at) VALUES "
            "(%s, 'inbound', %s, %s, '15551230001', 'text', '{}', 'received', "
            "now() - interval '100 days') RETURNING id",
            old_conversation if n < 3 else current_conversation,
            f"wamid.old{n}",
            PHONE_NUMBER_ID,
        )
        old_ids.append(message_id)
    # A recent reply to an old message: it stays, its reference goes.
    [(reply_id,)] = await execute(
        pool,
        "INSERT INTO whatsapp_messages (conversation_id, direction, phone_number_id, "
        "contact_wa_id, message_type, content, status, reply_to_message_id, created_at) VALUES "
        "(%s, 'outbound', %s, '15551230001', 'text', '{}', 'sent', %s, "
        "now() - interval '10 days') RETURNING id",
        mixed_conversation,
        PHONE_NUMBER_ID,
        old_ids[3],
    )
    for n in range(3):
        for age in ("100 days", "10 days"):
            await execute(
                pool,
                "INSERT INTO whatsapp_message_statuses (wamid, status, payload, received_at) "
                "VALUES (%s, 'sent', '{}', now() - %s::interval)",
                f"wamid.s{n}.{age}",
                age,
            )
            body = f"{n}{age}".encode()
            await execute(
                pool,
                "INSERT INTO whatsapp_webhook_events (body, body_sha256, status, received_at) "
                "VALUES (%s, %s, 'published', now() - %s::interval)",
                body,
                hashlib.sha256(body).digest(),
                age,
            )
            await execute(
                pool,
                "INSERT INTO whatsapp_event_failures (stage, reason, event_key, last_failed_at) "
                "VALUES ('process', 'test', %s, now() - %s::interval)",
                f"key{n}{age}",
                age,
            )
    return {
        "contact": contact_id,
        "old_conversation": old_conversation,
        "mixed_conversation": mixed_conversation,
        "current_conversation": current_conversation,
        "reply": reply_id,
    }


async def count(pool: Pool, table: str) -> int:
    [(n,)] = await execute(pool, f"SELECT count(*) FROM {table}")  # noqa: S608 - test constant
    return int(n)


async def test_rows_older_than_the_period_go_in_batches_and_younger_ones_stay(pool: Pool) -> None:
    ids = await seed(pool)

    report = await purge_expired(pool, retention_days=90, batch_size=2)

    assert report.complete
    assert report.deleted == {
        "messages": 5,
        "message_statuses": 3,
        "webhook_events": 3,
        "event_failures": 3,
        "conversations": 1,
    }
    assert await count(pool, "whatsapp_messages") == 1
    assert await count(pool, "whatsapp_message_statuses") == 3
    assert await count(pool, "whatsapp_webhook_events") == 3
    assert await count(pool, "whatsapp_event_failures") == 3
    assert await execute(pool, "SELECT id FROM whatsapp_conversations ORDER BY id") == [
        (ids["mixed_conversation"],),
        (ids["current_conversation"],),  # not closed: kept, even with no message left
    ]
    assert await execute(pool, "SELECT id, reply_to_message_id FROM whatsapp_messages") == [
        (ids["reply"], None)
    ]
    assert await count(pool, "whatsapp_contacts") == 1
    # A second run finds nothing more.
    again = await purge_expired(pool, retention_days=90, batch_size=2)
    assert again.total == 0


async def test_a_run_out_of_time_stops_and_the_next_one_goes_on(pool: Pool) -> None:
    await seed(pool)
    stopped = await purge_expired(pool, retention_days=90, batch_size=2, time_budget_seconds=-1)
    assert not stopped.complete
    assert stopped.total == 0
    finished = await purge_expired(pool, retention_days=90, batch_size=2)
    assert finished.complete and finished.deleted["messages"] == 5


async def test_a_longer_period_keeps_everything(pool: Pool) -> None:
    await seed(pool)
    report = await purge_expired(pool, retention_days=365)
    assert report.total == 0
    assert await count(pool, "whatsapp_messages") == 6
