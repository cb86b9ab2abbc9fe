"""The outbox sweeper: publishes webhook events that were stored but never reached the bus.

That happens when the broker refused the intake's publish, or the worker stopped between commit
and publish. Bus message ids are stable (wamid, wamid:status), so a sweep that races a late
publish only produces duplicates the broker drops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared_code.bus.port import MessageBus
from shared_code.db import webhook_events
from shared_code.db.pool import Pool
from shared_code.webhook_intake import publish_events, split_body

logger = logging.getLogger(__name__)

__all__ = ["SweepReport", "sweep_outbox"]


@dataclass(frozen=True, slots=True)
class SweepReport:
    published: int
    failed: int


async def sweep_outbox(
    pool: Pool, bus: MessageBus, queue: str, *, min_age_seconds: int, batch_size: int = 200
) -> SweepReport:
    published = failed = 0
    while True:
        async with pool.connection() as conn, conn.transaction():
            pending = await webhook_events.claim_pending(
                conn, min_age_seconds=min_age_seconds, limit=batch_size
            )
            if not pending:
                break
            event_ids = [event.id for event in pending]
            try:
                await publish_events(
                    bus, queue, [(event.id, split_body(event.body)) for event in pending]
                )
            except Exception as error:
                logger.warning(
                    "outbox sweep: %d events still unpublished (%s)",
                    len(pending),
                    type(error).__name__,
                )
                await webhook_events.record_publish_failure(conn, event_ids, type(error).__name__)
                failed += len(pending)
                break
            await webhook_events.mark_published(conn, event_ids)
            published += len(pending)
        if len(pending) < batch_size:
            break
    if published or failed:
        logger.info("outbox sweep: %d events published, %d still pending", published, failed)
    return SweepReport(published=published, failed=failed)
