"""The management API end to end: `python -m local` (the dev host with its Cloud API simulator),
called over HTTP with the dev keys, as a dashboard would."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import HostFactory, RunningHost
from tests.e2e.test_reply_path import replies_to, simulator, user_writes, wait_for

pytestmark = pytest.mark.e2e

FULL = {"Authorization": "Bearer dev-management-key"}
READ = {"Authorization": "Bearer dev-read-key"}
QUIET_SECONDS = 1.5  # an echo reply arrives in ~0.2 s here


def api(
    host: RunningHost,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> httpx.Response:
    return httpx.request(
        method,
        f"{host.base_url}/api/v1/whatsapp/{path}",
        headers=headers if headers is not None else FULL,
        json=body,
        timeout=15,
    )


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def texts_to(host: RunningHost, wa_id: str) -> list[str]:
    return [
        m["body"]["text"]["body"] for m in replies_to(host, wa_id) if m["body"]["type"] == "text"
    ]


def templates_to(host: RunningHost, wa_id: str) -> list[str]:
    return [
        m["body"]["template"]["name"]
        for m in replies_to(host, wa_id)
        if m["body"]["type"] == "template"
    ]


def problem_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["code"])


def test_a_dashboard_reads_the_conversation_and_sends_into_it(dev_host: RunningHost) -> None:
    host, user = dev_host, "15557790001"
    user_writes(host, user, "hello")
    wait_for("the echo reply", lambda: texts_to(host, user) == ["hello"])

    contacts = ok(api(host, "GET", "contacts?search=1555779"))["data"]
    assert [c["wa_id"] for c in contacts] == [user]
    contact_id = contacts[0]["id"]
    conversation = ok(api(host, "GET", f"conversations?contact_id={contact_id}"))["data"][0]
    assert conversation["status"] == "open"

    def outbound_read() -> Any:
        page = ok(api(host, "GET", f"conversations/{conversation['id']}/messages"))
        outbound = [m for m in page["data"] if m["direction"] == "outbound"]
        return outbound and outbound[0]["status"] == "read" and page

    page = wait_for("the reply's read status", outbound_read)
    reply, question = page["data"]
    assert [s["status"] for s in reply["status_history"]] == ["sent", "delivered", "read"]
    assert (question["direction"], question["text"]) == ("inbound", "hello")

    # The same Idempotency-Key twice: one message, sent once.
    send = {"phone_number": f"+{user}", "text": "An operator here"}
    key = {**FULL, "Idempotency-Key": "e2e-send-1"}
    first = ok(api(host, "POST", "send-message", headers=key, body=send), 202)
    again = api(host, "POST", "send-message", headers=key, body=send)
    assert again.status_code == 202 and again.json()["message_id"] == first["message_id"]
    assert first["status"] == "pending"
    wait_for("the operator's message", lambda: "An operator here" in texts_to(host, user))
    time.sleep(QUIET_SECONDS)
    assert texts_to(host, user).count("An operator here") == 1
    reused = api(host, "POST", "send-message", headers=key, body={**send, "text": "other"})
    assert problem_code(reused, 422) == "idempotency_key_reused"
    unknown = api(host, "POST", "send-message", body={"phone_number": "+15557799999", "text": "x"})
    assert problem_code(unknown, 404) == "contact_not_found"
    read_only = api(host, "POST", "send-message", headers=READ, body=send)
    assert problem_code(read_only, 403) == "insufficient_access"

    # Webhook bodies: redacted by default, raw only with full access.
    events = ok(api(host, "GET", "webhook-events?limit=200"))["data"]
    assert events and user not in json.dumps(events)
    assert "wamid." not in json.dumps(events)
    raw = ok(api(host, "GET", "webhook-events?limit=200&raw=true"))["data"]
    assert user in json.dumps(raw)
    assert api(host, "GET", "webhook-events?raw=true", headers=READ).status_code == 403

    status = ok(api(host, "GET", "status", headers=READ))
    assert status["healthy"] is True and status["failing"] == []
    assert "dev-management-key" not in json.dumps(status)

    today = time.strftime("%Y-%m-%d", time.gmtime())
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400))
    figures = ok(api(host, "GET", f"analytics?from={today}T00:00:00Z&to={tomorrow}T00:00:00Z"))
    assert [v["day"] for v in figures["volumes"]] == [today]
    assert figures["volumes"][0]["inbound"] == figures["inbound"] == 1
    assert figures["volumes"][0]["outbound"] == figures["outbound"] == 2
    assert figures["funnel"]["read"] >= 1
    assert figures["first_response"]["answered"] == 1


def test_templates_are_checked_before_anything_reaches_meta(dev_host: RunningHost) -> None:
    host, user = dev_host, "33612345678"
    wait_for(
        "the template catalogue",
        lambda: ok(api(host, "GET", "templates?status=APPROVED"))["items"],
        timeout=90,
    )
    seed_call = {
        "phone_number": "+33612345678",
        "template_name": "welcome_message",
        "language_code": "fr",
        "parameters": ["John", "Doe"],
    }
    key = {**FULL, "Idempotency-Key": "e2e-proactive-1"}
    accepted = ok(api(host, "POST", "send-proactive-message", headers=key, body=seed_call), 202)
    repeat = ok(api(host, "POST", "send-proactive-message", headers=key, body=seed_call), 202)
    assert repeat["message_id"] == accepted["message_id"]
    wait_for("the template", lambda: templates_to(host, user) == ["welcome_message"])

    refusals = {
        "template_not_found": {**seed_call, "template_name": "no_such_template"},
        "template_parameter_mismatch": {**seed_call, "parameters": ["John"]},
    }
    for code, body in refusals.items():
        assert problem_code(api(host, "POST", "send-proactive-message", body=body), 422) == code
    invalid = api(host, "POST", "send-proactive-message", body={**seed_call, "phone_number": "+1"})
    assert problem_code(invalid, 400)
    time.sleep(QUIET_SECONDS)
    assert templates_to(host, user) == ["welcome_message"]

    # Meta pauses the template: its signed webhook reaches the catalogue, and sends stop.
    paused = simulator(
        host,
        "POST",
        "/simulator/templates/welcome_message/fr/status",
        {"status": "PAUSED", "reason": "LOW_QUALITY"},
    )
    assert paused["webhook_scheduled"]
    wait_for(
        "the paused template in the catalogue",
        lambda: ok(api(host, "GET", "templates?name=welcome_message&status=PAUSED"))["items"],
    )
    refused = api(host, "POST", "send-proactive-message", body=seed_call)
    assert problem_code(refused, 422) == "template_not_approved"


def test_handoff_release_and_close(dev_host: RunningHost) -> None:
    host, user = dev_host, "15557790002"
    user_writes(host, user, "hi")
    wait_for("the echo reply", lambda: texts_to(host, user) == ["hi"])
    contact_id = ok(api(host, "GET", f"contacts?search={user}"))["data"][0]["id"]
    conversation_id = ok(api(host, "GET", f"conversations?contact_id={contact_id}"))["data"][0][
        "id"
    ]

    state = ok(api(host, "POST", f"conversations/{conversation_id}/handoff"))
    assert state["status"] == "handoff" and state["handoff_by"].startswith("key:")
    user_writes(host, user, "is a person there?")
    time.sleep(QUIET_SECONDS)
    assert texts_to(host, user) == ["hi"]
    ok(api(host, "POST", "send-message", body={"contact_id": contact_id, "text": "Yes, me"}), 202)
    wait_for("the operator's answer", lambda: texts_to(host, user) == ["hi", "Yes, me"])

    assert ok(api(host, "POST", f"conversations/{conversation_id}/release"))["status"] == "open"
    user_writes(host, user, "thanks")
    wait_for("the agent again", lambda: texts_to(host, user) == ["hi", "Yes, me", "thanks"])

    assert ok(api(host, "POST", f"conversations/{conversation_id}/close"))["status"] == "closed"
    closed = api(host, "POST", f"conversations/{conversation_id}/handoff")
    assert problem_code(closed, 409) == "conversation_closed"
    user_writes(host, user, "one more thing")
    wait_for("a new conversation", lambda: len(texts_to(host, user)) == 4)
    conversations = ok(api(host, "GET", f"conversations?contact_id={contact_id}"))["data"]
    assert [c["status"] for c in conversations] == ["open", "closed"]
    assert conversations[1]["closed_at"] is not None
    assert problem_code(api(host, "POST", "conversations/987654/close"), 404)


def test_window_opt_out_and_erasure(dev_host: RunningHost) -> None:
    host, user = dev_host, "15557790003"
    user_writes(host, user, "hello")
    wait_for("the echo reply", lambda: texts_to(host, user) == ["hello"])
    contact_id = ok(api(host, "GET", f"contacts?search={user}"))["data"][0]["id"]
    with psycopg.connect(host.database_url, autocommit=True) as conn:
        for table in ("whatsapp_contacts", "whatsapp_conversations"):
            conn.execute(
                f"UPDATE {table} SET last_inbound_at = now() - interval '25 hours'"  # noqa: S608
            )
    outside = api(host, "POST", "send-message", body={"contact_id": contact_id, "text": "late"})
    assert problem_code(outside, 422) == "template_required"

    assert ok(api(host, "POST", f"contacts/{contact_id}/opt-out"))["changed"] is True
    opted_out = api(host, "POST", "send-message", body={"contact_id": contact_id, "text": "x"})
    assert problem_code(opted_out, 409) == "contact_opted_out"
    assert ok(api(host, "GET", "contacts?opted_out=true"))["data"][0]["id"] == contact_id

    erased = ok(api(host, "DELETE", f"contacts/{contact_id}"))
    assert erased["messages"] == 2 and erased["already_erased"] is False
    assert ok(api(host, "GET", f"contacts?search={user}"))["data"] == []
    assert ok(api(host, "DELETE", f"contacts/{contact_id}"))["already_erased"] is True
    raw = ok(api(host, "GET", "webhook-events?limit=200&raw=true"))["data"]
    assert user not in json.dumps(raw)
    with psycopg.connect(host.database_url) as conn:
        audit = conn.execute("SELECT details::text FROM whatsapp_audit_log").fetchall()
    assert audit and not any(user in details for (details,) in audit)


def test_an_agent_changed_through_the_api_answers_the_next_message(
    start_dev_host: HostFactory,
) -> None:
    host, user = start_dev_host(), "15557790004"
    agent = ok(api(host, "GET", "agents"))["items"][0]
    changed = {
        key: value
        for key, value in agent.items()
        if key not in ("id", "version", "created_at", "updated_at")
    }
    changed["greeting"] = "Welcome to the shop!"
    headers = {**FULL, "If-Match": str(agent["version"])}
    updated = ok(api(host, "PUT", f"agents/{agent['name']}", headers=headers, body=changed))
    assert updated["version"] > agent["version"]
    stale = api(host, "PUT", f"agents/{agent['name']}", headers=headers, body=changed)
    assert problem_code(stale, 409) == "agent_version_mismatch"
    # Every instance re-reads changed configurations at most a second after a message arrives.
    time.sleep(2)
    user_writes(host, user, "hello")
    wait_for(
        "the greeting, then the answer",
        lambda: texts_to(host, user) == ["Welcome to the shop!", "hello"],
    )
