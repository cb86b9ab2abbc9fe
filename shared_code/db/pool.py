"""The async connection pool shared by everything in one worker process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from psycopg import AsyncConnection, conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from shared_code.db.entra import PasswordSource

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "STATEMENT_TIMEOUT_SECONDS",
    "Connection",
    "Pool",
    "open_pool",
]

Connection = AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]


# A connection attempt that gets no answer (a server that accepts TCP and then says nothing)
# fails after this, instead of waiting for the kernel's TCP timeout (minutes).
CONNECT_TIMEOUT_SECONDS: Final = 5
# The server cancels a statement running longer than this: nothing the app runs needs more, and
# one stuck on a lock must not hold its connection forever.
STATEMENT_TIMEOUT_SECONDS: Final = 30
# How long a caller waits for a free connection before PoolTimeout.
POOL_WAIT_SECONDS: Final = 10.0
# psycopg_pool retries a failed connection with a doubling pause (1, 2, 4 … 64 s) until this
# runs out; then the next caller that waits starts a fresh attempt. The default (5 min) meant
# the first connection after an outage could come a minute after the server was back.
RECONNECT_GIVE_UP_SECONDS: Final = 4.0


async def open_pool(
    database_url: str,
    *,
    max_size: int = 10,
    name: str = "bridge",
    synchronous_commit: bool = True,
    password: PasswordSource | None = None,
) -> Pool:
    """Open a pool and wait until its first connection works, so a bad URL fails at start.

    ``synchronous_commit=False`` is for the local bus only (see :mod:`shared_code.bus.local_queue`):
    its commits return before their WAL reaches the disk. Timeouts set in ``database_url`` win
    over the defaults above. ``password`` is awaited for each new connection (an Entra ID access
    token, see :mod:`shared_code.db.entra`), so a connection opened hours later gets a fresh one.
    """
    configured = conninfo.conninfo_to_dict(database_url)
    kwargs: dict[str, object] = {"application_name": f"whatsapp-bridge-{name}", "autocommit": True}
    # Keepalives notice a peer that vanished (a failover, a cut network) within about a minute.
    for key, value in (
        ("connect_timeout", CONNECT_TIMEOUT_SECONDS),
        ("keepalives", 1),
        ("keepalives_idle", 30),
        ("keepalives_interval", 10),
        ("keepalives_count", 3),
        # Data unacknowledged this long (a network that drops everything) fails the connection.
        ("tcp_user_timeout", 30_000),
    ):
        if key not in configured:
            kwargs[key] = value
    options = [f"-c statement_timeout={STATEMENT_TIMEOUT_SECONDS}s"]
    if not synchronous_commit:
        options.append("-c synchronous_commit=off")
    kwargs["options"] = " ".join([str(configured.get("options") or ""), *options]).strip()
    pool: Pool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        name=name,
        open=False,
        timeout=POOL_WAIT_SECONDS,
        reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        # No per-checkout health check: it costs a round trip on every webhook. A connection
        # broken by a server restart fails its one batch (answered 503, retried by Meta) and
        # the pool replaces it.
        # Autocommit: a single statement is its own transaction, one round trip instead of
        # BEGIN + statement + COMMIT. Work that must be atomic says so with conn.transaction().
        kwargs=kwargs if password is None else _with_password(kwargs, password),
    )
    await pool.open(wait=True, timeout=30)
    return pool


def _with_password(
    kwargs: dict[str, Any], password: PasswordSource
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """psycopg_pool (>= 3.3) awaits this for each connection it opens."""

    async def connection_kwargs() -> dict[str, Any]:
        return {**kwargs, "password": await password()}

    return connection_kwargs
