"""Which agents a deployment gets from its settings, and how a name picks one."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared_code.orchestrator.agents.echo import EchoAgent
from shared_code.orchestrator.agents.http_platform import HttpPlatformAgent
from shared_code.orchestrator.agents.openai_chat import OpenAIChatAgent
from shared_code.orchestrator.agents.registry import AgentRegistry, AgentSettings, build_agents
from shared_code.orchestrator.agents.rules import RulesAgent, RulesFileError
from shared_code.secrets import Secret

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "config" / "agent_rules.example.json"

EVERYTHING = AgentSettings(
    default_agent="openai",
    rules_file=EXAMPLE_RULES,
    openai_base_url="http://localhost:11434/v1",
    openai_model="llama3.2",
    http_agent_url="https://agents.example.com/whatsapp",
    http_agent_secret=Secret("s3cret"),
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def test_defaults_give_only_the_echo_agent(http: httpx.AsyncClient) -> None:
    registry = build_agents(AgentSettings(), http)
    assert registry.names == frozenset({"echo"})
    assert isinstance(registry.get(None), EchoAgent)


def test_every_agent_is_built_when_configured(http: httpx.AsyncClient) -> None:
    registry = build_agents(EVERYTHING, http)
    assert registry.names == frozenset({"echo", "rules", "openai", "http"})
    assert isinstance(registry.get("echo"), EchoAgent)
    assert isinstance(registry.get("rules"), RulesAgent)
    assert isinstance(registry.get("openai"), OpenAIChatAgent)
    assert isinstance(registry.get("http"), HttpPlatformAgent)
    assert isinstance(registry.get(None), OpenAIChatAgent)
    assert registry.get("rules").name == "rules"


def test_an_unknown_name_falls_back_to_the_default_with_a_warning(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    registry = build_agents(EVERYTHING, http)
    with caplog.at_level(logging.WARNING):
        agent = registry.get("gpt-7")
    assert isinstance(agent, OpenAIChatAgent)
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "gpt-7" in record.getMessage()


def test_none_uses_the_default_silently(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    registry = build_agents(EVERYTHING, http)
    with caplog.at_level(logging.WARNING):
        registry.get(None)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (AgentSettings(default_agent="rules"), "'rules' but AGENT_RULES_FILE not set"),
        (
            AgentSettings(default_agent="openai"),
            "'openai' but OPENAI_BASE_URL, OPENAI_MODEL not set",
        ),
        (
            AgentSettings(default_agent="openai", openai_base_url="https://api.openai.com/v1"),
            "'openai' but OPENAI_MODEL not set",
        ),
        (
            AgentSettings(default_agent="http", http_agent_url="https://x.example"),
            "'http' but AGENT_HTTP_SECRET not set",
        ),
        (
            AgentSettings(
                default_agent="http",
                http_agent_url="https://x.example",
                http_agent_secret=Secret(""),
            ),
            "'http' but AGENT_HTTP_SECRET not set",
        ),
        (
            AgentSettings(default_agent="gpt"),
            "'gpt', which is not an agent; choose one of echo, http, openai, rules",
        ),
    ],
)
def test_a_default_that_cannot_be_built_is_refused(
    http: httpx.AsyncClient, settings: AgentSettings, problem: str
) -> None:
    with pytest.raises(ValueError, match="WHATSAPP_DEFAULT_AGENT") as raised:
        build_agents(settings, http)
    assert problem in str(raised.value)


def test_half_a_configuration_is_reported(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    settings = AgentSettings(openai_model="gpt-4o-mini", http_agent_secret=Secret("x"))
    with caplog.at_level(logging.WARNING):
        registry = build_agents(settings, http)
    assert registry.names == frozenset({"echo"})
    messages = sorted(record.getMessage() for record in caplog.records)
    assert messages == [
        "The http agent is not available: AGENT_HTTP_URL not set",
        "The openai agent is not available: OPENAI_BASE_URL not set",
    ]


def test_an_invalid_rules_file_stops_the_build(http: httpx.AsyncClient, tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"reply": {"type": "none"}}]}))
    with pytest.raises(RulesFileError, match=r"\$\.rules\[0\]"):
        build_agents(AgentSettings(rules_file=path), http)


def test_registry_refuses_a_default_it_does_not_have() -> None:
    with pytest.raises(ValueError, match="'rules'"):
        AgentRegistry({"echo": EchoAgent()}, "rules")


def test_settings_defaults() -> None:
    settings = AgentSettings()
    assert settings.default_agent == "echo"
    assert settings.timeout_seconds == 15.0
    assert settings.history_limit == 20
    assert (
        settings.fallback_message
        == "Sorry, I can't answer right now. Please try again in a moment."
    )
    assert "WhatsApp" in settings.openai_system_prompt
    assert "s3cret" not in repr(EVERYTHING)
