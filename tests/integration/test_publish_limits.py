"""A message over the bus's size limit fails its event with the reason, never the others; the
sweeper caps the attempts it spends on one event (issue 14).

The local queue enforces the Standard tier's 256 KB as Service Bus does (here a small limit keeps
the bodies small): the oversized message is refused for good, by name, and the rest accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from shared_code.bus.local_queue import LocalQueue, QueueOptions
from shared_code.bus.port import STANDARD_TIER_MAX_MESSAGE_BYTES, OutgoingMessage, PublishError
from shared_code.db.pool import Pool
from shared_code.outbox import sweep_outbox
from tests.integration.test_intake import (
    QUEUE,
    RefusingBus,
    event_rows,
    intake,
    sample_text,
    signed,
)
from tests.integration.test_outbox_poison import failures, store_pending, with_wamid

pytestmark = pytest.mark.integration

LIMIT = 4_000


@pytest.fixture
async def small_queue(pool: Pool) -> AsyncIterator[LocalQueue]:
    queue = LocalQueue(pool, {QUEUE: QueueOptions(max_message_size=LIMIT)})
    yield queue
    await queue.close()


def big_text(sender: str, wamid: str) -> dict[str, object]:
    return with_wamid(sample_text(sender=sender, text="x" * (LIMIT + 1)), wamid)


async def published_ids(queue: LocalQueue) -> list[str]:
    ids = []
    while (session := await queue.accept_next_session(QUEUE)) is not None:
        async with session:
            while (message := await session.receive()) is not None:
                ids.append(message.message_id)
                await queue.complete(message)
    return ids


async def test_the_local_queue_refuses_an_oversized_message_by_name_and_takes_the_rest(
    local_queue: LocalQueue,
) -> None:
    small = OutgoingMessage(body=b"{}", message_id="small", session_id="s")
    huge = OutgoingMessage(
        body=b"x" * STANDARD_TIER_MAX_MESSAGE_BYTES, message_id="huge", session_id="s"
    )
    with pytest.raises(PublishError) as raised:
        await local_queue.publish(QUEUE, [small, huge])
    assert raised.value.permanent and raised.value.refused_message_ids == {"huge"}
    assert await local_queue.count_active(QUEUE) == 1


async def test_the_intake_fails_the_event_with_an_oversized_message_and_forwards_the_others(
    pool: Pool, small_queue: LocalQueue
) -> None:
    service = intake(pool, small_queue)
    for payload in (big_text("15551230001", "wamid.BIG"), sample_text(sender="15551230002")):
        body, signature = signed(payload)
        assert (await service.receive(body, signature)).status_code == 200
    await service.drain()
    statuses = sorted(row[0] for row in await event_rows(pool))
    assert statuses == ["failed", "published"]
    [(stage, key, reason, _)] = await failures(pool)
    assert (stage, key) == ("publish", "wamid.BIG")
    assert reason.startswith("refused for good:") and "exceed" in reason
    assert len(await published_ids(small_queue)) == 1
    # Nothing is left for the sweeper.
    report = await sweep_outbox(pool, small_queue, QUEUE, min_age_seconds=0)
    assert (report.published, report.failed, report.poisoned) == (0, 0, 0)


class CountingBus:
    def __init__(self, inner: LocalQueue) -> None:
        self.inner = inner
        self.calls = 0

    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        self.calls += 1
        await self.inner.publish(queue, messages)

    async def close(self) -> None:
        pass


async def test_the_sweeper_fails_an_oversized_event_in_one_publish(
    pool: Pool, small_queue: LocalQueue
) -> None:
    await store_pending(
        pool,
        [sample_text(sender="15551230001"), big_text("15551230002", "wamid.BIG")]
        + [sample_text(sender=f"155512300{i:02d}") for i in range(3, 6)],
    )
    bus = CountingBus(small_queue)
    report = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0)
    assert (report.published, report.poisoned, report.failed) == (4, 1, 0)
    # The bus named what it refused: no event-by-event retry.
    assert bus.calls == 1
    assert [row[1] for row in await failures(pool)] == ["wamid.BIG"]
    assert len(await published_ids(small_queue)) == 4


class RefusesOne:
    """Refuses, without saying why, every publish holding one message id."""

    def __init__(self, inner: LocalQueue, refused: str) -> None:
        self.inner = inner
        self.refused = refused

    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        if any(m.message_id == self.refused for m in messages):
            raise PublishError("Service Bus did not accept 1 message(s): ServiceBusError")
        await self.inner.publish(queue, messages)

    async def close(self) -> None:
        pass


async def publish_attempts(pool: Pool) -> list[tuple[str, int]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status, publish_attempts FROM whatsapp_webhook_events ORDER BY id"
        )
        return await cursor.fetchall()


async def test_a_lone_event_refused_sweep_after_sweep_is_failed_at_the_cap(
    pool: Pool, local_queue: LocalQueue
) -> None:
    # Alone, nothing proves the bus would take others: only the cap ends its retries.
    await store_pending(pool, [with_wamid(sample_text(), "wamid.STUCK")])  # attempt 1
    bus = RefusesOne(local_queue, "wamid.STUCK")
    for attempt in (2, 3):
        report = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0, max_publish_attempts=4)
        assert (report.failed, report.poisoned) == (1, 0)
        assert await publish_attempts(pool) == [("pending", attempt)]
    report = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0, max_publish_attempts=4)
    assert (report.failed, report.poisoned) == (0, 1)
    assert await publish_attempts(pool) == [("failed", 4)]
    [(_, key, reason, _)] = await failures(pool)
    assert key == "wamid.STUCK" and reason.startswith("refused in 4 attempts")


async def test_a_broker_that_is_down_fails_nothing_at_the_cap_and_charges_only_what_it_tried(
    pool: Pool, local_queue: LocalQueue
) -> None:
    await store_pending(pool, [sample_text(sender=f"155512300{i:02d}") for i in range(6)])
    for _ in range(3):
        report = await sweep_outbox(
            pool, RefusingBus(), QUEUE, min_age_seconds=0, max_publish_attempts=2
        )
        assert (report.poisoned, report.failed) == (0, 6)
    rows = await publish_attempts(pool)
    assert {status for status, _ in rows} == {"pending"}
    # The three tried alone in each sweep are charged; the others only the intake's attempt.
    assert sorted(attempts for _, attempts in rows) == [1, 1, 1, 4, 4, 4]
    assert await failures(pool) == []
    assert (await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=0)).published == 6
