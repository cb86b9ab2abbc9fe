from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS
from shared_code.db.migrations import apply_migrations
from tests.databases import throwaway_database
from tests.fuzz.harness import IntakeHarness


@pytest.fixture(scope="module")
def fuzz_server_database(server_url: str) -> Iterator[str]:
    """One database for a whole module: creating and migrating one per corpus case would cost
    more than the cases; each test empties it instead (:meth:`IntakeHarness.reset`)."""
    with throwaway_database(server_url, "fuzz") as url:
        yield url


@pytest.fixture(scope="module")
async def fuzz_database_url(fuzz_server_database: str) -> str:
    await apply_migrations(fuzz_server_database)
    await apply_migrations(fuzz_server_database, LOCAL_BUS_MIGRATIONS, set_name="local_bus")
    return fuzz_server_database


@pytest.fixture
async def harness(fuzz_database_url: str) -> AsyncIterator[IntakeHarness]:
    async with IntakeHarness.open(fuzz_database_url) as harness:
        await harness.reset()
        yield harness
