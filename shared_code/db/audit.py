"""Repository of the audit log: who changed what through the management API or a policy."""

from __future__ import annotations

from collections.abc import Mapping

from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection

__all__ = ["record"]


async def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | int | None,
    details: Mapping[str, object] | None = None,
) -> None:
    """Add one audit row in the caller's transaction, so the change and its record commit together.

    ``details`` must hold no phone number, message text or secret (an erasure keeps these rows).
    """
    await conn.execute(
        "INSERT INTO whatsapp_audit_log (actor, action, target_type, target_id, details) "
        "VALUES (%s, %s, %s, %s, %s)",
        (
            actor,
            action,
            target_type,
            None if target_id is None else str(target_id),
            Jsonb(dict(details or {})),
        ),
    )
