"""The Cloud API simulator over real HTTP: sends, Meta's errors and limits, webhooks to a small
receiver that checks signatures and parses bodies with the app's own parsers."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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

from local.simulator import CloudApiSimulator, FaultConfig, SimulatorConfig
from shared_code.whatsapp.payloads import parse_inbound_message, parse_status
from shared_code.whatsapp.signature import SIGNATURE_HEADER, verify_signature
from shared_code.whatsapp.webhook import split_webhook

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_client_logs")]


APP_SECRET = "test-app-secret"
TOKEN = "test-access-token"
USER = "15550001111"


# --- a stand-in for the app's webhook -----------------------------------------------------


@dataclass
class Received:
    body: bytes
    signature_ok: bool
    user_agent: str | None

    @property
    def payload(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.body)
        return decoded

    @property
    def value(self) -> dict[str, Any]:
        value: dict[str, Any] = self.payload["entry"][0]["changes"][0]["value"]
        return value


@dataclass
class WebhookReceiver:
    received: list[Received] = field(default_factory=list)
    # Statuses to answer with, first come first used; 200 once empty.
    answers: list[int] = field(default_factory=list)
    url: str = ""

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        ok = verify_signature(body, request.headers.get(SIGNATURE_HEADER), APP_SECRET)
        self.received.append(Received(body, ok, request.headers.get("user-agent")))
        return Response(status_code=self.answers.pop(0) if self.answers else 200)

    def statuses(self) -> list[dict[str, Any]]:
        return [status for item in self.received for status in item.value.get("statuses", ())]

    async def wait_for(self, count: int) -> list[Received]:
        await eventually(lambda: len(self.received) >= count)
        return self.received


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture(scope="session")
def shared_receiver() -> Iterator[WebhookReceiver]:
    """One receiver for the session, served from a thread with its own event loop: on the
    session's loop its shutdown hung twice in CI at the very end of the suite (the last test's
    teardown, past the 120-s timeout); a thread needs no loop of the tests to stop."""
    receiver = WebhookReceiver()
    app = Starlette(routes=[Route("/webhook", receiver._receive, methods=["POST"])])
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, loop="asyncio")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="webhook-receiver", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.01)
    receiver.url = f"http://127.0.0.1:{port}/webhook"
    yield receiver
    server.should_exit = True
    thread.join(timeout=5)
    if thread.is_alive():  # its keep-alive connections: a daemon thread ends with the session
        server.force_exit = True
        thread.join(timeout=5)


@pytest.fixture
def receiver(shared_receiver: WebhookReceiver) -> WebhookReceiver:
    """The session's receiver, emptied: each test's simulator is stopped before the next."""
    shared_receiver.received.clear()
    shared_receiver.answers.clear()
    return shared_receiver


# --- the simulator ------------------------------------------------------------------------


class ManualClock:
    """Frozen time, moved on by the test: limits and windows become exact."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def time(self) -> float:
        return 1_750_000_000.0 + self.elapsed

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


@dataclass
class Harness:
    simulator: CloudApiSimulator
    client: httpx.AsyncClient
    clock: ManualClock
    phone_number_id: str

    async def send(
        self,
        body: dict[str, Any],
        *,
        authorization: str | None = f"Bearer {TOKEN}",
        timeout: float = 5.0,
    ) -> httpx.Response:
        headers = {} if authorization is None else {"Authorization": authorization}
        return await self.client.post(
            f"/v23.0/{self.phone_number_id}/messages", json=body, headers=headers, timeout=timeout
        )


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start_simulator(receiver: WebhookReceiver) -> AsyncIterator[Start]:
    started: list[Harness] = []

    async def start(**settings: Any) -> Harness:
        defaults: dict[str, Any] = {
            "app_secret": APP_SECRET,
            "access_token": TOKEN,
            "webhook_url": receiver.url,
            "sent_delay_seconds": 0.0,
            "delivered_delay_seconds": 0.05,
            "read_delay_seconds": 0.1,
            "webhook_retry_seconds": 0.01,
        }
        if "faults" in settings:
            settings["faults"] = FaultConfig(**settings["faults"])
        clock = ManualClock()
        simulator = CloudApiSimulator(SimulatorConfig(**(defaults | settings)), clock=clock)
        base_url = await simulator.start()
        harness = Harness(
            simulator,
            httpx.AsyncClient(base_url=base_url),
            clock,
            simulator.config.phone_number_ids[0],
        )
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.client.aclose()
        await harness.simulator.stop()


def text_message(to: str = USER, **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": "hello"},
        **extra,
    }


def template_message(to: str = USER) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        # Meta's sample template, in every business account's catalogue (and the simulator's).
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }


def graph_error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert error["fbtrace_id"]
    return error


# --- sending ------------------------------------------------------------------------------


async def test_valid_send_answers_a_wamid_and_posts_signed_sent_delivered_read(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator()
    sim.simulator.open_window(USER)

    response = await sim.send(text_message("+1 555-000-1111", biz_opaque_callback_data="row:42"))

    assert response.status_code == 200
    body = response.json()
    wamid = body["messages"][0]["id"]
    assert wamid.startswith("wamid.")
    assert body == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "+1 555-000-1111", "wa_id": USER}],
        "messages": [{"id": wamid}],
    }
    received = await receiver.wait_for(3)
    assert all(item.signature_ok for item in received)
    assert [status["status"] for status in receiver.statuses()] == ["sent", "delivered", "read"]
    for item in received:
        split = split_webhook(item.payload)
        assert split.status == "pending", split.reason
        (event,) = split.events
        assert event.kind == "status"
        assert event.envelope["waba_id"] == sim.simulator.config.waba_id
        assert event.envelope["phone_number_id"] == sim.phone_number_id
        status = parse_status(event.envelope["status"])
        assert status.id == wamid
        assert status.recipient_id == USER
        assert status.biz_opaque_callback_data == "row:42"
    sent, delivered, read = receiver.statuses()
    assert sent["conversation"]["origin"] == {"type": "service"}
    assert "expiration_timestamp" in sent["conversation"]
    assert delivered["conversation"]["id"] == sent["conversation"]["id"]
    assert sent["pricing"] == {"billable": True, "pricing_model": "CBP", "category": "service"}
    assert "conversation" not in read
    # Counted once the answer is back, which is just after the receiver saw the body.
    await eventually(lambda: sim.simulator.stats()["statuses_posted"] == 3)
    (recorded,) = sim.simulator.messages(to=USER)
    assert recorded.wamid == wamid
    assert recorded.body["text"] == {"body": "hello"}


async def test_template_answer_says_accepted_and_is_priced_as_utility(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(read_enabled=False)

    response = await sim.send(template_message())

    assert response.status_code == 200
    assert response.json()["messages"][0]["message_status"] == "accepted"
    await receiver.wait_for(2)
    assert [status["status"] for status in receiver.statuses()] == ["sent", "delivered"]
    assert receiver.statuses()[0]["pricing"]["category"] == "utility"


async def test_invalid_body_answers_error_100_with_the_problems(start_simulator: Start) -> None:
    sim = await start_simulator()
    sim.simulator.open_window(USER)
    broken = text_message()
    del broken["text"]

    response = await sim.send(broken)

    assert response.status_code == 400
    error = graph_error(response)
    assert error["code"] == 100
    assert error["type"] == "OAuthException"
    assert error["message"] == "(#100) Invalid parameter"
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert "text" in error["error_data"]["details"]
    not_json = await sim.client.post(
        f"/v23.0/{sim.phone_number_id}/messages",
        content=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert not_json.status_code == 400
    assert graph_error(not_json)["code"] == 100
    assert sim.simulator.messages() == []
    assert sim.simulator.stats()["errors"] == {"100": 2}


@pytest.mark.parametrize("authorization", ["Bearer wrong-token", f"Basic {TOKEN}", None])
async def test_wrong_or_missing_token_answers_401_with_error_190(
    start_simulator: Start, authorization: str | None
) -> None:
    sim = await start_simulator()
    sim.simulator.open_window(USER)

    response = await sim.send(text_message(), authorization=authorization)

    assert response.status_code == 401
    error = graph_error(response)
    assert error["code"] == 190
    assert error["type"] == "OAuthException"
    assert "invalid_token" in response.headers["www-authenticate"]
    assert sim.simulator.messages() == []


async def test_unknown_phone_number_id_is_refused_like_graph(start_simulator: Start) -> None:
    sim = await start_simulator()

    response = await sim.client.post(
        "/v23.0/999/messages",
        json=template_message(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert response.status_code == 400
    error = graph_error(response)
    assert (error["code"], error["error_subcode"]) == (100, 33)
    assert "999" in error["message"]


# --- limits -------------------------------------------------------------------------------


async def test_throughput_cap_answers_130429_exactly_when_the_bucket_is_empty(
    start_simulator: Start,
) -> None:
    sim = await start_simulator(throughput_per_second=5, status_webhooks=False)
    users = [f"1555000{i:04d}" for i in range(10)]

    first = [await sim.send(template_message(user)) for user in users[:5]]
    refused = await sim.send(template_message(users[5]))
    sim.clock.advance(0.2)  # one token back at 5/s
    after_refill = [await sim.send(template_message(user)) for user in users[6:8]]

    assert [response.status_code for response in first] == [200] * 5
    assert refused.status_code == 400
    error = graph_error(refused)
    assert error["code"] == 130429
    assert error["message"] == "(#130429) Rate limit hit"
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert [response.status_code for response in after_refill] == [200, 400]
    stats = sim.simulator.stats()
    assert stats["accepted"] == 6
    assert stats["errors"] == {"130429": 2}
    assert stats["max_accepted_per_second"] == 6


async def test_pair_limit_answers_131056_for_one_user_only(start_simulator: Start) -> None:
    sim = await start_simulator(pair_burst=3, pair_interval_seconds=6, status_webhooks=False)

    burst = [await sim.send(template_message()) for _ in range(3)]
    refused = await sim.send(template_message())
    other_user = await sim.send(template_message("15559998888"))
    sim.clock.advance(6)
    after_interval = [await sim.send(template_message()) for _ in range(2)]

    assert [response.status_code for response in burst] == [200] * 3
    assert refused.status_code == 400
    error = graph_error(refused)
    assert error["code"] == 131056
    assert "pair rate limit hit" in error["message"]
    assert other_user.status_code == 200
    assert [response.status_code for response in after_interval] == [200, 400]


async def test_closed_window_answers_131047_while_templates_pass(
    start_simulator: Start,
) -> None:
    sim = await start_simulator(status_webhooks=False)

    never_wrote = await sim.send(text_message())
    template = await sim.send(template_message())
    opened = await sim.client.post(f"/simulator/users/{USER}/window")
    inside = await sim.send(text_message())
    sim.clock.advance(24 * 3600 + 1)
    expired = await sim.send(text_message())
    sim.simulator.update_config(enforce_window=False)
    not_enforced = await sim.send(text_message())

    assert never_wrote.status_code == 400
    error = graph_error(never_wrote)
    assert error["code"] == 131047
    assert error["message"] == "(#131047) Re-engagement message"
    assert template.status_code == 200
    assert opened.json() == {"wa_id": USER, "window_open": True}
    assert inside.status_code == 200
    assert graph_error(expired)["code"] == 131047
    assert not_enforced.status_code == 200


# --- simulated users ----------------------------------------------------------------------


async def test_user_message_posts_a_signed_inbound_webhook_and_opens_the_window(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(status_webhooks=False)

    response = await sim.client.post(
        f"/simulator/users/{USER}/messages", json={"text": "hi there", "profile_name": "Ana"}
    )

    assert response.status_code == 200
    result = response.json()
    assert result["webhook_status"] == 200
    (item,) = receiver.received
    assert item.signature_ok
    assert item.user_agent == "facebookexternalua"
    split = split_webhook(item.payload)
    assert split.status == "pending", split.reason
    (event,) = split.events
    assert event.kind == "message"
    assert event.message_id == result["wamid"]
    assert event.envelope["contact"] == {"profile": {"name": "Ana"}, "wa_id": USER}
    message = parse_inbound_message(event.envelope["message"])
    assert message.text_preview == "hi there"
    assert message.from_ == USER
    assert (await sim.send(text_message())).status_code == 200


async def test_interactive_reply_points_at_the_last_message_sent(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(status_webhooks=False, enforce_window=False)
    sent = await sim.send(text_message())

    result = await sim.simulator.send_user_message(
        USER, interactive_reply={"id": "opt-1", "title": "Yes"}
    )

    assert result.webhook_status == 200
    message = parse_inbound_message(receiver.received[-1].value["messages"][0])
    assert message.reply_id == "opt-1"
    assert message.context is not None
    assert message.context.id == sent.json()["messages"][0]["id"]


async def test_user_image_can_be_fetched_and_downloaded_with_the_token(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(status_webhooks=False)
    await sim.simulator.send_user_message(USER, image={"caption": "receipt"})
    image = parse_inbound_message(receiver.received[-1].value["messages"][0]).image
    assert image is not None and image.id is not None
    assert image.caption == "receipt"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    info = await sim.client.get(f"/v23.0/{image.id}", headers=auth)
    assert info.status_code == 200
    meta = info.json()
    download = await sim.client.get(meta["url"], headers=auth)
    again = await sim.client.get(meta["url"], headers=auth)
    refused = await sim.client.get(meta["url"])

    assert meta["id"] == image.id
    assert meta["mime_type"] == "image/jpeg"
    assert meta["messaging_product"] == "whatsapp"
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/jpeg"
    assert download.content == again.content
    assert hashlib.sha256(download.content).hexdigest() == meta["sha256"] == image.sha256
    assert int(meta["file_size"]) == len(download.content)
    assert refused.status_code == 401
    assert graph_error(refused)["code"] == 190


async def test_any_media_id_has_stable_content(start_simulator: Start) -> None:
    sim = await start_simulator()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    first = (await sim.client.get("/v23.0/4242", headers=auth)).json()
    second = (await sim.client.get("/v23.0/4243", headers=auth)).json()
    no_token = await sim.client.get("/v23.0/4242")

    assert first["sha256"] != second["sha256"]
    content = (await sim.client.get(first["url"], headers=auth)).content
    assert hashlib.sha256(content).hexdigest() == first["sha256"]
    assert no_token.status_code == 401


# --- fault injection ----------------------------------------------------------------------


async def test_next_server_errors_answer_500_then_sends_pass(start_simulator: Start) -> None:
    sim = await start_simulator(
        status_webhooks=False, faults={"server_error_next": 2, "server_error_code": 2}
    )
    sim.simulator.open_window(USER)

    responses = [await sim.send(text_message()) for _ in range(3)]

    assert [response.status_code for response in responses] == [500, 500, 200]
    error = graph_error(responses[0])
    assert error["code"] == 2
    assert error["is_transient"] is True
    assert len(sim.simulator.messages()) == 1
    stats = sim.simulator.stats()
    assert stats["faults"] == {"server_error": 2}
    assert sim.simulator.config.faults.server_error_next == 0


async def test_injected_rate_limit_comes_on_top_of_the_real_cap(start_simulator: Start) -> None:
    sim = await start_simulator(status_webhooks=False, faults={"rate_limit_next": 1})

    first = await sim.send(template_message())
    second = await sim.send(template_message())

    assert graph_error(first)["code"] == 130429
    assert second.status_code == 200


async def test_timeout_fault_sends_the_message_but_holds_the_answer(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(faults={"timeout_next": 1, "hold_seconds": 30})
    sim.simulator.open_window(USER)

    with pytest.raises(httpx.ReadTimeout):
        await sim.send(text_message(biz_opaque_callback_data="row:7"), timeout=0.3)

    # It was sent: recorded, and its statuses (with our callback data) still arrive.
    (recorded,) = sim.simulator.messages()
    await receiver.wait_for(3)
    assert {status["id"] for status in receiver.statuses()} == {recorded.wamid}
    assert {status["biz_opaque_callback_data"] for status in receiver.statuses()} == {"row:7"}
    assert sim.simulator.stats()["faults"] == {"timeout": 1}
    assert (await sim.send(text_message())).status_code == 200


async def test_failed_status_fault_posts_failed_with_error_131026(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(faults={"failed_status_probability": 1.0})
    response = await sim.send(template_message())
    wamid = response.json()["messages"][0]["id"]

    (item,) = await receiver.wait_for(1)

    assert sim.simulator.stats()["statuses_scheduled"] == 1  # nothing follows a failure
    assert item.signature_ok
    (event,) = split_webhook(item.payload).events
    status = parse_status(event.envelope["status"])
    assert (status.id, status.status) == (wamid, "failed")
    assert status.error is not None
    assert status.error.code == 131026
    assert status.error.details == "Message Undeliverable."


async def test_out_of_order_fault_posts_read_before_delivered(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(
        faults={"out_of_order_probability": 1.0},
        delivered_delay_seconds=0.05,
        read_delay_seconds=0.3,
    )

    await sim.send(template_message())
    await receiver.wait_for(3)

    statuses = receiver.statuses()
    assert [status["status"] for status in statuses] == ["sent", "read", "delivered"]
    # The timestamps still tell the true order of events.
    read, delivered = statuses[1], statuses[2]
    assert int(read["timestamp"]) >= int(delivered["timestamp"])


async def test_duplicate_fault_posts_each_status_twice_with_identical_bodies(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(faults={"duplicate_status_probability": 1.0})

    await sim.send(template_message())
    received = await receiver.wait_for(6)

    bodies: dict[str, set[bytes]] = {}
    for item in received:
        bodies.setdefault(item.value["statuses"][0]["status"], set()).add(item.body)
    assert sorted(bodies) == ["delivered", "read", "sent"]
    assert all(len(distinct) == 1 for distinct in bodies.values())
    assert len(received) == 6


async def test_faults_are_reproducible_with_a_seed(start_simulator: Start) -> None:
    async def pattern() -> list[int]:
        sim = await start_simulator(
            seed=7, status_webhooks=False, faults={"server_error_probability": 0.5}
        )
        return [(await sim.send(template_message(f"1555{i:07d}"))).status_code for i in range(20)]

    first, second = await pattern(), await pattern()

    assert first == second
    assert set(first) == {200, 500}


async def test_failed_webhook_posts_are_retried(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 503]
    sim = await start_simulator(read_enabled=False, delivered_delay_seconds=0.2)

    await sim.send(template_message())
    await eventually(lambda: sim.simulator.stats()["statuses_posted"] == 2)

    first_tries = [item.value["statuses"][0]["status"] for item in receiver.received[:2]]
    ok_statuses = [item.value["statuses"][0]["status"] for item in receiver.received[2:]]
    assert first_tries == ["sent", "sent"]
    assert sorted(ok_statuses) == ["delivered", "sent"]
    stats = sim.simulator.stats()
    assert stats["webhook_post_failures"] == 2
    assert stats["webhooks_abandoned"] == 0


# --- control endpoints --------------------------------------------------------------------


async def test_control_endpoints_list_count_configure_and_reset(start_simulator: Start) -> None:
    sim = await start_simulator(status_webhooks=False)
    await sim.send(template_message())
    await sim.send(template_message("15552223333"))
    mark_read = await sim.send(
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.inbound",
            "typing_indicator": {"type": "text"},
        }
    )

    assert mark_read.status_code == 200
    assert mark_read.json() == {"success": True}
    listed = (await sim.client.get("/simulator/messages", params={"to": "+15552223333"})).json()
    assert [message["wa_id"] for message in listed["messages"]] == ["15552223333"]
    assert listed["messages"][0]["body"]["template"]["name"] == "hello_world"
    receipts = (await sim.client.get("/simulator/read-receipts")).json()["read_receipts"]
    assert [(r["message_id"], r["typing_indicator"]) for r in receipts] == [
        ("wamid.inbound", "text")
    ]
    stats = (await sim.client.get("/simulator/stats")).json()
    assert (stats["requests"], stats["accepted"], stats["read_receipts"]) == (3, 2, 1)

    config = (await sim.client.get("/simulator/config")).json()
    assert "app_secret" not in config and "access_token" not in config
    changed = await sim.client.put(
        "/simulator/config", json={"throughput_per_second": 1, "faults": {"rate_limit_next": 1}}
    )
    assert changed.status_code == 200
    assert changed.json()["throughput_per_second"] == 1
    assert changed.json()["faults"]["rate_limit_next"] == 1
    assert changed.json()["pair_burst"] == 45
    refused = await sim.client.put("/simulator/config", json={"pair_burst": 0})
    unknown = await sim.client.put("/simulator/config", json={"no_such_setting": 1})
    assert (refused.status_code, unknown.status_code) == (400, 400)
    assert "pair_burst" in refused.json()["error"]

    reset = await sim.client.post("/simulator/reset")
    assert reset.json() == {"reset": True}
    assert (await sim.client.get("/simulator/messages")).json() == {"messages": []}
    assert (await sim.client.get("/simulator/stats")).json()["accepted"] == 0
    assert sim.simulator.config.throughput_per_second == 1


async def test_control_user_message_rejects_bad_requests(start_simulator: Start) -> None:
    sim = await start_simulator()

    two_kinds = await sim.client.post(
        f"/simulator/users/{USER}/messages", json={"text": "a", "image": {}}
    )
    unknown_field = await sim.client.post(
        f"/simulator/users/{USER}/messages", json={"text": "a", "sticker": {}}
    )
    unknown_number = await sim.client.post(
        f"/simulator/users/{USER}/window", json={"phone_number_id": "999"}
    )

    assert two_kinds.status_code == 400
    assert unknown_field.status_code == 400
    assert unknown_number.status_code == 400
    assert sim.simulator.stats()["inbound_messages"] == 0


async def test_user_message_without_a_reachable_app_reports_why(start_simulator: Start) -> None:
    sim = await start_simulator(webhook_url="http://127.0.0.1:9/unreachable")

    response = await sim.client.post(f"/simulator/users/{USER}/messages", json={"text": "hi"})

    assert response.status_code == 200
    assert response.json()["webhook_status"] is None
    assert response.json()["error"] == "ConnectError"
    assert (await sim.send(text_message())).status_code == 200


async def test_user_message_to_an_app_that_never_answers_reports_a_timeout(
    start_simulator: Start,
) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(1)
        writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        sim = await start_simulator(
            webhook_url=f"http://127.0.0.1:{port}/webhook", webhook_timeout_seconds=0.2
        )
        response = await sim.client.post(f"/simulator/users/{USER}/messages", json={"text": "hi"})
    finally:
        silent.close()

    assert response.status_code == 200
    assert response.json()["webhook_status"] is None
    assert response.json()["error"] == "Timeout"
    # Retried in the background since, as a status webhook would be.
    assert response.json()["retrying"] is True
    assert sim.simulator.stats()["webhook_post_failures"] >= 1


async def test_stop_cancels_pending_webhooks(
    start_simulator: Start, receiver: WebhookReceiver
) -> None:
    sim = await start_simulator(sent_delay_seconds=60, delivered_delay_seconds=60)
    await sim.send(template_message())
    assert sim.simulator.stats()["webhook_queue"] == 3

    await sim.simulator.stop()

    assert sim.simulator.stats()["webhook_queue"] == 0
    assert receiver.received == []
