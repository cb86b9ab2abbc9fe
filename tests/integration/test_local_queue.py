"""The local bus against a real PostgreSQL: the Service Bus behaviour the bridge relies on."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared_code.bus.local_queue import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    LocalQueue,
    MessageLockLost,
    QueueOptions,
    ReceivedMessage,
    SessionLockLost,
)
from shared_code.bus.port import OutgoingMessage, PublishError
from shared_code.db.pool import Pool, open_pool

pytestmark = pytest.mark.integration

QUEUE = "inbound-events"
# Long enough that a loaded machine still renews in time, short enough to keep the file quick.
SHORT_LOCK = QueueOptions(lock_duration=timedelta(milliseconds=600))


def message(
    message_id: str,
    session_id: str | None = "s1",
    *,
    body: bytes | None = None,
    scheduled: datetime | None = None,
) -> OutgoingMessage:
    return OutgoingMessage(
        body=body if body is not None else message_id.encode(),
        message_id=message_id,
        session_id=session_id,
        scheduled_enqueue_time=scheduled,
    )


def bus_with(pool: Pool, options: QueueOptions) -> LocalQueue:
    return LocalQueue(pool, {QUEUE: options})


@pytest.fixture
async def short_lock_queue(pool: Pool) -> AsyncIterator[LocalQueue]:
    bus = bus_with(pool, SHORT_LOCK)
    yield bus
    await bus.close()


@pytest.fixture
async def other_pool(database_url: str) -> AsyncIterator[Pool]:
    """A second pool: publishes from another connection, as another worker would."""
    pool = await open_pool(database_url, max_size=8, name="tests-other")
    yield pool
    await pool.close()


async def receive_one(bus: LocalQueue, session_id: str | None = "s1") -> ReceivedMessage:
    if session_id is None:
        received = await bus.receive(QUEUE)
    else:
        session = await bus.accept_next_session(QUEUE)
        assert session is not None
        assert session.session_id == session_id
        received = await session.receive()
    assert received is not None
    return received


# --- publishing and the message envelope -----------------------------------------------------


async def test_a_published_message_arrives_with_its_envelope(local_queue: LocalQueue) -> None:
    scheduled = datetime.now(UTC) - timedelta(seconds=1)
    await local_queue.publish(
        QUEUE,
        [
            OutgoingMessage(
                body=b"\x00\xffbinary",
                message_id="wamid.1",
                session_id="100:200",
                application_properties={"kind": "message", "attempt": 2, "ok": True, "x": 1.5},
                content_type="application/octet-stream",
                subject="inbound",
                scheduled_enqueue_time=scheduled,
            )
        ],
    )
    assert await local_queue.count_active(QUEUE) == 1
    received = await receive_one(local_queue, "100:200")
    assert received.queue == QUEUE
    assert received.body == b"\x00\xffbinary"
    assert received.message_id == "wamid.1"
    assert received.application_properties == {
        "kind": "message",
        "attempt": 2,
        "ok": True,
        "x": 1.5,
    }
    assert received.content_type == "application/octet-stream"
    assert received.subject == "inbound"
    assert received.delivery_count == 1
    assert received.scheduled_enqueue_time == scheduled
    assert received.enqueued_time.tzinfo is UTC
    assert received.locked_until.tzinfo is UTC
    assert received.locked_until > datetime.now(UTC)


async def test_publishing_nothing_is_a_no_op(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [])
    assert await local_queue.count_active(QUEUE) == 0


async def test_a_thousand_messages_publish_in_one_call(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message(f"m{i}", f"s{i % 37}") for i in range(1000)])
    assert await local_queue.count_active(QUEUE) == 1000


async def test_a_rejected_publish_raises_publish_error(empty_database_url: str) -> None:
    pool = await open_pool(empty_database_url, max_size=1, name="tests-empty")
    try:
        with pytest.raises(PublishError):
            await LocalQueue(pool).publish(QUEUE, [message("m1")])
    finally:
        await pool.close()


async def test_a_naive_scheduled_time_is_refused(local_queue: LocalQueue) -> None:
    with pytest.raises(ValueError, match="naive"):
        await local_queue.publish(QUEUE, [message("m1", scheduled=datetime(2030, 1, 1))])


# --- duplicate detection ---------------------------------------------------------------------


async def test_the_same_message_id_is_accepted_once(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("m1")])
    await local_queue.publish(QUEUE, [message("m1", body=b"again")])
    assert await local_queue.count_active(QUEUE) == 1


async def test_a_duplicate_inside_one_batch_keeps_the_first(local_queue: LocalQueue) -> None:
    await local_queue.publish(
        QUEUE, [message("m1", body=b"first"), message("m2"), message("m1", body=b"second")]
    )
    assert await local_queue.count_active(QUEUE) == 2
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    assert (first.message_id, first.body) == ("m1", b"first")


async def test_duplicate_detection_is_per_queue(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("m1")])
    await local_queue.publish("outbound-messages", [message("m1")])
    assert await local_queue.count_active(QUEUE) == 1
    assert await local_queue.count_active("outbound-messages") == 1


async def test_an_expired_duplicate_window_accepts_the_id_again(pool: Pool) -> None:
    bus = bus_with(pool, QueueOptions(duplicate_detection_window=timedelta(milliseconds=50)))
    await bus.publish(QUEUE, [message("m1")])
    await asyncio.sleep(0.1)
    await bus.publish(QUEUE, [message("m1")])
    assert await bus.count_active(QUEUE) == 2
    await asyncio.sleep(0.1)
    assert await bus.purge_expired_duplicates() == 1
    await bus.publish(QUEUE, [message("m1")])
    assert await bus.count_active(QUEUE) == 3


# --- sessions ----------------------------------------------------------------------------------


async def test_a_session_is_held_by_one_receiver_at_a_time(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("a1", "A"), message("a2", "A")])
    first = await local_queue.accept_next_session(QUEUE)
    assert first is not None
    assert first.session_id == "A"
    assert await local_queue.accept_next_session(QUEUE) is None
    await local_queue.publish(QUEUE, [message("b1", "B")])
    second = await local_queue.accept_next_session(QUEUE)
    assert second is not None
    assert second.session_id == "B"


async def test_sessions_are_offered_oldest_message_first(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("b1", "B"), message("a1", "A"), message("b2", "B")])
    offered = [await local_queue.accept_next_session(QUEUE) for _ in range(2)]
    assert [s.session_id for s in offered if s is not None] == ["B", "A"]


async def test_messages_of_a_session_arrive_in_order(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message(f"m{i}") for i in range(3)])
    await local_queue.publish(QUEUE, [message(f"m{i}") for i in range(3, 6)])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    seen = []
    while (received := await session.receive()) is not None:
        seen.append(received.message_id)
        await local_queue.complete(received)
    assert seen == [f"m{i}" for i in range(6)]
    assert await local_queue.count_active(QUEUE) == 0


async def test_one_message_of_a_session_is_in_flight_at_a_time(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("m1"), message("m2")])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    assert await session.receive() is None
    await local_queue.complete(first)
    second = await session.receive()
    assert second is not None
    assert second.message_id == "m2"


async def test_concurrent_receives_on_one_session_deliver_one_message(
    local_queue: LocalQueue,
) -> None:
    await local_queue.publish(QUEUE, [message("m1"), message("m2")])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    results = await asyncio.gather(*(session.receive() for _ in range(4)))
    assert [m.message_id for m in results if m is not None] == ["m1"]


async def test_different_sessions_are_processed_in_parallel(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("a1", "A"), message("b1", "B"), message("a2", "A")])
    one = await local_queue.accept_next_session(QUEUE)
    two = await local_queue.accept_next_session(QUEUE)
    assert one is not None
    assert two is not None
    in_flight = [await one.receive(), await two.receive()]
    assert {(m.session_id, m.message_id) for m in in_flight if m is not None} == {
        ("A", "a1"),
        ("B", "b1"),
    }


async def test_a_session_with_only_locked_work_is_not_offered(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("m1")])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    received = await session.receive()
    assert received is not None
    await local_queue.complete(received)
    await session.close()
    assert await local_queue.accept_next_session(QUEUE) is None


async def test_closing_a_session_hands_it_over_with_the_message_redelivered(
    local_queue: LocalQueue,
) -> None:
    await local_queue.publish(QUEUE, [message("m1"), message("m2")])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    await session.close()
    with pytest.raises(SessionLockLost):
        await session.receive()
    with pytest.raises(MessageLockLost):
        await local_queue.complete(first)
    successor = await local_queue.accept_next_session(QUEUE)
    assert successor is not None
    assert successor.session_id == "s1"
    again = await successor.receive()
    assert again is not None
    assert (again.message_id, again.delivery_count) == ("m1", 2)


async def test_an_expired_session_lock_goes_to_the_next_receiver(
    short_lock_queue: LocalQueue,
) -> None:
    bus = short_lock_queue
    await bus.publish(QUEUE, [message("m1")])
    stale = await bus.accept_next_session(QUEUE)
    assert stale is not None
    received = await stale.receive()
    assert received is not None
    await asyncio.sleep(0.7)
    taker = await bus.accept_next_session(QUEUE)
    assert taker is not None
    with pytest.raises(SessionLockLost):
        await stale.receive()
    with pytest.raises(SessionLockLost):
        await stale.renew_session_lock()
    with pytest.raises(MessageLockLost):
        await bus.complete(received)
    again = await taker.receive()
    assert again is not None
    assert again.delivery_count == 2


async def test_renewing_the_session_lock_keeps_the_session(short_lock_queue: LocalQueue) -> None:
    bus = short_lock_queue
    await bus.publish(QUEUE, [message("m1")])
    session = await bus.accept_next_session(QUEUE)
    assert session is not None
    first_expiry = session.locked_until
    await asyncio.sleep(0.35)
    renewed = await session.renew_session_lock()
    assert renewed > first_expiry
    assert session.locked_until == renewed
    await asyncio.sleep(0.4)
    assert await bus.accept_next_session(QUEUE) is None
    assert await session.receive() is not None


# --- peek-lock ---------------------------------------------------------------------------------


async def test_an_expired_lock_redelivers_with_a_higher_count(
    short_lock_queue: LocalQueue,
) -> None:
    bus = short_lock_queue
    await bus.publish(QUEUE, [message("m1")])
    session = await bus.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    assert first.delivery_count == 1
    await asyncio.sleep(0.35)
    await session.renew_session_lock()  # the session outlives the message lock
    await asyncio.sleep(0.35)
    second = await session.receive()
    assert second is not None
    assert (second.message_id, second.delivery_count) == ("m1", 2)
    assert second.lock_token != first.lock_token
    with pytest.raises(MessageLockLost):
        await bus.complete(first)
    await bus.complete(second)


async def test_renewing_a_message_lock_keeps_it(short_lock_queue: LocalQueue) -> None:
    bus = short_lock_queue
    await bus.publish(QUEUE, [message("m1", None)])
    received = await receive_one(bus, None)
    await asyncio.sleep(0.35)
    renewed = await bus.renew_message_lock(received)
    assert renewed > received.locked_until
    await asyncio.sleep(0.4)
    assert await bus.receive(QUEUE) is None
    await bus.complete(received)
    assert await bus.count_active(QUEUE) == 0


async def test_settling_after_the_lock_expired_raises(short_lock_queue: LocalQueue) -> None:
    bus = short_lock_queue
    await bus.publish(QUEUE, [message("m1", None)])
    received = await receive_one(bus, None)
    await asyncio.sleep(0.7)
    with pytest.raises(MessageLockLost):
        await bus.complete(received)
    with pytest.raises(MessageLockLost):
        await bus.abandon(received)
    with pytest.raises(MessageLockLost):
        await bus.dead_letter(received, reason="x")
    with pytest.raises(MessageLockLost):
        await bus.renew_message_lock(received)
    assert await bus.count_active(QUEUE) == 1


async def test_a_completed_message_cannot_be_settled_again(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("m1", None)])
    received = await receive_one(local_queue, None)
    await local_queue.complete(received)
    with pytest.raises(MessageLockLost):
        await local_queue.complete(received)


async def test_abandon_redelivers_with_a_higher_count(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("m1"), message("m2")])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    await local_queue.abandon(first)
    again = await session.receive()
    assert again is not None
    assert (again.message_id, again.delivery_count) == ("m1", 2)


async def test_messages_without_a_session_go_to_any_receiver(local_queue: LocalQueue) -> None:
    await local_queue.publish(QUEUE, [message("m1", None), message("m2", None), message("s", "S")])
    first = await local_queue.receive(QUEUE)
    second = await local_queue.receive(QUEUE)
    assert first is not None
    assert second is not None
    assert [first.message_id, second.message_id] == ["m1", "m2"]
    assert first.session_id is None
    assert await local_queue.receive(QUEUE) is None


# --- dead letters ------------------------------------------------------------------------------


async def test_abandoning_the_last_delivery_dead_letters(pool: Pool) -> None:
    bus = bus_with(pool, QueueOptions(max_delivery_count=2))
    await bus.publish(QUEUE, [message("m1", None), message("m2", None)])
    for expected_count in (1, 2):
        received = await bus.receive(QUEUE)
        assert received is not None
        assert (received.message_id, received.delivery_count) == ("m1", expected_count)
        await bus.abandon(received)
    next_one = await bus.receive(QUEUE)
    assert next_one is not None
    assert next_one.message_id == "m2"
    [dead] = await bus.dead_letters(QUEUE)
    assert (dead.message_id, dead.delivery_count) == ("m1", 2)
    assert dead.dead_letter_reason == MAX_DELIVERY_COUNT_EXCEEDED == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_description is not None
    assert dead.dead_lettered_at.tzinfo is UTC


async def test_a_lock_expiring_on_the_last_delivery_dead_letters(pool: Pool) -> None:
    bus = bus_with(
        pool, QueueOptions(lock_duration=timedelta(milliseconds=400), max_delivery_count=1)
    )
    await bus.publish(QUEUE, [message("m1"), message("m2")])
    session = await bus.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    await asyncio.sleep(0.25)
    await session.renew_session_lock()
    await asyncio.sleep(0.25)
    following = await session.receive()
    assert following is not None
    assert following.message_id == "m2"
    assert [d.message_id for d in await bus.dead_letters(QUEUE)] == ["m1"]


async def test_an_explicit_dead_letter_keeps_reason_and_description(
    local_queue: LocalQueue,
) -> None:
    await local_queue.publish(QUEUE, [message("m1", None, body=b"payload")])
    received = await receive_one(local_queue, None)
    await local_queue.dead_letter(received, reason="PermanentError", description="131026")
    assert await local_queue.receive(QUEUE) is None
    assert await local_queue.count_active(QUEUE) == 0
    [dead] = await local_queue.dead_letters(QUEUE)
    assert dead.body == b"payload"
    assert (dead.dead_letter_reason, dead.dead_letter_description) == ("PermanentError", "131026")
    assert await local_queue.dead_letters("other-queue") == []


# --- scheduled delivery and waking up ----------------------------------------------------------


async def test_a_scheduled_message_is_invisible_until_due(local_queue: LocalQueue) -> None:
    due = datetime.now(UTC) + timedelta(milliseconds=400)
    await local_queue.publish(QUEUE, [message("later", scheduled=due), message("now", "other")])
    assert await local_queue.count_active(QUEUE) == 1
    first = await local_queue.accept_next_session(QUEUE)
    assert first is not None
    assert first.session_id == "other"
    assert await local_queue.accept_next_session(QUEUE) is None
    started = time.monotonic()
    later = await local_queue.accept_next_session(QUEUE, wait=5)
    assert later is not None
    assert later.session_id == "s1"
    assert datetime.now(UTC) >= due
    assert time.monotonic() - started < 2
    received = await later.receive()
    assert received is not None
    assert received.scheduled_enqueue_time == due


async def test_wait_for_activity_wakes_on_a_publish_elsewhere(
    local_queue: LocalQueue, other_pool: Pool
) -> None:
    assert await local_queue.receive(QUEUE) is None
    waiting = asyncio.create_task(local_queue.wait_for_activity(QUEUE, 5))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    publisher = LocalQueue(other_pool)
    started = time.monotonic()
    await publisher.publish(QUEUE, [message("m1", None)])
    await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 2
    assert await local_queue.receive(QUEUE) is not None


async def test_one_publish_wakes_every_waiter_of_the_queue_only(
    local_queue: LocalQueue, other_pool: Pool
) -> None:
    await local_queue.wait_for_activity(QUEUE, 0.01)  # the listener is up from here on
    waiters = [asyncio.create_task(local_queue.wait_for_activity(QUEUE, 5)) for _ in range(5)]
    bystander = asyncio.create_task(local_queue.wait_for_activity("elsewhere", 5))
    await asyncio.sleep(0.1)
    await LocalQueue(other_pool).publish(QUEUE, [message("m1", None)])
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert time.monotonic() - started < 2
    assert not bystander.done()
    bystander.cancel()


async def test_a_receive_with_wait_returns_the_message_published_meanwhile(
    local_queue: LocalQueue, other_pool: Pool
) -> None:
    publisher = LocalQueue(other_pool)

    async def publish_soon() -> None:
        await asyncio.sleep(0.2)
        await publisher.publish(QUEUE, [message("m1", None)])

    started = time.monotonic()
    publishing = asyncio.create_task(publish_soon())
    received = await local_queue.receive(QUEUE, wait=5)
    await publishing
    assert received is not None
    assert time.monotonic() - started < 2


async def test_wait_for_activity_wakes_when_a_scheduled_message_is_due(
    local_queue: LocalQueue,
) -> None:
    due = datetime.now(UTC) + timedelta(milliseconds=400)
    await local_queue.publish(QUEUE, [message("m1", None, scheduled=due)])
    started = time.monotonic()
    waits = 0
    while (received := await local_queue.receive(QUEUE)) is None:
        # The first wake-up may be the publish's own notification; the due time does the rest.
        await local_queue.wait_for_activity(QUEUE, 5)
        waits += 1
    assert datetime.now(UTC) >= due
    assert time.monotonic() - started < 2
    assert waits <= 3
    assert received.message_id == "m1"


async def test_wait_for_activity_wakes_when_a_lock_expires(short_lock_queue: LocalQueue) -> None:
    bus = short_lock_queue
    await bus.publish(QUEUE, [message("m1", None)])
    assert await bus.receive(QUEUE) is not None
    started = time.monotonic()
    again = await bus.receive(QUEUE, wait=5)
    assert again is not None
    assert again.delivery_count == 2
    assert time.monotonic() - started < 2


async def test_an_idle_wait_times_out(local_queue: LocalQueue) -> None:
    started = time.monotonic()
    assert await local_queue.receive(QUEUE, wait=0.3) is None
    assert await local_queue.accept_next_session(QUEUE, wait=0.2) is None
    assert time.monotonic() - started >= 0.45


# --- concurrency -------------------------------------------------------------------------------


async def test_concurrent_consumers_process_each_message_once_in_session_order(
    database_url: str,
) -> None:
    sessions, per_session, consumers = 24, 12, 4
    pool = await open_pool(database_url, max_size=consumers + 2, name="tests-concurrency")
    bus = LocalQueue(pool)
    held: set[str] = set()
    processed: dict[str, list[int]] = defaultdict(list)

    async def consume() -> None:
        while True:
            session = await bus.accept_next_session(QUEUE, wait=0.3)
            if session is None:
                return
            assert session.session_id not in held, "two receivers hold one session"
            held.add(session.session_id)
            try:
                while (received := await session.receive()) is not None:
                    processed[session.session_id].append(int(received.body))
                    await asyncio.sleep(0)  # give the other consumers a chance to interleave
                    await bus.complete(received)
            finally:
                held.discard(session.session_id)
                await session.close()

    try:
        batches = [
            [message(f"{s}-{i}", f"s{s}", body=str(i).encode()) for s in range(sessions)]
            for i in range(per_session)
        ]
        consuming = asyncio.gather(*(consume() for _ in range(consumers)))
        for batch in batches:  # published while the consumers are already at work
            await bus.publish(QUEUE, batch)
        await asyncio.wait_for(consuming, 30)
    finally:
        await bus.close()
        await pool.close()

    assert sorted(processed) == sorted(f"s{s}" for s in range(sessions))
    for numbers in processed.values():
        assert numbers == list(range(per_session)), "lost, duplicated or out-of-order messages"


async def test_closing_a_session_wakes_a_waiting_acceptor(
    local_queue: LocalQueue, other_pool: Pool
) -> None:
    await local_queue.publish(QUEUE, [message("m1"), message("m2")])
    holder = await local_queue.accept_next_session(QUEUE)
    assert holder is not None
    elsewhere = LocalQueue(other_pool)
    try:
        waiting = asyncio.create_task(elsewhere.accept_next_session(QUEUE, wait=5))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        await holder.close()
        taken = await asyncio.wait_for(waiting, 5)
        assert taken is not None
        assert taken.session_id == "s1"
        assert time.monotonic() - started < 2
    finally:
        await elsewhere.close()


async def test_an_idle_wait_runs_one_query_not_a_polling_loop(database_url: str) -> None:
    pool = await open_pool(database_url, max_size=2, name="tests-idle")
    checkouts = 0
    real_connection = pool.connection

    def counting_connection(timeout: float | None = None) -> Any:
        nonlocal checkouts
        checkouts += 1
        return real_connection(timeout)

    pool.connection = counting_connection  # type: ignore[method-assign]
    bus = LocalQueue(pool)
    try:
        await bus.wait_for_activity(QUEUE, 0.01)
        checkouts = 0
        await bus.wait_for_activity(QUEUE, 0.8)
        assert checkouts <= 1
    finally:
        await bus.close()
        await pool.close()


async def test_a_scheduled_message_that_comes_due_between_an_accept_and_the_wait_is_not_slept_through(
    local_queue: LocalQueue,
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.2)
    await local_queue.publish(QUEUE, [message("later", "S", scheduled=due)])
    assert await local_queue.accept_next_session(QUEUE) is None  # not due yet
    await asyncio.sleep(0.3)  # due now; coming due sends no notification
    started = time.monotonic()
    await local_queue.wait_for_activity(QUEUE, 5)
    assert time.monotonic() - started < 1
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None and first.message_id == "later"
    await session.close()


async def test_a_waiter_learns_the_due_time_of_a_held_sessions_retry_when_the_session_is_released(
    local_queue: LocalQueue,
) -> None:
    await local_queue.publish(QUEUE, [message("now", "S")])
    holder = await local_queue.accept_next_session(QUEUE)
    assert holder is not None
    first = await holder.receive()
    assert first is not None
    # A retry scheduled into the held session, as the sender does.
    due = datetime.now(UTC) + timedelta(seconds=0.4)
    await local_queue.publish(QUEUE, [message("retry", "S", scheduled=due)])

    async def release_soon() -> None:
        await asyncio.sleep(0.1)
        await holder.complete_and_receive(first)
        await holder.close()

    releasing = asyncio.create_task(release_soon())
    # The feeder's loop: nothing to accept, wait (the held session's retry is not counted),
    # woken by the release, nothing due yet, wait again: this wait must end at the due time.
    assert await local_queue.accept_next_session(QUEUE) is None
    await local_queue.wait_for_activity(QUEUE, 5)
    await releasing
    started = time.monotonic()
    while (session := await local_queue.accept_next_session(QUEUE)) is None:
        await local_queue.wait_for_activity(QUEUE, 5)
        assert time.monotonic() - started < 2, "slept past the retry's due time"
    retry = await session.receive()
    assert retry is not None and retry.message_id == "retry"
    await session.close()


async def listener_pids(pool: Pool) -> list[int]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE '%-listener'"
        )
        return [pid for (pid,) in await cursor.fetchall()]


async def test_the_listener_reconnects_after_losing_its_connection(
    local_queue: LocalQueue, pool: Pool, other_pool: Pool
) -> None:
    await local_queue.wait_for_activity(QUEUE, 0.01)
    [first] = await listener_pids(pool)
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_terminate_backend(%s)", (first,))
    for _ in range(50):
        await asyncio.sleep(0.1)
        pids = await listener_pids(pool)
        if pids and pids != [first]:
            break
    assert len(pids) == 1
    assert pids != [first]
    assert await local_queue.receive(QUEUE) is None
    waiting = asyncio.create_task(local_queue.wait_for_activity(QUEUE, 5))
    await asyncio.sleep(0.1)
    await LocalQueue(other_pool).publish(QUEUE, [message("m1", None)])
    started = time.monotonic()
    await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 2


async def test_closing_the_queue_releases_its_waiters(pool: Pool) -> None:
    bus = LocalQueue(pool)
    waiting = asyncio.create_task(bus.receive(QUEUE, wait=10))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await bus.close()
    assert await asyncio.wait_for(waiting, 5) is None
    assert time.monotonic() - started < 2


# --- fewer round trips: first message with the session, complete and receive together -------


async def locked_message_ids(pool: Pool) -> list[str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT message_id FROM local_bus_messages WHERE lock_token IS NOT NULL"
            " ORDER BY sequence_number"
        )
        return [message_id for (message_id,) in await cursor.fetchall()]


async def test_a_session_comes_with_its_first_message_locked(
    local_queue: LocalQueue, pool: Pool
) -> None:
    await local_queue.publish(QUEUE, [message("m1"), message("m2")])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    # Locked by the accept itself, before any receive.
    assert await locked_message_ids(pool) == ["m1"]
    first = await session.receive()
    assert first is not None
    assert (first.message_id, first.delivery_count) == ("m1", 1)
    assert await session.receive() is None  # m1 is in flight
    await local_queue.complete(first)
    second = await session.receive()
    assert second is not None and second.message_id == "m2"


async def test_complete_and_receive_walks_the_session_in_order(
    local_queue: LocalQueue, pool: Pool
) -> None:
    await local_queue.publish(QUEUE, [message(f"m{i}") for i in range(5)])
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    current = await session.receive()
    seen = []
    while current is not None:
        seen.append(current.message_id)
        assert await locked_message_ids(pool) == [current.message_id]
        current = await session.complete_and_receive(current)
    assert seen == [f"m{i}" for i in range(5)]
    assert await local_queue.count_active(QUEUE) == 0


async def test_complete_and_receive_with_an_expired_message_lock_settles_nothing(
    short_lock_queue: LocalQueue, pool: Pool
) -> None:
    await short_lock_queue.publish(QUEUE, [message("m1"), message("m2")])
    session = await short_lock_queue.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    await asyncio.sleep(0.4)
    await session.renew_session_lock()  # the session stays ours, the message lock does not
    await asyncio.sleep(0.35)
    with pytest.raises(MessageLockLost) as raised:
        await session.complete_and_receive(first)
    assert not isinstance(raised.value, SessionLockLost)
    assert await locked_message_ids(pool) == ["m1"]  # m2 was not received
    again = await session.receive()
    assert again is not None
    assert (again.message_id, again.delivery_count) == ("m1", 2)


async def test_complete_and_receive_after_the_session_lock_expired_raises(
    short_lock_queue: LocalQueue,
) -> None:
    await short_lock_queue.publish(QUEUE, [message("m1"), message("m2")])
    session = await short_lock_queue.accept_next_session(QUEUE)
    assert session is not None
    first = await session.receive()
    assert first is not None
    await asyncio.sleep(0.75)
    with pytest.raises(SessionLockLost):
        await session.complete_and_receive(first)
    assert await short_lock_queue.count_active(QUEUE) == 2


async def test_an_accept_says_whether_another_free_session_has_work(
    local_queue: LocalQueue,
) -> None:
    await local_queue.publish(QUEUE, [message("a1", "A"), message("b1", "B"), message("a2", "A")])
    first = await local_queue.accept_next_session(QUEUE)
    second = await local_queue.accept_next_session(QUEUE)
    assert first is not None and second is not None
    assert (first.session_id, first.more_sessions) == ("A", True)
    assert (second.session_id, second.more_sessions) == ("B", False)


async def test_one_accept_locks_several_sessions_each_with_its_head_message(
    local_queue: LocalQueue, pool: Pool, other_pool: Pool
) -> None:
    elsewhere = bus_with(other_pool, QueueOptions())
    await local_queue.publish(QUEUE, [message("c1", "C")])
    c_holder = await elsewhere.accept_next_session(QUEUE)
    assert c_holder is not None and c_holder.session_id == "C"
    await local_queue.publish(
        QUEUE,
        [message("a1", "A"), message("a2", "A"), message("c2", "C"), message("b1", "B")],
    )
    await local_queue.publish(QUEUE, [message("d1", "D")])

    batch = await local_queue.accept_next_sessions(QUEUE, 2)
    assert [receiver.session_id for receiver in batch] == ["A", "B"]  # C is held elsewhere
    assert batch[-1].more_sessions  # D is free and has work
    firsts = [await receiver.receive() for receiver in batch]
    assert [m.message_id if m else None for m in firsts] == ["a1", "b1"]
    assert await locked_message_ids(pool) == ["c1", "a1", "b1"]

    rest = await local_queue.accept_next_sessions(QUEUE, 16)
    assert [receiver.session_id for receiver in rest] == ["D"]
    assert not rest[0].more_sessions
    assert await local_queue.accept_next_sessions(QUEUE, 16) == []
    for receiver in [*batch, *rest, c_holder]:
        await receiver.close()
    await elsewhere.close()


async def test_a_publish_to_a_session_held_here_wakes_its_holder_not_the_acceptors(
    local_queue: LocalQueue, other_pool: Pool
) -> None:
    await local_queue.publish(QUEUE, [message("m1", "A")])
    holder = await local_queue.accept_next_session(QUEUE)
    assert holder is not None
    first = await holder.receive()
    assert first is not None
    assert await holder.complete_and_receive(first) is None
    acceptor = asyncio.create_task(local_queue.wait_for_activity(QUEUE, 5))
    holder_wait = asyncio.create_task(holder.wait_for_message(5))
    await asyncio.sleep(0.1)
    elsewhere = LocalQueue(other_pool)
    try:
        await elsewhere.publish(QUEUE, [message("m2", "A")])
        assert await asyncio.wait_for(holder_wait, 2) is True
        await asyncio.sleep(0.3)
        assert not acceptor.done(), "an acceptor woke for a session it cannot take"
        await elsewhere.publish(QUEUE, [message("m3", "B")])
        await asyncio.wait_for(acceptor, 2)
    finally:
        acceptor.cancel()
        await elsewhere.close()


# --- durability settings ----------------------------------------------------------------------


async def show_synchronous_commit(pool: Pool) -> str:
    async with pool.connection() as conn:
        cursor = await conn.execute("SHOW synchronous_commit")
        row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


async def test_only_the_local_bus_commits_without_waiting_for_the_disk(database_url: str) -> None:
    from shared_code.config import Settings
    from shared_code.runtime import build_services

    settings = Settings.from_environment(
        {
            "WHATSAPP_ACCESS_TOKEN": "token",
            "WHATSAPP_PHONE_NUMBER_ID": "100000000000001",
            "WHATSAPP_BUSINESS_ACCOUNT_ID": "200000000000001",
            "WHATSAPP_WEBHOOK_VERIFY_TOKEN": "verify",
            "WHATSAPP_APP_SECRET": "secret",
            "DATABASE_URL": database_url,
            "BUS_BACKEND": "local",
        }
    )
    services = await build_services(settings)
    try:
        assert isinstance(services.bus, LocalQueue)
        # The app's rows (webhook bodies, messages, statuses) are durable when answered...
        assert await show_synchronous_commit(services.pool) == "on"
        # ...the bus's own writes ride on the next durable commit (see local_queue.py).
        assert await show_synchronous_commit(services.bus._pool) == "off"
    finally:
        await services.close()
    assert services.bus._pool.closed


async def test_complete_and_receive_passes_over_an_exhausted_next_message(pool: Pool) -> None:
    bus = bus_with(pool, QueueOptions(max_delivery_count=2))
    try:
        await bus.publish(QUEUE, [message("m1"), message("m2"), message("m3")])
        async with pool.connection() as conn:
            # m2 has had its last delivery (as after two crashed holders).
            await conn.execute(
                "UPDATE local_bus_messages SET delivery_count = 2 WHERE message_id = 'm2'"
            )
        session = await bus.accept_next_session(QUEUE)
        assert session is not None
        first = await session.receive()
        assert first is not None and first.message_id == "m1"
        following = await asyncio.wait_for(session.complete_and_receive(first), timeout=5)
        assert following is not None and following.message_id == "m3"
        [dead] = await bus.dead_letters(QUEUE)
        assert (dead.message_id, dead.dead_letter_reason) == ("m2", MAX_DELIVERY_COUNT_EXCEEDED)
    finally:
        await bus.close()
