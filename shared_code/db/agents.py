"""Repository of agent configurations (``whatsapp_agents``).

Every write takes a new ``version`` from one sequence, so :func:`catalog_signature` (row count and
highest version) changes after any insert, update or delete: the orchestrator's cheap way to see
that its cached agents are stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared_code.agent_configs import AgentConfig, AgentConfigInput
from shared_code.db.pool import Connection

__all__ = [
    "catalog_signature",
    "clear_default",
    "delete",
    "fetch",
    "fetch_all",
    "insert",
    "reassign_conversations",
    "seed_if_empty",
    "update",
]

# Any fixed 64-bit number: "agentsed" in ASCII, recognisable in pg_locks.
_SEED_LOCK_KEY: Final = 0x6167656E74736564

_SELECT: Final = """
SELECT id, name, kind, enabled, is_default, model, system_prompt, greeting, fallback_text,
    routing_keywords, routing_reply_ids, sticky_routing, routing_priority, business_hours,
    settings, version, created_at, updated_at
FROM whatsapp_agents
"""
_INSERT: Final = """
INSERT INTO whatsapp_agents
    (name, kind, enabled, is_default, model, system_prompt, greeting, fallback_text,
     routing_keywords, routing_reply_ids, sticky_routing, routing_priority, business_hours,
     settings)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING id, name, kind, enabled, is_default, model, system_prompt, greeting, fallback_text,
    routing_keywords, routing_reply_ids, sticky_routing, routing_priority, business_hours,
    settings, version, created_at, updated_at
"""
_UPDATE: Final = """
UPDATE whatsapp_agents SET
    name = %s, kind = %s, enabled = %s, is_default = %s, model = %s, system_prompt = %s,
    greeting = %s, fallback_text = %s, routing_keywords = %s, routing_reply_ids = %s,
    sticky_routing = %s, routing_priority = %s, business_hours = %s, settings = %s,
    version = nextval('whatsapp_agents_version_seq'), updated_at = now()
WHERE id = %s
RETURNING id, name, kind, enabled, is_default, model, system_prompt, greeting, fallback_text,
    routing_keywords, routing_reply_ids, sticky_routing, routing_priority, business_hours,
    settings, version, created_at, updated_at
"""


def _values(config: AgentConfigInput) -> tuple[Any, ...]:
    hours = config.business_hours
    return (
        config.name,
        config.kind,
        config.enabled,
        config.is_default,
        config.model,
        config.system_prompt,
        config.greeting,
        config.fallback_text,
        list(config.routing_keywords),
        list(config.routing_reply_ids),
        config.sticky_routing,
        config.routing_priority,
        None if hours is None else Jsonb(msgspec.to_builtins(hours)),
        Jsonb(msgspec.to_builtins(config.settings)),
    )


def _config(row: dict[str, Any]) -> AgentConfig:
    return msgspec.convert(row, AgentConfig)


async def fetch_all(conn: Connection) -> list[AgentConfig]:
    """Every configuration in routing order."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_SELECT + "ORDER BY routing_priority, name")
        return [_config(row) for row in await cursor.fetchall()]


async def fetch(
    conn: Connection, *, agent_id: int | None = None, name: str | None = None, lock: bool = False
) -> AgentConfig | None:
    """One configuration by id or name; ``lock`` holds its row until the transaction ends."""
    query = _SELECT + ("WHERE id = %s" if agent_id is not None else "WHERE name = %s")
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            query + (" FOR UPDATE" if lock else ""), (agent_id if agent_id is not None else name,)
        )
        row = await cursor.fetchone()
    return None if row is None else _config(row)


async def insert(conn: Connection, config: AgentConfigInput) -> AgentConfig:
    """Raises :class:`psycopg.errors.UniqueViolation` when the name is taken."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_INSERT, _values(config))
        row = await cursor.fetchone()
    assert row is not None
    return _config(row)


async def update(conn: Connection, agent_id: int, config: AgentConfigInput) -> AgentConfig | None:
    """Replace every field of the configuration ``agent_id``; None when it does not exist."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_UPDATE, (*_values(config), agent_id))
        row = await cursor.fetchone()
    return None if row is None else _config(row)


async def delete(conn: Connection, agent_id: int) -> bool:
    cursor = await conn.execute("DELETE FROM whatsapp_agents WHERE id = %s", (agent_id,))
    return cursor.rowcount == 1


async def clear_default(conn: Connection, *, except_id: int | None = None) -> None:
    """Take the default flag from every configuration but ``except_id``."""
    await conn.execute(
        "UPDATE whatsapp_agents SET is_default = false, "
        "version = nextval('whatsapp_agents_version_seq'), updated_at = now() "
        "WHERE is_default AND id IS DISTINCT FROM %s",
        (except_id,),
    )


async def reassign_conversations(conn: Connection, old_name: str, new_name: str | None) -> int:
    """Point conversations kept by ``old_name`` at ``new_name`` (None: back to the default)."""
    cursor = await conn.execute(
        "UPDATE whatsapp_conversations SET assigned_agent = %s, updated_at = now() "
        "WHERE assigned_agent = %s",
        (new_name, old_name),
    )
    return cursor.rowcount


async def catalog_signature(conn: Connection) -> tuple[int, int]:
    """(row count, highest version): equal twice means nothing was written in between."""
    cursor = await conn.execute("SELECT count(*), COALESCE(max(version), 0) FROM whatsapp_agents")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def seed_if_empty(
    conn: Connection, configs: Callable[[], Sequence[AgentConfigInput]]
) -> list[AgentConfig]:
    """Insert ``configs()`` when the table is empty; the rows inserted (none when it was not).

    Call inside a transaction: the advisory lock makes concurrent first starts take turns, and
    the second one finds the first one's rows.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SEED_LOCK_KEY,))
    cursor = await conn.execute("SELECT EXISTS (SELECT 1 FROM whatsapp_agents)")
    row = await cursor.fetchone()
    if row is None or row[0]:
        return []
    return [await insert(conn, config) for config in configs()]
