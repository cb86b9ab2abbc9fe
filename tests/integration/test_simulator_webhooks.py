"""Webhook retries as Meta's: an app that is down (503, or no one listening) and comes back gets
every status and user message exactly once; a post is abandoned, and counted, only after
``webhook_retry_for_seconds``; the pause grows and is capped; each attempt is signed afresh."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
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
from shared_code.whatsapp.signature import SIGNATURE_HEADER, verify_signature

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_client_logs")]


APP_SECRET = "webhook-test-secret"
TOKEN = "webhook-test-token"

# Fast retries for tests: 50 ms doubling to 200 ms, no jitter unless a test wants it.
FAST_RETRIES: dict[str, Any] = {
    "webhook_retry_seconds": 0.05,
    "webhook_retry_backoff": 2.0,
    "webhook_retry_max_interval_seconds": 0.2,
    "webhook_retry_jitter": 0.0,
    "webhook_retry_for_seconds": 30.0,
}


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Delivery:
    at: float
    body: bytes
    answered: int
    signature_ok: bool

    @property
    def value(self) -> dict[str, Any]:
        value: dict[str, Any] = msgspec.json.decode(self.body)["entry"][0]["changes"][0]["value"]
        return value


@dataclass
class FlakyApp:
    """The app's webhook: answers ``answer`` (503 while "down"), or is not listening at all."""

    port: int
    answer: int = 200
    secret: str = APP_SECRET
    received: list[Delivery] = field(default_factory=list)
    _server: _QuietServer | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        ok = verify_signature(body, request.headers.get(SIGNATURE_HEADER), self.secret)
        self.received.append(Delivery(time.monotonic(), body, self.answer, ok))
        return Response(status_code=self.answer)

    async def listen(self) -> None:
        app = Starlette(routes=[Route("/webhook", self._receive, methods=["POST"])])
        sock = socket.create_server(("127.0.0.1", self.port))
        self._server = _QuietServer(
            uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, loop="none")
        )
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        await eventually(lambda: self._server is not None and self._server.started)

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None

    def delivered(self) -> list[Delivery]:
        return [item for item in self.received if 200 <= item.answered < 300]


def gaps_between(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@dataclass
class Setup:
    simulator: CloudApiSimulator
    app: FlakyApp
    client: httpx.AsyncClient

    async def send_template(self, to: str) -> str:
        response = await self.client.post(
            f"/v23.0/{self.simulator.config.phone_number_ids[0]}/messages",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={
                "messaging_product": "whatsapp",
                "to": to,
                "type": "template",
                "template": {"name": "hello_world", "language": {"code": "en_US"}},
            },
        )
        assert response.status_code == 200, response.text
        wamid: str = response.json()["messages"][0]["id"]
        return wamid

    async def user_writes(self, wa_id: str) -> dict[str, Any]:
        response = await self.client.post(
            f"/simulator/users/{wa_id}/messages", json={"text": "are you there?"}
        )
        assert response.status_code == 200
        result: dict[str, Any] = response.json()
        return result

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.client.get("/simulator/stats")).json()
        return stats


Start = Callable[..., Awaitable[Setup]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Setup] = []

    async def start(*, listening: bool = True, **settings: Any) -> Setup:
        app = FlakyApp(free_port())
        if listening:
            await app.listen()
        config = {
            "app_secret": APP_SECRET,
            "access_token": TOKEN,
            "webhook_url": app.url,
            "sent_delay_seconds": 0.0,
            "delivered_delay_seconds": 0.01,
            "read_enabled": False,
            **FAST_RETRIES,
            **settings,
        }
        simulator = CloudApiSimulator(SimulatorConfig(**config))
        base_url = await simulator.start()
        setup = Setup(simulator, app, httpx.AsyncClient(base_url=base_url))
        started.append(setup)
        return setup

    yield start
    for setup in started:
        await setup.client.aclose()
        await setup.simulator.stop()
        await setup.app.close()


def statuses_by_key(deliveries: list[Delivery]) -> Counter[tuple[str, str]]:
    return Counter(
        (status["id"], status["status"])
        for item in deliveries
        for status in item.value.get("statuses", ())
    )


def messages_by_wamid(deliveries: list[Delivery]) -> Counter[str]:
    return Counter(
        message["id"] for item in deliveries for message in item.value.get("messages", ())
    )


async def test_an_app_answering_503_gets_everything_exactly_once_when_it_is_back(
    start: Start,
) -> None:
    setup = await start()
    setup.app.answer = 503
    wamids = [await setup.send_template(f"1555000{n:04d}") for n in range(5)]
    inbound = [await setup.user_writes(f"1555100{n:04d}") for n in range(3)]
    await eventually(lambda: len(setup.app.received) >= 30)  # every post failed a few times
    down = await setup.stats()

    setup.app.answer = 200
    await eventually(lambda: len(setup.app.delivered()) == 5 * 2 + 3)
    await asyncio.sleep(0.5)  # any duplicate would arrive by now

    # Users' first posts were answered 503: reported, and retried in the background.
    assert all(r["webhook_status"] == 503 and r["retrying"] for r in inbound)
    delivered = setup.app.delivered()
    assert statuses_by_key(delivered) == {
        (wamid, status): 1 for wamid in wamids for status in ("sent", "delivered")
    }
    assert messages_by_wamid(delivered) == {r["wamid"]: 1 for r in inbound}
    assert all(item.signature_ok for item in setup.app.received)
    assert down["webhook_queue"] == down["webhooks_retrying"] == 13
    assert down["oldest_pending_webhook_seconds"] > 0
    assert down["webhook_retries"] > 0
    after = await setup.stats()
    assert (after["webhook_queue"], after["webhooks_retrying"]) == (0, 0)
    assert after["oldest_pending_webhook_seconds"] == 0
    assert after["statuses_posted"] == 10
    assert after["webhooks_abandoned"] == after["webhooks_dropped"] == 0


async def test_an_app_not_listening_gets_everything_exactly_once_when_it_starts(
    start: Start,
) -> None:
    setup = await start(listening=False)
    wamids = [await setup.send_template(f"1555200{n:04d}") for n in range(3)]
    inbound = [await setup.user_writes(f"1555300{n:04d}") for n in range(2)]
    await eventually(lambda: setup.simulator.stats()["webhook_post_failures"] >= 20)

    await setup.app.listen()
    await eventually(lambda: len(setup.app.delivered()) == 3 * 2 + 2)
    await asyncio.sleep(0.5)

    assert all(r["webhook_status"] is None and r["error"] == "ConnectError" for r in inbound)
    assert all(r["retrying"] for r in inbound)
    assert len(setup.app.received) == 8  # nothing reached it twice
    assert statuses_by_key(setup.app.received) == {
        (wamid, status): 1 for wamid in wamids for status in ("sent", "delivered")
    }
    assert messages_by_wamid(setup.app.received) == {r["wamid"]: 1 for r in inbound}
    assert setup.simulator.stats()["webhook_queue"] == 0


async def test_a_post_is_abandoned_and_counted_after_the_retry_period(start: Start) -> None:
    setup = await start(webhook_retry_for_seconds=0.6)
    setup.app.answer = 503

    await setup.user_writes("15554000000")
    await eventually(lambda: setup.simulator.stats()["webhooks_abandoned"] == 1)

    attempts = [item.at for item in setup.app.received]
    # Pauses 0.05, 0.1, 0.2 (the cap), 0.2, then one cut short so the last falls on the deadline.
    gaps = gaps_between(attempts)
    assert max(gaps) < 0.3, gaps
    assert 0.55 <= attempts[-1] - attempts[0] <= 0.9, gaps
    stats = setup.simulator.stats()
    assert stats["webhook_retries"] == len(attempts) - 1
    assert (stats["webhook_queue"], stats["webhooks_retrying"]) == (0, 0)
    assert stats["webhook_post_failures"] == len(attempts)
    await asyncio.sleep(0.3)
    assert len(setup.app.received) == len(attempts)  # nothing after the abandon


async def test_pauses_double_up_to_their_cap(start: Start) -> None:
    setup = await start(
        webhook_retry_seconds=0.1,
        webhook_retry_max_interval_seconds=0.4,
        webhook_max_attempts=6,
    )
    setup.app.answer = 500

    await setup.user_writes("15554000001")
    await eventually(lambda: setup.simulator.stats()["webhooks_abandoned"] == 1)

    attempts = [item.at for item in setup.app.received]
    assert len(attempts) == 6  # the optional attempts bound
    gaps = gaps_between(attempts)
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.4, 0.4], strict=True):
        assert expected - 0.02 <= gap <= expected + 0.1, gaps


async def test_jitter_spreads_the_pauses(start: Start) -> None:
    setup = await start(
        webhook_retry_seconds=0.2,
        webhook_retry_backoff=1.0,
        webhook_retry_jitter=0.5,
        webhook_max_attempts=6,
    )
    setup.app.answer = 503

    await setup.user_writes("15554000002")
    await eventually(lambda: setup.simulator.stats()["webhooks_abandoned"] == 1)

    attempts = [item.at for item in setup.app.received]
    gaps = gaps_between(attempts)
    assert all(0.09 <= gap <= 0.35 for gap in gaps), gaps
    assert max(gaps) - min(gaps) > 0.02, gaps


async def test_each_attempt_is_signed_with_the_secret_of_the_moment(start: Start) -> None:
    setup = await start()
    setup.app.answer = 503
    await setup.user_writes("15554000003")
    await eventually(lambda: len(setup.app.received) >= 2)

    setup.simulator.update_config(app_secret="rotated-secret")
    setup.app.secret = "rotated-secret"
    setup.app.answer = 200
    await eventually(lambda: len(setup.app.delivered()) == 1)

    (delivered,) = setup.app.delivered()
    assert delivered.signature_ok
    assert all(item.signature_ok for item in setup.app.received)


async def test_the_pending_bound_drops_and_counts(start: Start) -> None:
    setup = await start(webhook_queue_limit=2)
    setup.app.answer = 503

    first = await setup.user_writes("15554000004")
    second = await setup.user_writes("15554000005")
    third = await setup.user_writes("15554000006")

    assert first["retrying"] and second["retrying"]
    assert "retrying" not in third
    stats = setup.simulator.stats()
    assert (stats["webhook_queue"], stats["webhooks_dropped"]) == (2, 1)


async def test_no_retry_when_the_period_is_zero(start: Start) -> None:
    setup = await start(webhook_retry_for_seconds=0)
    setup.app.answer = 503

    result = await setup.user_writes("15554000007")

    assert result["webhook_status"] == 503
    assert "retrying" not in result
    stats = setup.simulator.stats()
    assert (stats["webhooks_abandoned"], stats["webhook_queue"]) == (1, 0)


async def test_reset_forgets_posts_waiting_for_a_retry(start: Start) -> None:
    setup = await start()
    setup.app.answer = 503
    await setup.user_writes("15554000008")
    await setup.send_template("15554000009")
    await eventually(lambda: setup.simulator.stats()["webhooks_retrying"] == 3)

    setup.simulator.reset()
    setup.app.answer = 200
    await asyncio.sleep(0.5)

    assert setup.app.delivered() == []
    stats = setup.simulator.stats()
    assert (stats["webhook_queue"], stats["webhooks_retrying"]) == (0, 0)
