"""Replaying dead letters (scripts/replay_dead_letters.py) on the real local queue.

Dead-lettered messages go back to their queue once, with their ids, sessions, bodies and
properties; ids still within the duplicate detection window are held back (Service Bus would drop
their copy, and completing the dead letter would lose the message); after a replay the same id
published again is still a duplicate.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from shared_code.bus.local_queue import LocalQueue, QueueOptions, ReceivedMessage
from shared_code.bus.port import OutgoingMessage
from shared_code.db.pool import Pool

pytestmark = pytest.mark.integration

QUEUE = "inbound-events"
WINDOW = timedelta(milliseconds=400)
REPOSITORY = Path(__file__).resolve().parents[2]


def message(message_id: str, session_id: str | None) -> OutgoingMessage:
    return OutgoingMessage(
        body=f"body of {message_id}".encode(),
        message_id=message_id,
        session_id=session_id,
        subject="message",
        application_properties={"kind": "message", "webhook_event_id": 7},
    )


async def dead_letter_all(bus: LocalQueue, expected: int) -> None:
    """Deliver every message once and abandon it: with one delivery allowed, it is dead-lettered."""
    for _ in range(expected):
        await settle_one(bus, complete=False)
    assert len(await bus.dead_letters(QUEUE)) == expected


async def settle_one(bus: LocalQueue, *, complete: bool) -> ReceivedMessage:
    """Receive the next message (plain or of a free session), complete or abandon it."""
    settle = bus.complete if complete else bus.abandon
    plain = await bus.receive(QUEUE)
    if plain is not None:
        await settle(plain)
        return plain
    session = await bus.accept_next_session(QUEUE, wait=1.0)
    assert session is not None
    async with session:
        received = await session.receive()
        assert received is not None
        await settle(received)
    return received


async def drain(bus: LocalQueue) -> list[ReceivedMessage]:
    delivered = []
    while (await bus.count_active(QUEUE)) > 0:
        delivered.append(await settle_one(bus, complete=True))
    return delivered


@pytest.fixture
async def bus(pool: Pool) -> LocalQueue:
    queue = LocalQueue(
        pool, {QUEUE: QueueOptions(max_delivery_count=1, duplicate_detection_window=WINDOW)}
    )
    yield queue  # type: ignore[misc]
    await queue.close()


async def test_dead_letters_are_delivered_again_once_with_their_ids(bus: LocalQueue) -> None:
    sent = [message("wamid.A1", "100:a"), message("wamid.B1", "100:b"), message("plain", None)]
    await bus.publish(QUEUE, sent)
    await dead_letter_all(bus, 3)

    # Within the window Service Bus would drop a copy: nothing moves yet.
    early = await bus.replay_dead_letters(QUEUE, max_messages=10)
    assert (early.replayed, early.held_back) == (0, 3)
    assert early.held_back_until is not None
    assert len(await bus.dead_letters(QUEUE)) == 3

    await asyncio.sleep(WINDOW.total_seconds() + 0.1)
    dry = await bus.replay_dead_letters(QUEUE, max_messages=10, dry_run=True)
    assert (dry.replayed, dry.held_back, dry.dry_run) == (3, 0, True)
    assert len(await bus.dead_letters(QUEUE)) == 3

    report = await bus.replay_dead_letters(QUEUE, max_messages=10)
    assert (report.replayed, report.held_back) == (3, 0)
    assert await bus.dead_letters(QUEUE) == []

    delivered = await drain(bus)
    assert sorted(m.message_id for m in delivered) == ["plain", "wamid.A1", "wamid.B1"]
    by_id = {m.message_id: m for m in delivered}
    for original in sent:
        copy = by_id[original.message_id]
        assert copy.session_id == original.session_id
        assert copy.body == original.body
        assert copy.subject == "message"
        assert copy.application_properties == {"kind": "message", "webhook_event_id": 7}
        assert copy.delivery_count == 1  # a fresh delivery budget

    # Once: a second replay finds nothing, and the ids are in the duplicate history again, so a
    # late republish (the outbox sweeper's) is dropped.
    assert (await bus.replay_dead_letters(QUEUE, max_messages=10)).replayed == 0
    await bus.publish(QUEUE, [message("wamid.A1", "100:a")])
    assert await bus.count_active(QUEUE) == 0


async def test_max_messages_replays_the_oldest_first(bus: LocalQueue) -> None:
    await bus.publish(QUEUE, [message(f"m{i}", None) for i in range(4)])
    await dead_letter_all(bus, 4)
    await asyncio.sleep(WINDOW.total_seconds() + 0.1)
    report = await bus.replay_dead_letters(QUEUE, max_messages=3)
    assert report.replayed == 3
    assert [d.message_id for d in await bus.dead_letters(QUEUE)] == ["m3"]
    assert sorted(m.message_id for m in await drain(bus)) == ["m0", "m1", "m2"]


async def test_the_command_replays_the_dev_hosts_queue(bus: LocalQueue, database_url: str) -> None:
    await bus.publish(QUEUE, [message("wamid.CLI", "100:c")])
    await dead_letter_all(bus, 1)
    await asyncio.sleep(WINDOW.total_seconds() + 0.1)
    command = [
        sys.executable,
        "-m",
        "scripts.replay_dead_letters",
        "--backend",
        "local",
        "--database-url",
        database_url,
        "--queue",
        QUEUE,
        "--duplicate-window-minutes",
        str(WINDOW.total_seconds() / 60),
    ]
    dry = await asyncio.to_thread(
        subprocess.run, [*command, "--dry-run"], cwd=REPOSITORY, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1 dead-lettered message" in dry.stdout
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=REPOSITORY, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 1 dead-lettered message" in done.stdout
    assert [m.message_id for m in await drain(bus)] == ["wamid.CLI"]


async def test_the_command_says_when_messages_are_held_back(
    bus: LocalQueue, database_url: str
) -> None:
    await bus.publish(QUEUE, [message("wamid.NEW", None)])
    await dead_letter_all(bus, 1)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "scripts.replay_dead_letters",
            "--backend=local",
            f"--database-url={database_url}",
            f"--queue={QUEUE}",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3, done.stderr
    assert "1 held back" in done.stdout and "run again after" in done.stdout
    assert len(await bus.dead_letters(QUEUE)) == 1
