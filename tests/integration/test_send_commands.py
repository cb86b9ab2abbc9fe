"""The send commands on PostgreSQL, with the template catalogue read from the Cloud API simulator:
every rule a dashboard meets (each 4xx), idempotency (also under concurrency) and the
business-initiated daily limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from local.simulator import CloudApiSimulator, SimulatorConfig
from shared_code.bus.local_queue import LocalQueue
from shared_code.config import BusinessInitiatedLimit
from shared_code.db import conversations
from shared_code.db.pool import Pool
from shared_code.management.problems import (
    Conflict,
    InvalidRequest,
    NotFound,
    Problem,
    TooManyRequests,
    Unavailable,
    Unprocessable,
)
from shared_code.management.send_commands import (
    MediaContent,
    SendMessageRequest,
    SendProactiveMessageRequest,
    SendServices,
    list_templates,
    send_message,
    send_proactive_message,
)
from shared_code.secrets import Secret
from shared_code.templates import TemplateCatalogue
from shared_code.whatsapp.graph_client import GraphApiClient

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_client_logs")]

TOKEN = "test-access-token"
WABA = "200000000000001"
NUMBER = "100000000000001"
USER = "15551230077"
CALLER = "key:0123456789ab"
# Valid French mobile numbers: proactive sends need numbers in service.
FRENCH = ["+33612345678", "+33612345679", "+33612345680", "+33612345681"]


@pytest.fixture
async def simulator() -> AsyncIterator[CloudApiSimulator]:
    sim = CloudApiSimulator(SimulatorConfig(app_secret="s", access_token=TOKEN, waba_id=WABA))
    await sim.start()
    yield sim
    await sim.stop()


class Graph:
    def __init__(self, base_url: str) -> None:
        self.template_lists = 0

        async def count(request: httpx.Request) -> None:
            if request.url.path.endswith("/message_templates"):
                self.template_lists += 1

        self.http = httpx.AsyncClient(event_hooks={"request": [count]})
        self.client = GraphApiClient(
            base_url=base_url,
            api_version="v23.0",
            access_token=Secret(TOKEN),
            phone_number_id=NUMBER,
            http=self.http,
            retry_attempts=1,
        )


@pytest.fixture
async def graph(simulator: CloudApiSimulator) -> AsyncIterator[Graph]:
    graph = Graph(simulator.base_url)
    yield graph
    await graph.http.aclose()


@pytest.fixture
def services(pool: Pool, local_queue: LocalQueue, graph: Graph) -> SendServices:
    return SendServices(
        pool=pool,
        bus=local_queue,
        outbound_queue="outbound-messages",
        phone_number_id=NUMBER,
        templates=TemplateCatalogue(pool=pool, graph=graph.client, waba_id=WABA),
        business_initiated_limit=BusinessInitiatedLimit(default=2),
    )


async def user_wrote(pool: Pool, wa_id: str = USER, *, hours_ago: float = 0.0) -> int:
    """The user wrote to the business ``hours_ago``; returns their contact id."""
    async with pool.connection() as conn:
        stored = await conversations.store_inbound(
            conn,
            conversations.InboundMessageRow(
                wamid=f"wamid.in.{wa_id}.{hours_ago}",
                phone_number_id=NUMBER,
                contact_wa_id=wa_id,
                profile_name="Ana",
                message_type="text",
                text_body="hello",
                content={},
                context_wamid=None,
                whatsapp_timestamp=datetime.now(UTC) - timedelta(hours=hours_ago),
            ),
        )
    assert stored is not None
    return stored.contact_id


async def fetch(pool: Pool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall()


async def outbound_rows(pool: Pool) -> list[tuple[Any, ...]]:
    return await fetch(
        pool,
        "SELECT id, contact_wa_id, message_type, status, purpose, business_initiated, content "
        "FROM whatsapp_messages WHERE direction = 'outbound' ORDER BY id",
    )


async def queued(pool: Pool) -> list[str]:
    rows = await fetch(
        pool,
        "SELECT message_id FROM local_bus_messages WHERE queue = 'outbound-messages' "
        "ORDER BY sequence_number",
    )
    return [str(r[0]) for r in rows]


def text_to(contact_id: int | None = None, phone: str | None = None, text: str = "hi") -> Any:
    return SendMessageRequest(contact_id=contact_id, phone_number=phone, text=text)


def proactive(phone: str = FRENCH[0], **changes: Any) -> SendProactiveMessageRequest:
    fields: dict[str, Any] = {
        "phone_number": phone,
        "template_name": "welcome_message",
        "language_code": "fr",
        "parameters": ["John", "Doe"],
    }
    return SendProactiveMessageRequest(**(fields | changes))


async def problem_of(call: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        await call
    return caught.value


# --- send-message --------------------------------------------------------------------------------


async def test_a_text_inside_the_window_is_queued_audited_and_pending(
    services: SendServices, pool: Pool
) -> None:
    contact_id = await user_wrote(pool, hours_ago=2)

    sent = await send_message(
        services, text_to(contact_id, text="Your order shipped"), caller=CALLER
    )

    assert sent.status == "pending" and sent.contact_id == contact_id
    ((row_id, wa_id, kind, status, purpose, initiated, content),) = await outbound_rows(pool)
    assert (row_id, wa_id, kind, status, purpose, initiated) == (
        sent.message_id,
        USER,
        "text",
        "pending",
        "operator",
        False,
    )
    assert content["text"]["body"] == "Your order shipped" and content["to"] == USER
    assert await queued(pool) == [f"outbound:{sent.message_id}"]
    audit = await fetch(
        pool, "SELECT actor, action, target_type, target_id, details FROM whatsapp_audit_log"
    )
    ((actor, action, target_type, target_id, details),) = audit
    assert (actor, action, target_type, target_id) == (
        CALLER,
        "send_message",
        "message",
        str(sent.message_id),
    )
    assert "Your order" not in str(details) and USER not in str(details)
    # It joined the conversation the user's message opened.
    assert (
        sent.conversation_id == (await fetch(pool, "SELECT id FROM whatsapp_conversations"))[0][0]
    )


async def test_by_phone_number_with_media_and_interactive(
    services: SendServices, pool: Pool
) -> None:
    await user_wrote(pool)
    image = SendMessageRequest(
        phone_number="+1 555-123-0077", media=MediaContent(type="image", link="https://e.x/a.jpg")
    )
    buttons = SendMessageRequest(
        phone_number=f"+{USER}",
        interactive={
            "type": "button",
            "body": {"text": "Pick one"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}]},
        },
    )

    await send_message(services, image, caller=CALLER)
    await send_message(services, buttons, caller=CALLER)

    kinds = [(r[1], r[2]) for r in await outbound_rows(pool)]
    assert kinds == [(USER, "image"), (USER, "interactive")]


@pytest.mark.parametrize(
    "request_",
    [
        SendMessageRequest(text="hi"),
        SendMessageRequest(contact_id=1, phone_number=f"+{USER}", text="hi"),
        SendMessageRequest(contact_id=1),
        SendMessageRequest(contact_id=1, text="hi", media=MediaContent(type="image", id="1")),
        SendMessageRequest(contact_id=1, media=MediaContent(type="image")),
        SendMessageRequest(contact_id=1, media=MediaContent(type="audio", id="1", caption="c")),
        SendMessageRequest(phone_number="12345", text="hi"),
        SendMessageRequest(
            contact_id=1,
            interactive={
                "type": "button",
                "body": {"text": "Pick"},
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": str(i), "title": f"T{i}"}}
                        for i in range(4)
                    ]
                },
            },
        ),
        SendMessageRequest(
            contact_id=1,
            interactive={
                "type": "button",
                "body": {"text": "Pick"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "x" * 21}}]},
            },
        ),
        SendMessageRequest(
            contact_id=1,
            interactive={
                "type": "list",
                "body": {"text": "Menu"},
                "action": {
                    "button": "Open",
                    "sections": [{"rows": [{"id": str(i), "title": f"R{i}"} for i in range(11)]}],
                },
            },
        ),
    ],
    ids=[
        "no recipient",
        "two recipients",
        "no content",
        "two contents",
        "media without id or link",
        "audio with a caption",
        "not a phone number",
        "four buttons",
        "button title over 20",
        "eleven rows",
    ],
)
async def test_bad_combinations_are_400_before_any_lookup(
    services: SendServices, pool: Pool, request_: SendMessageRequest
) -> None:
    problem = await problem_of(send_message(services, request_, caller=CALLER))

    assert isinstance(problem, InvalidRequest) and problem.status == 400
    assert await outbound_rows(pool) == []


def test_the_request_models_refuse_unknown_fields_and_long_texts() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"contact_id": 1, "text": "hi", "to": "x"}', type=SendMessageRequest)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"contact_id": 1, "text": "x" * 4097}, SendMessageRequest)


async def test_unknown_contacts_are_404(services: SendServices) -> None:
    by_id = await problem_of(send_message(services, text_to(contact_id=999), caller=CALLER))
    by_phone = await problem_of(send_message(services, text_to(phone=f"+{USER}"), caller=CALLER))

    for problem in (by_id, by_phone):
        assert isinstance(problem, NotFound) and problem.code == "contact_not_found"


async def test_an_opted_out_contact_is_409(services: SendServices, pool: Pool) -> None:
    contact_id = await user_wrote(pool)
    await fetch(pool, "UPDATE whatsapp_contacts SET opted_out = true RETURNING id")

    problem = await problem_of(send_message(services, text_to(contact_id), caller=CALLER))

    assert isinstance(problem, Conflict) and problem.code == "contact_opted_out"
    assert problem.status == 409
    assert await outbound_rows(pool) == []


async def test_outside_the_window_a_template_is_required_422(
    services: SendServices, pool: Pool
) -> None:
    contact_id = await user_wrote(pool, hours_ago=25)

    problem = await problem_of(send_message(services, text_to(contact_id), caller=CALLER))

    assert isinstance(problem, Unprocessable) and problem.code == "template_required"
    assert "template" in (problem.detail or "")
    assert await outbound_rows(pool) == []


async def test_a_new_conversation_is_opened_when_the_last_one_was_closed(
    services: SendServices, pool: Pool
) -> None:
    contact_id = await user_wrote(pool)
    await fetch(
        pool,
        "UPDATE whatsapp_conversations SET status = 'closed', closed_at = now() RETURNING id",
    )

    sent = await send_message(services, text_to(contact_id), caller=CALLER)

    rows = await fetch(pool, "SELECT id, status FROM whatsapp_conversations ORDER BY id")
    assert len(rows) == 2 and rows[1] == (sent.conversation_id, "open")


# --- idempotency ---------------------------------------------------------------------------------


async def test_the_same_key_returns_the_same_message_and_sends_once(
    services: SendServices, pool: Pool
) -> None:
    contact_id = await user_wrote(pool)

    first = await send_message(services, text_to(contact_id), caller=CALLER, idempotency_key="k1")
    again = await send_message(services, text_to(contact_id), caller=CALLER, idempotency_key="k1")
    other_caller = await send_message(
        services, text_to(contact_id), caller="key:ffffffffffff", idempotency_key="k1"
    )

    assert again == first
    assert other_caller.message_id != first.message_id
    assert len(await outbound_rows(pool)) == 2
    assert sorted(await queued(pool)) == sorted(
        {f"outbound:{first.message_id}", f"outbound:{other_caller.message_id}"}
    )
    assert len(await fetch(pool, "SELECT id FROM whatsapp_audit_log")) == 2


async def test_the_same_key_with_another_body_is_422(services: SendServices, pool: Pool) -> None:
    contact_id = await user_wrote(pool)
    await send_message(services, text_to(contact_id, text="a"), caller=CALLER, idempotency_key="k")

    changed = await problem_of(
        send_message(services, text_to(contact_id, text="b"), caller=CALLER, idempotency_key="k")
    )
    other_command = await problem_of(
        send_proactive_message(services, proactive(), caller=CALLER, idempotency_key="k")
    )

    for problem in (changed, other_command):
        assert isinstance(problem, Unprocessable) and problem.code == "idempotency_key_reused"
    assert len(await outbound_rows(pool)) == 1


async def test_an_unusable_key_is_400(services: SendServices) -> None:
    for key in ("", "x" * 256, "caf\u00e9", "a\nb"):
        problem = await problem_of(
            send_message(services, text_to(1), caller=CALLER, idempotency_key=key)
        )
        assert isinstance(problem, InvalidRequest) and problem.code == "invalid_idempotency_key"


async def test_concurrent_identical_requests_make_one_message(
    services: SendServices, pool: Pool
) -> None:
    contact_id = await user_wrote(pool)

    results = await asyncio.gather(
        *(
            send_message(services, text_to(contact_id), caller=CALLER, idempotency_key="same")
            for _ in range(6)
        ),
        *(
            send_proactive_message(
                services, proactive(FRENCH[1]), caller=CALLER, idempotency_key="also-same"
            )
            for _ in range(6)
        ),
    )

    assert len({r.message_id for r in results[:6]}) == 1
    assert len({r.message_id for r in results[6:]}) == 1
    assert len(await outbound_rows(pool)) == 2
    assert len(await queued(pool)) == 2
    assert (
        len(await fetch(pool, "SELECT id FROM whatsapp_contacts WHERE wa_id = '33612345679'")) == 1
    )
    assert len(await fetch(pool, "SELECT id FROM whatsapp_audit_log")) == 2


# --- send-proactive-message ----------------------------------------------------------------------


async def test_a_template_to_a_new_number_creates_contact_and_conversation(
    services: SendServices, pool: Pool
) -> None:
    sent = await send_proactive_message(
        services, proactive("+33 6 12 34 56 78"), caller=CALLER, idempotency_key="p1"
    )

    ((row_id, wa_id, kind, status, purpose, initiated, content),) = await outbound_rows(pool)
    assert (row_id, wa_id, kind, status, purpose, initiated) == (
        sent.message_id,
        "33612345678",
        "template",
        "pending",
        "marketing",
        True,
    )
    assert content["template"] == {
        "name": "welcome_message",
        "language": {"code": "fr"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "John"}, {"type": "text", "text": "Doe"}],
            }
        ],
    }
    contacts = await fetch(pool, "SELECT id, wa_id FROM whatsapp_contacts")
    assert contacts == [(sent.contact_id, "33612345678")]
    conversation = await fetch(pool, "SELECT id, contact_id, status FROM whatsapp_conversations")
    assert conversation == [(sent.conversation_id, sent.contact_id, "open")]
    assert await queued(pool) == [f"outbound:{sent.message_id}"]
    ((action, details),) = await fetch(pool, "SELECT action, details FROM whatsapp_audit_log")
    assert action == "send_proactive_message" and details["template"] == "welcome_message"
    assert "33612345678" not in str(details)


async def test_header_and_button_parameters_go_in_components(
    services: SendServices, pool: Pool
) -> None:
    await send_proactive_message(
        services,
        proactive(
            template_name="order_update",
            language_code="en_US",
            parameters=["42"],
            components=[
                {"type": "header", "parameters": [{"type": "text", "text": "Summer"}]},
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "1",
                    "parameters": [{"type": "text", "text": "orders/42"}],
                },
                {
                    "type": "button",
                    "sub_type": "copy_code",
                    "index": "2",
                    "parameters": [{"type": "coupon_code", "coupon_code": "SAVE25"}],
                },
            ],
        ),
        caller=CALLER,
    )
    ((*_, purpose, initiated, content),) = await outbound_rows(pool)
    assert purpose == "template" and initiated is True
    assert [c["type"] for c in content["template"]["components"]] == [
        "body",
        "header",
        "button",
        "button",
    ]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"template_name": "no_such_template"}, "template_not_found"),
        ({"language_code": "de"}, "template_not_found"),
        (
            {
                "template_name": "appointment_reminder",
                "language_code": "en_US",
                "parameters": ["x"],
            },
            "template_not_approved",
        ),
        (
            {"template_name": "black_friday_promo", "language_code": "en_US", "parameters": ["x"]},
            "template_not_approved",
        ),
        ({"parameters": ["John"]}, "template_parameter_mismatch"),
        ({"parameters": []}, "template_parameter_mismatch"),
        (
            {"template_name": "order_update", "language_code": "en_US", "parameters": ["42"]},
            "template_parameter_mismatch",
        ),
    ],
    ids=[
        "unknown name",
        "unknown language",
        "pending",
        "rejected",
        "one body parameter short",
        "no parameters",
        "header and buttons missing",
    ],
)
async def test_template_problems_are_422_before_anything_is_queued(
    services: SendServices,
    pool: Pool,
    simulator: CloudApiSimulator,
    changes: dict[str, Any],
    code: str,
) -> None:
    problem = await problem_of(
        send_proactive_message(services, proactive(**changes), caller=CALLER)
    )

    assert isinstance(problem, Unprocessable) and problem.code == code
    assert await outbound_rows(pool) == []
    assert await fetch(pool, "SELECT id FROM whatsapp_contacts") == []
    assert simulator.stats()["requests"] == 0


@pytest.mark.parametrize("phone", ["+15551234567", "0612345678", "+33 6", "+999 1234", "hello"])
async def test_numbers_phonenumbers_refuses_are_400(services: SendServices, phone: str) -> None:
    problem = await problem_of(send_proactive_message(services, proactive(phone), caller=CALLER))

    assert isinstance(problem, InvalidRequest) and problem.code == "invalid_phone_number"


async def test_opted_out_contacts_and_stopped_marketing_are_409(
    services: SendServices, pool: Pool
) -> None:
    await user_wrote(pool, FRENCH[0].lstrip("+"), hours_ago=30)
    await user_wrote(pool, FRENCH[1].lstrip("+"), hours_ago=30)
    await fetch(
        pool,
        "UPDATE whatsapp_contacts SET opted_out = true WHERE wa_id = %s RETURNING id",
        FRENCH[0][1:],
    )
    await fetch(
        pool,
        "UPDATE whatsapp_contacts SET preferences = "
        """'{"marketing_messages": {"value": "stop", "timestamp": 1}}' WHERE wa_id = %s RETURNING id""",
        FRENCH[1][1:],
    )

    opted_out = await problem_of(
        send_proactive_message(services, proactive(FRENCH[0]), caller=CALLER)
    )
    no_marketing = await problem_of(
        send_proactive_message(services, proactive(FRENCH[1]), caller=CALLER)
    )
    # A UTILITY template still reaches the one who only stopped marketing.
    utility = await send_proactive_message(
        services,
        proactive(FRENCH[1], template_name="hello_world", language_code="en_US", parameters=[]),
        caller=CALLER,
    )

    assert isinstance(opted_out, Conflict) and opted_out.code == "contact_opted_out"
    assert isinstance(no_marketing, Conflict) and no_marketing.code == "marketing_opted_out"
    assert [r[0] for r in await outbound_rows(pool)] == [utility.message_id]


async def test_the_daily_limit_counts_unique_users_outside_the_window_and_says_when_to_retry(
    services: SendServices, pool: Pool
) -> None:
    # Limit 2 (the fixture). A user inside the window is not business-initiated: not counted.
    await user_wrote(pool, FRENCH[3].lstrip("+"), hours_ago=1)
    inside = await send_proactive_message(services, proactive(FRENCH[3]), caller=CALLER)
    first = await send_proactive_message(services, proactive(FRENCH[0]), caller=CALLER)
    await send_proactive_message(services, proactive(FRENCH[1]), caller=CALLER)
    # The same user again does not take another place.
    await send_proactive_message(services, proactive(FRENCH[0]), caller=CALLER)

    refused = await problem_of(
        send_proactive_message(services, proactive(FRENCH[2]), caller=CALLER)
    )

    assert isinstance(refused, TooManyRequests) and refused.code == "business_initiated_limit"
    assert 86_000 < int(refused.headers["Retry-After"]) <= 86_401
    initiated = await fetch(
        pool, "SELECT id, business_initiated FROM whatsapp_messages ORDER BY id"
    )
    assert (inside.message_id, False) in initiated
    # 23 hours later (the first user's last send), a place frees an hour from now.
    await fetch(
        pool,
        "UPDATE whatsapp_messages SET created_at = created_at - interval '23 hours' "
        "WHERE contact_wa_id = %s RETURNING id",
        FRENCH[1][1:],
    )
    refused = await problem_of(
        send_proactive_message(services, proactive(FRENCH[2]), caller=CALLER)
    )
    assert isinstance(refused, TooManyRequests)
    assert 3_500 < int(refused.headers["Retry-After"]) <= 3_601
    # A failed send reached no one: its place is free again.
    await fetch(
        pool,
        "UPDATE whatsapp_messages SET status = 'failed' WHERE id = %s RETURNING id",
        first.message_id,
    )
    await fetch(
        pool,
        "UPDATE whatsapp_messages SET status = 'failed' WHERE contact_wa_id = %s RETURNING id",
        FRENCH[0][1:],
    )
    assert (await send_proactive_message(services, proactive(FRENCH[2]), caller=CALLER)).status == (
        "pending"
    )


async def test_an_unknown_template_refreshes_the_cache_at_most_once_a_minute(
    services: SendServices, graph: Graph, simulator: CloudApiSimulator
) -> None:
    # The cache was never filled: the first send reads it from Meta.
    await send_proactive_message(services, proactive(), caller=CALLER)
    assert graph.template_lists == 1

    for _ in range(3):
        problem = await problem_of(
            send_proactive_message(services, proactive(template_name="typo"), caller=CALLER)
        )
        assert problem.code == "template_not_found"
    assert graph.template_lists == 1


async def test_meta_unreachable_with_the_template_not_cached_is_503(
    pool: Pool, local_queue: LocalQueue
) -> None:
    graph = Graph("http://127.0.0.1:9")  # nothing listens there
    services = SendServices(
        pool=pool,
        bus=local_queue,
        outbound_queue="outbound-messages",
        phone_number_id=NUMBER,
        templates=TemplateCatalogue(pool=pool, graph=graph.client, waba_id=WABA),
        business_initiated_limit=BusinessInitiatedLimit(),
    )
    problem = await problem_of(send_proactive_message(services, proactive(), caller=CALLER))
    await graph.http.aclose()

    assert isinstance(problem, Unavailable) and problem.code == "template_catalogue_unavailable"


async def test_list_templates_answers_the_cache_with_its_age(services: SendServices) -> None:
    empty = await list_templates(services.templates)
    assert empty.items == [] and empty.refreshed_at is None

    await services.templates.refresh()
    everything = await list_templates(services.templates)
    approved = await list_templates(services.templates, status="approved")
    welcome = await list_templates(services.templates, name="welcome_message")

    assert len(everything.items) == 7 and everything.refreshed_at is not None
    assert {t.status for t in approved.items} == {"APPROVED"} and len(approved.items) == 5
    assert sorted(t.language for t in welcome.items) == ["en_US", "fr"]
    encoded = msgspec.json.decode(msgspec.json.encode(welcome))
    assert encoded["items"][0]["id"] and encoded["items"][0]["body_parameter_count"] == 2
