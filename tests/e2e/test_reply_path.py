"""The reply path end to end: `python -m local` with its Cloud API simulator, real HTTP both ways.

A simulated user writes (the simulator posts a signed webhook to the host), the echo agent
answers, the sender sends through the simulator, and the simulator's status webhooks move the
reply to ``read``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from scripts.send_sample_webhook import text_message_webhook
from shared_code.whatsapp.signature import sign
from tests.e2e.conftest import APP_SECRET, HostFactory, RunningHost

pytestmark = pytest.mark.e2e

PHONE_NUMBER_ID = "100000000000001"
# Fast settings so retries and ambiguous sends resolve within a test.
FAST = {
    "SENDER_BACKOFF_BASE_SECONDS": "0.2",
    "SENDER_BACKOFF_MAX_SECONDS": "1",
    "SENDER_CONFIRMATION_WAIT_SECONDS": "3",
    "WHATSAPP_GRAPH_TIMEOUT_SECONDS": "1",
}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def simulator(host: RunningHost, method: str, path: str, body: object = None) -> Any:
    assert host.simulator_url is not None
    answer = httpx.request(method, f"{host.simulator_url}{path}", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def user_writes(host: RunningHost, wa_id: str, text: str) -> str:
    result = simulator(host, "POST", f"/simulator/users/{wa_id}/messages", {"text": text})
    assert result["webhook_status"] == 200
    return str(result["wamid"])


def replies_to(host: RunningHost, wa_id: str) -> list[dict[str, Any]]:
    return list(simulator(host, "GET", f"/simulator/messages?to={wa_id}")["messages"])


def reply_rows(host: RunningHost, wa_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(host.database_url) as conn:
        return conn.execute(
            "SELECT wamid, status, error_code, idempotency_key, text_body FROM whatsapp_messages "
            "WHERE direction = 'outbound' AND contact_wa_id = %s ORDER BY id",
            (wa_id,),
        ).fetchall()


def configure(host: RunningHost, **changes: Any) -> None:
    simulator(host, "PUT", "/simulator/config", changes)


def test_a_user_message_gets_the_echo_reply_once_and_it_ends_read(
    start_dev_host: HostFactory,
) -> None:
    host = start_dev_host()
    configure(host, sent_delay_seconds=0.05, delivered_delay_seconds=0.1, read_delay_seconds=0.2)
    inbound = user_writes(host, "15557770001", "hello bridge")

    [reply] = wait_for("the reply", lambda: replies_to(host, "15557770001"))
    assert reply["body"]["type"] == "text"
    assert reply["body"]["text"]["body"] == "hello bridge"
    rows = wait_for(
        "the read status",
        lambda: [r for r in reply_rows(host, "15557770001") if r[1] == "read"],
    )
    assert rows == [(reply["wamid"], "read", None, f"reply:{inbound}", "hello bridge")]
    # The inbound message was marked read, with the typing indicator.
    receipts = simulator(host, "GET", "/simulator/read-receipts")["read_receipts"]
    assert [(r["message_id"], r["typing_indicator"]) for r in receipts] == [(inbound, "text")]
    time.sleep(0.5)
    assert len(replies_to(host, "15557770001")) == 1


def test_the_same_webhook_five_times_gets_one_reply(start_dev_host: HostFactory) -> None:
    host = start_dev_host()
    user = "15557770002"
    simulator(host, "POST", f"/simulator/users/{user}/window", {})
    payload = text_message_webhook(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id="200000000000001",
        sender=user,
        name="Bo",
        text="once",
    )
    body = json.dumps(payload).encode()
    headers = {"X-Hub-Signature-256": sign(body, APP_SECRET), "Content-Type": "application/json"}
    for _ in range(5):
        assert httpx.post(host.webhook_url, content=body, headers=headers).status_code == 200

    wait_for("the reply", lambda: replies_to(host, user))
    time.sleep(1.0)
    assert len(replies_to(host, user)) == 1
    assert len(reply_rows(host, user)) == 1


@pytest.mark.parametrize(
    ("faults", "description"),
    [
        ({"server_error_next": 2, "server_error_code": 131000}, "two 500s"),
        ({"rate_limit_next": 2}, "two 130429s"),
        ({"timeout_next": 1, "hold_seconds": 2.0}, "a timeout after the message was accepted"),
    ],
)
def test_faults_still_deliver_every_reply_exactly_once(
    start_dev_host: HostFactory, faults: dict[str, Any], description: str
) -> None:
    host = start_dev_host(**FAST)
    configure(host, faults=faults, read_enabled=False)
    users = [f"1555777100{n}" for n in range(3)]
    for user in users:
        user_writes(host, user, f"hi from {user}")

    for user in users:
        wait_for(
            f"the reply to {user} after {description}",
            lambda user=user: [r for r in reply_rows(host, user) if r[0] is not None],
            timeout=30,
        )
    time.sleep(4.0)  # longer than the confirmation wait: a resend would show up by now
    for user in users:
        assert len(replies_to(host, user)) == 1, f"{user}: {description}"
        [(wamid, status, *_)] = reply_rows(host, user)
        assert wamid == replies_to(host, user)[0]["wamid"]
        assert status in ("sent", "delivered")


def test_outside_the_24_hour_window_the_reply_fails_with_131047(
    start_dev_host: HostFactory,
) -> None:
    host = start_dev_host()
    user = "15557770003"
    # Delivered straight to the webhook, not through the simulator: the simulator never saw the
    # user write, so for it the customer-service window is closed.
    payload = text_message_webhook(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id="200000000000001",
        sender=user,
        name="Cy",
        text="late",
    )
    body = json.dumps(payload).encode()
    headers = {"X-Hub-Signature-256": sign(body, APP_SECRET), "Content-Type": "application/json"}
    assert httpx.post(host.webhook_url, content=body, headers=headers).status_code == 200

    [row] = wait_for(
        "the failed reply", lambda: [r for r in reply_rows(host, user) if r[1] == "failed"]
    )
    assert row[2] == 131047
    assert replies_to(host, user) == []


def test_a_reply_that_keeps_failing_is_marked_failed_and_dead_lettered(
    start_dev_host: HostFactory,
) -> None:
    host = start_dev_host(**FAST, SENDER_MAX_ATTEMPTS="2")
    configure(host, faults={"server_error_next": 10, "server_error_code": 131000})
    user = "15557770004"
    user_writes(host, user, "are you there?")

    [row] = wait_for(
        "the failed reply", lambda: [r for r in reply_rows(host, user) if r[1] == "failed"]
    )
    assert row[2] == 131000

    def dead_letters() -> list[tuple[Any, ...]]:
        with psycopg.connect(host.database_url) as conn:
            return conn.execute(
                "SELECT message_id, dead_letter_reason FROM local_bus_dead_letters "
                "WHERE queue = 'outbound-messages'"
            ).fetchall()

    [(message_id, reason)] = wait_for("the dead-lettered bus message", dead_letters)
    assert message_id.startswith("outbound:")
    assert reason == "MaxDeliveryCountExceeded"
    assert replies_to(host, user) == []
    stats = simulator(host, "GET", "/simulator/stats")
    # Exactly SENDER_MAX_ATTEMPTS sends, both answered with the injected 500; none accepted.
    assert (stats["accepted"], stats["errors"]) == (0, {"131000": 2})
