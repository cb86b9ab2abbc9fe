"""Rate control across two sender processes: two dev hosts share one database and one simulator;
together they must stay under the business number's cap, so Meta never answers 130429."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.e2e.conftest import HostFactory
from tests.e2e.test_reply_path import configure, simulator, wait_for

pytestmark = pytest.mark.e2e

CAP = 8


def test_two_sender_processes_share_one_limit(start_dev_host: HostFactory) -> None:
    limits = json.dumps({"default": {"per_second": CAP, "per_minute": 10_000, "per_day": 10**6}})
    first = start_dev_host(RATE_LIMITS=limits)
    assert first.simulator_url is not None
    # The second host talks to the first one's simulator: one Meta, two sender instances.
    second = start_dev_host(RATE_LIMITS=limits, WHATSAPP_GRAPH_BASE_URL=first.simulator_url)
    assert second.simulator_url is None
    configure(first, throughput_per_second=CAP, status_webhooks=False)
    users = [f"1555999{n:04d}" for n in range(40)]

    async def write_all() -> None:
        async with httpx.AsyncClient(base_url=first.simulator_url, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"/simulator/users/{user}/messages", json={"text": "hi"})
                    for user in users
                )
            )
        assert all(a.status_code == 200 for a in answers)

    began = time.monotonic()
    asyncio.run(write_all())
    wait_for(
        "every reply",
        lambda: simulator(first, "GET", "/simulator/stats")["accepted"] >= len(users),
        timeout=60,
    )
    elapsed = time.monotonic() - began
    stats = simulator(first, "GET", "/simulator/stats")
    assert stats["accepted"] == len(users)
    assert stats["errors"].get("130429", 0) == 0
    # Evenly spaced sends; arrival jitter can move one across a calendar-second boundary, which
    # Meta's bucket (the simulator's, which refused nothing above) absorbs.
    assert stats["max_accepted_per_second"] <= CAP + 1
    # 40 replies at 8/s cannot all be sent in under ~4 s: the limit really held them back.
    assert elapsed > (len(users) - CAP) / CAP
    # Both processes did part of the sending.
    assert "sender_send_message ran on" in first.log()
    assert "sender_send_message ran on" in second.log()
