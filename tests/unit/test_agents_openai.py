"""The OpenAI-compatible agent against httpx.MockTransport: the request it makes, the answers it
accepts, and every way an answer can be unusable."""

from __future__ import annotations

import json
from collections.abc import Callable
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
    TextReply,
)
from shared_code.orchestrator.agents.openai_chat import DEFAULT_SYSTEM_PROMPT, OpenAIChatAgent
from shared_code.secrets import Secret

AT = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def request_for(
    text: str | None = "What time do you open?",
    *,
    message_type: str = "text",
    history: tuple[HistoryEntry, ...] = (),
) -> AgentRequest:
    return AgentRequest(
        conversation_id=7,
        phone_number_id="1234567890",
        contact=Contact(wa_id="16505551234", profile_name="Ana"),
        message=InboundMessage(wamid="wamid.1", message_type=message_type, text=text),
        history=history,
    )


def completion(content: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class Recorder:
    """A MockTransport handler that records requests and answers with ``respond``."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self._respond = respond

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._respond(request)

    @property
    def body(self) -> dict[str, Any]:
        [request] = self.requests
        body: dict[str, Any] = json.loads(request.content)
        return body


def agent_with(
    respond: Callable[[httpx.Request], httpx.Response], **options: Any
) -> tuple[OpenAIChatAgent, Recorder]:
    recorder = Recorder(respond)
    http = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    settings: dict[str, Any] = {"base_url": "https://api.openai.com/v1/", "model": "gpt-4o-mini"}
    settings.update(options)
    return OpenAIChatAgent(http=http, **settings), recorder


def answer(content: Any = "We open at 9.") -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=completion(content))


async def test_openai_request_and_answer() -> None:
    history = (
        HistoryEntry(direction="inbound", message_type="text", text="Hi", at=AT),
        HistoryEntry(
            direction="outbound", message_type="text", text="Hello! How can I help?", at=AT
        ),
        HistoryEntry(direction="inbound", message_type="image", text=None, at=AT),
        HistoryEntry(direction="inbound", message_type="image", text="my receipt", at=AT),
        HistoryEntry(direction="outbound", message_type="template", text=None, at=AT),
    )
    agent, recorder = agent_with(answer("  We open at 9.\n"), api_key=Secret("sk-test"))
    reply = await agent.reply(request_for(history=history))
    assert reply == TextReply(body="We open at 9.")
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test"
    assert "api-key" not in request.headers
    assert recorder.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "[image]"},
            {"role": "user", "content": "[image] my receipt"},
            {"role": "assistant", "content": "[template]"},
            {"role": "user", "content": "What time do you open?"},
        ],
    }


async def test_azure_style_uses_api_key_header_and_api_version() -> None:
    agent, recorder = agent_with(
        answer(),
        base_url="https://res.openai.azure.com/openai/deployments/chat",
        api_key=Secret("azure-key"),
        api_version="2024-10-21",
        system_prompt="Be brief.",
    )
    assert await agent.reply(request_for()) == TextReply(body="We open at 9.")
    [request] = recorder.requests
    assert request.url.path == "/openai/deployments/chat/chat/completions"
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "azure-key"
    assert "Authorization" not in request.headers
    assert recorder.body["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_without_a_key_no_credentials_are_sent() -> None:
    agent, recorder = agent_with(answer(), base_url="http://localhost:11434/v1", model="llama3.2")
    await agent.reply(request_for())
    [request] = recorder.requests
    assert "Authorization" not in request.headers and "api-key" not in request.headers
    assert "api-version" not in request.url.params
    assert recorder.body["model"] == "llama3.2"


@pytest.mark.parametrize(
    ("message_type", "text", "content"),
    [
        ("location", None, "[location]"),
        ("interactive", "Opening hours", "Opening hours"),
        ("button", "Yes", "Yes"),
        ("document", "contract", "[document] contract"),
    ],
)
async def test_the_current_message_content(
    message_type: str, text: str | None, content: str
) -> None:
    agent, recorder = agent_with(answer())
    await agent.reply(request_for(text, message_type=message_type))
    assert recorder.body["messages"][-1] == {"role": "user", "content": content}


@pytest.mark.parametrize("message_type", ["reaction", "system"])
async def test_reactions_are_not_sent_to_the_model(message_type: str) -> None:
    agent, recorder = agent_with(answer())
    assert await agent.reply(request_for("👍", message_type=message_type)) is None
    assert recorder.requests == []


async def test_a_long_answer_is_cut_to_one_whatsapp_message() -> None:
    agent, _ = agent_with(answer("word " * 1000))
    reply = await agent.reply(request_for())
    assert isinstance(reply, TextReply)
    assert len(reply.body) <= MAX_TEXT_LENGTH and reply.body.endswith("…")


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (httpx.Response(500, json={"error": {"message": "boom"}}), "HTTP 500"),
        (httpx.Response(401, json={"error": {"message": "bad key"}}), "HTTP 401"),
        (httpx.Response(429, json={"error": {"message": "slow down"}}), "HTTP 429"),
        (httpx.Response(200, content=b"<html>proxy error</html>"), "not usable"),
        (httpx.Response(200, json={"choices": "nope"}), "not usable"),
        (httpx.Response(200, json={"object": "chat.completion"}), "not usable"),
        (httpx.Response(200, json={"choices": []}), "no choices"),
        (httpx.Response(200, json=completion(None)), "no text content"),
        (httpx.Response(200, json=completion("   ")), "no text content"),
        (httpx.Response(200, json=completion(["part"])), "not usable"),
    ],
)
async def test_unusable_answers_raise_agent_error(response: httpx.Response, problem: str) -> None:
    agent, _ = agent_with(lambda request: response)
    with pytest.raises(AgentError, match=problem):
        await agent.reply(request_for())


async def test_a_transport_failure_raises_agent_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    agent, _ = agent_with(refuse)
    with pytest.raises(AgentError, match="ConnectError"):
        await agent.reply(request_for())


async def test_a_busy_model_endpoint_is_asked_again() -> None:
    answers = iter([httpx.Response(429), httpx.Response(200, json=completion("We open at 9."))])
    agent, recorder = agent_with(lambda request: next(answers))
    assert await agent.reply(request_for()) == TextReply(body="We open at 9.")
    assert len(recorder.requests) == 2
