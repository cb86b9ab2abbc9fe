"""The agent platform client: the signature scheme (pinned vectors and every refusal), the body
it posts, and which answers it accepts."""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared_code.orchestrator.agents.base import (
    MAX_TEXT_LENGTH,
    AgentError,
    AgentRequest,
    Contact,
    HistoryEntry,
    InboundMessage,
    InteractiveReply,
    TemplateReply,
    TextReply,
)
from shared_code.orchestrator.agents.http_platform import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HttpPlatformAgent,
    bridge_signature,
    verify_bridge_signature,
)
from shared_code.secrets import Secret

SECRET = "platform-secret"
NOW = 1_764_063_000
BODY = b'{"conversation_id":1}'
# HMAC-SHA256(b"platform-secret", b"1764063000." + BODY), computed once and pinned so a change
# in the scheme shows: the platform side depends on it byte for byte.
PINNED = "sha256=6c8f69f0d88b96f64d5a146cd5a1a81b247f6a12ff5d1c5ff63e2d525f8d9b02"
AT = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    assert bridge_signature(SECRET, str(NOW), BODY) == PINNED
    assert bridge_signature(Secret(SECRET), str(NOW), BODY) == PINNED
    assert (
        "sha256=" + hmac.new(b"platform-secret", b"1764063000." + BODY, "sha256").hexdigest()
        == PINNED
    )


def test_a_fresh_valid_signature_verifies() -> None:
    assert verify_bridge_signature(SECRET, str(NOW), BODY, PINNED, now=NOW)
    assert verify_bridge_signature(
        Secret(SECRET), str(NOW), BODY, PINNED.upper().replace("SHA256=", "sha256="), now=NOW + 299
    )


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "signature", "now"),
    [
        ("other-secret", str(NOW), BODY, PINNED, NOW),
        ("", str(NOW), BODY, PINNED, NOW),
        (SECRET, str(NOW), BODY + b" ", PINNED, NOW),
        (SECRET, str(NOW + 1), BODY, PINNED, NOW),  # the timestamp is part of what is signed
        (SECRET, str(NOW), BODY, PINNED, NOW + 301),  # too old: a replay
        (SECRET, str(NOW), BODY, PINNED, NOW - 301),  # from the future
        (SECRET, None, BODY, PINNED, NOW),
        (SECRET, "", BODY, PINNED, NOW),
        (SECRET, "-1", BODY, PINNED, NOW),
        (SECRET, "1.5e9", BODY, PINNED, NOW),
        (SECRET, "١٧٦٤٠٦٣٠٠٠", BODY, PINNED, NOW),  # non-ASCII digits
        (SECRET, str(NOW), BODY, None, NOW),
        (SECRET, str(NOW), BODY, "", NOW),
        (SECRET, str(NOW), BODY, PINNED[len("sha256=") :], NOW),
        (SECRET, str(NOW), BODY, "sha1=" + PINNED[len("sha256=") :], NOW),
        (SECRET, str(NOW), BODY, PINNED[:-1], NOW),
        (SECRET, str(NOW), BODY, PINNED[:-1] + "é", NOW),
        (SECRET, str(NOW), BODY, PINNED + "00", NOW),
    ],
)
def test_verification_refuses(
    secret: str, timestamp: str | None, body: bytes, signature: str | None, now: int
) -> None:
    assert not verify_bridge_signature(secret, timestamp, body, signature, now=now)


def test_max_age_is_configurable() -> None:
    assert not verify_bridge_signature(
        SECRET, str(NOW), BODY, PINNED, max_age_seconds=10, now=NOW + 11
    )
    assert verify_bridge_signature(SECRET, str(NOW), BODY, PINNED, max_age_seconds=10, now=NOW + 10)


def request_for() -> AgentRequest:
    return AgentRequest(
        conversation_id=42,
        phone_number_id="1234567890",
        contact=Contact(wa_id="16505551234", profile_name="Ana"),
        message=InboundMessage(
            wamid="wamid.2",
            message_type="interactive",
            text="Opening hours",
            reply_id="menu_hours",
            timestamp=AT,
        ),
        history=(
            HistoryEntry(direction="outbound", message_type="interactive", text="Menu", at=AT),
        ),
    )


def agent_answering(response: httpx.Response) -> tuple[HttpPlatformAgent, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return response

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    agent = HttpPlatformAgent(
        http=http,
        url="https://agents.example.com/whatsapp",
        secret=Secret(SECRET),
        clock=lambda: NOW + 0.9,
    )
    return agent, requests


async def test_the_posted_request_is_signed_and_complete() -> None:
    agent, requests = agent_answering(httpx.Response(200, json={"type": "none"}))
    assert await agent.reply(request_for()) is None
    [request] = requests
    assert str(request.url) == "https://agents.example.com/whatsapp"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers[TIMESTAMP_HEADER] == str(NOW)
    assert verify_bridge_signature(
        SECRET,
        request.headers[TIMESTAMP_HEADER],
        request.content,
        request.headers[SIGNATURE_HEADER],
        now=NOW,
    )
    assert json.loads(request.content) == {
        "conversation_id": 42,
        "phone_number_id": "1234567890",
        "contact": {"wa_id": "16505551234", "profile_name": "Ana"},
        "message": {
            "wamid": "wamid.2",
            "type": "interactive",
            "text": "Opening hours",
            "reply_id": "menu_hours",
            "timestamp": "2026-11-25T09:30:00Z",
        },
        "history": [
            {
                "direction": "outbound",
                "type": "interactive",
                "text": "Menu",
                "at": "2026-11-25T09:30:00Z",
            }
        ],
    }


BUTTONS = {
    "type": "button",
    "body": {"text": "Pick one"},
    "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}]},
}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"type": "text", "text": "Hi"}, TextReply(body="Hi")),
        (
            {"type": "text", "text": "https://x.example", "preview_url": True},
            TextReply(body="https://x.example", preview_url=True),
        ),
        (
            {"type": "text", "text": "Hi", "trace_id": "abc"},
            TextReply(body="Hi"),
        ),  # extra fields are ignored
        ({"type": "interactive", "interactive": BUTTONS}, InteractiveReply(interactive=BUTTONS)),
        (
            {
                "type": "template",
                "template": {
                    "name": "welcome",
                    "language": {"code": "fr"},
                    "components": [{"type": "body", "parameters": []}],
                },
            },
            TemplateReply(
                name="welcome", language_code="fr", components=({"type": "body", "parameters": []},)
            ),
        ),
        (
            {"type": "template", "template": {"name": "welcome", "language": {"code": "fr"}}},
            TemplateReply(name="welcome", language_code="fr"),
        ),
        ({"type": "none"}, None),
    ],
)
async def test_accepted_answers(answer: dict[str, Any], expected: Any) -> None:
    agent, _ = agent_answering(httpx.Response(200, json=answer))
    assert await agent.reply(request_for()) == expected


async def test_a_long_text_answer_is_cut() -> None:
    agent, _ = agent_answering(httpx.Response(200, json={"type": "text", "text": "y" * 5000}))
    reply = await agent.reply(request_for())
    assert isinstance(reply, TextReply) and len(reply.body) == MAX_TEXT_LENGTH


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (httpx.Response(500, text="oops"), "HTTP 500"),
        (httpx.Response(302, headers={"Location": "/login"}), "HTTP 302"),
        (httpx.Response(200, text="not json"), "not a valid reply"),
        (httpx.Response(200, json={"text": "missing type"}), "missing required field `type`"),
        (httpx.Response(200, json={"type": "audio", "audio": {}}), "Invalid value 'audio'"),
        (httpx.Response(200, json={"type": "text", "text": ""}), "empty text"),
        (httpx.Response(200, json={"type": "text", "text": 5}), "Expected `str`, got `int`"),
        (
            httpx.Response(200, json={"type": "interactive", "interactive": {"type": "button"}}),
            "missing required field `body` - at `$.interactive`",
        ),
        (
            httpx.Response(200, json={"type": "template", "template": {"name": "x"}}),
            "missing required field `language`",
        ),
        (httpx.Response(200, json=[{"type": "none"}]), "Expected `object`, got `array`"),
    ],
)
async def test_unusable_answers_raise_agent_error(response: httpx.Response, problem: str) -> None:
    agent, _ = agent_answering(response)
    with pytest.raises(AgentError) as raised:
        await agent.reply(request_for())
    assert problem in str(raised.value)


async def test_an_unreachable_platform_raises_agent_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    agent = HttpPlatformAgent(
        http=httpx.AsyncClient(transport=httpx.MockTransport(refuse)),
        url="https://x.example",
        secret=Secret(SECRET),
    )
    with pytest.raises(AgentError, match="ConnectTimeout"):
        await agent.reply(request_for())


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        HttpPlatformAgent(http=httpx.AsyncClient(), url="https://x.example", secret=Secret(""))


async def test_a_busy_platform_is_asked_again_with_the_same_signed_body() -> None:
    requests: list[httpx.Request] = []
    answers = iter([httpx.Response(503), httpx.Response(200, json={"type": "text", "text": "Hi"})])

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return next(answers)

    agent = HttpPlatformAgent(
        http=httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        url="https://agents.example.com/whatsapp",
        secret=Secret(SECRET),
        clock=lambda: NOW + 0.9,
    )
    assert await agent.reply(request_for()) == TextReply(body="Hi")
    first, second = requests
    assert first.content == second.content
    assert first.headers[SIGNATURE_HEADER] == second.headers[SIGNATURE_HEADER]
