"""The sender on real PostgreSQL and the real local queue, with Meta's answers scripted at the
HTTP boundary (httpx.MockTransport): once, in order, back-off as scheduled messages, ambiguity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.db import conversations, outbound, statuses
from shared_code.db.pool import Pool
from shared_code.ratelimit import Decision, RateLimiter, RateLimitPolicy, RateLimits
from shared_code.retry_policy import RetryPolicy
from shared_code.secrets import Secret
from shared_code.sending import (
    OutboundSender,
    SendAttemptsExhausted,
    SendOutcome,
    outbound_bus_message,
)
from shared_code.whatsapp.graph_client import GraphApiClient

pytestmark = pytest.mark.integration

PHONE_NUMBER_ID = "100000000000001"
USER = "15551230077"
QUEUE = "outbound-messages"

Reply = httpx.Response | Exception


def meta_error(code: int, status: int = 400, title: str = "error") -> httpx.Response:
    body = {"error": {"message": title, "type": "OAuthException", "code": code, "fbtrace_id": "x"}}
    return httpx.Response(status, json=body)


def accepted(wamid: str) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": USER, "wa_id": USER}],
            "messages": [{"id": wamid}],
        },
    )


class ScriptedGraph:
    """Meta's side: answers send requests from a script, records every request body."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self._count = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        self._count += 1
        reply = self.script.pop(0) if self.script else accepted(f"wamid.auto{self._count}")
        if isinstance(reply, Exception):
            raise reply
        return reply


@pytest.fixture
async def graph() -> AsyncIterator[tuple[ScriptedGraph, GraphApiClient]]:
    meta = ScriptedGraph()
    client = GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=PHONE_NUMBER_ID,
        http=httpx.AsyncClient(transport=httpx.MockTransport(meta.handler)),
    )
    yield meta, client
    await client.aclose()


def make_sender(
    pool: Pool,
    bus: LocalQueue,
    client: GraphApiClient,
    *,
    limits: RateLimits | None = None,
    limiter: RateLimiter | None = None,
    policy: RetryPolicy | None = None,
) -> OutboundSender:
    return OutboundSender(
        pool=pool,
        bus=bus,
        queue=QUEUE,
        graph=client,
        limiter=limiter or RateLimiter(pool, RateLimitPolicy(default=limits or RateLimits())),
        policy=policy or RetryPolicy(backoff_base_seconds=1.0, confirmation_wait_seconds=30.0),
    )


async def new_reply(pool: Pool, text: str = "hi", key: str | None = None, user: str = USER) -> int:
    """An inbound message (so contact and conversation exist) and an outbound reply row."""
    wamid = f"wamid.in.{key or text}"
    async with pool.connection() as conn, conn.transaction():
        stored = await conversations.store_inbound(
            conn,
            conversations.InboundMessageRow(
                wamid=wamid,
                phone_number_id=PHONE_NUMBER_ID,
                contact_wa_id=user,
                profile_name="Ana",
                message_type="text",
                text_body="question",
                content={},
                context_wamid=None,
                whatsapp_timestamp=datetime.now(UTC),
            ),
        )
        conversation_id = (
            stored.conversation_id
            if stored is not None
            else (await conversations.find_inbound(conn, wamid)).conversation_id  # type: ignore[union-attr]
        )
        row_id, _ = await outbound.insert_outbound(
            conn,
            outbound.NewOutbound(
                conversation_id=conversation_id,
                phone_number_id=PHONE_NUMBER_ID,
                contact_wa_id=user,
                message_type="text",
                text_body=text,
                content={
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": user,
                    "type": "text",
                    "text": {"body": text},
                },
                idempotency_key=f"reply:{wamid}",
            ),
        )
    return row_id


def request_for(row_id: int) -> bytes:
    return json.dumps({"outbound_message_id": row_id}).encode()


async def row(pool: Pool, row_id: int) -> dict[str, Any]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT wamid, status, error_code, error_title, send_attempts, send_started_at, "
            "requeue_count, gave_up_at FROM whatsapp_messages WHERE id = %s",
            (row_id,),
        )
        found = await cursor.fetchone()
        assert found is not None
        names = [d.name for d in cursor.description or []]
        return dict(zip(names, found, strict=True))


async def queued(pool: Pool) -> list[tuple[str, bool]]:
    """(message id, scheduled in the future) of every message waiting on the outbound queue."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT message_id, visible_at > now() FROM local_bus_messages WHERE queue = %s "
            "ORDER BY sequence_number",
            (QUEUE,),
        )
        return [(str(m), bool(f)) for m, f in await cursor.fetchall()]


Setup = Callable[..., OutboundSender]


async def test_a_reply_is_sent_once_with_its_callback_data(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [accepted("wamid.out1")]
    sender = make_sender(pool, local_queue, client)
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.SENT
    assert await sender.handle(request_for(row_id)) is SendOutcome.ALREADY_SETTLED

    assert len(meta.requests) == 1
    assert meta.requests[0]["biz_opaque_callback_data"] == f"outbound:{row_id}"
    state = await row(pool, row_id)
    assert state["wamid"] == "wamid.out1"
    assert state["status"] == "sent"
    assert state["send_attempts"] == 1
    assert state["send_started_at"] is None


async def test_a_server_error_requeues_with_a_scheduled_copy_then_sends(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [meta_error(131000, status=500), accepted("wamid.out2")]
    sender = make_sender(pool, local_queue, client)
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.REQUEUED
    state = await row(pool, row_id)
    assert (state["wamid"], state["status"], state["error_code"]) == (None, "pending", 131000)
    assert state["send_started_at"] is None  # the outcome was known: not ambiguous
    assert await queued(pool) == [(f"outbound:{row_id}:1", True)]

    # The scheduled copy, delivered when due.
    assert await sender.handle(request_for(row_id)) is SendOutcome.SENT
    assert (await row(pool, row_id))["wamid"] == "wamid.out2"
    assert len(meta.requests) == 2


async def test_throttling_backs_off_and_slows_every_sender(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [meta_error(130429, title="Rate limit hit")]
    sender = make_sender(pool, local_queue, client)
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.REQUEUED
    assert (await row(pool, row_id))["error_code"] == 130429
    limiter = RateLimiter(pool, RateLimitPolicy())
    decision = await limiter.acquire(PHONE_NUMBER_ID, "15550000000")
    assert not decision.allowed  # report_throttled paused the number for everyone


@pytest.mark.parametrize(
    ("code", "title"), [(131047, "Re-engagement message"), (131026, "Undeliverable")]
)
async def test_a_permanent_error_fails_with_the_code_and_is_not_retried(
    pool: Pool,
    local_queue: LocalQueue,
    graph: tuple[ScriptedGraph, GraphApiClient],
    code: int,
    title: str,
) -> None:
    meta, client = graph
    meta.script = [meta_error(code, title=title)]
    sender = make_sender(pool, local_queue, client)
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.FAILED
    state = await row(pool, row_id)
    assert (state["status"], state["error_code"], state["error_title"]) == ("failed", code, title)
    assert await queued(pool) == []
    assert await sender.handle(request_for(row_id)) is SendOutcome.ALREADY_SETTLED
    assert len(meta.requests) == 1


async def test_a_timeout_after_the_request_left_waits_for_a_status_instead_of_resending(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [httpx.ReadTimeout("no answer")]
    sender = make_sender(pool, local_queue, client)
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.AWAITING_CONFIRMATION
    assert (await row(pool, row_id))["send_started_at"] is not None
    # The re-check arrives before any status: still waiting, still one request.
    assert await sender.handle(request_for(row_id)) is SendOutcome.REQUEUED
    # Meta's "sent" webhook echoes our callback data with the wamid we never saw.
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO whatsapp_message_statuses (wamid, status, biz_opaque_callback_data, payload) "
            "VALUES ('wamid.late', 'sent', %s, '{}')",
            (f"outbound:{row_id}",),
        )
        await conn.execute(
            "UPDATE whatsapp_messages SET next_attempt_at = now() WHERE id = %s", (row_id,)
        )
    assert await sender.handle(request_for(row_id)) is SendOutcome.CONFIRMED_BY_STATUS
    state = await row(pool, row_id)
    assert (state["wamid"], state["status"]) == ("wamid.late", "sent")
    assert len(meta.requests) == 1


async def test_an_ambiguous_send_without_any_status_is_sent_again_after_the_wait(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [httpx.ReadTimeout("no answer"), accepted("wamid.second")]
    sender = make_sender(
        pool, local_queue, client, policy=RetryPolicy(confirmation_wait_seconds=0.05)
    )
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.AWAITING_CONFIRMATION
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_messages SET next_attempt_at = now(), "
            "send_started_at = now() - interval '1 second' WHERE id = %s",
            (row_id,),
        )
    assert await sender.handle(request_for(row_id)) is SendOutcome.SENT
    assert (await row(pool, row_id))["wamid"] == "wamid.second"
    assert len(meta.requests) == 2


async def test_a_send_interrupted_by_a_crash_waits_twice_the_downtime_for_its_status(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    # Issue 12: a worker killed right after Meta accepted a send came back 50 s later; the
    # statuses Meta posted meanwhile were still on their way back (Meta's retry pauses grow with
    # the outage), yet the reply was sent again at once because its 30 s wait had "run out".
    meta, client = graph
    meta.script = [accepted("wamid.resent")]
    sender = make_sender(pool, local_queue, client)  # confirmation wait 30 s
    row_id = await new_reply(pool)
    async with pool.connection() as conn:
        # What begin_attempts left behind: the request was out, no wait was ever scheduled.
        await conn.execute(
            "UPDATE whatsapp_messages SET send_attempts = 1, "
            "send_started_at = now() - interval '50 seconds' WHERE id = %s",
            (row_id,),
        )

    assert await sender.handle(request_for(row_id)) is SendOutcome.AWAITING_CONFIRMATION
    state = await row(pool, row_id)
    assert state["send_started_at"] is not None
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT extract(epoch FROM next_attempt_at - now()) FROM whatsapp_messages "
            "WHERE id = %s",
            (row_id,),
        )
        [(wait,)] = await cursor.fetchall()
    assert 95 <= float(wait) <= 101  # twice the 50 s downtime, not the 30 s wait
    assert meta.requests == []

    # Meta's retried "sent" webhook arrives within that wait: the send is confirmed, not repeated.
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO whatsapp_message_statuses (wamid, status, biz_opaque_callback_data, payload) "
            "VALUES ('wamid.first', 'sent', %s, '{}')",
            (f"outbound:{row_id}",),
        )
        await conn.execute(
            "UPDATE whatsapp_messages SET next_attempt_at = now() WHERE id = %s", (row_id,)
        )
    assert await sender.handle(request_for(row_id)) is SendOutcome.CONFIRMED_BY_STATUS
    assert (await row(pool, row_id))["wamid"] == "wamid.first"
    assert meta.requests == []


async def test_an_interrupted_send_is_sent_again_once_its_longer_wait_passes_in_silence(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [accepted("wamid.second")]
    sender = make_sender(
        pool,
        local_queue,
        client,
        policy=RetryPolicy(confirmation_wait_seconds=30.0, confirmation_max_wait_seconds=40.0),
    )
    row_id = await new_reply(pool)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_messages SET send_attempts = 1, "
            "send_started_at = now() - interval '10 minutes' WHERE id = %s",
            (row_id,),
        )
    assert await sender.handle(request_for(row_id)) is SendOutcome.AWAITING_CONFIRMATION
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT extract(epoch FROM next_attempt_at - now()) FROM whatsapp_messages "
            "WHERE id = %s",
            (row_id,),
        )
        [(wait,)] = await cursor.fetchall()
        assert 38 <= float(wait) <= 41  # capped
        await conn.execute(
            "UPDATE whatsapp_messages SET next_attempt_at = now() WHERE id = %s", (row_id,)
        )
    assert await sender.handle(request_for(row_id)) is SendOutcome.SENT
    assert len(meta.requests) == 1


async def test_a_wamid_the_database_could_not_take_is_recorded_once_it_is_back(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    # Issue 12 (fault suite, 45-s outages): Meta accepted the send, recording its wamid hit the
    # outage, and the row waited for a status the same outage held back: sent twice. The wamid
    # is in hand: the sender keeps trying to record it instead.
    meta, client = graph
    meta.script = [accepted("wamid.kept")]

    class OutageSender(OutboundSender):
        failures = 2

        async def _record_sends(self, sends: Sequence[tuple[int, str]]) -> list[None]:
            if self.failures:
                self.failures -= 1
                raise psycopg.OperationalError("the database is down")
            return await super()._record_sends(sends)

    sender = OutageSender(
        pool=pool,
        bus=local_queue,
        queue=QUEUE,
        graph=client,
        limiter=RateLimiter(pool, RateLimitPolicy(default=RateLimits())),
        policy=RetryPolicy(record_sent_within_seconds=30),
    )
    row_id = await new_reply(pool)
    assert await sender.handle(request_for(row_id)) is SendOutcome.SENT
    state = await row(pool, row_id)
    assert (state["wamid"], state["status"], state["send_started_at"]) == (
        "wamid.kept",
        "sent",
        None,
    )
    assert len(meta.requests) == 1


async def test_a_connect_error_is_not_ambiguous(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [httpx.ConnectError("refused")]
    sender = make_sender(pool, local_queue, client)
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.REQUEUED
    assert (await row(pool, row_id))["send_started_at"] is None


async def test_after_the_last_attempt_the_row_fails_and_the_message_is_refused(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [meta_error(131000, status=500), meta_error(2, status=503)]
    sender = make_sender(pool, local_queue, client, policy=RetryPolicy(max_attempts=2))
    row_id = await new_reply(pool)

    assert await sender.handle(request_for(row_id)) is SendOutcome.REQUEUED
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_messages SET next_attempt_at = now() WHERE id = %s", (row_id,)
        )
    with pytest.raises(SendAttemptsExhausted):
        await sender.handle(request_for(row_id))
    state = await row(pool, row_id)
    assert state["status"] == "failed"
    assert state["error_code"] == 2
    assert "gave up after 2 attempts" in state["error_title"]
    assert state["gave_up_at"] is not None
    # Every later delivery refuses too, so the broker dead-letters the message.
    with pytest.raises(SendAttemptsExhausted):
        await sender.handle(request_for(row_id))
    assert len(meta.requests) == 2


async def test_a_later_reply_waits_for_an_earlier_one(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    meta.script = [meta_error(131000, status=500)]
    sender = make_sender(pool, local_queue, client)
    first = await new_reply(pool, "first")
    second = await new_reply(pool, "second")

    assert await sender.handle(request_for(first)) is SendOutcome.REQUEUED
    assert await sender.handle(request_for(second)) is SendOutcome.WAITING_FOR_EARLIER
    assert [r["text"]["body"] for r in meta.requests] == ["first"]
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_messages SET next_attempt_at = now() WHERE id = ANY(%s)",
            ([first, second],),
        )
    assert await sender.handle(request_for(first)) is SendOutcome.SENT
    assert await sender.handle(request_for(second)) is SendOutcome.SENT
    assert [r["text"]["body"] for r in meta.requests] == ["first", "first", "second"]


async def test_our_rate_limit_requeues_instead_of_sending(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    sender = make_sender(
        pool, local_queue, client, limits=RateLimits(per_second=80, per_minute=1000, per_day=1)
    )
    first = await new_reply(pool, "one")
    second = await new_reply(pool, "two")

    assert await sender.handle(request_for(first)) is SendOutcome.SENT
    assert await sender.handle(request_for(second)) is SendOutcome.RATE_LIMITED
    assert len(meta.requests) == 1
    assert await queued(pool) == [(f"outbound:{second}:1", True)]
    assert (await row(pool, second))["send_attempts"] == 0  # not an attempt: nothing was sent


async def test_unknown_and_unreadable_requests_are_dropped(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    _, client = graph
    sender = make_sender(pool, local_queue, client)
    assert await sender.handle(b"not json") is SendOutcome.UNREADABLE
    assert await sender.handle(request_for(999_999)) is SendOutcome.NOT_FOUND


# --- the rate-limit charge made while loading the row ------------------------------------------


def full_request_for(row_id: int, user: str = USER) -> bytes:
    """The body the orchestrator publishes: the row, and its number and user."""
    return outbound_bus_message(row_id, phone_number_id=PHONE_NUMBER_ID, contact_wa_id=user).body


async def minute_tokens_used(pool: Pool, limits: RateLimits) -> float:
    usage = await RateLimiter(pool, RateLimitPolicy(default=limits)).usage(PHONE_NUMBER_ID)
    return usage.minute.used


async def test_a_request_naming_number_and_user_is_charged_once_while_its_row_loads(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    limits = RateLimits(per_minute=100)
    sender = make_sender(pool, local_queue, client, limits=limits)
    row_id = await new_reply(pool)

    assert await sender.handle(full_request_for(row_id)) is SendOutcome.SENT
    assert 0.9 < await minute_tokens_used(pool, limits) < 1.5  # one send, one token
    # Settled now: loading it again charges nothing.
    assert await sender.handle(full_request_for(row_id)) is SendOutcome.ALREADY_SETTLED
    assert 0.9 < await minute_tokens_used(pool, limits) < 1.5
    assert len(meta.requests) == 1


async def test_a_refusal_taken_while_loading_re_queues_like_any_other(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    meta, client = graph
    # Pair bucket of one send per 6 s: the second reply to the same user must wait.
    sender = make_sender(pool, local_queue, client, limits=RateLimits(pair_burst=2))
    first, second = await new_reply(pool, "one"), await new_reply(pool, "two")

    assert await sender.handle(full_request_for(first)) is SendOutcome.SENT
    assert await sender.handle(full_request_for(second)) is SendOutcome.RATE_LIMITED
    assert await queued(pool) == [(f"outbound:{second}:1", True)]
    assert len(meta.requests) == 1


async def test_loading_charges_nothing_when_the_named_user_is_not_the_rows(
    pool: Pool,
) -> None:
    limits = RateLimits(per_minute=100)
    limiter = RateLimiter(pool, RateLimitPolicy(default=limits))
    row_id = await new_reply(pool)
    async with pool.connection() as conn:
        loaded, decision = await outbound.load_outbound(
            conn, row_id, limiter.charge_for(PHONE_NUMBER_ID, "15559999999")
        )
        assert loaded is not None and loaded.id == row_id
        assert decision is None
        loaded, decision = await outbound.load_outbound(
            conn, row_id, limiter.charge_for(PHONE_NUMBER_ID, USER)
        )
        assert decision is not None and decision.allowed
    assert 0.9 < await minute_tokens_used(pool, limits) < 1.5


async def test_concurrent_sends_each_get_their_own_attempt_and_wamid(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    # Concurrent sends share their begin-attempt and record-sent statements: each row must
    # still get its own attempt count and the wamid Meta gave for its own request.
    meta, client = graph
    sender = make_sender(pool, local_queue, client)
    users = [f"1555123{n:04d}" for n in range(8)]
    rows = [await new_reply(pool, key=f"c{n}", user=user) for n, user in enumerate(users)]

    outcomes = await asyncio.gather(
        *(sender.handle(full_request_for(r, u)) for r, u in zip(rows, users, strict=True))
    )

    assert outcomes == [SendOutcome.SENT] * len(rows)
    wamid_of_request = {
        int(body["biz_opaque_callback_data"].removeprefix("outbound:")): f"wamid.auto{n}"
        for n, body in enumerate(meta.requests, start=1)
    }
    for row_id in rows:
        state = await row(pool, row_id)
        assert state["wamid"] == wamid_of_request[row_id]
        assert (state["status"], state["send_attempts"]) == ("sent", 1)
        assert state["send_started_at"] is None


async def test_batched_attempts_and_sends_keep_each_row_apart(pool: Pool) -> None:
    first, second, third = [
        await new_reply(pool, key=f"b{n}", user=f"1555987{n:04d}") for n in range(3)
    ]
    async with pool.connection() as conn:
        assert await outbound.begin_attempts(conn, [third, first]) == [1, 1]
        assert await outbound.begin_attempts(conn, [first, second]) == [2, 1]
        with pytest.raises(LookupError):
            await outbound.begin_attempts(conn, [first, 999_999_999])
        # A "delivered" that beat the send's own record waits in the history...
        await statuses.record_status(
            conn,
            statuses.StatusRow(
                wamid="wamid.second",
                status="delivered",
                status_timestamp=datetime.now(UTC),
                recipient_id=USER,
                error_code=None,
                error_title=None,
                error_details=None,
                biz_opaque_callback_data=None,
                payload={},
            ),
        )
        await outbound.record_sends(conn, [(first, "wamid.first"), (second, "wamid.second")])
        # ...and a row that already has its wamid keeps it.
        await outbound.record_sends(conn, [(first, "wamid.other"), (third, "wamid.third")])
    assert (await row(pool, first))["wamid"] == "wamid.first"
    assert (await row(pool, second))["status"] == "delivered"
    assert [(await row(pool, r))["status"] for r in (first, third)] == ["sent", "sent"]


class CountingLimiter(RateLimiter):
    """The real limiter, counting the database calls the sender makes outside a row's load."""

    calls = 0

    async def acquire(self, phone_number_id: str, recipient: str) -> Decision:
        self.calls += 1
        return await super().acquire(phone_number_id, recipient)


async def test_sends_waiting_for_a_numbers_slot_ask_one_at_a_time(
    pool: Pool, local_queue: LocalQueue, graph: tuple[ScriptedGraph, GraphApiClient]
) -> None:
    # 20/s: a slot every 50 ms and a burst of 2, so 12 sends at once mostly wait their turn.
    meta, client = graph
    limiter = CountingLimiter(pool, RateLimitPolicy(default=RateLimits(per_second=20)))
    sender = make_sender(
        pool, local_queue, client, limiter=limiter, policy=RetryPolicy(max_pacing_seconds=1.0)
    )
    users = [f"1555777{n:04d}" for n in range(12)]
    rows = [await new_reply(pool, key=f"p{n}", user=user) for n, user in enumerate(users)]

    outcomes = await asyncio.gather(
        *(sender.handle(full_request_for(r, u)) for r, u in zip(rows, users, strict=True))
    )

    assert outcomes == [SendOutcome.SENT] * len(rows)
    assert len(meta.requests) == len(rows)
    # One waiter asks at a time, mostly once per slot; when every waiter polled on its own,
    # all of them woke for each freed slot (here ~10 + 9 + ... + 1 = 55 calls).
    assert limiter.calls <= 2 * len(rows)
