"""The template catalogue on PostgreSQL with the Cloud API simulator over HTTP: paged refreshes,
templates that vanish, and Meta's signed status webhooks through the intake and the processor."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from local.simulator import CloudApiSimulator, SimulatorConfig
from shared_code.bus.local_queue import LocalQueue
from shared_code.db import templates as repository
from shared_code.db.pool import Pool
from shared_code.outbox import sweep_outbox
from shared_code.processing import EventProcessor, Outcome
from shared_code.routing import InboundForRouting
from shared_code.secrets import Secret
from shared_code.templates import TemplateCatalogue, TemplateCatalogueUnavailable
from shared_code.webhook_intake import WebhookIntake
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_client_logs")]

APP_SECRET = "test-app-secret"
TOKEN = "test-access-token"
WABA = "200000000000001"


class Received:
    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, str | None]] = []

    async def receive(self, request: Request) -> Response:
        self.bodies.append((await request.body(), request.headers.get(SIGNATURE_HEADER)))
        return Response(status_code=200)


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[tuple[Received, str]]:
    """A webhook receiver in a thread of its own (as tests/integration/test_simulator.py's)."""
    received = Received()
    app = Starlette(routes=[Route("/webhook", received.receive, methods=["POST"])])
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, loop="asyncio")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    yield received, f"http://127.0.0.1:{port}/webhook"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
async def simulator(webhook_receiver: tuple[Received, str]) -> AsyncIterator[CloudApiSimulator]:
    received, url = webhook_receiver
    received.bodies.clear()
    sim = CloudApiSimulator(
        SimulatorConfig(app_secret=APP_SECRET, access_token=TOKEN, webhook_url=url, waba_id=WABA)
    )
    await sim.start()
    yield sim
    await sim.stop()


class CountingGraph:
    def __init__(self, base_url: str, token: str = TOKEN) -> None:
        self.paths: list[str] = []

        async def count(request: httpx.Request) -> None:
            self.paths.append(f"{request.url.path}?{request.url.query.decode()}")

        self.client = GraphApiClient(
            base_url=base_url,
            api_version="v23.0",
            access_token=Secret(token),
            phone_number_id="100000000000001",
            http=httpx.AsyncClient(event_hooks={"request": [count]}),
            retry_attempts=1,
        )


@pytest.fixture
async def graph(simulator: CloudApiSimulator) -> AsyncIterator[CountingGraph]:
    counting = CountingGraph(simulator.base_url)
    yield counting
    await counting.client._http.aclose()


async def test_the_graph_client_follows_every_page_of_the_list(
    simulator: CloudApiSimulator, graph: CountingGraph
) -> None:
    listed = await graph.client.list_message_templates(WABA, page_size=2)

    expected = simulator.templates()
    assert [(t["name"], t["language"]) for t in listed] == [
        (t["name"], t["language"]) for t in expected
    ]
    assert listed[0].keys() == {"name", "language", "status", "category", "id", "components"}
    # 7 templates, 2 a page: 4 requests, each after the first with the previous page's cursor.
    assert len(graph.paths) == 4
    assert "after=" not in graph.paths[0] and all("after=" in p for p in graph.paths[1:])
    assert all("limit=2" in p for p in graph.paths)


async def test_a_wrong_token_fails_the_refresh_and_leaves_the_cache(
    simulator: CloudApiSimulator, pool: Pool
) -> None:
    bad = CountingGraph(simulator.base_url, token="not-the-token")
    catalogue = TemplateCatalogue(pool=pool, graph=bad.client, waba_id=WABA)
    with pytest.raises(TemplateCatalogueUnavailable, match="code 190"):
        await catalogue.refresh()
    rows, refreshed_at = await catalogue.list()
    assert rows == [] and refreshed_at is None
    await bad.client._http.aclose()


async def test_a_refresh_stores_what_sends_need_and_marks_vanished_templates_deleted(
    simulator: CloudApiSimulator, graph: CountingGraph, pool: Pool
) -> None:
    catalogue = TemplateCatalogue(pool=pool, graph=graph.client, waba_id=WABA)

    report = await catalogue.refresh()

    assert report.templates == 7 and report.marked_deleted == 0
    rows, refreshed_at = await catalogue.list()
    assert refreshed_at is not None
    by_key = {(r.name, r.language): r for r in rows}
    welcome = by_key[("welcome_message", "fr")]
    assert (welcome.status, welcome.category, welcome.body_parameter_count) == (
        "APPROVED",
        "MARKETING",
        2,
    )
    order = by_key[("order_update", "en_US")]
    assert (order.header_format, order.header_parameter_count, order.body_parameter_count) == (
        "TEXT",
        1,
        1,
    )
    assert order.buttons == [
        {"index": 0, "type": "QUICK_REPLY", "parameter_count": 0},
        {"index": 1, "type": "URL", "parameter_count": 1},
        {"index": 2, "type": "COPY_CODE", "parameter_count": 1},
    ]
    assert by_key[("welcome", "en_US")].body_parameter_count == 1  # {{first_name}}
    assert by_key[("appointment_reminder", "en_US")].status == "PENDING"
    assert by_key[("black_friday_promo", "en_US")].status == "REJECTED"

    # Meta no longer lists one (deleted in WhatsApp Manager): the next refresh marks it.
    simulator._api.templates._templates.pop(("appointment_reminder", "en_US"))
    report = await catalogue.refresh()

    assert report.templates == 6 and report.marked_deleted == 1
    rows, _ = await catalogue.list()
    assert ("appointment_reminder", "en_US") not in {(r.name, r.language) for r in rows}
    deleted, _ = await catalogue.list(status="DELETED")
    assert [(r.name, r.status) for r in deleted] == [("appointment_reminder", "DELETED")]
    async with pool.connection() as conn:
        assert (await repository.catalogue_state(conn, WABA)).template_count == 6


async def test_the_timer_refreshes_an_empty_catalogue_then_only_when_it_is_old(
    simulator: CloudApiSimulator, graph: CountingGraph, pool: Pool
) -> None:
    catalogue = TemplateCatalogue(pool=pool, graph=graph.client, waba_id=WABA)
    assert await catalogue.refresh_if_due(timedelta(minutes=15)) is not None
    assert await catalogue.refresh_if_due(timedelta(minutes=15)) is None
    requests = len(graph.paths)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_template_catalogues SET refreshed_at = now() - interval '16 minutes'"
        )
    assert await catalogue.refresh_if_due(timedelta(minutes=15)) is not None
    assert len(graph.paths) == requests + 1


class NoRouting:
    async def route(self, message: InboundForRouting) -> None:  # pragma: no cover - unused
        raise AssertionError("a template event is not routed")


async def queued_template_events(pool: Pool) -> list[tuple[str, str, bytes]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT message_id, session_id, body FROM local_bus_messages "
            "WHERE queue = 'inbound-events' AND message_id LIKE 'template:%' ORDER BY sequence_number"
        )
        return [(str(m), str(s), bytes(b)) for m, s, b in await cursor.fetchall()]


async def test_a_status_webhook_reaches_the_processor_and_updates_the_cache(
    simulator: CloudApiSimulator,
    graph: CountingGraph,
    pool: Pool,
    local_queue: LocalQueue,
    webhook_receiver: tuple[Received, str],
) -> None:
    received, _ = webhook_receiver
    catalogue = TemplateCatalogue(pool=pool, graph=graph.client, waba_id=WABA)
    await catalogue.refresh()
    intake = WebhookIntake(
        pool=pool, bus=local_queue, queue="inbound-events", app_secret=APP_SECRET
    )
    processor = EventProcessor(pool, NoRouting(), catalogue)

    answer = simulator.set_template_status("welcome_message", "fr", "PAUSED", "LOW_QUALITY")
    assert answer["webhook_scheduled"] is True
    async with asyncio.timeout(5):
        while not received.bodies:
            await asyncio.sleep(0.01)
    body, signature = received.bodies[0]
    assert (await intake.receive(body, signature)).status_code == 200
    await intake.drain()

    (message_id, session_id, event), *_ = await queued_template_events(pool)
    assert message_id.startswith("template:900000000000002:PAUSED:")
    assert session_id == f"templates:{WABA}"
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT status, event_count FROM whatsapp_webhook_events")
        assert await cursor.fetchall() == [("published", 1)]

    assert await processor.handle(event) is Outcome.TEMPLATE_STATUS
    template = await catalogue.find("welcome_message", "fr")
    assert template is not None
    assert (template.status, template.status_reason) == ("PAUSED", "LOW_QUALITY")

    # A redelivery changes nothing; an older webhook (approved, a minute before) neither.
    assert await processor.handle(event) is Outcome.TEMPLATE_STATUS
    payload = msgspec.json.decode(body)
    payload["entry"][0]["time"] -= 60
    payload["entry"][0]["changes"][0]["value"].update(event="APPROVED", reason="NONE")
    older = msgspec.json.encode(
        {
            "kind": "template",
            "waba_id": WABA,
            "entry_time": payload["entry"][0]["time"],
            "update": payload["entry"][0]["changes"][0]["value"],
        }
    )
    assert await processor.handle(older) is Outcome.TEMPLATE_STATUS
    template = await catalogue.find("welcome_message", "fr")
    assert template is not None and template.status == "PAUSED"


async def test_a_status_webhook_for_a_template_not_cached_refreshes_the_catalogue(
    simulator: CloudApiSimulator, graph: CountingGraph, pool: Pool
) -> None:
    catalogue = TemplateCatalogue(pool=pool, graph=graph.client, waba_id=WABA)
    processor = EventProcessor(pool, NoRouting(), catalogue)
    simulator.set_template_status("appointment_reminder", "en_US", "APPROVED")
    event: dict[str, Any] = {
        "kind": "template",
        "waba_id": WABA,
        "entry_time": 1_750_000_000,
        "update": {
            "event": "APPROVED",
            "message_template_id": 900000000000006,
            "message_template_name": "appointment_reminder",
            "message_template_language": "en_US",
            "reason": "NONE",
        },
    }

    assert await processor.handle(msgspec.json.encode(event)) is Outcome.TEMPLATE_STATUS

    template = await catalogue.find("appointment_reminder", "en_US")
    assert template is not None and template.status == "APPROVED"
    assert template.body_parameter_count == 1


class RefusingBus:
    async def publish(self, queue: str, messages: Any) -> None:
        raise ConnectionError("broker down")

    async def close(self) -> None:
        return None


async def test_the_outbox_sweeper_queues_a_template_event_the_intake_could_not(
    pool: Pool, local_queue: LocalQueue
) -> None:
    body = msgspec.json.encode(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": WABA,
                    "time": 1_750_000_000,
                    "changes": [
                        {
                            "field": "message_template_status_update",
                            "value": {
                                "event": "REJECTED",
                                "message_template_id": 900000000000002,
                                "message_template_name": "welcome_message",
                                "message_template_language": "fr",
                                "reason": "INCORRECT_CATEGORY",
                            },
                        }
                    ],
                }
            ],
        }
    )
    intake = WebhookIntake(
        pool=pool,
        bus=RefusingBus(),  # type: ignore[arg-type]
        queue="inbound-events",
        app_secret=APP_SECRET,
    )
    assert (await intake.receive(body, sign(body, APP_SECRET))).status_code == 200
    await intake.drain()
    assert await queued_template_events(pool) == []

    report = await sweep_outbox(pool, local_queue, "inbound-events", min_age_seconds=0)

    assert report.published == 1
    ((message_id, session_id, _),) = await queued_template_events(pool)
    assert message_id == "template:900000000000002:REJECTED:1750000000"
    assert session_id == f"templates:{WABA}"
