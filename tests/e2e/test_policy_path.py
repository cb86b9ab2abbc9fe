"""The messaging policies end to end: `python -m local` with its Cloud API simulator.

STOP gets one confirmation and then silence, START brings the agent back; a handoff keyword
silences the agent; a message answered after the customer-service window closed is never sent
(the simulator would refuse it with 131047, as Meta does); Meta's user_preferences webhook sets
the contact's marketing preference."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import psycopg
import pytest

from scripts.send_sample_webhook import text_message_webhook
from shared_code.policy import PolicySettings
from shared_code.whatsapp.signature import sign
from tests.e2e.conftest import APP_SECRET, HostFactory, RunningHost
from tests.e2e.test_reply_path import replies_to, simulator, user_writes, wait_for
from tests.unit.test_policy import user_preferences_webhook

pytestmark = pytest.mark.e2e

PHONE_NUMBER_ID = "100000000000001"
QUIET_SECONDS = 1.5  # long enough for an echo reply to arrive (they take ~0.2 s here)


def texts_to(host: RunningHost, wa_id: str) -> list[str]:
    return [
        m["body"]["text"]["body"] for m in replies_to(host, wa_id) if m["body"]["type"] == "text"
    ]


def no_window_refusals(host: RunningHost) -> None:
    stats = simulator(host, "GET", "/simulator/stats")
    assert "131047" not in json.dumps(stats.get("errors", {}))


def query(host: RunningHost, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(host.database_url) as conn:
        return conn.execute(sql, args).fetchall()


def test_stop_gets_one_confirmation_then_silence_and_start_brings_the_agent_back(
    start_dev_host: HostFactory,
) -> None:
    host = start_dev_host()
    user = "15557780001"
    user_writes(host, user, "hello")
    wait_for("the echo reply", lambda: texts_to(host, user) == ["hello"])

    user_writes(host, user, "STOP")
    confirmation = PolicySettings().opt_out_confirmation
    wait_for("the confirmation", lambda: texts_to(host, user) == ["hello", confirmation])
    user_writes(host, user, "are you still there?")
    time.sleep(QUIET_SECONDS)
    assert texts_to(host, user) == ["hello", confirmation]
    assert query(host, "SELECT opted_out FROM whatsapp_contacts WHERE wa_id = %s", user) == [
        (True,)
    ]

    user_writes(host, user, "Start")
    opted_in = PolicySettings().opt_in_confirmation
    wait_for("the opt-in confirmation", lambda: len(texts_to(host, user)) == 3)
    user_writes(host, user, "back again")
    wait_for(
        "the echo reply after opting in",
        lambda: texts_to(host, user) == ["hello", confirmation, opted_in, "back again"],
    )
    no_window_refusals(host)


def test_a_handoff_keyword_silences_the_agent(start_dev_host: HostFactory) -> None:
    notice = "A colleague will answer you here."
    host = start_dev_host(HANDOFF_NOTICE=notice)
    user = "15557780002"
    user_writes(host, user, "human")
    wait_for("the handoff notice", lambda: texts_to(host, user) == [notice])
    user_writes(host, user, "my parcel is late")
    time.sleep(QUIET_SECONDS)
    assert texts_to(host, user) == [notice]
    assert query(
        host,
        "SELECT v.status, v.handoff_by FROM whatsapp_conversations v "
        "JOIN whatsapp_contacts c ON c.id = v.contact_id WHERE c.wa_id = %s",
        user,
    ) == [("handoff", "keyword")]
    # Both messages were stored all the same.
    assert query(
        host,
        "SELECT count(*) FROM whatsapp_messages WHERE direction = 'inbound' AND contact_wa_id = %s",
        user,
    ) == [(2,)]


def test_an_answer_after_the_window_closed_is_never_sent(start_dev_host: HostFactory) -> None:
    host = start_dev_host()
    user = "15557780003"
    # A message Meta delivers 25 hours late (a retried webhook): the window closed meanwhile.
    payload = text_message_webhook(
        phone_number_id=PHONE_NUMBER_ID, waba_id="200000000000001", sender=user, name="Li",
        text="still there?",
    )  # fmt: skip
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]  # type: ignore[index]
    message["timestamp"] = str(int(time.time()) - 25 * 3600)
    body = json.dumps(payload).encode()
    headers = {"X-Hub-Signature-256": sign(body, APP_SECRET), "Content-Type": "application/json"}
    assert httpx.post(host.webhook_url, content=body, headers=headers).status_code == 200

    rows = wait_for(
        "the refused reply",
        lambda: query(
            host,
            "SELECT status, blocked_by_policy, wamid FROM whatsapp_messages "
            "WHERE direction = 'outbound' AND contact_wa_id = %s AND status = 'failed'",
            user,
        ),
    )
    assert rows == [("failed", "window_closed", None)]
    assert replies_to(host, user) == []
    no_window_refusals(host)


def test_metas_user_preferences_webhook_reaches_the_contact(start_dev_host: HostFactory) -> None:
    host = start_dev_host()
    body = json.dumps(user_preferences_webhook("stop", str(int(time.time())))).encode()
    headers = {"X-Hub-Signature-256": sign(body, APP_SECRET), "Content-Type": "application/json"}
    assert httpx.post(host.webhook_url, content=body, headers=headers).status_code == 200

    rows = wait_for(
        "the marketing preference",
        lambda: query(
            host,
            "SELECT preferences->'marketing_messages'->>'value', opted_out FROM whatsapp_contacts "
            "WHERE wa_id = '15551230001' AND preferences ? 'marketing_messages'",
        ),
    )
    assert rows == [("stop", False)]
    assert query(
        host, "SELECT status FROM whatsapp_webhook_events WHERE 'user_preferences' = ANY(fields)"
    ) == [("published",)]
    assert query(
        host, "SELECT actor, action FROM whatsapp_audit_log WHERE target_type = 'contact'"
    ) == [("system:policy", "contact.marketing_preference")]
