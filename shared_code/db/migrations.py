"""Versioned SQL migrations, applied at start, safe when several instances start at once.

Each migration set is a folder of ``NNNN_name.sql`` files. Files are applied in order, each in its
own transaction, under a PostgreSQL advisory lock so concurrent starters wait for one another
instead of racing. A file already applied is never run again; if its text changed since, start-up
fails, because an edited migration means databases silently differ.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from shared_code.db.entra import PasswordSource

logger = logging.getLogger(__name__)

__all__ = ["APP_MIGRATIONS", "Migration", "MigrationError", "apply_migrations", "read_migrations"]

APP_MIGRATIONS = Path(__file__).with_name("migrations")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed 64-bit number works; this one is "whatsapp" in ASCII, so it is recognisable in pg_locks.
_ADVISORY_LOCK_KEY = 0x7768617473617070


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def read_migrations(folder: Path) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name must look like 0001_name.sql: {path.name}")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number in {folder}")
    return migrations


async def apply_migrations(
    database_url: str,
    folder: Path = APP_MIGRATIONS,
    *,
    set_name: str = "app",
    password: PasswordSource | None = None,
) -> list[str]:
    """Apply the pending migrations of one set; returns the names applied (empty when none).

    ``password`` is awaited for the connection (an Entra ID access token, as the pool's)."""
    migrations = read_migrations(folder)
    applied_now: list[str] = []
    extra: dict[str, Any] = {} if password is None else {"password": await password()}
    async with await AsyncConnection.connect(database_url, autocommit=True, **extra) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    set_name   text        NOT NULL,
                    version    integer     NOT NULL,
                    name       text        NOT NULL,
                    checksum   text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (set_name, version)
                )
                """
            )
            cursor = await conn.execute(
                "SELECT version, checksum FROM schema_migrations WHERE set_name = %s", (set_name,)
            )
            done = {version: checksum for version, checksum in await cursor.fetchall()}
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {set_name}/{migration.version:04d}_{migration.name} was "
                            "edited after it was applied; add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (set_name, version, name, checksum) "
                        "VALUES (%s, %s, %s, %s)",
                        (set_name, migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
                logger.info(
                    "applied migration %s/%04d_%s", set_name, migration.version, migration.name
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return applied_now
