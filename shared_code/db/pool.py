"""The async connection pool shared by everything in one worker process."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

__all__ = ["Connection", "Pool", "open_pool"]

Connection = AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]


async def open_pool(
    database_url: str, *, max_size: int = 10, name: str = "bridge", synchronous_commit: bool = True
) -> Pool:
    """Open a pool and wait until its first connection works, so a bad URL fails at start.

    ``synchronous_commit=False`` is for the local bus only (see :mod:`shared_code.bus.local_queue`):
    its commits return before their WAL reaches the disk.
    """
    kwargs: dict[str, object] = {"application_name": f"whatsapp-bridge-{name}", "autocommit": True}
    if not synchronous_commit:
        kwargs["options"] = "-c synchronous_commit=off"
    pool: Pool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        name=name,
        open=False,
        # No per-checkout health check: it costs a round trip on every webhook. A connection
        # broken by a server restart fails its one batch (answered 503, retried by Meta) and
        # the pool replaces it.
        # Autocommit: a single statement is its own transaction, one round trip instead of
        # BEGIN + statement + COMMIT. Work that must be atomic says so with conn.transaction().
        kwargs=kwargs,
    )
    await pool.open(wait=True, timeout=30)
    return pool
