from __future__ import annotations

from collections.abc import AsyncIterator

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
