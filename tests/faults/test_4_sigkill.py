"""Scenario 4: SIGKILL mid-burst, as when Azure recycles an instance without warning.

The webhook and the queue triggers run as two hosts (``--functions``), as Azure scales them
apart, on one database; the simulator runs on its own so it survives the kills.

(a) The webhook host is killed while Meta posts a burst: nothing it answered 200 may be lost
    (rows committed but not yet published are the outbox sweeper's), and what it refused
    arrives through retries (the test's own, and the simulator's for simulated users and
    statuses).
(b) The processor/sender host is killed while replies are being sent: every inbound message
    still gets exactly one reply. A send Meta accepted just before the kill must not be sent
    again when the host comes back, even when its status webhook comes late (it failed so
    before: 2 of 100 users got their reply twice).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.faults.conftest import BackgroundRuns, ClusterFactory
from tests.faults.harness import (
    WEBHOOK_FUNCTIONS,
    WORKER_FUNCTIONS,
    Cluster,
    Delivery,
    Host,
    Meta,
    Recorder,
    delivery_counts,
    encode,
    inbound_message,
    new_text,
    new_users,
    nonzero,
    query,
    runs_in_background,
    sized,
    wait_for,
    wait_for_replies,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(sized(300, 3 * 3600))]

MESSAGES = sized(300, 3_000)
SIMULATED_USER_MESSAGES = sized(40, 400)
USERS = sized(60, 600)
RATE_PER_SECOND = sized(60.0, 100.0)
KILL_AT = sized((0.4,), (0.25, 0.5, 0.75))
DEAD_SECONDS = 1.0
# Past the local bus's 60-s lock, after which the restarted host gets the killed one's messages.
STATUS_DELAY_SECONDS = 75.0
# Long enough for the sessions the killed host held (the local bus's 60-s lock) and a sweep.
REPLY_TIMEOUT = sized(180.0, 1800.0)


async def _two_hosts(cluster: Cluster, **worker_settings: str) -> tuple[Host, Host]:
    webhook = await cluster.start_host("webhook", functions=WEBHOOK_FUNCTIONS)
    worker = await cluster.start_host(
        "worker",
        functions=WORKER_FUNCTIONS,
        serves_webhook=False,
        settings={"OUTBOX_SWEEP_MIN_AGE_SECONDS": "5", **worker_settings},
    )
    return webhook, worker


async def _status_rows(database_url: str) -> dict[str, int]:
    rows = await query(
        database_url,
        "SELECT status, count(*) FROM whatsapp_messages WHERE direction = 'outbound' "
        "GROUP BY status",
    )
    return {status: n for status, n in rows}


@runs_in_background("test_sigkill_of_the_webhook_host_loses_nothing_answered_200", early=True)
async def _kill_webhook_host(make: ClusterFactory, record: Recorder) -> list[str]:
    cluster = await make("killweb")
    try:
        return await _kill_webhook_host_in(cluster, record)
    finally:
        await cluster.close()


async def _kill_webhook_host_in(cluster: Cluster, record: Recorder) -> list[str]:
    rng = random.Random(41)
    simulator = await cluster.start_simulator()
    webhook, _ = await _two_hosts(cluster)
    users = new_users(USERS, rng)
    await simulator.open_windows(users)

    expected: dict[str, str] = {}
    deliveries: list[Delivery] = []
    for index in range(MESSAGES):
        user = users[index % USERS]
        wamid, payload = inbound_message(user, text=new_text(rng))
        expected[wamid] = user
        deliveries.append(Delivery(encode(payload), (wamid,)))
    simulated: list[dict[str, Any]] = []
    kills: list[dict[str, Any]] = []
    started = time.monotonic()
    deadline = started + 120

    async def simulated_users() -> None:
        # Users writing through the simulator: a refused post is retried by the simulator.
        for index in range(SIMULATED_USER_MESSAGES):
            user = users[index % USERS]
            result = await simulator.user_writes(user, new_text(rng))
            simulated.append(result)
            expected[str(result["wamid"])] = user
            await asyncio.sleep(MESSAGES / RATE_PER_SECOND / SIMULATED_USER_MESSAGES)

    async def killer() -> None:
        for share in KILL_AT:
            while sum(d.ok for d in deliveries) < share * MESSAGES:
                await asyncio.sleep(0.02)
            webhook.process.kill()
            killed_at = time.monotonic()
            await webhook.process.wait_exit(10)
            await asyncio.sleep(DEAD_SECONDS)
            await webhook.restart()
            pending = await query(
                cluster.database_url,
                "SELECT count(*) FROM whatsapp_webhook_events WHERE status = 'pending'",
            )
            kills.append(
                {
                    "at_share_answered": share,
                    "down_seconds": round(time.monotonic() - killed_at, 1),
                    "pending_events_after_restart": pending[0][0],
                }
            )

    async with Meta(cluster.webhook_url, concurrency=64) as meta:

        async def paced() -> None:
            tasks = []
            for delivery in deliveries:
                tasks.append(asyncio.create_task(meta.deliver(delivery, deadline=deadline)))
                await asyncio.sleep(1 / RATE_PER_SECOND)
            await asyncio.gather(*tasks)

        await asyncio.gather(paced(), simulated_users(), killer())

    replies_after = await wait_for_replies(
        cluster.database_url, simulator, expected, timeout=REPLY_TIMEOUT
    )
    # Rows committed but not forwarded when the host died (statuses among them) are the
    # outbox sweeper's, at its next minute: the final states are read after it.
    try:
        pending_seconds: float | None = await wait_for(
            "the outbox sweeper to forward what the killed host stored",
            _no_pending(cluster.database_url),
            timeout=130,
        )
    except TimeoutError:
        pending_seconds = None
    stats = await simulator.webhooks_settled()
    await asyncio.sleep(2.0)
    counts = record(
        kills=kills,
        pending_forwarded_after_seconds=pending_seconds,
        seconds=round(time.monotonic() - started, 1),
        replies_seconds=replies_after,
        simulated_user_messages=len(simulated),
        simulated_user_first_post_refused=sum(1 for r in simulated if r["webhook_status"] != 200),
        simulator_webhook_retries=stats.get("webhook_retries"),
        simulator_webhooks_abandoned=stats.get("webhooks_abandoned"),
        reply_rows_by_status=await _status_rows(cluster.database_url),
        **await delivery_counts(cluster.database_url, simulator, expected, deliveries),
    )

    problems = nonzero(
        counts,
        "bodies_200_not_stored",
        "messages_answered_200_lost",
        "bodies_never_200",
        "inbound_lost",
        "replies_lost",
        "duplicate_replies",
        "simulator_webhooks_abandoned",
    )
    if pending_seconds is None:
        problems.append("webhook rows still pending 130 s after the replies")
    # Every reply's status webhooks arrived despite the kill: they all end read.
    if counts["reply_rows_by_status"] != {"read": len(expected)}:
        problems.append(f"reply rows by status: {counts['reply_rows_by_status']}")
    return problems


async def test_sigkill_of_the_webhook_host_loses_nothing_answered_200(
    background: BackgroundRuns,
) -> None:
    problems = await background["test_sigkill_of_the_webhook_host_loses_nothing_answered_200"]
    assert not problems, problems


@runs_in_background("test_sigkill_of_the_sender_host_sends_every_reply_exactly_once", early=True)
async def _kill_sender_host(make: ClusterFactory, record: Recorder) -> list[str]:
    cluster = await make("killsend")
    try:
        return await _kill_sender_host_in(cluster, record)
    finally:
        await cluster.close()


async def _kill_sender_host_in(cluster: Cluster, record: Recorder) -> list[str]:
    rng = random.Random(42)
    # A send cut off by the kill waits for its status twice the downtime (the killed host's
    # session locks hold its messages 60 s): bounded in the short run, the defaults in the full.
    confirmation_wait = sized(10.0, 60.0)
    max_wait = sized(30.0, 3600.0)
    # Statuses that come after the redelivery, as when Meta is retrying them: a send accepted
    # just before the kill must be confirmed by its late status, not sent again.
    simulator = await cluster.start_simulator(
        sent_delay_seconds=STATUS_DELAY_SECONDS,
        delivered_delay_seconds=STATUS_DELAY_SECONDS + 1,
        read_delay_seconds=STATUS_DELAY_SECONDS + 2,
        # Slow answers (accepted at once, answered 3 s later): the kill finds sends in doubt.
        faults={"timeout_probability": 0.2, "hold_seconds": 3.0},
    )
    _, worker = await _two_hosts(
        cluster,
        SENDER_CONFIRMATION_WAIT_SECONDS=str(confirmation_wait),
        SENDER_CONFIRMATION_MAX_WAIT_SECONDS=str(max_wait),
    )
    users = new_users(USERS, rng)
    await simulator.open_windows(users)

    expected: dict[str, str] = {}
    deliveries: list[Delivery] = []
    for index in range(MESSAGES):
        user = users[index % USERS]
        wamid, payload = inbound_message(user, text=new_text(rng))
        expected[wamid] = user
        deliveries.append(Delivery(encode(payload), (wamid,)))
    kills: list[dict[str, Any]] = []
    started = time.monotonic()

    async def killer() -> None:
        for share in KILL_AT:
            while (await simulator.stats())["accepted"] < share * MESSAGES:
                await asyncio.sleep(0.05)
            worker.process.kill()
            killed_at = time.monotonic()
            await worker.process.wait_exit(10)
            accepted = (await simulator.stats())["accepted"]
            in_doubt = await query(
                cluster.database_url,
                "SELECT count(*) FROM whatsapp_messages WHERE direction = 'outbound' "
                "AND wamid IS NULL AND send_started_at IS NOT NULL",
            )
            await asyncio.sleep(DEAD_SECONDS)
            await worker.restart()
            kills.append(
                {
                    "at_share_accepted": share,
                    "accepted_at_kill": accepted,
                    "sends_in_doubt_at_kill": in_doubt[0][0],
                    "down_seconds": round(time.monotonic() - killed_at, 1),
                }
            )

    async with Meta(cluster.webhook_url, concurrency=32) as meta:
        await asyncio.gather(
            killer(),
            *(meta.deliver(d, deadline=time.monotonic() + 60) for d in deliveries),
        )
    replies_after = await wait_for_replies(
        cluster.database_url,
        simulator,
        expected,
        timeout=REPLY_TIMEOUT,
        quiet=10.0,
    )
    counts = record(
        kills=kills,
        confirmation_wait_seconds=confirmation_wait,
        confirmation_max_wait_seconds=max_wait,
        status_delay_seconds=STATUS_DELAY_SECONDS,
        seconds=round(time.monotonic() - started, 1),
        replies_seconds=replies_after,
        reply_rows_by_status=await _status_rows(cluster.database_url),
        **await delivery_counts(cluster.database_url, simulator, expected, deliveries),
    )

    return nonzero(
        counts, "inbound_lost", "replies_lost", "duplicate_replies", "sends_without_reply_row"
    )


async def test_sigkill_of_the_sender_host_sends_every_reply_exactly_once(
    background: BackgroundRuns,
) -> None:
    problems = await background["test_sigkill_of_the_sender_host_sends_every_reply_exactly_once"]
    assert not problems, problems


def _no_pending(database_url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rows = await query(
            database_url, "SELECT count(*) FROM whatsapp_webhook_events WHERE status = 'pending'"
        )
        return bool(rows[0][0] == 0)

    return check
