"""Agent configurations through the dev host and the simulator: the environment seeds the table
at start, and a configuration changed while the host runs (business hours: closed today, a
holiday) takes effect: the user gets the away message once, and the agent stays silent."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import psycopg
import pytest

from shared_code.agent_configs import AgentConfigInput
from shared_code.db.pool import open_pool
from shared_code.management.agents import replace_agent
from tests.e2e.conftest import HostFactory, RunningHost
from tests.e2e.test_reply_path import replies_to, reply_rows, user_writes, wait_for

pytestmark = pytest.mark.e2e

AWAY = "Closed for the holidays; we answer from Monday."


def close_for_the_holidays(host: RunningHost) -> str:
    """Open every day, but yesterday, today and tomorrow (Paris) are holidays; returns the
    closed period's start as the away message key shows it."""
    today = datetime.now(ZoneInfo("Europe/Paris")).date()
    every_day = [{"open": "00:00", "close": "24:00"}]
    config = msgspec.convert(
        {
            "name": "echo",
            "kind": "echo",
            "is_default": True,
            "business_hours": {
                "time_zone": "Europe/Paris",
                "weekly": {
                    day: every_day
                    for day in (
                        "monday",
                        "tuesday",
                        "wednesday",
                        "thursday",
                        "friday",
                        "saturday",
                        "sunday",
                    )
                },
                "holidays": [(today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)],
                "away_message": AWAY,
                "outside_hours": "silent",
            },
        },
        AgentConfigInput,
    )

    async def change() -> None:
        pool = await open_pool(host.database_url, max_size=2, name="e2e-admin")
        try:
            async with pool.connection() as conn:
                await replace_agent(conn, "echo", config, actor="key:e2etest00000")
        finally:
            await pool.close()

    asyncio.run(change())
    start = datetime.combine(
        today - timedelta(days=1), datetime.min.time(), ZoneInfo("Europe/Paris")
    )
    return start.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_closed_for_the_holidays_the_away_message_goes_once_and_the_agent_is_silent(
    start_dev_host: HostFactory,
) -> None:
    host = start_dev_host()
    user = "15558890001"
    with psycopg.connect(host.database_url) as conn:
        seeded = conn.execute("SELECT name, kind, is_default FROM whatsapp_agents").fetchall()
    assert seeded == [("echo", "echo", True)]
    user_writes(host, user, "open?")
    [answer] = wait_for("the echo reply", lambda: replies_to(host, user))
    assert answer["body"]["text"]["body"] == "open?"

    period_start = close_for_the_holidays(host)
    time.sleep(1.5)  # the host checks its catalogue at most once a second
    user_writes(host, user, "hello?")
    user_writes(host, user, "anyone there?")

    away = wait_for(
        "the away message",
        lambda: [m for m in replies_to(host, user) if m["body"]["text"]["body"] == AWAY],
    )
    time.sleep(1.5)  # time enough for a wrong second away message or an echo to arrive
    assert len(away) == 1
    assert [m["body"]["text"]["body"] for m in replies_to(host, user)] == ["open?", AWAY]
    keys = [row[3] for row in reply_rows(host, user)]
    assert keys[1:] == [f"away:{keys_conversation(host, user)}:{period_start}"]


def keys_conversation(host: RunningHost, user: str) -> int:
    with psycopg.connect(host.database_url) as conn:
        row = conn.execute(
            "SELECT v.id FROM whatsapp_conversations v JOIN whatsapp_contacts c "
            "ON c.id = v.contact_id WHERE c.wa_id = %s",
            (user,),
        ).fetchone()
    assert row is not None
    return int(row[0])
