"""The faults the fault suite arms, seen by plain httpx and by the app's own Graph API client:
131056 without touching the pair bucket, a failure before Meta's logic (connection closed, no
answer, nothing sent), and a held answer released when the client gives up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from local.simulator import CloudApiSimulator, ConfigError, FaultConfig, SimulatorConfig
from shared_code.secrets import Secret
from shared_code.whatsapp.errors import PairRateLimitError, TransportError
from shared_code.whatsapp.graph_client import GraphApiClient

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_client_logs")]


TOKEN = "faults-test-token"
USER = "15550003333"


@dataclass
class Harness:
    simulator: CloudApiSimulator
    base_url: str
    client: httpx.AsyncClient

    @property
    def phone_number_id(self) -> str:
        return self.simulator.config.phone_number_ids[0]

    async def send(self, **extra: Any) -> httpx.Response:
        return await self.client.post(
            f"/v23.0/{self.phone_number_id}/messages",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={
                "messaging_product": "whatsapp",
                "to": USER,
                "type": "text",
                "text": {"body": "hello"},
                **extra,
            },
        )

    def app_client(self, read_timeout: float = 5.0) -> GraphApiClient:
        """The bridge's own Graph API client (aiohttp underneath), pointed at the simulator."""
        return GraphApiClient(
            base_url=self.base_url,
            api_version="v23.0",
            access_token=Secret(TOKEN),
            phone_number_id=self.phone_number_id,
            timeout=httpx.Timeout(connect=5.0, read=read_timeout, write=5.0, pool=5.0),
        )


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Harness] = []

    async def start(**faults: Any) -> Harness:
        simulator = CloudApiSimulator(
            SimulatorConfig(
                app_secret="faults-app-secret",
                access_token=TOKEN,
                status_webhooks=False,
                enforce_window=False,
                faults=FaultConfig(**faults),
            )
        )
        base_url = await simulator.start()
        harness = Harness(simulator, base_url, httpx.AsyncClient(base_url=base_url, timeout=5))
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.client.aclose()
        await harness.simulator.stop()


# --- pair_limit ---------------------------------------------------------------------------


async def test_pair_limit_fault_answers_131056_without_charging_the_pair_bucket(
    start: Start,
) -> None:
    sim = await start(pair_limit_next=2)
    sim.simulator.update_config(pair_burst=1)

    faulted = [await sim.send() for _ in range(2)]
    accepted = await sim.send()  # the user's single token is still there
    over_the_real_limit = await sim.send()

    for response in faulted:
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == 131056
        assert "pair rate limit hit" in error["message"]
    assert accepted.status_code == 200
    assert over_the_real_limit.json()["error"]["code"] == 131056
    assert len(sim.simulator.messages()) == 1
    stats = sim.simulator.stats()
    assert stats["faults"] == {"pair_limit": 2}
    assert stats["errors"] == {"131056": 3}
    assert sim.simulator.config.faults.pair_limit_next == 0


async def test_the_app_client_reads_the_pair_limit_fault_as_a_pair_rate_limit(
    start: Start,
) -> None:
    sim = await start(pair_limit_probability=1.0)
    client = sim.app_client()
    try:
        with pytest.raises(PairRateLimitError) as raised:
            await client.send_text(USER, "hello")
    finally:
        await client.aclose()

    assert raised.value.code == 131056
    assert sim.simulator.messages() == []


# --- drop_before --------------------------------------------------------------------------


async def test_drop_before_closes_the_connection_with_no_answer_and_sends_nothing(
    start: Start,
) -> None:
    sim = await start(drop_before_next=1)

    with pytest.raises(httpx.RemoteProtocolError):
        await sim.send()
    after = await sim.send()

    assert after.status_code == 200
    (recorded,) = sim.simulator.messages()
    assert recorded.wamid == after.json()["messages"][0]["id"]
    stats = sim.simulator.stats()
    assert stats["faults"] == {"drop_before": 1}
    assert (stats["requests"], stats["accepted"], stats["errors"]) == (2, 1, {})


async def test_the_app_client_reads_drop_before_as_possibly_sent(start: Start) -> None:
    sim = await start(drop_before_probability=1.0)
    client = sim.app_client()
    try:
        with pytest.raises(TransportError) as raised:
            await client.send_text(USER, "hello")
    finally:
        await client.aclose()

    # What the fault is for: the client cannot tell whether Meta got it (it did not).
    assert raised.value.request_may_have_been_sent is True
    assert sim.simulator.messages() == []


async def test_drop_before_comes_before_every_check_and_spares_mark_as_read(
    start: Start,
) -> None:
    sim = await start(drop_before_next=2)

    mark_read = await sim.client.post(
        f"/v23.0/{sim.phone_number_id}/messages",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"},
    )
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.client.post(
            f"/v23.0/{sim.phone_number_id}/messages",
            headers={"Authorization": "Bearer wrong-token"},
            content=b"{not json",
        )
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.send()

    assert mark_read.status_code == 200
    assert sim.simulator.config.faults.drop_before_next == 0
    assert (await sim.send()).status_code == 200


# --- timeout: the answer held until the client gives up ------------------------------------


async def test_a_held_answer_is_released_when_the_client_gives_up(start: Start) -> None:
    sim = await start(timeout_next=1, hold_seconds=30)
    client = sim.app_client(read_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as raised:
            await client.send_text(USER, "hello", callback_data="outbound:7")
    finally:
        await client.aclose()
    gave_up_after = time.monotonic() - started

    assert raised.value.request_may_have_been_sent is True
    assert 0.25 <= gave_up_after < 2
    # Accepted and recorded: it was sent, only the answer was lost.
    (recorded,) = sim.simulator.messages()
    assert recorded.body["biz_opaque_callback_data"] == "outbound:7"
    async with asyncio.timeout(2):  # not 30: the simulator saw the client hang up
        while sim.simulator.stats()["answers_held"]:
            await asyncio.sleep(0.01)
    assert sim.simulator.stats()["faults"] == {"timeout": 1}


async def test_a_hold_shorter_than_the_client_timeout_is_a_slow_answer(start: Start) -> None:
    sim = await start(timeout_next=1, hold_seconds=0.3)
    started = time.monotonic()

    response = await sim.send()

    assert time.monotonic() - started >= 0.3
    assert response.json()["messages"][0]["id"] == sim.simulator.messages()[0].wamid


# --- settings -----------------------------------------------------------------------------


async def test_new_faults_are_set_over_http_and_counted_down(start: Start) -> None:
    sim = await start()

    changed = await sim.client.put(
        "/simulator/config",
        json={
            "faults": {"drop_before_next": 1, "pair_limit_next": 1, "pair_limit_probability": 0.5}
        },
    )
    refused = await sim.client.put("/simulator/config", json={"faults": {"pair_limit_next": -1}})
    with pytest.raises(httpx.RemoteProtocolError):
        await sim.send()
    pair_limited = await sim.send()

    assert changed.status_code == 200
    faults = changed.json()["faults"]
    assert (faults["drop_before_next"], faults["pair_limit_next"]) == (1, 1)
    assert faults["pair_limit_probability"] == 0.5
    assert refused.status_code == 400
    assert "pair_limit_next" in refused.json()["error"]
    assert pair_limited.json()["error"]["code"] == 131056
    current = (await sim.client.get("/simulator/config")).json()["faults"]
    assert (current["drop_before_next"], current["pair_limit_next"]) == (0, 0)


def test_fault_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="drop_before_probability"):
        FaultConfig(drop_before_probability=1.5)
    with pytest.raises(ConfigError, match="drop_before_next"):
        FaultConfig(drop_before_next=-1)
