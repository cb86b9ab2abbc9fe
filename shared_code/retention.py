"""Retention: messages, their status history, raw webhook events and event failures older than
``WHATSAPP_RETENTION_DAYS`` are deleted, then closed conversations left without messages.

It runs from a timer (``maintenance_function``) in small batches: each batch is one statement
and its own short transaction that skips rows locked by live work, so the purge never holds
locks for long nor blocks webhooks, the processor or the sender. A run stops after its time
budget; the next run goes on where it stopped (what is left is simply still older than the
cutoff). Contacts and the audit log are not touched: erasing a person is the management API's
erasure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared_code.db import retention
from shared_code.db.pool import Connection, Pool

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_SIZE", "RetentionReport", "purge_expired"]

DEFAULT_BATCH_SIZE = 1000

_Delete = Callable[[Connection, datetime, int], Awaitable[int]]
# Conversations last: they can only go once their messages have.
_STEPS: tuple[tuple[str, _Delete], ...] = (
    ("messages", retention.delete_messages),
    ("message_statuses", retention.delete_message_statuses),
    ("webhook_events", retention.delete_webhook_events),
    ("event_failures", retention.delete_event_failures),
    ("conversations", retention.delete_closed_conversations),
)


@dataclass(slots=True)
class RetentionReport:
    cutoff: datetime
    # Rows deleted per table ("messages", "message_statuses", ...).
    deleted: dict[str, int] = field(default_factory=dict)
    # False when the time budget ran out with rows still older than the cutoff.
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


async def purge_expired(
    pool: Pool,
    *,
    retention_days: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    time_budget_seconds: float = 240.0,
) -> RetentionReport:
    """Delete what is older than ``retention_days``, ``batch_size`` rows per statement."""
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT now()")
        row = await cursor.fetchone()
    assert row is not None
    report = RetentionReport(cutoff=row[0] - timedelta(days=retention_days))
    deadline = time.monotonic() + time_budget_seconds
    for name, delete in _STEPS:
        report.deleted[name] = 0
        while True:
            if time.monotonic() > deadline:
                report.complete = False
                break
            async with pool.connection() as conn:
                count = await delete(conn, report.cutoff, batch_size)
            report.deleted[name] += count
            if count < batch_size:
                break
        if not report.complete:
            break
    if report.total or not report.complete:
        logger.info(
            "retention: deleted %s%s",
            ", ".join(f"{count} {name}" for name, count in report.deleted.items() if count)
            or "nothing",
            "" if report.complete else " (time budget spent; the next run goes on)",
        )
    return report
