"""The composition root: one set of services per worker process, built on first use.

Trigger adapters call :func:`get_services`; the first call reads settings (failing with a message
naming any missing setting), applies migrations, opens the pool and connects the bus. Later calls
return the same objects, so a warm worker pays nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from shared_code.bus.port import MessageBus
from shared_code.config import Settings, load_settings
from shared_code.db.migrations import apply_migrations
from shared_code.db.pool import Pool, open_pool
from shared_code.processing import EventProcessor
from shared_code.routing import LoggingRouter
from shared_code.webhook_intake import WebhookIntake

logger = logging.getLogger(__name__)

__all__ = ["Services", "build_services", "get_services", "shutdown_services"]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    pool: Pool
    bus: MessageBus
    intake: WebhookIntake
    processor: EventProcessor

    async def close(self) -> None:
        await self.bus.close()
        await self.pool.close()


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
    processor = EventProcessor(pool, LoggingRouter())
    logger.info("services ready (bus: %s)", settings.bus_backend)
    return Services(settings=settings, pool=pool, bus=bus, intake=intake, processor=processor)


async def _connect_bus(settings: Settings, pool: Pool) -> MessageBus:
    if settings.bus_backend == "local":
        from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS, LocalQueue

        await apply_migrations(
            settings.database_url.reveal(), LOCAL_BUS_MIGRATIONS, set_name="local_bus"
        )
        return LocalQueue(pool)
    from shared_code.bus.azure_service_bus import AzureServiceBus

    service_bus = settings.service_bus
    if service_bus.connection_string is not None:
        return AzureServiceBus.from_connection_string(service_bus.connection_string.reveal())
    assert service_bus.fully_qualified_namespace is not None  # checked by Settings
    return AzureServiceBus.from_namespace(
        service_bus.fully_qualified_namespace, service_bus.managed_identity_client_id
    )
