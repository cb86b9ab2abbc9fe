"""Repository of raw webhook deliveries (``whatsapp_webhook_events``): the intake's outbox."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import psycopg

from shared_code.db.pool import Connection

__all__ = [
    "EventStatus",
    "NewWebhookEvent",
    "PendingWebhookEvent",
    "StoredWebhookEvent",
    "claim_pending",
    "insert_events",
    "mark_failed",
    "mark_published",
    "mark_unpublishable",
    "record_publish_failure",
]

EventStatus = Literal["pending", "published", "ignored", "invalid", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewWebhookEvent:
    body: bytes
    body_sha256: bytes
    object: str | None
    fields: tuple[str, ...]
    status: EventStatus
    reason: str | None
    event_count: int
    # How many times this body arrived in the batch being inserted (Meta's retries can meet in
    # one batch): all but the first are duplicates.
    copies: int = 1


@dataclass(frozen=True, slots=True)
class StoredWebhookEvent:
    id: int
    # False when the same body was already stored: Meta retried a delivery we had accepted.
    inserted: bool
    # As stored: "invalid" also when PostgreSQL refused the parsed fields of a pending body.
    status: EventStatus


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

    Keyed by body hash. The caller passes each hash once (with its ``copies``): one
    INSERT ... ON CONFLICT DO UPDATE cannot touch the same row twice.
    """
    if not events:
        return {}
    try:
        return await _insert(conn, events)
    except _REFUSED_VALUES:
        pass
    # One value PostgreSQL refuses must not fail its neighbours (they would be answered 503
    # and retried by Meta for days): insert them one at a time, and a refused one with its
    # raw body alone, as invalid, so it is still stored and answered 200.
    stored: dict[bytes, StoredWebhookEvent] = {}
    for event in events:
        try:
            stored.update(await _insert(conn, [event]))
        except _REFUSED_VALUES as error:
            bare = dataclasses.replace(
                event,
                object=None,
                fields=(),
                status="invalid",
                reason=f"parsed fields could not be stored ({_refusal(error)})",
                event_count=0,
            )
            stored.update(await _insert(conn, [bare]))
    return stored


# PostgreSQL's data exceptions (class 22), and text psycopg cannot encode.
_REFUSED_VALUES = (psycopg.DataError, UnicodeEncodeError)


def _refusal(error: Exception) -> str:
    sqlstate = getattr(error, "sqlstate", None)
    return f"SQLSTATE {sqlstate}" if sqlstate else type(error).__name__


async def _insert(
    conn: Connection, events: Sequence[NewWebhookEvent]
) -> dict[bytes, StoredWebhookEvent]:
    cursor = await conn.execute(
        """
        INSERT INTO whatsapp_webhook_events
            (body, body_sha256, object, fields, status, reason, event_count, duplicate_count)
        SELECT body, sha, obj, COALESCE(string_to_array(NULLIF(flds, ''), ','), '{}'),
               status, reason, n, copies - 1
        FROM unnest(%s::bytea[], %s::bytea[], %s::text[], %s::text[], %s::text[], %s::text[],
                    %s::int[], %s::int[]) AS t(body, sha, obj, flds, status, reason, n, copies)
        ON CONFLICT (body_sha256) DO UPDATE
            SET duplicate_count =
                    whatsapp_webhook_events.duplicate_count + EXCLUDED.duplicate_count + 1,
                last_received_at = now()
        RETURNING id, body_sha256, (xmax = 0) AS inserted, status
        """,
        (
            [e.body for e in events],
            [e.body_sha256 for e in events],
            [e.object for e in events],
            [",".join(e.fields) for e in events],
            [e.status for e in events],
            [e.reason for e in events],
            [e.event_count for e in events],
            [e.copies for e in events],
        ),
    )
    rows = await cursor.fetchall()
    return {
        bytes(sha): StoredWebhookEvent(id, inserted, status) for id, sha, inserted, status in rows
    }


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


async def mark_unpublishable(
    conn: Connection, outcomes: Sequence[tuple[int, EventStatus, str | None]]
) -> None:
    """Pending rows that hold nothing to publish after all (as (id, status, reason)): a row
    written by hand or by an older version, whose body splits into no events now."""
    if outcomes:
        await conn.execute(
            """
            UPDATE whatsapp_webhook_events e
            SET status = o.status, reason = COALESCE(o.reason, e.reason)
            FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS o (id, status, reason)
            WHERE e.id = o.id AND e.status = 'pending'
            """,
            (
                [event_id for event_id, _, _ in outcomes],
                [status for _, status, _ in outcomes],
                [reason for _, _, reason in outcomes],
            ),
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


async def mark_failed(conn: Connection, event_ids: Sequence[int], reason: str) -> None:
    """Some events of these rows can never be published (the rest were): stop retrying them."""
    if event_ids:
        await conn.execute(
            """
            UPDATE whatsapp_webhook_events
            SET status = 'failed', publish_attempts = publish_attempts + 1,
                last_publish_error = left(%s, 500)
            WHERE id = ANY(%s) AND status = 'pending'
            """,
            (reason, list(event_ids)),
        )


async def claim_pending(
    conn: Connection,
    *,
    min_age_seconds: int,
    limit: int,
    after: PendingWebhookEvent | None = None,
) -> list[PendingWebhookEvent]:
    """Lock pending events old enough that their own request has given up on them, oldest
    first, starting after ``after`` (so one sweep never takes the same event twice).

    Rows stay locked until the caller's transaction ends, so two sweepers never republish the
    same event at the same time (republishing is harmless anyway: bus message ids dedupe).
    """
    cursor = await conn.execute(
        """
        SELECT id, body, received_at, publish_attempts
        FROM whatsapp_webhook_events
        WHERE status = 'pending' AND received_at < now() - make_interval(secs => %s)
          AND (received_at, id) > (%s, %s)
        ORDER BY received_at, id
        LIMIT %s
        FOR UPDATE SKIP LOCKED
        """,
        (
            min_age_seconds,
            after.received_at if after else datetime.min.replace(tzinfo=UTC),
            after.id if after else 0,
            limit,
        ),
    )
    return [PendingWebhookEvent(*row) for row in await cursor.fetchall()]
