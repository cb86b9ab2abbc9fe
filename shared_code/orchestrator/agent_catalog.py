"""The agents the orchestrator uses, read from ``whatsapp_agents`` and kept fresh.

:class:`AgentCatalog` seeds the table from the environment on the first start against an empty
table (:func:`shared_code.agent_configs.seed_configurations`; concurrent first starts take turns
on an advisory lock, so they seed once), then serves an :class:`AgentLineup`: the agents built
from the enabled rows plus the secrets in settings, the routing rules of the rows, and the rows.

Freshness without a message bus of its own: at most once per :data:`CHECK_INTERVAL_SECONDS`,
when the orchestrator asks, one ``SELECT count(*), max(version)`` (a few hundred microseconds)
tells whether anything changed, in which case the rows are read again and the changed agents
rebuilt. So a change made through any instance reaches every instance within about a second
of its next message, and an idle instance costs the database nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import httpx

from shared_code.agent_configs import AgentConfig, AgentConfigInput, seed_configurations
from shared_code.db import agents as rows
from shared_code.db import audit
from shared_code.db.pool import Pool
from shared_code.orchestrator.agent_routing import AgentRoutingRule
from shared_code.orchestrator.agents.base import Agent, AgentReply, AgentRequest
from shared_code.orchestrator.agents.echo import EchoAgent
from shared_code.orchestrator.agents.http_platform import HttpPlatformAgent
from shared_code.orchestrator.agents.openai_chat import OpenAIChatAgent
from shared_code.orchestrator.agents.registry import AgentRegistry, AgentSettings, build_agents
from shared_code.orchestrator.agents.rules import RulesAgent

logger = logging.getLogger(__name__)

__all__ = [
    "CHECK_INTERVAL_SECONDS",
    "AgentCatalog",
    "AgentLineup",
    "LineupSource",
    "NamedAgent",
    "StaticLineup",
    "build_configured_agent",
]

CHECK_INTERVAL_SECONDS: Final = 1.0
SEED_ACTOR: Final = "system:seed"


@dataclass(frozen=True, slots=True)
class AgentLineup:
    """The agents at one moment: who answers, the routing rules, and each agent's configuration
    by name (empty when the agents come from settings alone)."""

    registry: AgentRegistry
    rules: tuple[AgentRoutingRule, ...] = ()
    configs: Mapping[str, AgentConfig] = field(default_factory=dict)


class LineupSource(Protocol):
    async def current(self) -> AgentLineup: ...


class StaticLineup:
    """A lineup that never changes: agents built from settings (tests, and tools without a table)."""

    def __init__(self, registry: AgentRegistry, rules: Iterable[AgentRoutingRule] = ()) -> None:
        self._lineup = AgentLineup(registry, tuple(rules))

    async def current(self) -> AgentLineup:
        return self._lineup


class NamedAgent:
    """An agent answering under its configuration's name (two ``openai`` rows are two agents)."""

    def __init__(self, name: str, inner: Agent) -> None:
        self.name = name
        self.inner = inner

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        return await self.inner.reply(request)


class AgentCatalog:
    def __init__(
        self,
        *,
        pool: Pool,
        settings: AgentSettings,
        routing_rules: Iterable[AgentRoutingRule],
        http: httpx.AsyncClient,
        check_interval_seconds: float = CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._env_rules = tuple(routing_rules)
        self._http = http
        self._interval = check_interval_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._lineup: AgentLineup | None = None
        self._signature: tuple[int, int] | None = None
        self._next_check = 0.0
        # Built agents by name with the version they were built from: an unchanged row keeps its
        # agent (a rules file is read once, not on every change elsewhere).
        self._built: dict[str, tuple[int, Agent]] = {}

    async def start(self) -> list[AgentConfig]:
        """Seed an empty table from the environment and load the lineup; the rows seeded.

        Raises :class:`ValueError` when the table is empty and the environment's default agent
        cannot be built (as the settings-only bridge did), so a bad first deployment fails at start.
        """
        async with self._pool.connection() as conn, conn.transaction():
            seeded = await rows.seed_if_empty(conn, self._seed_configurations)
            for config in seeded:
                await audit.record(
                    conn,
                    actor=SEED_ACTOR,
                    action="agent.seed",
                    target_type="agent",
                    target_id=config.id,
                    details={"name": config.name, "kind": config.kind, "version": config.version},
                )
        if seeded:
            logger.info(
                "agent configurations seeded from the environment: %s",
                ", ".join(c.name for c in seeded),
            )
        await self.current()
        return seeded

    def _seed_configurations(self) -> list[AgentConfigInput]:
        # Checks the environment the way the settings-only bridge did (raises naming what is
        # missing), then describes it as rows.
        build_agents(self._settings, self._http)
        return seed_configurations(self._settings, self._env_rules)

    async def current(self) -> AgentLineup:
        lineup = self._lineup
        if lineup is not None and self._clock() < self._next_check:
            return lineup
        async with self._lock:
            if self._lineup is not None and self._clock() < self._next_check:
                return self._lineup
            try:
                await self._refresh()
            except Exception as error:
                if self._lineup is None:
                    raise
                # A database hiccup, or a row edited by hand into nonsense: the last lineup
                # keeps answering, and the next check tries again.
                logger.warning(
                    "agent catalogue check failed (%s); the last one stays", type(error).__name__
                )
            self._next_check = self._clock() + self._interval
            assert self._lineup is not None
            return self._lineup

    async def _refresh(self) -> None:
        async with self._pool.connection() as conn:
            signature = await rows.catalog_signature(conn)
            if signature == self._signature and self._lineup is not None:
                return
            configs = await rows.fetch_all(conn)
        self._lineup = self._build(configs)
        self._signature = signature
        logger.info(
            "agent catalogue loaded: %d configuration(s), default %s",
            len(configs),
            self._lineup.registry.default.name,
        )

    def _build(self, configs: list[AgentConfig]) -> AgentLineup:
        agents: dict[str, Agent] = {}
        built: dict[str, tuple[int, Agent]] = {}
        for config in configs:
            if not config.enabled:
                continue
            previous = self._built.get(config.name)
            if previous is not None and previous[0] == config.version:
                agent = previous[1]
            else:
                try:
                    agent = NamedAgent(
                        config.name, build_configured_agent(config, self._settings, self._http)
                    )
                except ValueError as error:
                    # The message names settings and file paths, never message text.
                    logger.warning(
                        "agent %s (%s) is not available: %s", config.name, config.kind, error
                    )
                    continue
            agents[config.name] = agent
            built[config.name] = (config.version, agent)
        self._built = built
        default = next((c.name for c in configs if c.is_default and c.name in agents), None)
        if default is None:
            logger.error("no usable default agent configured; the echo agent stands in")
            default = "echo"
            if default not in agents:
                agents[default] = NamedAgent(default, EchoAgent())
        rules = tuple(
            AgentRoutingRule(
                agent=c.name,
                keywords=tuple(c.routing_keywords),
                reply_ids=tuple(c.routing_reply_ids),
                assign=c.sticky_routing,
            )
            for c in configs  # already in routing order
            if c.name in agents and (c.routing_keywords or c.routing_reply_ids)
        )
        return AgentLineup(
            AgentRegistry(agents, default),
            rules,
            {c.name: c for c in configs if c.name in agents},
        )


def build_configured_agent(
    config: AgentConfig, settings: AgentSettings, http: httpx.AsyncClient
) -> Agent:
    """The agent a configuration describes, its NULL options taken from the environment and its
    secrets from settings; :class:`ValueError` naming what is missing or broken."""
    options = config.settings
    if config.kind == "echo":
        return EchoAgent()
    if config.kind == "rules":
        path = options.rules_file or (str(settings.rules_file) if settings.rules_file else None)
        if path is None:
            raise ValueError("no rules file (settings.rules_file or AGENT_RULES_FILE)")
        return RulesAgent.from_file(Path(path))
    if config.kind == "openai":
        base_url = options.base_url or settings.openai_base_url
        model = config.model or settings.openai_model
        if not base_url or not model:
            raise ValueError(
                "needs settings.base_url (or OPENAI_BASE_URL) and model (or OPENAI_MODEL)"
            )
        return OpenAIChatAgent(
            http=http,
            base_url=base_url,
            model=model,
            api_key=settings.openai_api_key,
            api_version=options.api_version or settings.openai_api_version,
            system_prompt=config.system_prompt or settings.openai_system_prompt,
        )
    url = options.url or settings.http_agent_url
    secret = settings.http_agent_secret
    if not url or secret is None or not secret.reveal():
        raise ValueError("needs settings.url (or AGENT_HTTP_URL) and AGENT_HTTP_SECRET")
    return HttpPlatformAgent(http=http, url=url, secret=secret)
