"""bench/management's loader at a tiny size: the counts it promises, and analytics from stored
days equal to analytics computed live on its realistic data (the bench times the stored path)."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import psycopg
import pytest

from bench.management.load import Size, load
from shared_code.db.pool import open_pool
from shared_code.management.analytics import analytics

pytestmark = pytest.mark.integration

TINY = Size(contacts=300, conversations=30, messages=3_000, webhook_events=40)


async def test_the_loader_and_analytics_on_its_data(database_url: str) -> None:
    loaded = load(database_url, TINY)

    with psycopg.connect(database_url) as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - fixed names
            for table in (
                "whatsapp_contacts",
                "whatsapp_conversations",
                "whatsapp_messages",
                "whatsapp_webhook_events",
            )
        ]
        statuses = conn.execute("SELECT count(*) FROM whatsapp_message_statuses").fetchone()
    assert counts == [(300,), (30,), (3_000,), (40,)]
    assert statuses is not None and statuses[0] > 0
    pool = await open_pool(database_url, max_size=4, name="tests")
    try:
        end = loaded.end
        start = end - timedelta(days=30, hours=5)
        live = await analytics(pool, start, end, now=end - timedelta(days=90))
        stored = await analytics(pool, start, end, now=end + timedelta(days=90))
        again = await analytics(pool, start, end, now=end + timedelta(days=90))
    finally:
        await pool.close()
    assert live.inbound + live.outbound > 1_000
    assert live.first_response.answered > 0
    assert msgspec.to_builtins(stored) == msgspec.to_builtins(live)
    assert msgspec.to_builtins(again) == msgspec.to_builtins(live)
