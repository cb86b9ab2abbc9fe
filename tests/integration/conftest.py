from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.db.pool import Pool, open_pool


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(database_url, max_size=4, name="tests")
    yield pool
    await pool.close()


@pytest.fixture
async def local_queue(pool: Pool) -> AsyncIterator[LocalQueue]:
    queue = LocalQueue(pool)
    yield queue
    await queue.close()


@pytest.fixture
def quiet_client_logs() -> Iterator[None]:
    """The test's own clients log URLs and bodies (httpx at INFO, pywa at DEBUG) with the simulated
    user's number and wamids; the simulator's and the app's records are still scanned."""
    loggers = [logging.getLogger(name) for name in ("httpx", "pywa", "pywa_async")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
