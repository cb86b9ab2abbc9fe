"""End to end over real HTTP: signed webhooks into the dev host, rows out of PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest

from scripts.send_sample_webhook import status_webhook, text_message_webhook
from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign
from tests.e2e.conftest import APP_SECRET, VERIFY_TOKEN, RunningHost

pytestmark = pytest.mark.e2e


def post(host: RunningHost, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return httpx.post(host.webhook_url, content=body, headers=headers, timeout=10)


def signed_post(host: RunningHost, payload: object) -> httpx.Response:
    body = json.dumps(payload).encode()
    return post(host, body, sign(body, APP_SECRET))


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def count(host: RunningHost, sql: str) -> int:
    with psycopg.connect(host.database_url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def text(sender: str, words: str) -> dict[str, object]:
    return text_message_webhook(
        phone_number_id="100000000000001",
        waba_id="200000000000001",
        sender=sender,
        name="E2E User",
        text=words,
    )


def test_verification_handshake(dev_host: RunningHost) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
    answer = httpx.get(dev_host.webhook_url, params=params)
    assert (answer.status_code, answer.text) == (200, "42")
    # The challenge is the caller's string echoed back: never to be sniffed into HTML.
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["x-content-type-options"] == "nosniff"
    wrong = httpx.get(dev_host.webhook_url, params={**params, "hub.verify_token": "x"})
    assert wrong.status_code == 403
    assert wrong.headers["x-content-type-options"] == "nosniff"
    # The verify token travels in the query string: the request log line must not carry it.
    assert VERIFY_TOKEN not in dev_host.log()


def test_a_signed_webhook_becomes_rows_in_all_four_tables(dev_host: RunningHost) -> None:
    answer = signed_post(dev_host, text("15557770001", "hello bridge"))
    assert answer.status_code == 200
    wait_for(
        lambda: (
            count(dev_host, "SELECT count(*) FROM whatsapp_messages WHERE direction = 'inbound'")
            == 1
        )
    )
    assert count(dev_host, "SELECT count(*) FROM whatsapp_webhook_events") == 1
    assert count(dev_host, "SELECT count(*) FROM whatsapp_contacts") == 1
    assert count(dev_host, "SELECT count(*) FROM whatsapp_conversations") == 1
    wait_for(
        lambda: (
            count(dev_host, "SELECT count(*) FROM whatsapp_messages WHERE routed_at IS NOT NULL")
            == 1
        )
    )
    log = dev_host.log()
    assert "hello bridge" not in log and "15557770001" not in log


def test_a_webhook_delivered_five_times_yields_one_message(dev_host: RunningHost) -> None:
    payload = text("15557770002", "once only")
    for _ in range(5):
        assert signed_post(dev_host, payload).status_code == 200
    wait_for(
        lambda: (
            count(dev_host, "SELECT count(*) FROM whatsapp_messages WHERE direction = 'inbound'")
            == 1
        )
    )
    time.sleep(0.5)
    assert (
        count(dev_host, "SELECT count(*) FROM whatsapp_messages WHERE direction = 'inbound'") == 1
    )
    assert count(dev_host, "SELECT duplicate_count FROM whatsapp_webhook_events") == 4


def test_bad_input_gets_4xx_or_a_stored_invalid_event_never_a_500(dev_host: RunningHost) -> None:
    valid_body = json.dumps(text("15557770003", "valid one")).encode()
    assert post(dev_host, valid_body, None).status_code == 401
    assert post(dev_host, valid_body, sign(valid_body, "wrong")).status_code == 401
    assert post(dev_host, valid_body, "sha256=zz").status_code == 401
    huge = b'{"object":"whatsapp_business_account","x":"' + b"a" * (2 * 1024 * 1024) + b'"}'
    assert post(dev_host, huge, sign(huge, APP_SECRET)).status_code == 413
    for body in (b"", b"not json", b'{"object":"instagram","entry":[]}', b'{"entry":7}'):
        assert post(dev_host, body, sign(body, APP_SECRET)).status_code == 200
    assert count(dev_host, "SELECT count(*) FROM whatsapp_webhook_events") == 4
    assert (
        count(dev_host, "SELECT count(*) FROM whatsapp_webhook_events WHERE status = 'invalid'")
        == 4
    )
    # After all of that, a valid message still arrives.
    assert post(dev_host, valid_body, sign(valid_body, APP_SECRET)).status_code == 200
    wait_for(
        lambda: (
            count(dev_host, "SELECT count(*) FROM whatsapp_messages WHERE direction = 'inbound'")
            == 1
        )
    )
    assert " 500 " not in dev_host.log()


def test_statuses_in_any_order_end_in_the_furthest_state_end_to_end(
    dev_host: RunningHost,
) -> None:
    assert signed_post(dev_host, text("15557770004", "hi")).status_code == 200
    wait_for(lambda: count(dev_host, "SELECT count(*) FROM whatsapp_conversations") == 1)
    with psycopg.connect(dev_host.database_url) as conn:
        conn.execute(
            """
            INSERT INTO whatsapp_messages (conversation_id, direction, wamid, phone_number_id,
                contact_wa_id, message_type, content, status, idempotency_key)
            SELECT id, 'outbound', 'wamid.E2EOUT', phone_number_id, '15557770004', 'text', '{}',
                   'sent', 'reply:e2e'
            FROM whatsapp_conversations
            """
        )
    for status in ("read", "sent", "delivered"):
        payload = status_webhook(
            phone_number_id="100000000000001",
            waba_id="200000000000001",
            recipient="15557770004",
            wamid="wamid.E2EOUT",
            status=status,
        )
        assert signed_post(dev_host, payload).status_code == 200
    wait_for(lambda: count(dev_host, "SELECT count(*) FROM whatsapp_message_statuses") == 3)
    with psycopg.connect(dev_host.database_url) as conn:
        row = conn.execute(
            "SELECT status FROM whatsapp_messages WHERE wamid = 'wamid.E2EOUT'"
        ).fetchone()
    assert row == ("read",)
