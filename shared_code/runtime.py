"""The composition root: one set of services per worker process, built on first use.

Trigger adapters call :func:`get_services` (queue triggers :func:`get_services_or_pause`); the
first call reads settings (Key Vault first when configured, failing with a message naming any
missing setting), checks the agents, then applies migrations, opens the pool and connects the bus.
A start that fails part way closes what it had opened. Later calls return the same objects, so a
warm worker pays nothing.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx

from shared_code.agent_configs import seed_configurations
from shared_code.bus.port import MessageBus
from shared_code.config import ConfigurationError, Settings, load_settings
from shared_code.db.entra import DatabaseTokenProvider
from shared_code.db.migrations import apply_migrations
from shared_code.db.pool import Pool, open_pool
from shared_code.heap import freeze_startup_heap
from shared_code.management.context import ManagementContext, build_management_context
from shared_code.orchestrator.agent_catalog import AgentCatalog
from shared_code.orchestrator.agents import TextReply
from shared_code.orchestrator.agents.registry import build_agents
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.policy import MessagingPolicy
from shared_code.processing import EventProcessor
from shared_code.ratelimit import RateLimiter
from shared_code.sending import OutboundSender
from shared_code.startup_backoff import StartupBackoff
from shared_code.telemetry import configure_telemetry
from shared_code.templates import TemplateCatalogue
from shared_code.webhook_intake import WebhookIntake
from shared_code.whatsapp.graph_client import GraphApiClient

logger = logging.getLogger(__name__)

__all__ = [
    "Services",
    "build_services",
    "get_services",
    "get_services_or_pause",
    "shutdown_services",
    "validate_configuration",
]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    pool: Pool
    bus: MessageBus
    intake: WebhookIntake
    processor: EventProcessor
    sender: OutboundSender
    limiter: RateLimiter
    graph: GraphApiClient
    agent_http: httpx.AsyncClient
    templates: TemplateCatalogue
    management: ManagementContext
    # Entra ID tokens as database passwords (DATABASE_ENTRA_AUTH); None with a password URL.
    database_password: DatabaseTokenProvider | None = None

    async def close(self) -> None:
        # Bounded: a database that accepts and never answers must not hold a worker's shutdown
        # (what the drain leaves pending, the outbox sweeper publishes later).
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                await self.intake.drain()
        except TimeoutError:
            logger.warning("shutdown: forwarding still running after %.0f s; left", _DRAIN_SECONDS)
        await self.graph.aclose()
        await self.agent_http.aclose()
        await self.management.aclose()
        try:
            async with asyncio.timeout(_POOL_CLOSE_SECONDS):
                await self.bus.close()
        except TimeoutError:
            logger.warning("shutdown: the bus did not close in %.0f s; left", _POOL_CLOSE_SECONDS)
        await self.pool.close(timeout=_POOL_CLOSE_SECONDS)
        if self.database_password is not None:
            await self.database_password.aclose()
        if self.settings.secret_store is not None:
            await self.settings.secret_store.aclose()


_DRAIN_SECONDS = 5.0
_POOL_CLOSE_SECONDS = 2.0

_services: Services | None = None
_lock: asyncio.Lock | None = None
_startup_backoff = StartupBackoff()


async def get_services() -> Services:
    global _services, _lock
    if _services is not None:
        return _services
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _services is None:
            settings = await load_settings()
            # Before the services open, so their first spans and logs are exported too.
            configure_telemetry(settings.telemetry)
            _services = await build_services(settings)
            freeze_startup_heap()
    return _services


async def get_services_or_pause() -> Services:
    """:func:`get_services` for queue triggers: a failed start waits (1, 2, 4 … 30 s over
    consecutive failures, see :mod:`shared_code.startup_backoff`) before it raises, so a bad
    setting does not spend every message's deliveries into the dead-letter queue in seconds."""
    try:
        services = await get_services()
    except Exception as error:
        await _startup_backoff.pause_after(error)
        raise
    _startup_backoff.succeeded()
    return services


async def shutdown_services() -> None:
    global _services
    if _services is not None:
        services, _services = _services, None
        await services.close()


async def build_services(settings: Settings) -> Services:
    """Check the configuration, then open everything; a failure part way closes what was opened
    (the settings' Key Vault store too: the services own it)."""
    async with AsyncExitStack() as opened:
        if settings.secret_store is not None:
            opened.push_async_callback(settings.secret_store.aclose)
        validate_configuration(settings)
        services = await _open_services(settings, opened)
        opened.pop_all()
    return services


def validate_configuration(settings: Settings) -> None:
    """What the settings can tell before anything is opened: the agents the environment describes
    must build (seeding an empty catalogue needs them), and so must their catalogue rows.

    Raises :class:`ConfigurationError` naming the settings at fault.
    """
    offline = httpx.AsyncClient(transport=_NoNetwork())
    try:
        build_agents(settings.agents, offline)
        seed_configurations(settings.agents, settings.agent_routing_rules)
    except ValueError as error:
        raise ConfigurationError(str(error)) from error


class _NoNetwork(httpx.AsyncBaseTransport):
    """The transport of the client agents are built with for the check: it is never used."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("the configuration check sends nothing")


async def _open_services(settings: Settings, opened: AsyncExitStack) -> Services:
    database_password: DatabaseTokenProvider | None = None
    if settings.database_entra_auth:
        from shared_code.identity import azure_credential

        database_password = DatabaseTokenProvider(azure_credential(settings.azure_client_id))
        opened.push_async_callback(database_password.aclose)
    database_url = settings.database_url.reveal()
    await apply_migrations(database_url, password=database_password)
    pool = await open_pool(
        database_url, max_size=settings.database_pool_max_size, password=database_password
    )
    opened.push_async_callback(pool.close, timeout=_POOL_CLOSE_SECONDS)
    bus = await _connect_bus(settings, pool, database_password)
    opened.push_async_callback(bus.close)
    intake = WebhookIntake(
        pool=pool,
        bus=bus,
        queue=settings.inbound_queue_name,
        # The Secret itself: each webhook reveals it, so a rotated app secret applies at once.
        app_secret=settings.whatsapp_app_secret,
    )
    graph = GraphApiClient.from_settings(settings)
    opened.push_async_callback(graph.aclose)
    limiter = RateLimiter(pool, settings.rate_limits)
    # Agents get their own client: their slow upstreams must not hold Graph API connections.
    agent_http = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.agents.timeout_seconds, connect=5.0),
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
    )
    opened.push_async_callback(agent_http.aclose)
    # Agents come from whatsapp_agents, seeded from the agent settings on the first start.
    agent_catalog = AgentCatalog(
        pool=pool,
        settings=settings.agents,
        routing_rules=settings.agent_routing_rules,
        http=agent_http,
    )
    await agent_catalog.start()
    orchestrator = Orchestrator(
        pool=pool,
        bus=bus,
        outbound_queue=settings.outbound_queue_name,
        graph=graph,
        catalog=agent_catalog,
        timeout_seconds=settings.agents.timeout_seconds,
        fallback=TextReply(body=settings.agents.fallback_message),
        history_limit=settings.agents.history_limit,
        mark_as_read=settings.mark_as_read,
        policy=MessagingPolicy(pool, settings.policy),
    )
    templates = TemplateCatalogue(
        pool=pool, graph=graph, waba_id=settings.whatsapp_business_account_id
    )
    processor = EventProcessor(pool, orchestrator, templates)
    sender = OutboundSender(
        pool=pool,
        bus=bus,
        queue=settings.outbound_queue_name,
        graph=graph,
        limiter=limiter,
        policy=settings.retry_policy,
        window_closed_template=settings.policy.window_closed_template,
    )
    management = build_management_context(settings)
    opened.push_async_callback(management.aclose)
    logger.info("services ready (bus: %s)", settings.bus_backend)
    return Services(
        settings=settings,
        pool=pool,
        bus=bus,
        intake=intake,
        processor=processor,
        sender=sender,
        limiter=limiter,
        graph=graph,
        agent_http=agent_http,
        templates=templates,
        management=management,
        database_password=database_password,
    )


async def _connect_bus(
    settings: Settings, pool: Pool, database_password: DatabaseTokenProvider | None = None
) -> MessageBus:
    if settings.bus_backend == "local":
        from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS, LocalQueue

        await apply_migrations(
            settings.database_url.reveal(),
            LOCAL_BUS_MIGRATIONS,
            set_name="local_bus",
            password=database_password,
        )
        # A pool of its own: bus writes commit without waiting for the disk (see local_queue.py),
        # the app's rows keep synchronous commits.
        bus_pool = await open_pool(
            settings.database_url.reveal(),
            max_size=settings.database_pool_max_size,
            name="local-bus",
            synchronous_commit=False,
            password=database_password,
        )
        return LocalQueue(bus_pool, owns_pool=True)
    from shared_code.bus.azure_service_bus import AzureServiceBus

    service_bus = settings.service_bus
    if service_bus.connection_string is not None:
        return AzureServiceBus.from_connection_string(service_bus.connection_string.reveal())
    assert service_bus.fully_qualified_namespace is not None  # checked by Settings
    return AzureServiceBus.from_namespace(
        service_bus.fully_qualified_namespace, service_bus.managed_identity_client_id
    )
