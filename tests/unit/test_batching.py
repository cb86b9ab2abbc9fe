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
