"""Repository of events the bridge gave up on (``whatsapp_event_failures``): poison, explained.

A poison event must not be retried forever in front of the others, nor vanish: each gets a row
naming the stage that gave up, why, and whether the user got the fallback text instead. The
reason names error classes and fields, never content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared_code.db.pool import Connection

__all__ = ["EventFailure", "FailureStage", "record_failures"]

FailureStage = Literal["publish", "process"]
_MAX_REASON_LENGTH = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFailure:
    stage: FailureStage
    reason: str
    webhook_event_id: int | None = None
    kind: str | None = None
    event_key: str | None = None
    fallback_queued: bool = False


async def record_failures(conn: Connection, failures: Sequence[EventFailure]) -> None:
    """Record each failure once per (stage, event key); a repeat counts another attempt."""
    if not failures:
        return
    await conn.execute(
        """
        INSERT INTO whatsapp_event_failures
            (webhook_event_id, stage, kind, event_key, reason, fallback_queued)
        SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],
                             %s::boolean[])
        ON CONFLICT (stage, event_key) DO UPDATE
            SET reason = EXCLUDED.reason,
                fallback_queued = whatsapp_event_failures.fallback_queued
                                  OR EXCLUDED.fallback_queued,
                attempts = whatsapp_event_failures.attempts + 1,
                last_failed_at = now()
        """,
        (
            [f.webhook_event_id for f in failures],
            [f.stage for f in failures],
            [f.kind for f in failures],
            [f.event_key for f in failures],
            [f.reason[:_MAX_REASON_LENGTH] for f in failures],
            [f.fallback_queued for f in failures],
        ),
    )
