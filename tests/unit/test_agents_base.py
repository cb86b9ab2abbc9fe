"""The agent contract: reply_or_fallback's guarantees, text fitting, redacted reprs, public API."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

import shared_code.orchestrator.agents as agents_package
from shared_code.log_privacy import pseudonym
from shared_code.orchestrator.agents.base import (
    MAX_TEXT_LENGTH,
    AgentError,
    AgentReply,
    AgentRequest,
    Contact,
    HistoryEntry,
    InboundMessage,
    TextReply,
    fit_text,
    reply_or_fallback,
)

PHONE = "16505551234"
SECRET_TEXT = "my card number is 4111"
FALLBACK = TextReply(body="Sorry, try again later.")


def request_for(text: str | None = SECRET_TEXT) -> AgentRequest:
    return AgentRequest(
        conversation_id=42,
        phone_number_id="1234567890",
        contact=Contact(wa_id=PHONE, profile_name="Ana"),
        message=InboundMessage(wamid="wamid.1", message_type="text", text=text),
    )


class FixedAgent:
    name = "fixed"

    def __init__(self, reply: AgentReply | None) -> None:
        self._reply = reply

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        return self._reply


class RaisingAgent:
    name = "raising"

    def __init__(self, error: BaseException) -> None:
        self._error = error

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        raise self._error


class StuckAgent:
    """Never answers until cancelled; ``started`` tells when it is waiting."""

    name = "stuck"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


async def test_the_agents_reply_passes_through() -> None:
    answer = TextReply(body="Hello")
    assert (
        await reply_or_fallback(
            FixedAgent(answer), request_for(), timeout_seconds=5, fallback=FALLBACK
        )
        is answer
    )


async def test_a_deliberate_silence_stays_silent() -> None:
    assert (
        await reply_or_fallback(
            FixedAgent(None), request_for(), timeout_seconds=5, fallback=FALLBACK
        )
        is None
    )


async def test_timeout_cancels_the_agent_and_gives_the_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = StuckAgent()
    with caplog.at_level(logging.ERROR):
        reply = await reply_or_fallback(
            agent, request_for(), timeout_seconds=0.01, fallback=FALLBACK
        )
    assert reply is FALLBACK
    assert agent.cancelled
    [record] = caplog.records
    assert "stuck" in record.getMessage() and "42" in record.getMessage()
    assert "timed out" in record.getMessage()


async def test_agent_error_gives_the_fallback_and_logs_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = RaisingAgent(AgentError("upstream answered HTTP 502"))
    with caplog.at_level(logging.ERROR):
        reply = await reply_or_fallback(agent, request_for(), timeout_seconds=5, fallback=FALLBACK)
    assert reply is FALLBACK
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "raising" in record.getMessage()
    assert "42" in record.getMessage()
    assert "HTTP 502" in record.getMessage()


async def test_any_exception_gives_the_fallback_and_logs_only_its_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = RaisingAgent(KeyError(f"{SECRET_TEXT} from {PHONE}"))
    with caplog.at_level(logging.DEBUG):
        reply = await reply_or_fallback(agent, request_for(), timeout_seconds=5, fallback=FALLBACK)
    assert reply is FALLBACK
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    [error] = errors
    assert "KeyError" in error.getMessage()
    assert "42" in error.getMessage()
    assert SECRET_TEXT not in error.getMessage() and PHONE not in error.getMessage()


async def test_the_callers_cancellation_is_not_swallowed() -> None:
    agent = StuckAgent()
    task = asyncio.create_task(
        reply_or_fallback(agent, request_for(), timeout_seconds=60, fallback=FALLBACK)
    )
    await agent.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agent.cancelled


def test_fit_text_keeps_short_text() -> None:
    text = "x" * MAX_TEXT_LENGTH
    assert fit_text(text) is text


def test_fit_text_cuts_to_the_limit_with_an_ellipsis() -> None:
    fitted = fit_text("word " * 2000)
    assert len(fitted) <= MAX_TEXT_LENGTH
    assert fitted.endswith("word…")
    assert fitted.startswith("word word")


def test_reprs_hide_text_and_numbers() -> None:
    request = request_for()
    entry = HistoryEntry(
        direction="inbound",
        message_type="text",
        text=SECRET_TEXT,
        at=datetime(2026, 11, 25, 9, 30, tzinfo=UTC),
    )
    rendered = repr((request, entry, TextReply(body=SECRET_TEXT)))
    assert SECRET_TEXT not in rendered
    assert PHONE not in rendered
    assert "wamid.1" not in rendered
    assert pseudonym("wamid.1") in rendered


def test_package_exports_are_pinned() -> None:
    assert sorted(agents_package.__all__) == [
        "Agent",
        "AgentError",
        "AgentRegistry",
        "AgentReply",
        "AgentRequest",
        "AgentSettings",
        "Contact",
        "EchoAgent",
        "HandoffReply",
        "HistoryEntry",
        "HttpPlatformAgent",
        "InboundMessage",
        "InteractiveReply",
        "OpenAIChatAgent",
        "RulesAgent",
        "RulesFileError",
        "TemplateReply",
        "TextReply",
        "build_agents",
        "reply_or_fallback",
        "verify_bridge_signature",
    ]
    for name in agents_package.__all__:
        assert hasattr(agents_package, name)
