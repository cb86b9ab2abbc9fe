"""Repository of raw webhook deliveries (``whatsapp_webhook_events``): the intake's outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shared_code.db.pool import Connection

__all__ = [
    "EventStatus",
    "NewWebhookEvent",
    "PendingWebhookEvent",
    "StoredWebhookEvent",
    "claim_pending",
    "insert_events",
    "mark_published",
    "record_publish_failure",
]

EventStatus = Literal["pending", "published", "ignored", "invalid"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewWebhookEvent:
    body: bytes
    body_sha256: bytes
    object: str | None
    fields: tuple[str, ...]
    status: EventStatus
    reason: str | None
    event_count: int


@dataclass(frozen=True, slots=True)
class StoredWebhookEvent:
    id: int
    # False when the same body was already stored: Meta retried a delivery we had accepted.
    inserted: bool


@dataclass(frozen=True, slots=True)
class PendingWebhookEvent:
    id: int
    body: bytes
    received_at: datetime
    publish_attempts: int


async def insert_events(
    conn: Connection, events: Sequence[NewWebhookEvent]
) -> dict[bytes, StoredWebhookEvent]:
    """Insert many events in one statement; a body seen before only counts as a duplicate.

    Keyed by body hash. The caller passes each hash once: one INSERT ... ON CONFLICT DO UPDATE
    cannot touch the same row twice.
    """
    if not events:
        return {}
    cursor = await conn.execute(
        """
        INSERT INTO whatsapp_webhook_events
            (body, body_sha256, object, fields, status, reason, event_count)
        SELECT body, sha, obj, COALESCE(string_to_array(NULLIF(flds, ''), ','), '{}'),
               status, reason, n
        FROM unnest(%s::bytea[], %s::bytea[], %s::text[], %s::text[], %s::text[], %s::text[],
                    %s::int[]) AS t(body, sha, obj, flds, status, reason, n)
        ON CONFLICT (body_sha256) DO UPDATE
            SET duplicate_count = whatsapp_webhook_events.duplicate_count + 1,
                last_received_at = now()
        RETURNING id, body_sha256, (xmax = 0) AS inserted
        """,
        (
            [e.body for e in events],
            [e.body_sha256 for e in events],
            [e.object for e in events],
            [",".join(e.fields) for e in events],
            [e.status for e in events],
            [e.reason for e in events],
            [e.event_count for e in events],
        ),
    )
    rows = await cursor.fetchall()
    return {bytes(sha): StoredWebhookEvent(id, inserted) for id, sha, inserted in rows}


async def mark_published(conn: Connection, event_ids: Sequence[int]) -> None:
    if event_ids:
        await conn.execute(
            """
            UPDATE whatsapp_webhook_events
            SET status = 'published', published_at = now(),
                publish_attempts = publish_attempts + 1, last_publish_error = NULL
            WHERE id = ANY(%s) AND status = 'pending'
            """,
            (list(event_ids),),
        )


async def record_publish_failure(conn: Connection, event_ids: Sequence[int], error: str) -> None:
    if event_ids:
        await conn.execute(
            """
            UPDATE whatsapp_webhook_events
            SET publish_attempts = publish_attempts + 1, last_publish_error = left(%s, 500)
            WHERE id = ANY(%s) AND status = 'pending'
            """,
            (error, list(event_ids)),
        )


async def claim_pending(
    conn: Connection, *, min_age_seconds: int, limit: int
) -> list[PendingWebhookEvent]:
    """Lock pending events old enough that their own request has given up on them.

    Rows stay locked until the caller's transaction ends, so two sweepers never republish the
    same event at the same time (republishing is harmless anyway: bus message ids dedupe).
    """
    cursor = await conn.execute(
        """
        SELECT id, body, received_at, publish_attempts
        FROM whatsapp_webhook_events
        WHERE status = 'pending' AND received_at < now() - make_interval(secs => %s)
        ORDER BY received_at, id
        LIMIT %s
        FOR UPDATE SKIP LOCKED
        """,
        (min_age_seconds, limit),
    )
    return [PendingWebhookEvent(*row) for row in await cursor.fetchall()]
