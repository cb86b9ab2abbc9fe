"""The orchestrator on real PostgreSQL and the local queue: agent choice, history, one reply per
message even when routing runs again, and the read receipt with typing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.db.pool import Pool
from shared_code.orchestrator.agent_routing import parse_routing_rules
from shared_code.orchestrator.agents import (
    AgentRegistry,
    AgentReply,
    AgentRequest,
    EchoAgent,
    TextReply,
)
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.routing import InboundForRouting
from shared_code.secrets import Secret
from shared_code.whatsapp.graph_client import GraphApiClient
from tests.integration.inbound import store_text

pytestmark = pytest.mark.integration

PHONE_NUMBER_ID = "100000000000001"
USER = "15551239900"


class RecordingAgent:
    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[AgentRequest] = []

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        self.requests.append(request)
        return TextReply(body=f"{self.name} answers")


@pytest.fixture
async def read_receipts() -> AsyncIterator[tuple[list[dict[str, object]], GraphApiClient]]:
    received: list[dict[str, object]] = []

    def meta(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content))
        return httpx.Response(200, json={"success": True})

    client = GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=PHONE_NUMBER_ID,
        http=httpx.AsyncClient(transport=httpx.MockTransport(meta)),
    )
    yield received, client
    await client.aclose()


async def store(pool: Pool, wamid: str, text: str, minutes_ago: int) -> InboundForRouting:
    written_at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return await store_text(
        pool, wamid, text, user=USER, written_at=written_at, first_routing=False
    )


def orchestrator(
    pool: Pool,
    bus: LocalQueue,
    graph: GraphApiClient,
    agents: AgentRegistry,
    rules: str = "",
    history_limit: int = 10,
) -> Orchestrator:
    return Orchestrator(
        pool=pool,
        bus=bus,
        outbound_queue="outbound-messages",
        graph=graph,
        agents=agents,
        routing_rules=parse_routing_rules(rules),
        timeout_seconds=5,
        fallback=TextReply(body="fallback"),
        history_limit=history_limit,
    )


async def outbound_rows(pool: Pool) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT idempotency_key, agent, text_body, status, content->>'to' FROM whatsapp_messages "
            "WHERE direction = 'outbound' ORDER BY id"
        )
        return await cursor.fetchall()


async def queued(pool: Pool) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT message_id, session_id FROM local_bus_messages WHERE queue = 'outbound-messages'"
        )
        return await cursor.fetchall()


async def test_one_reply_per_message_even_when_routed_twice(
    pool: Pool,
    local_queue: LocalQueue,
    read_receipts: tuple[list[dict[str, object]], GraphApiClient],
) -> None:
    receipts, graph = read_receipts
    agent = RecordingAgent("echo")
    subject = orchestrator(pool, local_queue, graph, AgentRegistry({"echo": agent}, "echo"))
    message = await store(pool, "wamid.once", "hello", minutes_ago=0)

    await subject.route(message)
    await subject.route(message)  # a redelivery after a crash between publish and mark_routed

    assert len(agent.requests) == 1
    assert await outbound_rows(pool) == [
        ("reply:wamid.once", "echo", "echo answers", "pending", USER)
    ]
    [(message_id, session_id)] = await queued(pool)
    assert str(message_id).startswith("outbound:")
    assert session_id == f"{PHONE_NUMBER_ID}:{USER}"
    assert receipts == [
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.once",
            "typing_indicator": {"type": "text"},
        }
    ]


async def test_a_first_routing_skips_the_lookup_yet_a_repeat_still_makes_one_reply(
    pool: Pool,
    local_queue: LocalQueue,
    read_receipts: tuple[list[dict[str, object]], GraphApiClient],
) -> None:
    _, graph = read_receipts
    agent = RecordingAgent("echo")
    subject = orchestrator(pool, local_queue, graph, AgentRegistry({"echo": agent}, "echo"))
    message = replace(await store(pool, "wamid.fresh", "hello", minutes_ago=0), first_routing=True)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_conversations SET last_message_at = now() - interval '1 hour'"
        )

    await subject.route(message)
    # Told (wrongly) that it is new a second time, the agent runs again; the reply row's key
    # still makes it one reply, and the bus drops the repeated message id.
    await subject.route(message)

    assert len(agent.requests) == 2
    assert await outbound_rows(pool) == [
        ("reply:wamid.fresh", "echo", "echo answers", "pending", USER)
    ]
    assert len(await queued(pool)) == 1
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT last_message_at > now() - interval '1 minute' FROM whatsapp_conversations"
        )
        assert await cursor.fetchone() == (True,)  # the reply touched its conversation


async def test_the_agent_gets_the_contact_and_the_history_in_order(
    pool: Pool,
    local_queue: LocalQueue,
    read_receipts: tuple[list[dict[str, object]], GraphApiClient],
) -> None:
    _, graph = read_receipts
    agent = RecordingAgent("echo")
    subject = orchestrator(pool, local_queue, graph, AgentRegistry({"echo": agent}, "echo"))
    first = await store(pool, "wamid.h1", "first", minutes_ago=3)
    await subject.route(first)
    second = await store(pool, "wamid.h2", "second", minutes_ago=1)
    await subject.route(second)

    request = agent.requests[-1]
    assert request.contact.wa_id == USER
    assert request.contact.profile_name == "Ana"
    assert request.message.text == "second"
    assert [(h.direction, h.text) for h in request.history] == [
        ("inbound", "first"),
        ("outbound", "echo answers"),
    ]


async def test_the_history_is_the_most_recent_messages_oldest_first(
    pool: Pool,
    local_queue: LocalQueue,
    read_receipts: tuple[list[dict[str, object]], GraphApiClient],
) -> None:
    _, graph = read_receipts
    agent = RecordingAgent("echo")
    subject = orchestrator(
        pool, local_queue, graph, AgentRegistry({"echo": agent}, "echo"), history_limit=3
    )
    for n in range(3):
        await subject.route(await store(pool, f"wamid.n{n}", f"text {n}", minutes_ago=10 - n))

    assert agent.requests[0].history == []  # a first message has no history
    assert [(h.direction, h.text) for h in agent.requests[-1].history] == [
        ("outbound", "echo answers"),  # of text 0; text 0 itself is past the limit
        ("inbound", "text 1"),
        ("outbound", "echo answers"),
    ]


async def test_routing_rules_pick_and_assign_the_agent(
    pool: Pool,
    local_queue: LocalQueue,
    read_receipts: tuple[list[dict[str, object]], GraphApiClient],
) -> None:
    _, graph = read_receipts
    sales = RecordingAgent("sales")
    registry = AgentRegistry({"echo": EchoAgent(), "sales": sales}, "echo")
    subject = orchestrator(
        pool,
        local_queue,
        graph,
        registry,
        '[{"agent": "sales", "keywords": ["price"], "assign": true}]',
    )
    await subject.route(await store(pool, "wamid.r1", "what is the price?", minutes_ago=2))
    # No keyword any more, but the conversation now belongs to the sales agent.
    await subject.route(await store(pool, "wamid.r2", "and shipping?", minutes_ago=1))

    assert [r.message.text for r in sales.requests] == ["what is the price?", "and shipping?"]
    assert [row[1] for row in await outbound_rows(pool)] == ["sales", "sales"]


async def test_a_read_receipt_failure_does_not_stop_the_reply(
    pool: Pool, local_queue: LocalQueue
) -> None:
    graph = GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=PHONE_NUMBER_ID,
        http=httpx.AsyncClient(
            transport=httpx.MockTransport(lambda request: httpx.Response(400, json={}))
        ),
    )
    subject = orchestrator(pool, local_queue, graph, AgentRegistry({"echo": EchoAgent()}, "echo"))
    await subject.route(await store(pool, "wamid.nr", "hi", minutes_ago=0))
    await graph.aclose()
    assert [row[2] for row in await outbound_rows(pool)] == ["hi"]
