"""GET status's checks against the real things: PostgreSQL, the local bus and the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from psycopg_pool import AsyncConnectionPool

from local.simulator.app import CloudApiSimulator
from local.simulator.config import DEFAULT_PHONE_NUMBER_ID, SimulatorConfig
from shared_code.bus.local_queue import LocalQueue
from shared_code.bus.port import OutgoingMessage, QueueDepthsForbidden
from shared_code.config import Settings
from shared_code.db.pool import Connection
from shared_code.management.health import StatusReport, integration_status, token_cache
from shared_code.ratelimit import RateLimiter
from shared_code.runtime import Services, build_services

pytestmark = pytest.mark.integration

TOKEN = "status-test-token"  # test values, checked never to show up in a report
SECRETS = (TOKEN, "test-app-secret", "status-verify-token", "status-management-key")

BuildServices = Callable[..., Awaitable[Services]]


@pytest.fixture
async def simulator() -> AsyncIterator[CloudApiSimulator]:
    simulator = CloudApiSimulator(SimulatorConfig(app_secret=SECRETS[1], access_token=TOKEN))
    await simulator.start()
    token_cache.clear()
    yield simulator
    await simulator.stop()
    token_cache.clear()


@pytest.fixture
async def services_for(
    database_url: str, simulator: CloudApiSimulator
) -> AsyncIterator[BuildServices]:
    built: list[Services] = []

    async def build(*, token: str = TOKEN) -> Services:
        settings = Settings.from_environment(
            {
                "WHATSAPP_ACCESS_TOKEN": token,
                "WHATSAPP_PHONE_NUMBER_ID": DEFAULT_PHONE_NUMBER_ID,
                "WHATSAPP_WEBHOOK_VERIFY_TOKEN": SECRETS[2],
                "WHATSAPP_APP_SECRET": SECRETS[1],
                "WHATSAPP_GRAPH_BASE_URL": simulator.base_url,
                "DATABASE_URL": database_url,
                "BUS_BACKEND": "local",
                "MANAGEMENT_API_KEYS": SECRETS[3],
            }
        )
        services = await build_services(settings)
        built.append(services)
        return services

    yield build
    for services in built:
        await services.close()


def shows_no_value(report: StatusReport, database_url: str) -> None:
    text = msgspec.json.encode(report).decode()
    for secret in (*SECRETS, database_url):
        assert secret not in text


async def test_healthy_with_the_local_bus_and_the_simulator(
    services_for: BuildServices, database_url: str
) -> None:
    services = await services_for()
    bus = services.bus
    assert isinstance(bus, LocalQueue)
    inbound = services.settings.inbound_queue_name
    outbound = services.settings.outbound_queue_name
    await bus.publish(
        inbound,
        [
            OutgoingMessage(body=b"{}", message_id="now"),
            OutgoingMessage(
                body=b"{}",
                message_id="later",
                scheduled_enqueue_time=datetime.now(UTC) + timedelta(hours=1),
            ),
        ],
    )
    await bus.publish(outbound, [OutgoingMessage(body=b"{}", message_id="poison")])
    poison = await bus.receive(outbound)
    assert poison is not None
    await bus.dead_letter(poison, reason="test")

    report = await integration_status(services)

    assert report.healthy, report.checks
    assert report.failing == []
    assert report.bus is not None
    assert [(q.queue, q.active, q.scheduled, q.dead_lettered) for q in report.bus.queues] == [
        (inbound, 1, 1, 0),
        (outbound, 0, 0, 1),
    ]
    assert report.warnings == [f"queue {outbound}: 1 dead-lettered message(s)"]
    assert report.access_token is not None and report.access_token.valid
    assert report.database.reachable
    assert {(m.set_name, m.applied == m.expected) for m in report.database.schema} == {
        ("app", True),
        ("local_bus", True),
    }
    assert [limits.phone_number_id for limits in report.rate_limits] == [DEFAULT_PHONE_NUMBER_ID]
    assert report.rate_limits[0].minute.configured == 1000
    presence = {s.name: s.set for s in report.settings}
    assert presence["WHATSAPP_ACCESS_TOKEN"] and presence["MANAGEMENT_API_KEYS"]
    assert not presence["WHATSAPP_BUSINESS_ACCOUNT_ID"]
    assert report.webhooks is not None and report.webhooks.last_received_at is None
    assert report.error_rates is not None and report.error_rates.outbound_attempted == 0
    shows_no_value(report, database_url)


async def test_a_wrong_token_fails_its_check(
    services_for: BuildServices, database_url: str
) -> None:
    services = await services_for(token="not-the-token")

    report = await integration_status(services)

    assert not report.healthy
    assert report.failing == ["access_token"]
    assert report.access_token is not None
    assert (report.access_token.valid, report.access_token.error_code) == (False, 190)
    shows_no_value(report, database_url)


async def test_the_token_verdict_is_kept_a_minute(
    services_for: BuildServices, simulator: CloudApiSimulator
) -> None:
    services = await services_for()
    assert (await integration_status(services)).healthy

    simulator.update_config(access_token="rotated-at-meta")
    cached = await integration_status(services)
    token_cache.clear()  # as a minute passing does
    asked_again = await integration_status(services)

    assert cached.healthy
    assert asked_again.failing == ["access_token"]


async def test_a_dead_database_fails_within_the_deadline(services_for: BuildServices) -> None:
    services = await services_for()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection and says nothing, as a hung server

    black_hole = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = black_hole.sockets[0].getsockname()[1]
    dead_pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
        f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=30",
        open=False,
        kwargs={"autocommit": True},
    )
    await dead_pool.open(wait=False)
    dead = dataclasses.replace(
        services,
        pool=dead_pool,
        limiter=RateLimiter(dead_pool, services.settings.rate_limits),
    )
    try:
        started = time.monotonic()
        report = await integration_status(dead, check_seconds=1.0)
        elapsed = time.monotonic() - started
    finally:
        await dead_pool.close(timeout=0.5)
        black_hole.close()

    assert elapsed < 2.0
    assert not report.healthy
    assert report.failing == ["database", "rate_limits", "webhooks", "error_rates"]
    assert not report.database.reachable
    database_check = next(c for c in report.checks if c.name == "database")
    assert database_check.detail == "no answer within 1 s"
    # The bus (its own pool) and Graph still answer.
    assert report.bus is not None and report.bus.reachable
    assert report.access_token is not None and report.access_token.valid


class _ForbiddenDepths:
    """A bus that answers but will not tell its queues' depths (no Manage right)."""

    async def publish(self, queue: str, messages: object) -> None:
        raise AssertionError("nothing is published here")

    async def queue_depths(self, queues: object) -> list[object]:
        raise QueueDepthsForbidden("no Manage right on the namespace")

    async def close(self) -> None:
        pass


async def test_queue_depths_it_may_not_read_are_a_warning_not_an_outage(
    services_for: BuildServices,
) -> None:
    services = dataclasses.replace(await services_for(), bus=_ForbiddenDepths())  # type: ignore[arg-type]
    report = await integration_status(services)
    assert report.healthy, report.failing
    assert report.bus is not None and report.bus.reachable and not report.bus.depths_readable
    assert any("queue depths unknown" in warning for warning in report.warnings)
