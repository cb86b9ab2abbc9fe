"""Opportunistic batching ("group commit") for work that arrives from many concurrent requests.

Callers ``await submit(item)``; a flusher task takes everything queued so far (up to
``max_batch``) and hands it to the batch handler in one go, with at most ``max_in_flight``
batches running at once. An idle system flushes a single item at once (no timer, no added
latency); a busy one amortises each database round trip and commit over the whole batch, which is
what lets one worker absorb thousands of webhooks a second.

Work nobody waits for (bookkeeping after an answer was given) can also ``enqueue(item)`` and
let the queue *linger*: a flusher then waits ``linger_seconds`` before taking its batch, so a
steady trickle of items becomes one statement per linger instead of one per item. ``flush()``
cuts the wait short and returns once everything queued so far was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["BatchingQueue"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

BatchHandler = Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT]]]


class BatchingQueue(Generic[ItemT, ResultT]):
    def __init__(
        self,
        handler: BatchHandler[ItemT, ResultT],
        *,
        max_batch: int = 256,
        max_in_flight: int = 4,
        linger_seconds: float = 0.0,
        name: str = "batch",
    ) -> None:
        self._handler = handler
        self._max_batch = max_batch
        # Several batches in flight keep the database busy while one waits for its commit.
        self._max_in_flight = max_in_flight
        self._linger = linger_seconds
        self._name = name
        # A future per item, or None for an item nobody waits for (its failure is logged).
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT] | None]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._flush_now = asyncio.Event()

    async def submit(self, item: ItemT) -> ResultT:
        return await self.submit_nowait(item)

    def submit_nowait(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue ``item`` and return the future of its result. Cancelling the future (a caller
        that stopped waiting) leaves the item in its batch: the work is done, the result
        dropped."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._add(item, future)
        return future

    def enqueue(self, item: ItemT) -> None:
        """Queue ``item`` without waiting for it; a failed batch is logged, not raised."""
        self._add(item, None)

    async def flush(self) -> None:
        """Handle everything queued so far now, without the linger."""
        while self._flushers:
            self._flush_now.set()
            await asyncio.gather(*self._flushers, return_exceptions=True)
        self._flush_now.clear()

    def _add(self, item: ItemT, future: asyncio.Future[ResultT] | None) -> None:
        self._waiting.append((item, future))
        if len(self._flushers) < self._max_in_flight:
            flusher = asyncio.create_task(self._flush_until_empty())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)

    async def _flush_until_empty(self) -> None:
        try:
            await self._flush_batches()
        finally:
            # Leave the set in the same step that saw the queue empty: a done-callback would run
            # a turn later, and an item added in between would find "a flusher running" and
            # wait forever.
            task = asyncio.current_task()
            if task is not None:
                self._flushers.discard(task)

    async def _flush_batches(self) -> None:
        if self._linger > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self._linger)
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                results = await self._handler([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError("batch handler returned a different number of results")
            except asyncio.CancelledError:
                for _, future in batch + self._waiting:
                    if future is not None:
                        future.cancel()
                self._waiting.clear()
                raise
            except Exception as error:
                # Every caller of the failed batch gets the error; later batches still run.
                if any(future is None for _, future in batch):
                    logger.warning(
                        "%s: a batch of %d failed: %s", self._name, len(batch), type(error).__name__
                    )
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future is not None and not future.done():
                    future.set_result(result)
