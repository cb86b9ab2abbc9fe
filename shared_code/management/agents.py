"""The agent configuration commands behind ``GET/POST/PUT/DELETE agents``.

Each takes a connection (each write runs in its own transaction on it) and the caller as the
audit log names it; they raise the :mod:`shared_code.management.problems` an HTTP adapter answers
with: :class:`InvalidRequest` (400) for a configuration that breaks a rule the schema cannot say,
:class:`NotFound` (404), :class:`Conflict` (409) for a taken name, a stale ``expected_version``,
or a change that would leave no default agent. The rules themselves are described in
:mod:`shared_code.agent_configs`. The orchestrators of every instance see a change within
:data:`shared_code.orchestrator.agent_catalog.CHECK_INTERVAL_SECONDS` or so.
"""

from __future__ import annotations

import psycopg.errors

from shared_code.agent_configs import (
    AgentConfig,
    AgentConfigInput,
    AgentList,
    validate_agent_input,
)
from shared_code.db import agents as rows
from shared_code.db import audit
from shared_code.db.pool import Connection
from shared_code.management.problems import Conflict, NotFound

__all__ = ["create_agent", "delete_agent", "get_agent", "list_agents", "replace_agent"]

_TARGET = "agent"


async def list_agents(conn: Connection) -> AgentList:
    return AgentList(items=await rows.fetch_all(conn))


async def get_agent(conn: Connection, key: str | int) -> AgentConfig:
    """The configuration with this id (digits) or name; :class:`NotFound` otherwise."""
    found = await _find(conn, key, lock=False)
    if found is None:
        raise NotFound(f"no agent {key!s}", code="agent_not_found")
    return found


async def create_agent(conn: Connection, config: AgentConfigInput, *, actor: str) -> AgentConfig:
    validate_agent_input(config)
    async with conn.transaction():
        if config.is_default:
            await rows.clear_default(conn)
        try:
            created = await rows.insert(conn, config)
        except psycopg.errors.UniqueViolation as error:
            raise _conflict_of(error, config.name) from None
        await audit.record(
            conn,
            actor=actor,
            action="agent.create",
            target_type=_TARGET,
            target_id=created.id,
            details={"name": created.name, "kind": created.kind, "version": created.version},
        )
    return created


async def replace_agent(
    conn: Connection,
    key: str | int,
    config: AgentConfigInput,
    *,
    actor: str,
    expected_version: int | None = None,
) -> AgentConfig:
    """PUT: every field replaced. A new name moves the conversations kept by the old one;
    ``expected_version`` (an ``If-Match``) refuses to overwrite someone else's change."""
    validate_agent_input(config)
    async with conn.transaction():
        current = await _find(conn, key, lock=True)
        if current is None:
            raise NotFound(f"no agent {key!s}", code="agent_not_found")
        if expected_version is not None and current.version != expected_version:
            raise Conflict(
                f"agent {current.name} is at version {current.version}, not {expected_version}",
                code="agent_version_mismatch",
            )
        if current.is_default and not config.is_default:
            raise Conflict(
                "this is the default agent: make another agent the default first",
                code="agent_is_default",
            )
        if config.is_default and not current.is_default:
            await rows.clear_default(conn, except_id=current.id)
        try:
            replaced = await rows.update(conn, current.id, config)
        except psycopg.errors.UniqueViolation as error:
            raise _conflict_of(error, config.name) from None
        assert replaced is not None  # the row is locked
        moved = 0
        if not replaced.enabled:
            moved = await rows.reassign_conversations(conn, current.name, None)
        elif replaced.name != current.name:
            moved = await rows.reassign_conversations(conn, current.name, replaced.name)
        await audit.record(
            conn,
            actor=actor,
            action="agent.replace",
            target_type=_TARGET,
            target_id=replaced.id,
            details={
                "name": replaced.name,
                "previous_name": current.name,
                "changed": _changed_fields(current, replaced),
                "version": replaced.version,
                "conversations_reassigned": moved,
            },
        )
    return replaced


async def delete_agent(conn: Connection, key: str | int, *, actor: str) -> None:
    """Delete a configuration; its conversations go back to the default agent."""
    async with conn.transaction():
        current = await _find(conn, key, lock=True)
        if current is None:
            raise NotFound(f"no agent {key!s}", code="agent_not_found")
        if current.is_default:
            raise Conflict(
                "the default agent cannot be deleted: make another agent the default first",
                code="agent_is_default",
            )
        await rows.delete(conn, current.id)
        moved = await rows.reassign_conversations(conn, current.name, None)
        await audit.record(
            conn,
            actor=actor,
            action="agent.delete",
            target_type=_TARGET,
            target_id=current.id,
            details={"name": current.name, "kind": current.kind, "conversations_reassigned": moved},
        )


async def _find(conn: Connection, key: str | int, *, lock: bool) -> AgentConfig | None:
    if isinstance(key, int) or (key.isascii() and key.isdigit()):
        # Names start with a letter, so digits are always an id ("²" is a digit to isdigit()).
        return await rows.fetch(conn, agent_id=int(key), lock=lock)
    return await rows.fetch(conn, name=key, lock=lock)


def _conflict_of(error: psycopg.errors.UniqueViolation, name: str) -> Conflict:
    if error.diag.constraint_name == "whatsapp_agents_one_default":
        # Another request made a different agent the default at the same moment.
        return Conflict("another agent became the default meanwhile; retry", code="agent_conflict")
    return Conflict(f"an agent named {name} exists", code="agent_name_taken")


_COMPARED = (
    "name",
    "kind",
    "enabled",
    "is_default",
    "model",
    "system_prompt",
    "greeting",
    "fallback_text",
    "routing_keywords",
    "routing_reply_ids",
    "sticky_routing",
    "routing_priority",
    "business_hours",
    "settings",
)


def _changed_fields(before: AgentConfig, after: AgentConfig) -> list[str]:
    # Field names only: a prompt or greeting is business text that has no place in the log.
    return [f for f in _COMPARED if getattr(before, f) != getattr(after, f)]
