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
