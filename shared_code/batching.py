"""Opportunistic batching ("group commit") for work that arrives from many concurrent requests.

Callers ``await submit(item)``; a flusher task takes everything queued so far (up to
``max_batch``) and hands it to the batch handler in one go, with at most ``max_in_flight``
batches running at once. An idle system flushes a single item at once (no timer, no added
latency); a busy one amortises each database round trip and commit over the whole batch, which is
what lets one worker absorb thousands of webhooks a second.
"""

from __future__ import annotations

import asyncio
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
        self, handler: BatchHandler[ItemT, ResultT], *, max_batch: int = 256, max_in_flight: int = 4
    ) -> None:
        self._handler = handler
        self._max_batch = max_batch
        # Several batches in flight keep the database busy while one waits for its commit.
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def submit(self, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if len(self._flushers) < self._max_in_flight:
            flusher = asyncio.create_task(self._flush_until_empty())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await future

    async def _flush_until_empty(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                results = await self._handler([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError("batch handler returned a different number of results")
            except asyncio.CancelledError:
                for _, future in batch + self._waiting:
                    future.cancel()
                self._waiting.clear()
                raise
            except Exception as error:
                # Every caller of the failed batch gets the error; later batches still run.
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
