from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared_code.batching import BatchingQueue


async def test_concurrent_submissions_share_batches_and_keep_their_own_results() -> None:
    batches: list[list[int]] = []

    async def double(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        return [item * 2 for item in items]

    queue: BatchingQueue[int, int] = BatchingQueue(double, max_batch=50)
    results = await asyncio.gather(*(queue.submit(i) for i in range(120)))
    assert results == [i * 2 for i in range(120)]
    assert sum(len(b) for b in batches) == 120
    assert len(batches) < 120  # batched, not one call per item
    assert max(len(b) for b in batches) <= 50


async def test_a_single_submission_is_flushed_without_waiting_for_more() -> None:
    async def echo(items: Sequence[str]) -> list[str]:
        return list(items)

    queue: BatchingQueue[str, str] = BatchingQueue(echo)
    assert await asyncio.wait_for(queue.submit("a"), timeout=1) == "a"


async def test_a_failed_batch_fails_its_callers_and_later_batches_still_run() -> None:
    calls = 0

    async def flaky(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")
        return list(items)

    queue: BatchingQueue[int, int] = BatchingQueue(flaky)
    with pytest.raises(ConnectionError):
        await queue.submit(1)
    assert await queue.submit(2) == 2


async def test_batches_run_concurrently_up_to_the_in_flight_limit() -> None:
    running = 0
    most_running = 0
    release = asyncio.Event()

    async def slow(items: Sequence[int]) -> list[int]:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        await release.wait()
        running -= 1
        return list(items)

    queue: BatchingQueue[int, int] = BatchingQueue(slow, max_batch=1, max_in_flight=3)
    submissions = asyncio.gather(*(queue.submit(i) for i in range(10)))
    await asyncio.sleep(0.05)
    assert most_running == 3
    release.set()
    assert await submissions == list(range(10))


async def test_a_lingering_queue_turns_a_trickle_into_one_batch() -> None:
    batches: list[list[int]] = []

    async def record(items: Sequence[int]) -> list[None]:
        batches.append(list(items))
        return [None] * len(items)

    queue: BatchingQueue[int, None] = BatchingQueue(record, max_in_flight=1, linger_seconds=0.2)
    for item in range(5):
        queue.enqueue(item)
        await asyncio.sleep(0.01)
    assert batches == []  # still lingering
    await asyncio.sleep(0.3)
    assert batches == [[0, 1, 2, 3, 4]]


async def test_flush_cuts_the_linger_short_and_a_failure_nobody_awaits_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batches: list[list[int]] = []

    async def fail_first(items: Sequence[int]) -> list[None]:
        batches.append(list(items))
        if len(batches) == 1:
            raise ConnectionError("database down")
        return [None] * len(items)

    queue: BatchingQueue[int, None] = BatchingQueue(
        fail_first, max_in_flight=1, linger_seconds=30, name="marks"
    )
    queue.enqueue(1)
    await asyncio.wait_for(queue.flush(), timeout=1)
    assert batches == [[1]]
    assert "marks: a batch of 1 failed: ConnectionError" in caplog.text
    queue.enqueue(2)
    await asyncio.wait_for(queue.flush(), timeout=1)
    assert batches == [[1], [2]]


async def test_an_item_added_as_the_last_flusher_finishes_is_still_handled() -> None:
    handled: list[int] = []

    async def record(items: Sequence[int]) -> list[None]:
        handled.extend(items)
        if items == [1]:
            # Runs right after the flusher's last step, before its task's done-callbacks.
            asyncio.get_running_loop().call_soon(queue.enqueue, 2)
        return [None] * len(items)

    queue: BatchingQueue[int, None] = BatchingQueue(record, max_in_flight=1)
    await queue.submit(1)
    for _ in range(100):
        if handled == [1, 2]:
            break
        await asyncio.sleep(0.01)
    assert handled == [1, 2]
