"""The messaging policies on real PostgreSQL and the local queue: opt-out and opt-in keywords,
Meta's user_preferences, the customer-service window in the sender, handoff by keyword, by an
agent's reply and by an operator, idle conversations closing, and the send checks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.db import outbound
from shared_code.db.pool import Pool
from shared_code.management.problems import Conflict, NotFound, Unprocessable
from shared_code.orchestrator.agents import (
    AgentRegistry,
    AgentReply,
    AgentRequest,
    HandoffReply,
    TextReply,
)
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.policy import (
    MessagingPolicy,
    PolicySettings,
    WindowTemplate,
    close_conversation,
    close_idle_conversations,
    ensure_free_form_allowed,
    ensure_template_allowed,
    release_handoff,
    start_handoff,
)
from shared_code.processing import EventProcessor, Outcome
from shared_code.ratelimit import RateLimiter, RateLimitPolicy
from shared_code.retry_policy import RetryPolicy
from shared_code.routing import InboundForRouting
from shared_code.secrets import Secret
from shared_code.sending import OutboundSender, SendOutcome
from shared_code.webhook_intake import bus_messages_for, split_body
from shared_code.whatsapp.graph_client import GraphApiClient
from tests.integration.inbound import store_text
from tests.unit.test_policy import user_preferences_webhook

pytestmark = pytest.mark.integration

PHONE_NUMBER_ID = "100000000000001"
USER = "15551230001"
NOTICE = "A colleague will answer you here shortly."


class RecordingAgent:
    name = "echo"

    def __init__(self, reply: AgentReply | None = None) -> None:
        self.requests: list[AgentRequest] = []
        self.reply_given = reply

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        self.requests.append(request)
        return self.reply_given or TextReply(body=f"answer to {request.message.text}")


class Meta:
    """The Graph API: accepts every send and every read receipt, records what was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("status") == "read":
            return httpx.Response(200, json={"success": True})
        self.sent.append(body)
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": f"wamid.out{len(self.sent)}"}],
            },
        )


@pytest.fixture
async def meta() -> AsyncIterator[tuple[Meta, GraphApiClient]]:
    recorder = Meta()
    client = GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=PHONE_NUMBER_ID,
        http=httpx.AsyncClient(transport=httpx.MockTransport(recorder.handler)),
    )
    yield recorder, client
    await client.aclose()


def make_orchestrator(
    pool: Pool,
    bus: LocalQueue,
    graph: GraphApiClient,
    agent: RecordingAgent,
    settings: PolicySettings | None = None,
) -> Orchestrator:
    return Orchestrator(
        pool=pool,
        bus=bus,
        outbound_queue="outbound-messages",
        graph=graph,
        agents=AgentRegistry({"echo": agent}, "echo"),
        timeout_seconds=5,
        fallback=TextReply(body="fallback"),
        history_limit=5,
        mark_as_read=False,
        policy=MessagingPolicy(pool, settings or PolicySettings(handoff_notice=NOTICE)),
    )


def make_sender(
    pool: Pool, bus: LocalQueue, graph: GraphApiClient, template: WindowTemplate | None = None
) -> OutboundSender:
    return OutboundSender(
        pool=pool,
        bus=bus,
        queue="outbound-messages",
        graph=graph,
        limiter=RateLimiter(pool, RateLimitPolicy()),
        policy=RetryPolicy(),
        window_closed_template=template,
    )


async def store(
    pool: Pool, wamid: str, text: str, *, hours_ago: float = 0, user: str = USER
) -> InboundForRouting:
    written_at = datetime.now(UTC) - timedelta(hours=hours_ago)
    return await store_text(pool, wamid, text, user=user, written_at=written_at)


async def fetch(pool: Pool, sql: str, *args: object) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, args)
        return await cursor.fetchall()


async def outbound_rows(pool: Pool) -> list[tuple[Any, ...]]:
    return await fetch(
        pool,
        "SELECT idempotency_key, purpose, text_body FROM whatsapp_messages "
        "WHERE direction = 'outbound' ORDER BY id",
    )


async def queued_ids(pool: Pool) -> list[str]:
    rows = await fetch(
        pool,
        "SELECT message_id FROM local_bus_messages WHERE queue = 'outbound-messages' "
        "ORDER BY sequence_number",
    )
    return [str(message_id) for (message_id,) in rows]


async def send_all(sender: OutboundSender, pool: Pool) -> dict[int, SendOutcome]:
    """Hand every pending outbound row to the sender once, in order."""
    rows = await fetch(
        pool,
        "SELECT id FROM whatsapp_messages WHERE direction = 'outbound' AND status = 'pending' "
        "ORDER BY id",
    )
    outcomes = {}
    for (row_id,) in rows:
        body = json.dumps(
            {"outbound_message_id": row_id, "phone_number_id": PHONE_NUMBER_ID,
             "contact_wa_id": USER}
        ).encode()  # fmt: skip
        outcomes[row_id] = await sender.handle(body)
    return outcomes


async def audit_actions(pool: Pool) -> list[tuple[Any, ...]]:
    return await fetch(
        pool, "SELECT actor, action, target_type FROM whatsapp_audit_log ORDER BY id"
    )


# --- opt-out / opt-in ----------------------------------------------------------------------------


async def test_stop_opts_out_with_one_confirmation_then_silence_and_start_opts_back_in(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    recorder, graph = meta
    agent = RecordingAgent()
    orchestrator = make_orchestrator(pool, local_queue, graph, agent)
    sender = make_sender(pool, local_queue, graph)
    first = await store(pool, "wamid.p1", "hello")
    await orchestrator.route(first)
    stop = await store(pool, "wamid.p2", " Stop! ")
    await orchestrator.route(stop)
    # A redelivery of STOP (routed again): the same confirmation, not a second one.
    await orchestrator.route(replace(stop, first_routing=False))
    await orchestrator.route(await store(pool, "wamid.p3", "are you there?"))

    assert len(agent.requests) == 1  # only "hello"
    assert await outbound_rows(pool) == [
        ("reply:wamid.p1", "reply", "answer to hello"),
        ("optout:wamid.p2", "opt_out_confirmation", PolicySettings().opt_out_confirmation),
    ]
    [(opted_out, opted_out_at, source)] = await fetch(
        pool, "SELECT opted_out, opted_out_at, opt_out_source FROM whatsapp_contacts"
    )
    assert opted_out is True and opted_out_at is not None and source == "keyword"
    assert await audit_actions(pool) == [("system:policy", "contact.opt_out", "contact")]
    assert len(await queued_ids(pool)) == 2

    # The earlier reply was not sent before the opt-out: now it never is; the confirmation is.
    outcomes = await send_all(sender, pool)
    assert list(outcomes.values()) == [SendOutcome.BLOCKED, SendOutcome.SENT]
    assert [body["text"]["body"] for body in recorder.sent] == [
        PolicySettings().opt_out_confirmation
    ]
    [(status, blocked, title, code)] = await fetch(
        pool,
        "SELECT status, blocked_by_policy, error_title, error_code FROM whatsapp_messages "
        "WHERE idempotency_key = 'reply:wamid.p1'",
    )
    assert (status, blocked, code) == ("failed", "contact_opted_out", None)
    assert "opted out" in title

    # STOP again changes nothing and sends nothing; START opts back in, with its confirmation.
    await orchestrator.route(await store(pool, "wamid.p4", "STOP"))
    await orchestrator.route(await store(pool, "wamid.p5", "start"))
    await orchestrator.route(await store(pool, "wamid.p6", "hello again"))
    assert [request.message.text for request in agent.requests] == ["hello", "hello again"]
    keys = [key for key, *_ in await outbound_rows(pool)]
    assert keys == ["reply:wamid.p1", "optout:wamid.p2", "optin:wamid.p5", "reply:wamid.p6"]
    [(opted_out, opted_out_at)] = await fetch(
        pool, "SELECT opted_out, opted_out_at FROM whatsapp_contacts"
    )
    assert (opted_out, opted_out_at) == (False, None)
    assert [action for _, action, _ in await audit_actions(pool)] == [
        "contact.opt_out",
        "contact.opt_in",
    ]
    assert list((await send_all(sender, pool)).values()) == [SendOutcome.SENT, SendOutcome.SENT]


async def test_the_sender_refuses_operator_messages_and_templates_to_an_opted_out_contact(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    recorder, graph = meta
    message = await store(pool, "wamid.o1", "STOP")
    await make_orchestrator(pool, local_queue, graph, RecordingAgent()).route(message)
    for key, purpose, body in [
        ("op:1", "operator", {"type": "text", "text": {"body": "we miss you"}}),
        ("tpl:1", "template", {"type": "template", "template": {"name": "promo"}}),
    ]:
        async with pool.connection() as conn:
            await outbound.insert_outbound(
                conn,
                outbound.NewOutbound(
                    conversation_id=message.conversation_id,
                    phone_number_id=PHONE_NUMBER_ID,
                    contact_wa_id=USER,
                    message_type=str(body["type"]),
                    text_body=None,
                    content={"messaging_product": "whatsapp", "to": USER, **body},
                    idempotency_key=key,
                    purpose=purpose,
                ),
            )
    outcomes = await send_all(make_sender(pool, local_queue, graph), pool)
    assert list(outcomes.values()) == [SendOutcome.SENT, SendOutcome.BLOCKED, SendOutcome.BLOCKED]
    assert len(recorder.sent) == 1  # the confirmation only


async def test_user_preferences_webhook_sets_the_marketing_preference_and_stops_marketing(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    recorder, graph = meta

    def event(value: str, timestamp: str) -> bytes:
        # The bus messages the intake (skip_statuses) and the sweeper (everything) publish.
        split = split_body(json.dumps(user_preferences_webhook(value, timestamp)).encode())
        [queued] = bus_messages_for(1, split, skip_statuses=True)
        assert [m.body for m in bus_messages_for(1, split)] == [queued.body]
        return queued.body

    processor = EventProcessor(pool, make_orchestrator(pool, local_queue, graph, RecordingAgent()))
    assert await processor.handle(event("stop", "1767225600")) is Outcome.PREFERENCE_APPLIED
    assert await processor.handle(event("stop", "1767225600")) is Outcome.PREFERENCE_APPLIED
    # An older "resume" arriving late changes nothing.
    assert await processor.handle(event("resume", "1767000000")) is Outcome.PREFERENCE_APPLIED
    [(preferences, opted_out)] = await fetch(
        pool, "SELECT preferences, opted_out FROM whatsapp_contacts WHERE wa_id = %s", USER
    )
    assert preferences == {"marketing_messages": {"value": "stop", "timestamp": 1767225600}}
    assert opted_out is False  # marketing only: the user may still chat
    assert await audit_actions(pool) == [
        ("system:policy", "contact.marketing_preference", "contact")
    ]

    # The user writes; a marketing template (by purpose, or by its category in the catalogue)
    # is refused, a utility template and the agent's reply go out.
    message = await store(pool, "wamid.m1", "hi")
    await make_orchestrator(pool, local_queue, graph, RecordingAgent()).route(message)
    await fetch(
        pool,
        "INSERT INTO whatsapp_message_templates (name, language, status, category) VALUES "
        "('spring_sale', 'en', 'APPROVED', 'MARKETING'), "
        "('order_update', 'en', 'APPROVED', 'UTILITY') RETURNING name",
    )
    for key, name, purpose in [
        ("t1", "spring_sale", "template"),
        ("t2", "order_update", "template"),
        ("t3", "order_update", "marketing"),
    ]:
        async with pool.connection() as conn:
            await outbound.insert_outbound(
                conn,
                outbound.NewOutbound(
                    conversation_id=message.conversation_id,
                    phone_number_id=PHONE_NUMBER_ID,
                    contact_wa_id=USER,
                    message_type="template",
                    text_body=None,
                    content={
                        "messaging_product": "whatsapp",
                        "to": USER,
                        "type": "template",
                        "template": {"name": name, "language": {"code": "en"}},
                    },
                    idempotency_key=key,
                    purpose=purpose,
                ),
            )
    outcomes = await send_all(make_sender(pool, local_queue, graph), pool)
    assert list(outcomes.values()) == [
        SendOutcome.SENT,  # the reply
        SendOutcome.BLOCKED,
        SendOutcome.SENT,
        SendOutcome.BLOCKED,
    ]
    assert await fetch(
        pool,
        "SELECT idempotency_key, blocked_by_policy FROM whatsapp_messages "
        "WHERE blocked_by_policy IS NOT NULL ORDER BY id",
    ) == [("t1", "marketing_opted_out"), ("t3", "marketing_opted_out")]

    # "resume" lets marketing through again.
    assert await processor.handle(event("resume", "1767300000")) is Outcome.PREFERENCE_APPLIED
    async with pool.connection() as conn:
        consent = await ensure_template_allowed(
            conn, contact_id=message.contact_id, phone_number_id=PHONE_NUMBER_ID, marketing=True
        )
    assert not consent.marketing_stopped
    assert len(recorder.sent) == 2


# --- the customer-service window ----------------------------------------------------------------


async def reply_row(pool: Pool, message: InboundForRouting, key: str = "reply:late") -> int:
    async with pool.connection() as conn:
        row_id, _ = await outbound.insert_outbound(
            conn,
            outbound.NewOutbound(
                conversation_id=message.conversation_id,
                phone_number_id=PHONE_NUMBER_ID,
                contact_wa_id=USER,
                message_type="text",
                text_body="late answer",
                content={
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": USER,
                    "type": "text",
                    "text": {"body": "late answer"},
                },
                idempotency_key=key,
            ),
        )
    return row_id


async def test_a_free_form_row_to_a_contact_last_seen_25_hours_ago_never_reaches_meta(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    recorder, graph = meta
    message = await store(pool, "wamid.w1", "hello", hours_ago=25)
    row_id = await reply_row(pool, message)

    outcomes = await send_all(make_sender(pool, local_queue, graph), pool)

    assert outcomes == {row_id: SendOutcome.BLOCKED}
    assert recorder.sent == []
    [(status, blocked, title, wamid)] = await fetch(
        pool,
        "SELECT status, blocked_by_policy, error_title, wamid FROM whatsapp_messages WHERE id = %s",
        row_id,
    )
    assert (status, blocked, wamid) == ("failed", "window_closed", None)
    assert "template" in title
    # Refused before the rate limits were charged: the number's buckets were never touched.
    assert await fetch(pool, "SELECT count(*) FROM rate_limit_numbers") == [(0,)]
    async with pool.connection() as conn:
        with pytest.raises(Unprocessable) as raised:
            await ensure_free_form_allowed(
                conn, contact_id=message.contact_id, phone_number_id=PHONE_NUMBER_ID
            )
    assert raised.value.code == "template_required"


async def test_outside_the_window_a_configured_template_goes_instead(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    recorder, graph = meta
    message = await store(pool, "wamid.w2", "hello", hours_ago=30)
    row_id = await reply_row(pool, message)
    sender = make_sender(
        pool, local_queue, graph, WindowTemplate(name="follow_up", language_code="en")
    )

    assert await send_all(sender, pool) == {row_id: SendOutcome.SENT}

    [sent] = recorder.sent
    assert sent["type"] == "template"
    assert sent["template"] == {"name": "follow_up", "language": {"code": "en"}}
    assert sent["biz_opaque_callback_data"] == f"outbound:{row_id}"
    [(message_type, status, text)] = await fetch(
        pool, "SELECT message_type, status, text_body FROM whatsapp_messages WHERE id = %s",
        row_id,
    )  # fmt: skip
    # The conversation still shows what the answer was.
    assert (message_type, status, text) == ("template", "sent", "late answer")


async def test_inside_the_window_free_form_goes_out_and_the_send_check_passes(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    _, graph = meta
    message = await store(pool, "wamid.w3", "hello", hours_ago=23)
    row_id = await reply_row(pool, message)
    assert await send_all(make_sender(pool, local_queue, graph), pool) == {row_id: SendOutcome.SENT}
    async with pool.connection() as conn:
        consent = await ensure_free_form_allowed(
            conn, contact_id=message.contact_id, phone_number_id=PHONE_NUMBER_ID
        )
        assert consent.last_inbound_at is not None
        with pytest.raises(NotFound):
            await ensure_free_form_allowed(conn, contact_id=999_999, phone_number_id="1")
        # Another business number has its own window: the user never wrote to it.
        with pytest.raises(Unprocessable):
            await ensure_free_form_allowed(
                conn, contact_id=message.contact_id, phone_number_id="100000000000002"
            )
    await fetch(pool, "UPDATE whatsapp_contacts SET opted_out = true RETURNING id")
    async with pool.connection() as conn:
        with pytest.raises(Conflict) as raised:
            await ensure_free_form_allowed(
                conn, contact_id=message.contact_id, phone_number_id=PHONE_NUMBER_ID
            )
    assert raised.value.code == "contact_opted_out"


# --- handoff -------------------------------------------------------------------------------------


async def conversation_state(pool: Pool, conversation_id: int) -> tuple[Any, ...]:
    [row] = await fetch(
        pool,
        "SELECT status, handoff_by, handoff_at IS NOT NULL FROM whatsapp_conversations "
        "WHERE id = %s",
        conversation_id,
    )
    return row


async def test_a_handoff_keyword_silences_the_agent_until_an_operator_releases(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    _, graph = meta
    agent = RecordingAgent()
    orchestrator = make_orchestrator(pool, local_queue, graph, agent)
    human = await store(pool, "wamid.h1", "Human")
    await orchestrator.route(human)
    await orchestrator.route(replace(human, first_routing=False))  # redelivered
    await orchestrator.route(await store(pool, "wamid.h2", "my order is late"))

    assert agent.requests == []
    assert await conversation_state(pool, human.conversation_id) == ("handoff", "keyword", True)
    assert await outbound_rows(pool) == [("handoff:wamid.h1", "handoff_notice", NOTICE)]
    assert len(await queued_ids(pool)) == 1
    # Messages are still stored while a person has the conversation.
    assert await fetch(
        pool, "SELECT count(*) FROM whatsapp_messages WHERE direction = 'inbound'"
    ) == [(2,)]

    state = await release_handoff(pool, human.conversation_id, "key:abc")
    assert (state.status, state.handoff_at, state.handoff_by) == ("open", None, None)
    await orchestrator.route(await store(pool, "wamid.h3", "thanks"))
    assert [r.message.text for r in agent.requests] == ["thanks"]
    assert await audit_actions(pool) == [
        ("system:policy", "conversation.handoff", "conversation"),
        ("key:abc", "conversation.release", "conversation"),
    ]


async def test_without_a_notice_setting_a_keyword_handoff_sends_nothing(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    _, graph = meta
    orchestrator = make_orchestrator(pool, local_queue, graph, RecordingAgent(), PolicySettings())
    message = await store(pool, "wamid.h4", "agent")
    await orchestrator.route(message)
    assert await conversation_state(pool, message.conversation_id) == ("handoff", "keyword", True)
    assert await outbound_rows(pool) == []


async def test_an_agent_reply_flag_hands_the_conversation_over_after_the_reply(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    _, graph = meta
    agent = RecordingAgent(TextReply(body="Let me find a colleague", handoff=True))
    orchestrator = make_orchestrator(pool, local_queue, graph, agent)
    message = await store(pool, "wamid.f1", "I want a refund")
    await orchestrator.route(message)
    await orchestrator.route(await store(pool, "wamid.f2", "hello?"))

    assert len(agent.requests) == 1
    assert await conversation_state(pool, message.conversation_id) == (
        "handoff",
        "agent:echo",
        True,
    )
    # The agent's own reply goes out; no extra notice.
    assert await outbound_rows(pool) == [("reply:wamid.f1", "reply", "Let me find a colleague")]


async def test_a_silent_agent_handoff_gets_the_notice(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    _, graph = meta
    orchestrator = make_orchestrator(pool, local_queue, graph, RecordingAgent(HandoffReply()))
    message = await store(pool, "wamid.f3", "complicated question")
    await orchestrator.route(message)
    assert (await conversation_state(pool, message.conversation_id))[0] == "handoff"
    assert await outbound_rows(pool) == [("handoff:wamid.f3", "handoff_notice", NOTICE)]


async def test_operator_commands_on_conversations(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    message = await store(pool, "wamid.c1", "hello")
    conversation_id = message.conversation_id

    with pytest.raises(NotFound) as missing:
        await start_handoff(pool, 999_999, "key:abc")
    assert missing.value.code == "conversation_not_found"
    state = await start_handoff(pool, conversation_id, "key:abc")
    assert (state.status, state.handoff_by) == ("handoff", "key:abc")
    again = await start_handoff(pool, conversation_id, "key:def")  # idempotent
    assert (again.status, again.handoff_by) == ("handoff", "key:abc")
    assert (await release_handoff(pool, conversation_id, "key:abc")).status == "open"
    assert (await release_handoff(pool, conversation_id, "key:abc")).status == "open"

    closed = await close_conversation(pool, conversation_id, "entra:operator")
    assert (closed.status, closed.close_reason) == ("closed", "operator")
    assert closed.closed_at is not None
    assert (await close_conversation(pool, conversation_id, "entra:operator")) == closed
    for command in (start_handoff, release_handoff):
        with pytest.raises(Conflict) as raised:
            await command(pool, conversation_id, "key:abc")
        assert raised.value.code == "conversation_closed"
    assert [(actor, action) for actor, action, _ in await audit_actions(pool)] == [
        ("key:abc", "conversation.handoff"),
        ("key:abc", "conversation.release"),
        ("entra:operator", "conversation.close"),
    ]
    # The next message opens a new conversation; the closed one keeps its closed_at.
    following = await store(pool, "wamid.c2", "back again")
    assert following.conversation_id != conversation_id
    assert await fetch(
        pool, "SELECT id, status, closed_at IS NOT NULL FROM whatsapp_conversations ORDER BY id"
    ) == [(conversation_id, "closed", True), (following.conversation_id, "open", False)]


# --- idle conversations --------------------------------------------------------------------------


async def test_idle_conversations_close_in_batches_and_the_next_message_opens_a_new_one(
    pool: Pool, local_queue: LocalQueue, meta: tuple[Meta, GraphApiClient]
) -> None:
    users = [f"155512300{n:02d}" for n in range(5)]
    for n, user in enumerate(users):
        await store(pool, f"wamid.i{n}", "hello", user=user)
    recent = await store(pool, "wamid.recent", "hello", user="15551239999")
    await fetch(
        pool,
        "UPDATE whatsapp_conversations SET last_message_at = now() - interval '25 hours' "
        "WHERE id <> %s RETURNING id",
        recent.conversation_id,
    )
    # One of them is in handoff: idle closes it too (a forgotten handoff must not silence the
    # user for good).
    await start_handoff(pool, 1, "key:abc")

    assert await close_idle_conversations(pool, idle_hours=24, batch_size=2) == 5
    assert await close_idle_conversations(pool, idle_hours=24, batch_size=2) == 0

    rows = await fetch(
        pool, "SELECT id, status, close_reason, closed_at IS NOT NULL FROM whatsapp_conversations "
        "ORDER BY id",
    )  # fmt: skip
    assert [(status, reason, closed) for _, status, reason, closed in rows] == [
        ("closed", "idle", True)
    ] * 5 + [("open", None, False)]
    following = await store(pool, "wamid.i9", "hello again", user=users[0])
    assert following.conversation_id not in [row[0] for row in rows]
    assert (await conversation_state(pool, following.conversation_id))[0] == "open"
