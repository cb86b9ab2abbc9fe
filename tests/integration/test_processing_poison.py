"""Poison on the inbound queue (issue 12): stored where it can be, the user answered, the reason
recorded — never a failure on every delivery until the dead-letter queue, in silence.

Before, a queued text containing NUL raised DataError on every delivery; an event the processor
could not decode was logged and dropped without a trace in the database and without a reply.
"""

from __future__ import annotations

import json

import httpx
import psycopg
import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.bus.port import PublishError
from shared_code.db.pool import Pool
from shared_code.orchestrator.agents import AgentRegistry
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.processing import EventProcessor, Outcome
from shared_code.redelivery import is_transient
from shared_code.routing import InboundForRouting
from shared_code.secrets import Secret
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.payloads import PayloadError
from tests.integration.test_orchestrator import RecordingAgent, orchestrator
from tests.integration.test_processing import PHONE_NUMBER_ID, USER, fetch, text_event

pytestmark = pytest.mark.integration


@pytest.fixture
async def graph() -> GraphApiClient:
    # Read receipts only (the sender is not part of these tests): Meta says yes.
    return GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=PHONE_NUMBER_ID,
        http=httpx.AsyncClient(
            transport=httpx.MockTransport(lambda _: httpx.Response(200, json={"success": True}))
        ),
    )


@pytest.fixture
def agent() -> RecordingAgent:
    return RecordingAgent("echo")


@pytest.fixture
def router(
    pool: Pool, local_queue: LocalQueue, graph: GraphApiClient, agent: RecordingAgent
) -> Orchestrator:
    return orchestrator(pool, local_queue, graph, AgentRegistry({"echo": agent}, "echo"))


def envelope_of(body: bytes) -> dict[str, object]:
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


async def replies(pool: Pool) -> list[tuple[object, ...]]:
    return await fetch(
        pool,
        "SELECT idempotency_key, agent, text_body FROM whatsapp_messages "
        "WHERE direction = 'outbound' ORDER BY id",
    )


async def failures(pool: Pool) -> list[tuple[object, ...]]:
    return await fetch(
        pool,
        "SELECT stage, kind, event_key, reason, fallback_queued, attempts "
        "FROM whatsapp_event_failures ORDER BY id",
    )


async def test_a_queued_text_with_nul_is_stored_and_answered(
    pool: Pool, router: Orchestrator, agent: RecordingAgent
) -> None:
    # As an envelope queued before the intake repaired them would carry it.
    body = text_event(text="MARK").replace(b"MARK", b"a\\u0000b")
    assert b"\\u0000" in body

    outcome = await EventProcessor(pool, router).handle(body)

    assert outcome is Outcome.STORED
    [(text,)] = await fetch(
        pool, "SELECT text_body FROM whatsapp_messages WHERE direction = 'inbound'"
    )
    assert text == "a\ufffdb"
    assert [request.message.text for request in agent.requests] == ["a\ufffdb"]
    assert len(await replies(pool)) == 1
    assert await failures(pool) == []


async def test_an_undecodable_message_gets_the_fallback_and_its_reason_is_recorded(
    pool: Pool, router: Orchestrator, agent: RecordingAgent
) -> None:
    envelope = envelope_of(text_event())
    message = envelope["message"]
    assert isinstance(message, dict)
    message["timestamp"] = "soon"
    wamid = message["id"]
    body = json.dumps(envelope).encode()
    processor = EventProcessor(pool, router)

    assert await processor.handle(body) is Outcome.REJECTED
    assert await processor.handle(body) is Outcome.REJECTED  # a redelivery: still one reply

    assert agent.requests == []
    assert await replies(pool) == [(f"reply:{wamid}", None, "fallback")]
    [(stage, kind, key, reason, fallback_queued, attempts)] = await failures(pool)
    assert (stage, kind, key, fallback_queued, attempts) == (
        "process",
        "message",
        wamid,
        True,
        2,
    )
    assert "timestamp" in str(reason)
    [(content,)] = await fetch(
        pool, "SELECT content FROM whatsapp_messages WHERE direction = 'inbound'"
    )
    assert isinstance(content, dict) and "timestamp" in content["unprocessable"]


class BuggyRouter:
    """Routing that fails on this input the same way every time (a bug, not an outage)."""

    def __init__(self, inner: Orchestrator) -> None:
        self.inner = inner

    async def route(self, message: InboundForRouting) -> None:
        if not message.fallback_only:
            raise KeyError("a bug on this input")
        await self.inner.route(message)


async def test_a_message_routing_fails_on_for_good_still_gets_the_fallback(
    pool: Pool, router: Orchestrator
) -> None:
    outcome = await EventProcessor(pool, BuggyRouter(router)).handle(text_event())
    assert outcome is Outcome.REJECTED
    [(key, agent_name, text)] = await replies(pool)
    assert (agent_name, text) == (None, "fallback")
    [(_, _, failed_key, reason, fallback_queued, _)] = await failures(pool)
    assert (failed_key, reason, fallback_queued) == (
        str(key).removeprefix("reply:"),
        "KeyError",
        True,
    )
    # The original row stays (with its text); it is marked routed, so a redelivery does nothing.
    [(routed,)] = await fetch(
        pool, "SELECT routed_at IS NOT NULL FROM whatsapp_messages WHERE direction = 'inbound'"
    )
    assert routed


async def test_an_unreadable_event_is_recorded_without_a_reply(
    pool: Pool, router: Orchestrator
) -> None:
    assert await EventProcessor(pool, router).handle(b"{not json") is Outcome.REJECTED
    [(stage, kind, key, reason, fallback_queued, _)] = await failures(pool)
    assert (stage, kind, key, fallback_queued) == ("process", None, None, False)
    assert "not valid JSON" in str(reason)
    assert await replies(pool) == []


async def test_an_outage_is_not_poison_it_raises_for_a_redelivery(pool: Pool) -> None:
    class DownRouter:
        async def route(self, message: InboundForRouting) -> None:
            raise psycopg.OperationalError("connection lost")

    with pytest.raises(psycopg.OperationalError):
        await EventProcessor(pool, DownRouter()).handle(text_event(sender=USER))
    assert await failures(pool) == []


def test_which_errors_a_redelivery_can_cure() -> None:
    assert is_transient(psycopg.OperationalError())
    assert is_transient(TimeoutError())
    assert is_transient(PublishError("broker down"))
    assert is_transient(RuntimeError("unknown"))
    assert not is_transient(PublishError("too large", permanent=True))
    assert not is_transient(psycopg.DataError())
    assert not is_transient(PayloadError("message.timestamp: not a time"))
    assert not is_transient(RecursionError())
