"""Scenario 1: inbound messages delivered two or three times, shuffled, posted concurrently.

Meta delivers at least once: a retried delivery may carry the very same bytes or the same message
re-serialised (another body hash, the same wamid). Each wamid must become exactly one inbound row
and get exactly one reply.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.conftest import ClusterFactory
from tests.faults.harness import (
    Delivery,
    Meta,
    delivery_counts,
    encode,
    inbound_message,
    new_text,
    new_users,
    nonzero,
    sized,
    wait_for_replies,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(sized(180, 3 * 3600))]

MESSAGES = sized(500, 10_000)
# Enough users that no one exceeds the pair limit (about one message per 6 s, bursts of 45).
USERS = sized(100, 1_000)
DUPLICATED_SHARE = 0.3


async def test_duplicated_shuffled_inbound_is_stored_once_and_answered_once(
    make_cluster: ClusterFactory, record: Callable[..., dict[str, Any]]
) -> None:
    rng = random.Random(1)
    cluster = await make_cluster("dup")
    simulator = await cluster.start_simulator()
    await cluster.start_host("host")
    users = new_users(USERS, rng)
    await simulator.open_windows(users)

    expected: dict[str, str] = {}
    deliveries: list[Delivery] = []
    duplicated = 0
    for index in range(MESSAGES):
        user = users[index % USERS]
        wamid, payload = inbound_message(user, text=new_text(rng))
        expected[wamid] = user
        deliveries.append(Delivery(encode(payload), (wamid,)))
        if rng.random() < DUPLICATED_SHARE:
            duplicated += 1
            for _ in range(1 + (rng.random() < 1 / 3)):
                # Half the repeats are byte-identical, half re-serialised (a new body hash).
                variant = 0 if rng.random() < 0.5 else 2
                deliveries.append(Delivery(encode(payload, variant), (wamid,)))
    rng.shuffle(deliveries)
    record(messages=MESSAGES, users=USERS, messages_duplicated=duplicated)

    started = time.monotonic()
    async with Meta(cluster.webhook_url, concurrency=32) as meta:
        # Posted as Meta does: a 503 (a busy worker) is retried, and counted.
        deadline = time.monotonic() + sized(120, 1800)
        await asyncio.gather(*(meta.deliver(d, deadline=deadline) for d in deliveries))
    posting = time.monotonic() - started
    replies_after = await wait_for_replies(
        cluster.database_url, simulator, expected, timeout=sized(120, 2400)
    )
    counts = record(
        posting_seconds=round(posting, 1),
        replies_seconds=replies_after,
        **await delivery_counts(cluster.database_url, simulator, expected, deliveries),
    )

    problems = nonzero(
        counts,
        "bodies_never_200",
        "bodies_200_not_stored",
        "inbound_lost",
        "replies_lost",
        "duplicate_replies",
        "sends_without_reply_row",
    )
    if counts["inbound_rows"] != MESSAGES:
        problems.append(f"{counts['inbound_rows']} inbound rows for {MESSAGES} messages")
    assert not problems, problems
