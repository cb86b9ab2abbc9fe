"""Which agents exist in this deployment, built once per worker from settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared_code.orchestrator.agents.base import Agent
from shared_code.orchestrator.agents.echo import EchoAgent
from shared_code.orchestrator.agents.http_platform import HttpPlatformAgent
from shared_code.orchestrator.agents.openai_chat import DEFAULT_SYSTEM_PROMPT, OpenAIChatAgent
from shared_code.orchestrator.agents.rules import RulesAgent
from shared_code.secrets import Secret

logger = logging.getLogger(__name__)

__all__ = ["AGENT_NAMES", "AgentRegistry", "AgentSettings", "build_agents"]

AGENT_NAMES = frozenset(
    {EchoAgent.name, RulesAgent.name, OpenAIChatAgent.name, HttpPlatformAgent.name}
)

DEFAULT_FALLBACK_MESSAGE = "Sorry, I can't answer right now. Please try again in a moment."


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """The agents' settings; each field's environment variable is named in its comment.

    Values are checked where they are read (:mod:`shared_code.config`), which reports every bad
    setting at once.
    """

    default_agent: str = EchoAgent.name  # WHATSAPP_DEFAULT_AGENT
    timeout_seconds: float = 15.0  # AGENT_TIMEOUT_SECONDS
    fallback_message: str = DEFAULT_FALLBACK_MESSAGE  # AGENT_FALLBACK_MESSAGE
    history_limit: int = 20  # AGENT_HISTORY_LIMIT
    rules_file: Path | None = None  # AGENT_RULES_FILE
    openai_base_url: str | None = None  # OPENAI_BASE_URL
    openai_model: str | None = None  # OPENAI_MODEL
    openai_api_key: Secret | None = None  # OPENAI_API_KEY (Key Vault: openai-api-key)
    openai_api_version: str | None = None  # OPENAI_API_VERSION: set for Azure OpenAI
    openai_system_prompt: str = DEFAULT_SYSTEM_PROMPT  # OPENAI_SYSTEM_PROMPT
    http_agent_url: str | None = None  # AGENT_HTTP_URL
    http_agent_secret: Secret | None = None  # AGENT_HTTP_SECRET (Key Vault: agent-http-secret)


class AgentRegistry:
    def __init__(self, agents: Mapping[str, Agent], default: str) -> None:
        if default not in agents:
            raise ValueError(f"the default agent {default!r} is not among {sorted(agents)}")
        self._agents = dict(agents)
        self._default = default
        self.names = frozenset(self._agents)

    @property
    def default(self) -> Agent:
        return self._agents[self._default]

    def get(self, name: str | None) -> Agent:
        """The agent called ``name``; the default one for ``None`` or a name not built here."""
        if name is None:
            return self.default
        agent = self._agents.get(name)
        if agent is None:
            logger.warning(
                "No agent named %s in this deployment; using the default agent %s",
                name,
                self._default,
            )
            return self.default
        return agent


def build_agents(settings: AgentSettings, http: httpx.AsyncClient) -> AgentRegistry:
    """Every agent the settings allow, the echo agent always.

    Raises :class:`ValueError` naming the missing settings when the default agent cannot be
    built, and the rules file's own error (a ``ValueError`` too) when it is set but invalid.
    """
    requirements = _requirements(settings)
    agents: dict[str, Agent] = {EchoAgent.name: EchoAgent()}
    for name, present in requirements.items():
        missing = [setting for setting, is_set in present.items() if not is_set]
        if not missing:
            agents[name] = _build(name, settings, http)
        elif len(missing) < len(present):
            # Half a configuration is more likely a mistake than a choice: say which half.
            logger.warning("The %s agent is not available: %s not set", name, ", ".join(missing))

    default = settings.default_agent
    if default not in agents:
        if default in requirements:
            missing = [setting for setting, is_set in requirements[default].items() if not is_set]
            raise ValueError(
                f"WHATSAPP_DEFAULT_AGENT is {default!r} but {', '.join(missing)} not set"
            )
        raise ValueError(
            f"WHATSAPP_DEFAULT_AGENT is {default!r}, which is not an agent; choose one of "
            + ", ".join(sorted(AGENT_NAMES))
        )
    logger.info("Agents available: %s (default %s)", ", ".join(sorted(agents)), default)
    return AgentRegistry(agents, default)


def _requirements(settings: AgentSettings) -> dict[str, dict[str, bool]]:
    """For each optional agent, its settings and whether each is set."""
    secret = settings.http_agent_secret
    return {
        RulesAgent.name: {"AGENT_RULES_FILE": settings.rules_file is not None},
        OpenAIChatAgent.name: {
            "OPENAI_BASE_URL": bool(settings.openai_base_url),
            "OPENAI_MODEL": bool(settings.openai_model),
        },
        HttpPlatformAgent.name: {
            "AGENT_HTTP_URL": bool(settings.http_agent_url),
            "AGENT_HTTP_SECRET": secret is not None and bool(secret.reveal()),
        },
    }


def _build(name: str, settings: AgentSettings, http: httpx.AsyncClient) -> Agent:
    """The agent called ``name``, once :func:`_requirements` found all its settings."""
    if name == RulesAgent.name and settings.rules_file is not None:
        return RulesAgent.from_file(settings.rules_file)
    if name == OpenAIChatAgent.name and settings.openai_base_url and settings.openai_model:
        return OpenAIChatAgent(
            http=http,
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            api_key=settings.openai_api_key,
            api_version=settings.openai_api_version,
            system_prompt=settings.openai_system_prompt,
        )
    if name == HttpPlatformAgent.name and settings.http_agent_url and settings.http_agent_secret:
        return HttpPlatformAgent(
            http=http, url=settings.http_agent_url, secret=settings.http_agent_secret
        )
    raise AssertionError(f"no builder for the {name} agent")
