"""The outbox sweeper: publishes webhook events that were stored but never reached the bus.

That happens when the broker refused the intake's publish, a status could not be applied, or the
worker stopped between commit and publish. Bus message ids are stable (wamid, wamid:status), so a
sweep that races a late publish only produces duplicates the broker drops.

One poison event must not stop the others (issue 12: one failure used to fail the sweep's whole
batch, every minute, while valid messages answered 200 were never processed). A batch the broker
refuses is published again event by event, and an event's messages one by one, so the broker's
refusal lands on what it refuses:

- refused for good (:attr:`PublishError.permanent`: too large, a value the broker cannot store),
  or refused in :data:`SWEEPS_BEFORE_POISON` attempts (the intake's own included), the last
  while the broker accepted an event swept after it → the message is poison: recorded in ``whatsapp_event_failures`` with the reason, its
  row marked ``failed`` (its other messages are published), never retried. (One such refusal
  proves little: a connection reset in an outage fails one publish and the next one succeeds);
- refused like everything after it → the broker is down: the rows stay ``pending`` with the
  reason, and the sweep stops until the next run instead of knocking on a closed door (the events
  it did not try are not charged an attempt);
- refused in ``max_publish_attempts`` sweeps (``OUTBOX_MAX_PUBLISH_ATTEMPTS``) without the broker
  being down in the last one → poison too, even without evidence from others: a lone event is
  not retried every minute forever.

A bus that names the messages it refused for good (:attr:`PublishError.refused_message_ids`: too
large for the tier, 256 KB on Standard) has accepted the rest: the events holding them are
marked failed at once, without the event-by-event retry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared_code.bus.port import MessageBus, OutgoingMessage, PublishError
from shared_code.db import event_failures, webhook_events
from shared_code.db.pool import Pool
from shared_code.webhook_intake import bus_messages_for, split_body

logger = logging.getLogger(__name__)

__all__ = ["SweepReport", "sweep_outbox"]

# Refusals in a row, with nothing accepted since, after which the broker is taken to be down.
_REFUSALS_MEANING_DOWN = 3
# Refused publish attempts of an event (the last while others were accepted) before it counts as
# poison without the broker saying so (the sweeper runs every minute).
SWEEPS_BEFORE_POISON = 3
# Refused publish attempts of an event after which it is poison whatever the others did.
DEFAULT_MAX_PUBLISH_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class SweepReport:
    published: int
    # Rows left pending for the next sweep (the broker refused them like everything else).
    failed: int
    # Rows taken out of the pending set for good: marked failed because some of their events
    # are poison (see whatsapp_event_failures), or given the status their body deserves
    # ('invalid', 'ignored') because it holds nothing to publish.
    poisoned: int = 0


async def sweep_outbox(
    pool: Pool,
    bus: MessageBus,
    queue: str,
    *,
    min_age_seconds: int,
    batch_size: int = 200,
    max_publish_attempts: int = DEFAULT_MAX_PUBLISH_ATTEMPTS,
) -> SweepReport:
    published = failed = poisoned = 0
    last: webhook_events.PendingWebhookEvent | None = None
    while True:
        async with pool.connection() as conn, conn.transaction():
            pending = await webhook_events.claim_pending(
                conn, min_age_seconds=min_age_seconds, limit=batch_size, after=last
            )
            if not pending:
                break
            last = pending[-1]
            splits = [(event, split_body(event.body)) for event in pending]
            # Nothing to publish in it after all (a row written by hand, or by an older version):
            # it takes the status and reason the intake would have given it.
            unpublishable = [
                (event.id, split.status, split.reason)
                for event, split in splits
                if split.status != "pending"
            ]
            await webhook_events.mark_unpublishable(conn, unpublishable)
            outcome = await _publish_isolating(
                bus,
                queue,
                [
                    (event, bus_messages_for(event.id, split))
                    for event, split in splits
                    if split.status == "pending"
                ],
                max_publish_attempts=max_publish_attempts,
            )
            await webhook_events.mark_published(conn, outcome.published)
            if outcome.poison:
                await event_failures.record_failures(conn, outcome.poison)
                await webhook_events.mark_failed(
                    conn,
                    sorted({f.webhook_event_id for f in outcome.poison if f.webhook_event_id}),
                    "some events refused by the bus for good (see whatsapp_event_failures)",
                )
            for reason, event_ids in outcome.retry_later.items():
                await webhook_events.record_publish_failure(conn, event_ids, reason)
        published += len(outcome.published)
        poisoned += len({f.webhook_event_id for f in outcome.poison}) + len(unpublishable)
        failed += sum(len(ids) for ids in outcome.retry_later.values()) + len(outcome.untried)
        if outcome.broker_down or len(pending) < batch_size:
            break
    if published or failed or poisoned:
        logger.info(
            "outbox sweep: %d events published, %d poisoned, %d still pending",
            published,
            poisoned,
            failed,
        )
    return SweepReport(published=published, failed=failed, poisoned=poisoned)


@dataclass(slots=True)
class _Outcome:
    published: list[int] = field(default_factory=list)
    poison: list[event_failures.EventFailure] = field(default_factory=list)
    # Reason → rows to try again next sweep.
    retry_later: dict[str, list[int]] = field(default_factory=dict)
    # Rows not tried because the broker was down: pending, not charged an attempt.
    untried: list[int] = field(default_factory=list)
    broker_down: bool = False


@dataclass(slots=True)
class _Refusal:
    event_id: int
    message: OutgoingMessage
    error: Exception
    # How many publishes the broker had accepted in this sweep when it refused this one.
    accepted_before: int


async def _publish_isolating(
    bus: MessageBus,
    queue: str,
    events: Sequence[tuple[webhook_events.PendingWebhookEvent, list[OutgoingMessage]]],
    *,
    max_publish_attempts: int = DEFAULT_MAX_PUBLISH_ATTEMPTS,
) -> _Outcome:
    outcome = _Outcome()
    try:
        await bus.publish(queue, [m for _, messages in events for m in messages])
    except PublishError as error:
        if error.refused_message_ids:
            return _refused_by_name(events, error)
        logger.info(
            "outbox sweep: a batch of %d events was refused (%s); isolating",
            len(events),
            type(error).__name__,
        )
    except Exception as error:
        logger.info(
            "outbox sweep: a batch of %d events was refused (%s); isolating",
            len(events),
            type(error).__name__,
        )
    else:
        outcome.published = [event.id for event, _ in events]
        return outcome
    accepted = 0
    refused_in_a_row = 0
    refusals: list[_Refusal] = []
    untried: list[int] = []
    attempts = {event.id: event.publish_attempts for event, _ in events}
    for event, messages in events:
        event_id = event.id
        if refused_in_a_row >= _REFUSALS_MEANING_DOWN:
            untried.append(event_id)
            continue
        accepted_before = accepted
        event_refusals: list[_Refusal] = []
        # The whole event first; its messages one by one only if it is refused.
        for group in [messages] if len(messages) == 1 else [messages, *([m] for m in messages)]:
            try:
                await bus.publish(queue, group)
            except PublishError as error:
                if error.refused_message_ids:
                    # The rest of the group was accepted: no need to go message by message.
                    event_refusals.extend(
                        _Refusal(event_id, m, error, accepted)
                        for m in group
                        if m.message_id in error.refused_message_ids
                    )
                    if len(event_refusals) < len(group):
                        accepted += 1
                    break
                if len(group) == 1:
                    event_refusals.append(_Refusal(event_id, group[0], error, accepted))
                continue
            except Exception as error:
                if len(group) == 1:
                    event_refusals.append(_Refusal(event_id, group[0], error, accepted))
                continue
            accepted += 1
            if group is messages:
                break
        refused_in_a_row = refused_in_a_row + 1 if accepted == accepted_before else 0
        if not event_refusals:
            outcome.published.append(event_id)
        refusals.extend(event_refusals)
    outcome.broker_down = refused_in_a_row >= _REFUSALS_MEANING_DOWN
    outcome.untried = untried
    transient: set[int] = set()
    for refusal in refusals:
        tries = attempts[refusal.event_id] + 1
        # Refused for good, or refused sweep after sweep while the broker went on accepting
        # others after it, or refused in too many sweeps with the broker up.
        if (
            _is_permanent(refusal.error)
            or (refusal.accepted_before < accepted and tries >= SWEEPS_BEFORE_POISON)
            or (not outcome.broker_down and tries >= max_publish_attempts)
        ):
            outcome.poison.append(_failure_of(refusal, tries))
        else:
            transient.add(refusal.event_id)
    poisoned = {f.webhook_event_id for f in outcome.poison}
    for event_id in sorted(transient - poisoned):
        reason = next(type(r.error).__name__ for r in refusals if r.event_id == event_id)
        outcome.retry_later.setdefault(reason, []).append(event_id)
    if outcome.poison:
        logger.warning(
            "outbox sweep: %d events refused by the bus for good; recorded as failed",
            len(outcome.poison),
        )
    return outcome


def _is_permanent(error: Exception) -> bool:
    return isinstance(error, PublishError) and error.permanent


def _refused_by_name(
    events: Sequence[tuple[webhook_events.PendingWebhookEvent, list[OutgoingMessage]]],
    error: PublishError,
) -> _Outcome:
    outcome = _Outcome()
    for event, messages in events:
        refused = [m for m in messages if m.message_id in error.refused_message_ids]
        if not refused:
            outcome.published.append(event.id)
        outcome.poison.extend(
            _failure_of(_Refusal(event.id, m, error, 0), event.publish_attempts + 1)
            for m in refused
        )
    logger.warning(
        "outbox sweep: %d events refused by the bus for good; recorded as failed",
        len({f.webhook_event_id for f in outcome.poison}),
    )
    return outcome


def _failure_of(refusal: _Refusal, tries: int) -> event_failures.EventFailure:
    error = refusal.error
    # Our adapters' PublishError messages name the queue and the error class, not content.
    if isinstance(error, PublishError) and error.permanent:
        reason = f"refused for good: {error}"
    elif isinstance(error, PublishError):
        reason = f"refused in {tries} attempts: {error}"
    else:
        reason = f"refused in {tries} attempts: {type(error).__name__}"
    return event_failures.EventFailure(
        stage="publish",
        reason=reason,
        webhook_event_id=refusal.event_id,
        kind=refusal.message.subject,
        event_key=refusal.message.message_id,
    )
