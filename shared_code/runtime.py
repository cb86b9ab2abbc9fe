"""The composition root: one set of services per worker process, built on first use.

Trigger adapters call :func:`get_services`; the first call reads settings (failing with a message
naming any missing setting), applies migrations, opens the pool and connects the bus. Later calls
return the same objects, so a warm worker pays nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

from shared_code.bus.port import MessageBus
from shared_code.config import Settings, load_settings
from shared_code.db.migrations import apply_migrations
from shared_code.db.pool import Pool, open_pool
from shared_code.heap import freeze_startup_heap
from shared_code.management.context import ManagementContext, build_management_context
from shared_code.orchestrator.agent_catalog import AgentCatalog
from shared_code.orchestrator.agents import TextReply
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.policy import MessagingPolicy
from shared_code.processing import EventProcessor
from shared_code.ratelimit import RateLimiter
from shared_code.sending import OutboundSender
from shared_code.templates import TemplateCatalogue
from shared_code.webhook_intake import WebhookIntake
from shared_code.whatsapp.graph_client import GraphApiClient

logger = logging.getLogger(__name__)

__all__ = ["Services", "build_services", "get_services", "shutdown_services"]


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


_DRAIN_SECONDS = 5.0
_POOL_CLOSE_SECONDS = 2.0

_services: Services | None = None
_lock: asyncio.Lock | None = None


async def get_services() -> Services:
    global _services, _lock
    if _services is not None:
        return _services
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _services is None:
            _services = await build_services(load_settings())
            freeze_startup_heap()
    return _services


async def shutdown_services() -> None:
    global _services
    if _services is not None:
        services, _services = _services, None
        await services.close()


async def build_services(settings: Settings) -> Services:
    database_url = settings.database_url.reveal()
    await apply_migrations(database_url)
    pool = await open_pool(database_url, max_size=settings.database_pool_max_size)
    bus = await _connect_bus(settings, pool)
    intake = WebhookIntake(
        pool=pool,
        bus=bus,
        queue=settings.inbound_queue_name,
        app_secret=settings.whatsapp_app_secret.reveal(),
    )
    graph = GraphApiClient.from_settings(settings)
    limiter = RateLimiter(pool, settings.rate_limits)
    # Agents get their own client: their slow upstreams must not hold Graph API connections.
    agent_http = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.agents.timeout_seconds, connect=5.0),
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
    )
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
        management=build_management_context(settings),
    )


async def _connect_bus(settings: Settings, pool: Pool) -> MessageBus:
    if settings.bus_backend == "local":
        from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS, LocalQueue

        await apply_migrations(
            settings.database_url.reveal(), LOCAL_BUS_MIGRATIONS, set_name="local_bus"
        )
        # A pool of its own: bus writes commit without waiting for the disk (see local_queue.py),
        # the app's rows keep synchronous commits.
        bus_pool = await open_pool(
            settings.database_url.reveal(),
            max_size=settings.database_pool_max_size,
            name="local-bus",
            synchronous_commit=False,
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
