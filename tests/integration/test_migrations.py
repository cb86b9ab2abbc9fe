from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from shared_code.db.migrations import APP_MIGRATIONS, MigrationError, apply_migrations

pytestmark = pytest.mark.integration

SEED_TABLES = {
    "whatsapp_contacts",
    "whatsapp_conversations",
    "whatsapp_messages",
    "whatsapp_webhook_events",
}


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {name for (name,) in rows}


async def test_migrations_create_the_seed_tables_and_a_second_run_is_a_no_op(
    empty_database_url: str,
) -> None:
    applied = await apply_migrations(empty_database_url)
    assert applied and applied[0].startswith("0001_")
    assert tables(empty_database_url) >= SEED_TABLES
    assert await apply_migrations(empty_database_url) == []


async def test_concurrent_starters_apply_each_migration_once(empty_database_url: str) -> None:
    results = await asyncio.gather(*(apply_migrations(empty_database_url) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(list(APP_MIGRATIONS.glob("*.sql")))]
    with psycopg.connect(empty_database_url) as conn:
        (count,) = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FROM schema_migrations WHERE set_name = 'app'"
        ).fetchone()
    assert count == len(list(APP_MIGRATIONS.glob("*.sql")))


async def test_an_edited_migration_stops_start_up(empty_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    assert await apply_migrations(empty_database_url, tmp_path, set_name="t") == ["0001_first"]
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await apply_migrations(empty_database_url, tmp_path, set_name="t")


async def test_a_failing_migration_leaves_nothing_half_applied(
    empty_database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_fn();")
    with pytest.raises(psycopg.Error):
        await apply_migrations(empty_database_url, tmp_path, set_name="t")
    assert "good" in tables(empty_database_url)
    assert "half" not in tables(empty_database_url)
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int);")
    assert await apply_migrations(empty_database_url, tmp_path, set_name="t") == ["0002_bad"]
