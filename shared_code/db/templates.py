"""Repository of the message template catalogue: Meta's templates cached per (name, language)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection

__all__ = [
    "DELETED",
    "CatalogueState",
    "StoredTemplate",
    "TemplateStatusChange",
    "TemplateUpsert",
    "apply_status_change",
    "catalogue_state",
    "find_template",
    "list_templates",
    "replace_catalogue",
]

# The status of a template that vanished from Meta's list (not one of Meta's own words).
DELETED = "DELETED"


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateUpsert:
    name: str
    language: str
    meta_id: str | None
    status: str
    category: str | None
    components: list[dict[str, Any]]
    body_parameter_count: int
    header_format: str | None
    header_parameter_count: int
    buttons: list[dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredTemplate:
    name: str
    language: str
    meta_id: str | None
    status: str
    category: str | None
    components: list[dict[str, Any]]
    body_parameter_count: int
    header_format: str | None
    header_parameter_count: int
    buttons: list[dict[str, Any]]
    status_reason: str | None
    refreshed_at: datetime
    deleted_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CatalogueState:
    refreshed_at: datetime | None
    template_count: int
    now: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateStatusChange:
    meta_id: str | None
    name: str | None
    language: str | None
    # None: the event says something happened, not which status the template is in now.
    status: str | None
    reason: str | None
    event_at: datetime | None


_COLUMNS = """name, language, meta_id, status, category, components, body_parameter_count,
    header_format, header_parameter_count, buttons, status_reason, refreshed_at, deleted_at,
    updated_at"""


async def replace_catalogue(
    conn: Connection, waba_id: str, templates: Sequence[TemplateUpsert]
) -> int:
    """Store a complete list read from Meta: upsert each template, mark those missing from it
    deleted; returns how many were marked deleted. Call inside a transaction."""
    # Two refreshes at once (the timer and a send that missed the cache) take turns, so one's
    # "not seen" is never judged against the other's half-written list.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('whatsapp-templates:' || %s))", (waba_id,)
    )
    if templates:
        cursor = conn.cursor()
        await cursor.executemany(
            """
            INSERT INTO whatsapp_message_templates AS t
                (name, language, meta_id, status, category, components, body_parameter_count,
                 header_format, header_parameter_count, buttons, refreshed_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
            ON CONFLICT (name, language) DO UPDATE SET
                meta_id = EXCLUDED.meta_id, status = EXCLUDED.status,
                category = EXCLUDED.category, components = EXCLUDED.components,
                body_parameter_count = EXCLUDED.body_parameter_count,
                header_format = EXCLUDED.header_format,
                header_parameter_count = EXCLUDED.header_parameter_count,
                buttons = EXCLUDED.buttons, refreshed_at = now(), deleted_at = NULL,
                updated_at = CASE
                    WHEN (t.status, t.category, t.components, t.meta_id)
                         IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.category,
                                           EXCLUDED.components, EXCLUDED.meta_id)
                      OR t.deleted_at IS NOT NULL
                    THEN now() ELSE t.updated_at END
            """,
            [
                (
                    template.name,
                    template.language,
                    template.meta_id,
                    template.status,
                    template.category,
                    Jsonb(template.components),
                    template.body_parameter_count,
                    template.header_format,
                    template.header_parameter_count,
                    Jsonb(template.buttons),
                )
                for template in templates
            ],
        )
    # now() is the transaction's start: every row upserted above carries it.
    cursor = await conn.execute(
        """
        UPDATE whatsapp_message_templates
        SET status = %s, deleted_at = now(), updated_at = now()
        WHERE refreshed_at < now() AND deleted_at IS NULL
        """,
        (DELETED,),
    )
    vanished = cursor.rowcount
    await conn.execute(
        """
        INSERT INTO whatsapp_template_catalogues (waba_id, refreshed_at, template_count)
        VALUES (%s, now(), %s)
        ON CONFLICT (waba_id) DO UPDATE
            SET refreshed_at = EXCLUDED.refreshed_at, template_count = EXCLUDED.template_count
        """,
        (waba_id, len(templates)),
    )
    return vanished


async def catalogue_state(conn: Connection, waba_id: str | None) -> CatalogueState:
    cursor = await conn.execute(
        """
        SELECT c.refreshed_at, c.template_count, clock_timestamp()
        FROM (SELECT 1) AS one
        LEFT JOIN whatsapp_template_catalogues c ON c.waba_id = %s
        """,
        (waba_id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    return CatalogueState(refreshed_at=row[0], template_count=int(row[1] or 0), now=row[2])


async def find_template(conn: Connection, name: str, language: str) -> StoredTemplate | None:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        f"SELECT {_COLUMNS} FROM whatsapp_message_templates "  # noqa: S608 - constants
        "WHERE name = %s AND language = %s",
        (name, language),
    )
    row = await cursor.fetchone()
    return None if row is None else StoredTemplate(**row)


async def list_templates(
    conn: Connection,
    *,
    status: str | None = None,
    name: str | None = None,
    include_deleted: bool = False,
) -> list[StoredTemplate]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        f"""
        SELECT {_COLUMNS} FROM whatsapp_message_templates
        WHERE (%(status)s::text IS NULL OR status = %(status)s)
          AND (%(name)s::text IS NULL OR name = %(name)s)
          AND (%(deleted)s OR deleted_at IS NULL OR %(status)s::text = 'DELETED')
        ORDER BY name, language
        """,  # noqa: S608 - constants
        {"status": status, "name": name, "deleted": include_deleted},
    )
    return [StoredTemplate(**row) for row in await cursor.fetchall()]


async def apply_status_change(conn: Connection, change: TemplateStatusChange) -> bool | None:
    """Apply a status webhook to the cached template; True when applied, False when the cache
    holds a newer status already, None when the template is not in the cache."""
    cursor = await conn.execute(
        """
        UPDATE whatsapp_message_templates
        SET status = COALESCE(%(status)s, status), status_reason = %(reason)s,
            status_event_at = %(at)s, updated_at = now(),
            deleted_at = CASE WHEN %(status)s::text = 'DELETED' THEN now() ELSE deleted_at END
        WHERE ((%(meta_id)s::text IS NOT NULL AND meta_id = %(meta_id)s)
               OR (name = %(name)s AND language = %(language)s))
          AND (%(at)s::timestamptz IS NULL OR status_event_at IS NULL
               OR status_event_at <= %(at)s)
        """,
        {
            "status": change.status,
            "reason": change.reason,
            "at": change.event_at,
            "meta_id": change.meta_id,
            "name": change.name,
            "language": change.language,
        },
    )
    if cursor.rowcount > 0:
        return True
    cursor = await conn.execute(
        """
        SELECT 1 FROM whatsapp_message_templates
        WHERE (%(meta_id)s::text IS NOT NULL AND meta_id = %(meta_id)s)
           OR (name = %(name)s AND language = %(language)s)
        """,
        {"meta_id": change.meta_id, "name": change.name, "language": change.language},
    )
    return False if await cursor.fetchone() is not None else None
