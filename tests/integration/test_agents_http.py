"""The HTTP agents over real sockets: small aiohttp servers on 127.0.0.1 play an OpenAI-compatible
chat completions API (OpenAI and Azure styles) and the external agent platform, which checks the
bridge's signature with the helper the platform side is given."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiohttp import web

from shared_code.orchestrator.agents import (
    AgentError,
    AgentRequest,
    AgentSettings,
    Contact,
    HistoryEntry,
    InboundMessage,
    InteractiveReply,
    TemplateReply,
    TextReply,
    build_agents,
    reply_or_fallback,
    verify_bridge_signature,
)
from shared_code.orchestrator.agents.http_platform import SIGNATURE_HEADER, TIMESTAMP_HEADER
from shared_code.secrets import Secret

pytestmark = pytest.mark.integration

OPENAI_KEY = "sk-integration"
AZURE_KEY = "azure-integration"
AZURE_API_VERSION = "2024-10-21"
PLATFORM_SECRET = "platform-integration-secret"
AT = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
FALLBACK = TextReply(body="Sorry, try again later.")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """What a fake server received: one entry per request."""

    requests: list[dict[str, Any]] = field(default_factory=list)


async def serve(routes: list[web.RouteDef]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        yield client


# --- chat completions ---------------------------------------------------------------------------


@dataclass
class ChatServer:
    url: str
    seen: Seen


@pytest.fixture
async def chat_server() -> AsyncIterator[ChatServer]:
    seen = Seen()

    async def completions(request: web.Request, *, azure: bool) -> web.Response:
        body = await request.json()
        seen.requests.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": body,
            }
        )
        if azure:
            authorised = (
                request.headers.get("api-key") == AZURE_KEY
                and request.query.get("api-version") == AZURE_API_VERSION
                and "Authorization" not in request.headers
            )
        else:
            authorised = request.headers.get("Authorization") == f"Bearer {OPENAI_KEY}"
        if not authorised:
            return web.json_response({"error": {"message": "unauthorised"}}, status=401)
        last = body["messages"][-1]["content"]
        if last == "please fail":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        content = f"{body['model']} saw {len(body['messages'])} messages"
        return web.json_response(
            {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            }
        )

    async def openai(request: web.Request) -> web.Response:
        return await completions(request, azure=False)

    async def azure(request: web.Request) -> web.Response:
        return await completions(request, azure=True)

    runner, url = await serve(
        [
            web.post("/v1/chat/completions", openai),
            web.post("/openai/deployments/chat-dep/chat/completions", azure),
        ]
    )
    yield ChatServer(url, seen)
    await runner.cleanup()


def request_for(
    text: str | None, *, message_type: str = "text", reply_id: str | None = None
) -> AgentRequest:
    return AgentRequest(
        conversation_id=42,
        phone_number_id="1234567890",
        contact=Contact(wa_id="16505551234", profile_name="Ana"),
        message=InboundMessage(
            wamid="wamid.int", message_type=message_type, text=text, reply_id=reply_id, timestamp=AT
        ),
        history=(
            HistoryEntry(direction="inbound", message_type="text", text="Hi", at=AT),
            HistoryEntry(direction="outbound", message_type="text", text="Hello!", at=AT),
        ),
    )


async def test_openai_style_chat_completions(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    settings = AgentSettings(
        default_agent="openai",
        openai_base_url=f"{chat_server.url}/v1",
        openai_model="gpt-4o-mini",
        openai_api_key=Secret(OPENAI_KEY),
        openai_system_prompt="Be brief.",
    )
    agent = build_agents(settings, http).get(None)
    reply = await agent.reply(request_for("When do you open?"))
    assert reply == TextReply(body="gpt-4o-mini saw 4 messages")
    [seen] = chat_server.seen.requests
    assert seen["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert seen["body"]["model"] == "gpt-4o-mini"
    assert [(m["role"], m["content"]) for m in seen["body"]["messages"]] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "When do you open?"),
    ]


async def test_azure_style_chat_completions(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    settings = AgentSettings(
        default_agent="openai",
        openai_base_url=f"{chat_server.url}/openai/deployments/chat-dep",
        openai_model="gpt-4o",
        openai_api_key=Secret(AZURE_KEY),
        openai_api_version=AZURE_API_VERSION,
    )
    agent = build_agents(settings, http).get("openai")
    assert await agent.reply(request_for("Hello")) == TextReply(body="gpt-4o saw 4 messages")
    [seen] = chat_server.seen.requests
    assert seen["headers"]["api-key"] == AZURE_KEY
    assert seen["query"] == {"api-version": AZURE_API_VERSION}
    assert "Authorization" not in seen["headers"]


async def test_chat_completions_errors_become_agent_errors(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    wrong_key = AgentSettings(
        default_agent="openai",
        openai_base_url=f"{chat_server.url}/v1",
        openai_model="m",
        openai_api_key=Secret("sk-wrong"),
    )
    with pytest.raises(AgentError, match="HTTP 401"):
        await build_agents(wrong_key, http).get(None).reply(request_for("Hello"))
    right_key = AgentSettings(
        default_agent="openai",
        openai_base_url=f"{chat_server.url}/v1",
        openai_model="m",
        openai_api_key=Secret(OPENAI_KEY),
    )
    agent = build_agents(right_key, http).get(None)
    with pytest.raises(AgentError, match="HTTP 503"):
        await agent.reply(request_for("please fail"))
    assert (
        await reply_or_fallback(
            agent, request_for("please fail"), timeout_seconds=5, fallback=FALLBACK
        )
        is FALLBACK
    )


# --- the agent platform -------------------------------------------------------------------------

BUTTONS = {
    "type": "button",
    "body": {"text": "Pick one"},
    "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]},
}
ANSWERS: dict[str, Any] = {
    "text": {"type": "text", "text": "Hello from the platform"},
    "buttons": {"type": "interactive", "interactive": BUTTONS},
    "template": {"type": "template", "template": {"name": "welcome", "language": {"code": "fr"}}},
    "none": {"type": "none"},
    "garbage": {"type": "carrier-pigeon"},
}


@dataclass
class PlatformServer:
    url: str
    seen: Seen
    release: asyncio.Event


@pytest.fixture
async def platform() -> AsyncIterator[PlatformServer]:
    seen = Seen()
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        if not verify_bridge_signature(
            PLATFORM_SECRET,
            request.headers.get(TIMESTAMP_HEADER),
            raw,
            request.headers.get(SIGNATURE_HEADER),
        ):
            return web.json_response({"error": "bad signature"}, status=401)
        body = json.loads(raw)
        seen.requests.append(body)
        command = body["message"]["text"]
        if command == "slow":
            await release.wait()
        if command == "boom":
            return web.Response(status=500, text="internal error")
        return web.json_response(ANSWERS.get(command, ANSWERS["text"]))

    runner, url = await serve([web.post("/agent", handle)])
    yield PlatformServer(f"{url}/agent", seen, release)
    release.set()  # let a slow handler finish so the server can stop
    await runner.cleanup()


def platform_settings(server: PlatformServer, secret: str = PLATFORM_SECRET) -> AgentSettings:
    return AgentSettings(
        default_agent="http", http_agent_url=server.url, http_agent_secret=Secret(secret)
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("text", TextReply(body="Hello from the platform")),
        ("buttons", InteractiveReply(interactive=BUTTONS)),
        ("template", TemplateReply(name="welcome", language_code="fr")),
        ("none", None),
    ],
)
async def test_platform_answers_each_reply_type(
    platform: PlatformServer, http: httpx.AsyncClient, command: str, expected: Any
) -> None:
    agent = build_agents(platform_settings(platform), http).get(None)
    assert await agent.reply(request_for(command)) == expected
    [body] = platform.seen.requests
    assert body["conversation_id"] == 42
    assert body["contact"] == {"wa_id": "16505551234", "profile_name": "Ana"}
    assert body["message"]["wamid"] == "wamid.int"
    assert [entry["direction"] for entry in body["history"]] == ["inbound", "outbound"]


async def test_platform_refuses_a_wrong_signature(
    platform: PlatformServer, http: httpx.AsyncClient
) -> None:
    agent = build_agents(platform_settings(platform, secret="not-the-secret"), http).get(None)
    with pytest.raises(AgentError, match="HTTP 401"):
        await agent.reply(request_for("text"))
    assert platform.seen.requests == []


async def test_platform_server_error_is_an_agent_error(
    platform: PlatformServer, http: httpx.AsyncClient
) -> None:
    agent = build_agents(platform_settings(platform), http).get(None)
    with pytest.raises(AgentError, match="HTTP 500"):
        await agent.reply(request_for("boom"))


async def test_platform_unknown_reply_is_an_agent_error(
    platform: PlatformServer, http: httpx.AsyncClient
) -> None:
    agent = build_agents(platform_settings(platform), http).get(None)
    with pytest.raises(AgentError, match="not a valid reply"):
        await agent.reply(request_for("garbage"))


async def test_a_slow_platform_gets_the_fallback(
    platform: PlatformServer, http: httpx.AsyncClient
) -> None:
    agent = build_agents(platform_settings(platform), http).get(None)
    reply = await reply_or_fallback(
        agent, request_for("slow"), timeout_seconds=0.2, fallback=FALLBACK
    )
    assert reply is FALLBACK
    assert (
        len(platform.seen.requests) == 1
    )  # it did reach the platform, which never answered in time
