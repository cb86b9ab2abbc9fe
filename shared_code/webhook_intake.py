"""Webhook intake: verify, store, split and publish Meta's deliveries; answer fast.

The answer codes are what Meta's retry logic needs:
- 401 bad or missing signature (nothing stored), 413 body over 1 MiB;
- 200 once the raw body is committed, whatever its content (an unreadable but signed body is
  stored with a reason: answering an error would make Meta retry it for days);
- 503 when the body could not be stored, so Meta delivers it again later. That answer is fast
  even when PostgreSQL is not: a store gets ``store_timeout_seconds``, and after a failure a
  :class:`~shared_code.circuit.Circuit` turns requests away at once, letting one through each
  second to notice the database's return.
Forwarding happens after the body is safely stored, and after the answer: Meta waits only for
the insert. Messages are published to the queue; delivery statuses are applied here and now
(:class:`shared_code.processing.StatusRecorder`): they need no order and no agent, applying one
is one statement, and they are three in four of all events, so queuing them cost more than the
messages and replies together. When the broker refuses, applying a status fails, or the
instance stops before forwarding, the event stays ``pending`` and the outbox sweeper
(:mod:`shared_code.outbox`) queues all of it later (the processor then applies its statuses;
both steps are idempotent). At most ``max_publishes_in_flight`` forwards run at once; a stored
batch waits up to ``publish_slot_wait_seconds`` for a free slot before it is answered, so a slow
broker slows the answers a little instead of piling up work in memory. A batch that finds no slot
in that time is answered 200 all the same (it is stored) and left pending for the sweeper: a slow
broker, or bodies with thousands of statuses, must not turn webhooks away as if PostgreSQL were
down (the full fuzz run saw 12,887 such 503s while the database answered in milliseconds).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from shared_code import telemetry
from shared_code.batching import BatchingQueue
from shared_code.bus.port import MessageBus, OutgoingMessage, PublishError
from shared_code.circuit import Circuit
from shared_code.db import event_failures, webhook_events
from shared_code.db.pool import Pool
from shared_code.processing import StatusRecorder
from shared_code.secrets import Secret
from shared_code.whatsapp.json_body import UnreadableBody, decode_json_body
from shared_code.whatsapp.payloads import PayloadError, StatusEvent, event_from_envelope
from shared_code.whatsapp.signature import verify_signature
from shared_code.whatsapp.webhook import SplitEvent, SplitResult, split_webhook

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_WEBHOOK_BODY_BYTES",
    "IntakeAnswer",
    "WebhookIntake",
    "answer_verification",
    "bus_messages_for",
    "split_body",
]

MAX_WEBHOOK_BODY_BYTES = 1024 * 1024

_json_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class IntakeAnswer:
    status_code: int
    body: str


ACCEPTED = IntakeAnswer(200, "EVENT_RECEIVED")
DUPLICATE = IntakeAnswer(200, "EVENT_RECEIVED")
BAD_SIGNATURE = IntakeAnswer(401, "invalid or missing X-Hub-Signature-256")
TOO_LARGE = IntakeAnswer(413, "body larger than 1 MiB")
STORAGE_UNAVAILABLE = IntakeAnswer(503, "storage unavailable, retry later")
# The rejected answers by status code, as the webhooks-rejected metric names them.
_REJECTION_REASONS = {401: "bad_signature", 413: "too_large", 503: "storage_unavailable"}


def answer_verification(params: Mapping[str, str], verify_token: str) -> IntakeAnswer:
    """Meta's subscription handshake: echo the challenge only for our token."""
    mode = params.get("hub.mode")
    token = params.get("hub.verify_token") or ""
    challenge = params.get("hub.challenge")
    if (
        mode == "subscribe"
        and challenge is not None
        and hmac.compare_digest(token.encode(), verify_token.encode())
    ):
        return IntakeAnswer(200, challenge)
    return IntakeAnswer(403, "verification failed")


def split_body(body: bytes) -> SplitResult:
    """Decode and split a signed body; never raises (unreadable bodies come back ``invalid``)."""
    if not body.strip():
        return SplitResult.invalid("empty body")
    try:
        decoded = decode_json_body(body)
    except UnreadableBody as error:
        return SplitResult.invalid(str(error))
    split = split_webhook(decoded.payload)
    return dataclasses.replace(split, repairs=decoded.repairs) if decoded.repairs else split


def bus_messages_for(
    event_id: int,
    split: SplitResult,
    *,
    skip_statuses: bool = False,
    trace_context: Mapping[str, str] | None = None,
) -> list[OutgoingMessage]:
    """The bus messages of a split body; ``skip_statuses`` leaves out the statuses, which the
    intake applies itself (everything else — messages, template changes — is queued).
    ``trace_context``: the webhook's trace (:func:`shared_code.telemetry.trace_properties`)."""
    messages = []
    for event in split.events:
        if skip_statuses and event.kind == "status":
            continue
        messages.append(
            OutgoingMessage(
                body=_json_encoder.encode(_envelope_of(event_id, event)),
                message_id=event.message_id,
                session_id=event.session_id,
                subject=event.kind,
                application_properties={
                    "kind": event.kind,
                    "webhook_event_id": event_id,
                    **(trace_context or {}),
                },
            )
        )
    return messages


_REFUSED_FOR_GOOD = "some events refused by the bus for good (see whatsapp_event_failures)"


def _refused_for_good(
    messages_by_event: Mapping[int, Sequence[OutgoingMessage]], error: Exception
) -> list[event_failures.EventFailure]:
    """The messages a bus named as refused for good (too large), one failure each."""
    if not isinstance(error, PublishError) or not error.refused_message_ids:
        return []
    return [
        event_failures.EventFailure(
            stage="publish",
            # The adapters' texts name the queue and a count, never an id or content.
            reason=f"refused for good: {error}",
            webhook_event_id=event_id,
            kind=message.subject,
            event_key=message.message_id,
        )
        for event_id, messages in messages_by_event.items()
        for message in messages
        if message.message_id in error.refused_message_ids
    ]


def _envelope_of(event_id: int, event: SplitEvent) -> dict[str, object]:
    envelope = dict(event.envelope)
    envelope["webhook_event_id"] = event_id
    return envelope


@dataclass(frozen=True, slots=True)
class _Delivery:
    body: bytes
    sha256: bytes
    split: SplitResult
    # The webhook's trace, carried to the bus messages published for it by another task.
    trace_context: Mapping[str, str]


class WebhookIntake:
    def __init__(
        self,
        *,
        pool: Pool,
        bus: MessageBus,
        queue: str,
        app_secret: str | Secret,
        statuses: StatusRecorder | None = None,
        max_batch: int = 256,
        max_publishes_in_flight: int = 4,
        mark_linger_seconds: float = 0.05,
        store_timeout_seconds: float = 5.0,
        forward_timeout_seconds: float = 30.0,
        publish_slot_wait_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self._store_timeout = store_timeout_seconds
        self._publish_slot_wait = publish_slot_wait_seconds
        # Work after the answer gets a bound too: a database that accepts and never answers
        # must not hold a publish slot (or the marks) forever; what it did not finish stays
        # pending for the sweeper.
        self._forward_timeout = forward_timeout_seconds
        self._storage = Circuit("webhook storage (PostgreSQL)")
        self._bus = bus
        self._queue = queue
        self._app_secret = app_secret
        self._statuses = statuses or StatusRecorder(pool)
        self._batches: BatchingQueue[_Delivery, bool] = BatchingQueue(
            self._store_and_publish, max_batch=max_batch
        )
        self._publish_slots = asyncio.Semaphore(max_publishes_in_flight)
        self._publishing: set[asyncio.Task[None]] = set()
        # Published rows are marked together a little later: one UPDATE for every webhook of
        # the last few milliseconds instead of one per publish. Nothing waits for the mark; a
        # row left pending (crash in between, failed UPDATE) is re-published by the sweeper and
        # dropped by the bus as a duplicate message id.
        self._marks: BatchingQueue[Sequence[int], None] = BatchingQueue(
            self._mark_published,
            max_in_flight=1,
            linger_seconds=mark_linger_seconds,
            name="mark-published",
        )

    async def receive(self, body: bytes, signature: str | None) -> IntakeAnswer:
        with telemetry.webhook_receive() as span:
            answer = await self._receive(body, signature)
            span.set_attribute("http.response.status_code", answer.status_code)
        rejected = _REJECTION_REASONS.get(answer.status_code)
        telemetry.record_webhook(rejected)
        return answer

    async def _receive(self, body: bytes, signature: str | None) -> IntakeAnswer:
        if len(body) > MAX_WEBHOOK_BODY_BYTES:
            return TOO_LARGE
        # A Secret is revealed on each webhook: a rotated app secret (Key Vault) applies at once.
        app_secret = self._app_secret
        if isinstance(app_secret, Secret):
            app_secret = app_secret.reveal()
        if not verify_signature(body, signature, app_secret):
            logger.warning("webhook rejected: invalid or missing signature (%d bytes)", len(body))
            return BAD_SIGNATURE
        if not self._storage.allows():
            return STORAGE_UNAVAILABLE
        split = split_body(body)
        if split.status == "invalid":
            logger.warning("signed webhook stored as invalid: %s", split.reason)
        stored = self._batches.submit_nowait(
            _Delivery(body, hashlib.sha256(body).digest(), split, telemetry.trace_properties())
        )
        try:
            # A timeout cancels only this caller's wait: its batch still completes (and
            # publishes), and Meta's retry of a body stored that late is a duplicate, not a loss.
            async with asyncio.timeout(self._store_timeout):
                inserted = await stored
        except Exception as error:
            self._storage.failed()
            logger.warning(
                "webhook could not be stored (%s); answering 503 so Meta retries",
                type(error).__name__,
            )
            return STORAGE_UNAVAILABLE
        self._storage.succeeded()
        return ACCEPTED if inserted else DUPLICATE

    async def _store_and_publish(self, deliveries: Sequence[_Delivery]) -> list[bool]:
        unique: dict[bytes, _Delivery] = {}
        copies: Counter[bytes] = Counter()
        for delivery in deliveries:
            unique.setdefault(delivery.sha256, delivery)
            copies[delivery.sha256] += 1
        async with self._pool.connection() as conn:
            stored = await webhook_events.insert_events(
                conn,
                [
                    webhook_events.NewWebhookEvent(
                        body=d.body,
                        body_sha256=d.sha256,
                        object=d.split.object,
                        fields=d.split.fields,
                        status=d.split.status,
                        reason=d.split.reason,
                        event_count=len(d.split.events),
                        copies=copies[sha],
                    )
                    for sha, d in unique.items()
                ],
            )
        to_publish = [
            (stored[sha].id, d.split)
            for sha, d in unique.items()
            if stored[sha].inserted and stored[sha].status == "pending"
        ]
        traces = {stored[sha].id: d.trace_context for sha, d in unique.items() if d.trace_context}
        if to_publish and await self._take_publish_slot(len(to_publish)):
            task = asyncio.create_task(self._publish_in_slot(to_publish, traces))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)
        # A body repeated inside one batch is a duplicate after its first occurrence.
        first_seen: set[bytes] = set()
        results = []
        for delivery in deliveries:
            fresh = stored[delivery.sha256].inserted and delivery.sha256 not in first_seen
            first_seen.add(delivery.sha256)
            results.append(fresh)
        return results

    async def _take_publish_slot(self, events: int) -> bool:
        """False when every slot stayed busy: the stored events then wait for the sweeper."""
        try:
            async with asyncio.timeout(self._publish_slot_wait):
                await self._publish_slots.acquire()
        except TimeoutError:
            logger.warning(
                "every publish slot is busy; %d stored webhook events left for the outbox sweeper",
                events,
            )
            return False
        return True

    async def drain(self) -> None:
        """Wait for the publishes still running and mark them (before shutdown; tests use it)."""
        while self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        await self._marks.flush()

    async def _publish_in_slot(
        self,
        events: Sequence[tuple[int, SplitResult]],
        traces: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        try:
            async with asyncio.timeout(self._forward_timeout):
                await self._forward_stored(events, traces)
        except TimeoutError:
            logger.warning(
                "forwarding %d stored webhook events timed out; the outbox sweeper will retry",
                len(events),
            )
        finally:
            self._publish_slots.release()

    async def _forward_stored(
        self,
        events: Sequence[tuple[int, SplitResult]],
        traces: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        """Publish the stored events' messages, apply their statuses, and record the outcome.

        An event any part of which failed stays pending for the sweeper.
        """
        failures: dict[int, str] = {}
        messages_by_event = {
            event_id: bus_messages_for(
                event_id,
                split,
                skip_statuses=True,
                trace_context=(traces or {}).get(event_id),
            )
            for event_id, split in events
        }
        messages = [m for event_messages in messages_by_event.values() for m in event_messages]
        refused: list[event_failures.EventFailure] = []
        if messages:
            try:
                await self._bus.publish(self._queue, messages)
            except Exception as error:
                refused = _refused_for_good(messages_by_event, error)
                with_messages = [event_id for event_id, ms in messages_by_event.items() if ms]
                if refused:
                    # The bus took every other message: these events failed, and for good.
                    logger.warning(
                        "%d webhook events hold messages the bus refused for good; marked failed",
                        len({f.webhook_event_id for f in refused}),
                    )
                else:
                    logger.warning(
                        "publishing the messages of %d webhook events failed (%s); the outbox "
                        "sweeper will retry",
                        len(with_messages),
                        type(error).__name__,
                    )
                    failures.update(dict.fromkeys(with_messages, type(error).__name__))
        refused_events = sorted({f.webhook_event_id for f in refused if f.webhook_event_id})
        for event_id, split in events:
            for event in split.events:
                if event.kind == "status" and not await self._apply_status(event_id, event):
                    failures[event_id] = "status not applied"
        if failures or refused:
            try:
                async with self._pool.connection() as conn:
                    for reason in set(failures.values()):
                        await webhook_events.record_publish_failure(
                            conn, [i for i, r in failures.items() if r == reason], reason
                        )
                    if refused:
                        await event_failures.record_failures(conn, refused)
                        await webhook_events.mark_failed(conn, refused_events, _REFUSED_FOR_GOOD)
            except Exception:
                # Left pending: the outbox sweeper meets the same refusal and records it.
                logger.exception("could not record the forwarding failure")
        forwarded = [
            event_id
            for event_id, _ in events
            if event_id not in failures and event_id not in refused_events
        ]
        if forwarded:
            self._marks.enqueue(forwarded)

    async def _apply_status(self, event_id: int, event: SplitEvent) -> bool:
        """False when the status could not be applied now (the sweeper will queue it)."""
        try:
            status = event_from_envelope(_envelope_of(event_id, event))
        except PayloadError as error:
            # As the processor would: stored with its webhook, logged, not retried.
            logger.warning("status event dropped, unreadable: %s", error)
            return True
        if not isinstance(status, StatusEvent):  # the split made it from a "statuses" item
            logger.warning("a status event decoded as a message; the outbox sweeper will queue it")
            return False
        try:
            await self._statuses.apply(status)
        except Exception as error:
            logger.warning(
                "applying a status failed (%s); the outbox sweeper will queue it",
                type(error).__name__,
            )
            return False
        return True

    async def _mark_published(self, batches: Sequence[Sequence[int]]) -> list[None]:
        # A failed or timed-out mark leaves rows pending: the sweeper republishes them and the
        # bus drops the copies by message id.
        async with asyncio.timeout(self._forward_timeout), self._pool.connection() as conn:
            await webhook_events.mark_published(conn, [i for ids in batches for i in ids])
        return [None] * len(batches)
