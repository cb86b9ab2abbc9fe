"""The timer-driven policies end to end: idle conversations closed, old data purged. The dev
host runs its timer functions on `POST /admin/functions/{name}` as `func start` does, so the test
backdates rows instead of waiting a day."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import RunningHost
from tests.e2e.test_management_api import api, ok, texts_to
from tests.e2e.test_reply_path import user_writes, wait_for

pytestmark = pytest.mark.e2e


def run_timer(host: RunningHost, name: str) -> None:
    answer = httpx.post(f"{host.base_url}/admin/functions/{name}", json={"input": ""}, timeout=5)
    assert answer.status_code == 202, answer.text


def execute(host: RunningHost, statement: str) -> None:
    with psycopg.connect(host.database_url, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]  # the test's own literals


def count(host: RunningHost, statement: str) -> Any:
    with psycopg.connect(host.database_url) as conn:
        found = conn.execute(statement).fetchone()  # type: ignore[arg-type]
    assert found is not None
    return found[0]


def test_an_idle_conversation_closes_and_the_next_message_opens_another(
    dev_host: RunningHost,
) -> None:
    host, user = dev_host, "15557791001"
    user_writes(host, user, "hello")
    wait_for("the echo reply", lambda: texts_to(host, user) == ["hello"])
    execute(
        host,
        "UPDATE whatsapp_conversations SET last_message_at = now() - interval '25 hours', "
        "created_at = now() - interval '25 hours'",
    )
    run_timer(host, "maintenance_idle_conversations")
    contact = ok(api(host, "GET", f"contacts?search={user}"))["data"][0]["id"]
    closed = wait_for(
        "the idle close",
        lambda: [
            c
            for c in ok(api(host, "GET", f"conversations?contact_id={contact}"))["data"]
            if c["status"] == "closed"
        ],
    )
    assert closed[0]["closed_at"] is not None

    user_writes(host, user, "back again")
    wait_for("the agent's answer", lambda: texts_to(host, user) == ["hello", "back again"])
    conversations = ok(api(host, "GET", f"conversations?contact_id={contact}"))["data"]
    assert [c["status"] for c in conversations] == ["open", "closed"]
    unknown = httpx.post(f"{host.base_url}/admin/functions/no_such_function", timeout=5)
    assert unknown.status_code == 404


def test_data_older_than_the_retention_is_purged(dev_host: RunningHost) -> None:
    host, user = dev_host, "15557791002"
    user_writes(host, user, "old news")
    wait_for("the echo reply", lambda: texts_to(host, user) == ["old news"])
    wait_for(
        "the read status",
        lambda: count(host, "SELECT count(*) FROM whatsapp_message_statuses") == 3,
    )
    for table, column in (
        ("whatsapp_messages", "created_at"),
        ("whatsapp_message_statuses", "received_at"),
        ("whatsapp_webhook_events", "received_at"),
    ):
        execute(host, f"UPDATE {table} SET {column} = now() - interval '91 days'")  # noqa: S608
    user_writes(host, user, "new news")
    wait_for("the second reply", lambda: texts_to(host, user) == ["old news", "new news"])

    run_timer(host, "maintenance_retention_purge")
    wait_for(
        "the purge",
        lambda: (
            count(
                host,
                "SELECT count(*) FROM whatsapp_messages WHERE created_at < now() - interval '90 days'",
            )
            == 0
        ),
    )
    texts = count(host, "SELECT array_agg(text_body ORDER BY id) FROM whatsapp_messages")
    assert texts == ["new news", "new news"]
    old_events = "SELECT count(*) FROM whatsapp_webhook_events WHERE received_at < now() - interval '90 days'"
    wait_for("the old webhook bodies gone", lambda: count(host, old_events) == 0)
    assert count(host, "SELECT count(*) FROM whatsapp_webhook_events") > 0
