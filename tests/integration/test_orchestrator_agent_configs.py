"""The orchestrator reading agent configurations from PostgreSQL: a change made through one
instance reaches another within seconds, and each configuration's model, prompt, greeting,
fallback text and business hours (one away message per closed period) apply."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest

from shared_code.agent_configs import AgentConfigInput
from shared_code.bus.local_queue import LocalQueue
from shared_code.db.pool import Pool, open_pool
from shared_code.management.agents import create_agent, replace_agent
from shared_code.orchestrator.agent_catalog import AgentCatalog
from shared_code.orchestrator.agents import AgentSettings, TextReply
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.routing import InboundForRouting
from shared_code.secrets import Secret
from shared_code.whatsapp.graph_client import GraphApiClient
from tests.integration.inbound import store_text

pytestmark = pytest.mark.integration

PHONE_NUMBER_ID = "100000000000001"
USER = "15551239901"
ACTOR = "key:0123456789ab"
PARIS = ZoneInfo("Europe/Paris")
ENV = AgentSettings(
    default_agent="echo",
    openai_base_url="https://llm.test/v1",
    openai_model="env-model",
    openai_api_key=Secret("sk-test"),
    openai_system_prompt="env prompt",
)
OFFICE_HOURS = {
    "time_zone": "Europe/Paris",
    "weekly": {
        day: [{"open": "09:00", "close": "17:30"}]
        for day in ("monday", "tuesday", "wednesday", "thursday", "friday")
    },
    "away_message": "We are closed; back at 9:00.",
}


def agent(name: str, kind: str = "echo", **fields: Any) -> AgentConfigInput:
    return msgspec.convert({"name": name, "kind": kind, **fields}, AgentConfigInput)


def model_server(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible endpoint answering with its model and system prompt; the model
    named "broken" fails."""
    sent = json.loads(request.content)
    if sent["model"] == "broken":
        return httpx.Response(500, json={"error": "down"})
    answer = (
        f"{sent['model']} / {sent['messages'][0]['content']}: {sent['messages'][-1]['content']}"
    )
    return httpx.Response(200, json={"choices": [{"message": {"content": answer}}]})


class Instance:
    """One worker: its own pool, catalog and orchestrator, sharing the database."""

    def __init__(
        self,
        pool: Pool,
        bus: LocalQueue,
        http: httpx.AsyncClient,
        check_interval_seconds: float = 1.0,
    ) -> None:
        self.pool = pool
        self.catalog = AgentCatalog(
            pool=pool,
            settings=ENV,
            routing_rules=(),
            http=http,
            check_interval_seconds=check_interval_seconds,
        )
        self.orchestrator = Orchestrator(
            pool=pool,
            bus=bus,
            outbound_queue="outbound-messages",
            graph=GraphApiClient(
                base_url="https://graph.test",
                api_version="v23.0",
                access_token=Secret("token"),
                phone_number_id=PHONE_NUMBER_ID,
                http=http,
            ),
            catalog=self.catalog,
            timeout_seconds=5,
            fallback=TextReply(body="global fallback"),
            history_limit=10,
            mark_as_read=False,
        )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(model_server)) as client:
        yield client


@pytest.fixture
async def instance(pool: Pool, local_queue: LocalQueue, http: httpx.AsyncClient) -> Instance:
    # Checks on every message: these tests change a configuration and write at once.
    worker = Instance(pool, local_queue, http, check_interval_seconds=0)
    await worker.catalog.start()
    return worker


async def store(
    pool: Pool, wamid: str, text: str, written_at: datetime | None = None, user: str = USER
) -> InboundForRouting:
    return await store_text(pool, wamid, text, user=user, written_at=written_at, profile_name=None)


async def outbound_rows(pool: Pool) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT idempotency_key, agent, text_body, purpose FROM whatsapp_messages "
            "WHERE direction = 'outbound' ORDER BY id"
        )
        return await cursor.fetchall()


async def queued_count(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM local_bus_messages WHERE queue = 'outbound-messages'"
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_change_made_through_one_instance_reaches_another_within_seconds(
    database_url: str, local_queue: LocalQueue, http: httpx.AsyncClient
) -> None:
    pool_a = await open_pool(database_url, max_size=2, name="instance-a")
    pool_b = await open_pool(database_url, max_size=2, name="instance-b")
    try:
        a, b = Instance(pool_a, local_queue, http), Instance(pool_b, local_queue, http)
        await a.catalog.start()
        await b.catalog.start()
        await b.orchestrator.route(await store(pool_b, "wamid.c0", "price please?"))

        async with pool_a.connection() as conn:
            await create_agent(
                conn,
                agent(
                    "sales",
                    "openai",
                    model="sales-model",
                    system_prompt="You sell.",
                    routing_keywords=["price"],
                ),
                actor=ACTOR,
            )
        changed_at = time.monotonic()
        n = 0
        while True:
            n += 1
            await b.orchestrator.route(await store(pool_b, f"wamid.c{n}", "price please?"))
            if (await outbound_rows(pool_b))[-1][1] == "sales":
                break
            assert time.monotonic() - changed_at < 3, "instance B still uses the old agents"
            await _sleep(0.2)
        seen_after = time.monotonic() - changed_at

        # Now the other way round: B changes the prompt, A notices.
        async with pool_b.connection() as conn:
            await replace_agent(
                conn,
                "sales",
                agent(
                    "sales",
                    "openai",
                    model="sales-model-2",
                    system_prompt="You sell more.",
                    routing_keywords=["price"],
                ),
                actor=ACTOR,
            )
        await _sleep(1.1)
        await a.orchestrator.route(await store(pool_a, "wamid.last", "price again?"))
    finally:
        await pool_a.close()
        await pool_b.close()

    rows = await _rows(database_url)
    assert rows[0][1:3] == ("echo", "price please?")  # before the change: the default echo
    assert rows[n][1:3] == ("sales", "sales-model / You sell.: price please?")
    assert rows[-1][1:3] == ("sales", "sales-model-2 / You sell more.: price again?")
    assert seen_after < 3


async def test_greeting_once_before_the_first_answer_and_the_agents_own_fallback(
    pool: Pool, instance: Instance
) -> None:
    async with pool.connection() as conn:
        await replace_agent(
            conn,
            "echo",
            agent("echo", is_default=True, greeting="Welcome to Acme!"),
            actor=ACTOR,
        )
        await create_agent(
            conn,
            agent(
                "flaky",
                "openai",
                model="broken",
                routing_keywords=["ai"],
                fallback_text="Our assistant is resting.",
            ),
            actor=ACTOR,
        )
    first = await store(pool, "wamid.g1", "hello")
    await instance.orchestrator.route(first)
    await instance.orchestrator.route(replace(first, first_routing=False))  # a redelivery
    await instance.orchestrator.route(await store(pool, "wamid.g2", "again"))
    await instance.orchestrator.route(await store(pool, "wamid.g3", "ask the ai"))

    assert await outbound_rows(pool) == [
        (f"greeting:{first.conversation_id}", "echo", "Welcome to Acme!", "reply"),
        ("reply:wamid.g1", "echo", "hello", "reply"),
        ("reply:wamid.g2", "echo", "again", "reply"),
        ("reply:wamid.g3", "flaky", "Our assistant is resting.", "reply"),
    ]


async def test_outside_business_hours_one_away_message_per_closed_period_and_silence(
    pool: Pool, instance: Instance
) -> None:
    async with pool.connection() as conn:
        await replace_agent(
            conn, "echo", agent("echo", is_default=True, business_hours=OFFICE_HOURS), actor=ACTOR
        )
    saturday = await store(pool, "wamid.w1", "anyone?", datetime(2026, 6, 13, 11, 0, tzinfo=PARIS))
    await instance.orchestrator.route(saturday)
    await instance.orchestrator.route(replace(saturday, first_routing=False))  # redelivered
    await instance.orchestrator.route(
        await store(pool, "wamid.w2", "hello??", datetime(2026, 6, 14, 22, 0, tzinfo=PARIS))
    )
    monday = await store(
        pool, "wamid.w3", "good morning", datetime(2026, 6, 15, 10, 0, tzinfo=PARIS)
    )
    await instance.orchestrator.route(monday)
    await instance.orchestrator.route(
        await store(pool, "wamid.w4", "still there?", datetime(2026, 6, 15, 19, 0, tzinfo=PARIS))
    )

    conversation = saturday.conversation_id
    assert await outbound_rows(pool) == [
        (
            f"away:{conversation}:2026-06-12T15:30:00Z",
            "echo",
            OFFICE_HOURS["away_message"],
            "away_message",
        ),
        ("reply:wamid.w3", "echo", "good morning", "reply"),
        (
            f"away:{conversation}:2026-06-15T15:30:00Z",
            "echo",
            OFFICE_HOURS["away_message"],
            "away_message",
        ),
    ]
    assert await queued_count(pool) == 3
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT away_message_period_start FROM whatsapp_conversations WHERE id = %s",
            (conversation,),
        )
        assert await cursor.fetchone() == (datetime(2026, 6, 15, 15, 30, tzinfo=UTC),)


async def test_outside_business_hours_the_agent_may_answer_after_the_away_message(
    pool: Pool, instance: Instance
) -> None:
    always_closed = {"time_zone": "UTC", "away_message": "Closed.", "outside_hours": "answer"}
    async with pool.connection() as conn:
        await replace_agent(
            conn, "echo", agent("echo", is_default=True, business_hours=always_closed), actor=ACTOR
        )
    first = await store(pool, "wamid.a1", "one")
    await instance.orchestrator.route(first)
    await instance.orchestrator.route(await store(pool, "wamid.a2", "two"))

    assert await outbound_rows(pool) == [
        (f"away:{first.conversation_id}:always", "echo", "Closed.", "away_message"),
        ("reply:wamid.a1", "echo", "one", "reply"),
        ("reply:wamid.a2", "echo", "two", "reply"),
    ]
    assert await queued_count(pool) == 3  # the away row is not queued again for the second


async def test_disabled_and_unbuildable_agents_leave_their_messages_to_the_default(
    pool: Pool, instance: Instance
) -> None:
    async with pool.connection() as conn:
        # No AGENT_HTTP_SECRET in this environment: the http agent cannot be built.
        await create_agent(
            conn,
            agent(
                "platform",
                "http",
                routing_keywords=["platform"],
                settings={"url": "https://agents.test/hook"},
            ),
            actor=ACTOR,
        )
        await create_agent(
            conn,
            agent("resting", "openai", enabled=False, routing_keywords=["rest"]),
            actor=ACTOR,
        )
    await instance.orchestrator.route(await store(pool, "wamid.d1", "platform please"))
    await instance.orchestrator.route(await store(pool, "wamid.d2", "rest please"))
    lineup = await instance.catalog.current()

    assert [row[1] for row in await outbound_rows(pool)] == ["echo", "echo"]
    assert sorted(lineup.registry.names) == ["echo", "openai"]
    assert [rule.agent for rule in lineup.rules] == []


async def _rows(database_url: str) -> list[tuple[Any, ...]]:
    pool = await open_pool(database_url, max_size=2, name="check")
    try:
        return await outbound_rows(pool)
    finally:
        await pool.close()


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
