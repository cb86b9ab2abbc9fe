"""Throwaway PostgreSQL databases for tests, suites and scripts: one way to make and drop them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import conninfo


def database_url_for(server_url: str, database: str) -> str:
    params = conninfo.conninfo_to_dict(server_url)
    params["dbname"] = database
    return conninfo.make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def create_database(server_url: str, prefix: str) -> str:
    """A new, empty database on the server (its user may CREATEDB); returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_databases(server_url: str, *names: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_database(server_url: str, prefix: str, *, keep: bool = False) -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards unless ``keep``."""
    name = create_database(server_url, prefix)
    try:
        yield database_url_for(server_url, name)
    finally:
        if not keep:
            drop_databases(server_url, name)
