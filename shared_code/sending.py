"""The sender: one outbound row per bus message, sent once, in order, within WhatsApp's limits.

Each delivery of a queue message looks at the row's state in PostgreSQL and does one step:

- settled (has a wamid, or failed) → nothing to do;
- a request of an earlier attempt may have reached Meta (``send_started_at`` still set) → take the
  wamid from a status webhook that echoed our ``biz_opaque_callback_data``, or wait for one (a
  scheduled re-check), and resend only after ``confirmation_wait_seconds`` without any status —
  or, when the worker died with the request out (no wait was scheduled), after twice as long as
  it was down (capped by ``confirmation_max_wait_seconds``), because the statuses Meta posted
  meanwhile come back only with its growing retry pauses;
- an earlier reply of the same conversation is not sent yet → wait for it (replies keep order);
- rate control says not yet → pace briefly, or re-queue for when a slot frees up;
- the messaging policy refuses it (contact opted out, marketing stopped, customer-service window
  closed for a non-template: :func:`shared_code.policy.outbound_block`) → ``failed`` with
  ``blocked_by_policy``, never sent; or, with a window template configured, sent as that template;
- otherwise send: record the wamid and ``sent``, or the error. Throttling and retryable errors
  re-queue the message with exponential back-off and jitter as a *scheduled* bus message (the
  function never sleeps through a back-off); permanent errors record ``failed`` with Meta's code.

After ``max_attempts`` the row is marked failed and its bus message is refused on every delivery,
so the broker moves it to the dead-letter queue (Python functions cannot dead-letter directly).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay
from tenacity.wait import wait_random_exponential

from shared_code import telemetry
from shared_code.batching import BatchingQueue
from shared_code.bus.port import MessageBus, OutgoingMessage
from shared_code.db import outbound
from shared_code.db.pool import Pool
from shared_code.policy import (
    CUSTOMER_SERVICE_WINDOW,
    PolicyBlock,
    WindowTemplate,
    outbound_block,
)
from shared_code.ratelimit import Decision, RateLimiter
from shared_code.redelivery import DeadLetterRequest, is_transient
from shared_code.retry_policy import RetryPolicy
from shared_code.whatsapp import outbound as bodies
from shared_code.whatsapp.errors import (
    GraphApiError,
    PairRateLimitError,
    RetryableError,
    ThrottledError,
    TransportError,
)
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.webhook import session_id_for

logger = logging.getLogger(__name__)

__all__ = [
    "OutboundSender",
    "SendAttemptsExhausted",
    "SendOutcome",
    "SendRequest",
    "outbound_bus_message",
]


class SendRequest(msgspec.Struct, frozen=True):
    """The body of an ``outbound-messages`` bus message: which row to send, and from which
    number to whom, so that loading the row can charge the rate limits in the same round trip
    (messages queued before those two fields existed still work: they are just charged apart)."""

    outbound_message_id: int
    phone_number_id: str | None = None
    contact_wa_id: str | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(SendRequest).decode


def outbound_bus_message(
    row_id: int,
    *,
    phone_number_id: str,
    contact_wa_id: str,
    requeue_count: int = 0,
    scheduled_at: datetime | None = None,
) -> OutgoingMessage:
    """The bus message for a row; each re-queue gets a new id, a repeat of one keeps it."""
    message_id = (
        f"outbound:{row_id}" if requeue_count == 0 else f"outbound:{row_id}:{requeue_count}"
    )
    return OutgoingMessage(
        body=_encode(
            SendRequest(
                outbound_message_id=row_id,
                phone_number_id=phone_number_id,
                contact_wa_id=contact_wa_id,
            )
        ),
        message_id=message_id,
        session_id=session_id_for(phone_number_id, contact_wa_id),
        subject="outbound",
        scheduled_enqueue_time=scheduled_at,
        # The trace of whatever queued the send (a user's message, a re-queue) continues there.
        application_properties=telemetry.trace_properties(),
    )


class SendOutcome(enum.Enum):
    SENT = "sent"
    ALREADY_SETTLED = "already_settled"
    CONFIRMED_BY_STATUS = "confirmed_by_status"
    FAILED = "failed"
    REQUEUED = "requeued"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    WAITING_FOR_EARLIER = "waiting_for_earlier"
    RATE_LIMITED = "rate_limited"
    BLOCKED = "blocked"  # refused by the messaging policy: failed, never sent
    NOT_FOUND = "not_found"
    UNREADABLE = "unreadable"


class SendAttemptsExhausted(DeadLetterRequest, RuntimeError):
    """Raised on every delivery of a row the sender gave up on, so the broker dead-letters it."""


class OutboundSender:
    def __init__(
        self,
        *,
        pool: Pool,
        bus: MessageBus,
        queue: str,
        graph: GraphApiClient,
        limiter: RateLimiter,
        policy: RetryPolicy | None = None,
        window_closed_template: WindowTemplate | None = None,
    ) -> None:
        self._pool = pool
        # Sent instead of a free-form message once the customer-service window has closed.
        self._window_template = window_closed_template
        self._bus = bus
        self._queue = queue
        self._graph = graph
        self._limiter = limiter
        self._policy = policy or RetryPolicy()
        # Concurrent sends of this worker share these two statements (each its own commit
        # otherwise): under load a send costs ~2.5 round trips instead of 4. One batch in
        # flight at a time, so they form as soon as two sends meet; an idle worker still runs
        # a lone send's statement at once.
        self._attempts: BatchingQueue[int, int] = BatchingQueue(
            self._begin_attempts, max_in_flight=1, name="begin-attempt"
        )
        self._sends: BatchingQueue[tuple[int, str], None] = BatchingQueue(
            self._record_sends, max_in_flight=1, name="record-sent"
        )
        self._pacing_gates: dict[tuple[str, str | None], _PacingGate] = {}

    async def handle(self, body: bytes) -> SendOutcome:
        try:
            request = _decode(body)
        except msgspec.DecodeError as error:
            logger.warning("outbound bus message dropped, unreadable: %s", error)
            return SendOutcome.UNREADABLE
        charge = (
            self._limiter.charge_for(request.phone_number_id, request.contact_wa_id)
            if request.phone_number_id and request.contact_wa_id
            else None
        )
        async with self._pool.connection() as conn:
            row, decision = await outbound.load_outbound(
                conn,
                request.outbound_message_id,
                charge,
                early_tolerance=_EARLY_TOLERANCE,
                customer_service_window=CUSTOMER_SERVICE_WINDOW,
            )
        if row is None:
            logger.warning("outbound message %d not found", request.outbound_message_id)
            return SendOutcome.NOT_FOUND
        if row.gave_up_at is not None:
            raise SendAttemptsExhausted(
                f"outbound message {row.id} failed after {row.send_attempts} attempts"
            )
        if row.settled:
            return SendOutcome.ALREADY_SETTLED
        if row.next_attempt_at is not None and row.next_attempt_at > row.now + _EARLY_TOLERANCE:
            # An older copy of a message already re-queued (the broker redelivered it after the
            # re-queue was published but before it was completed): make sure the scheduled copy
            # exists — same id, so the bus drops it if it does — and leave the rest to it.
            await self._publish(row, row.next_attempt_at)
            return SendOutcome.REQUEUED
        if row.send_started_at is not None:
            waiting = await self._resolve_ambiguous(row)
            if waiting is not None:
                return waiting
        allowed = await self._apply_policy(row)
        if allowed is None:
            return SendOutcome.BLOCKED
        row = allowed
        earlier_due = row.earlier_unsent_due
        if earlier_due is not None and earlier_due < row.now - _ORDER_GIVE_UP:
            # The earlier reply's own bus message is long overdue; keeping order would stall
            # the conversation indefinitely, so this one goes ahead.
            logger.warning("outbound message %d: an earlier reply is overdue; not waiting", row.id)
            earlier_due = None
        if earlier_due is not None:
            delay = max((earlier_due - row.now).total_seconds(), 0.0) + _ORDER_GAP_SECONDS
            await self._requeue(row, delay)
            return SendOutcome.WAITING_FOR_EARLIER
        if not await self._acquire_slot(row, decision):
            return SendOutcome.RATE_LIMITED
        return await self._send(row)

    # --- steps ----------------------------------------------------------------------------------

    async def _resolve_ambiguous(self, row: outbound.OutboundRow) -> SendOutcome | None:
        """None when the row should be sent (again); otherwise what was done instead."""
        assert row.send_started_at is not None
        async with self._pool.connection() as conn:
            wamid = await outbound.wamid_reported_for(conn, row.id)
            if wamid is not None:
                await outbound.adopt_wamid(conn, row.id, wamid)
                logger.info("outbound message %d confirmed by a status webhook", row.id)
                return SendOutcome.CONFIRMED_BY_STATUS
        waited = (row.now - row.send_started_at).total_seconds()
        if row.next_attempt_at is not None and row.next_attempt_at > row.send_started_at:
            # The wait this send was given (after its timeout, or after an interruption) has
            # run out without a status: Meta did not take it.
            logger.warning(
                "outbound message %d: no status %.0f s after an ambiguous send; sending again",
                row.id,
                waited,
            )
            return None
        # No wait was ever scheduled for this send: its worker stopped after the request left
        # (a crash, a kill). Statuses Meta posted meanwhile may have found no one to take them;
        # Meta retries them with pauses that grow with the outage, so wait as long again as it
        # lasted (at least the usual wait) before deciding the message never arrived.
        wait = min(
            max(self._policy.confirmation_wait_seconds, 2 * waited),
            self._policy.confirmation_max_wait_seconds,
        )
        logger.warning(
            "outbound message %d: its send was interrupted %.0f s ago; waiting %.0f s for a status",
            row.id,
            waited,
            wait,
        )
        await self._requeue(row, wait, keep_in_flight=True)
        return SendOutcome.AWAITING_CONFIRMATION

    async def _apply_policy(self, row: outbound.OutboundRow) -> outbound.OutboundRow | None:
        """The row as it may be sent, or None when the messaging policy refused it (recorded)."""
        block = outbound_block(
            purpose=row.purpose,
            message_type=row.message_type,
            contact_opted_out=row.contact_opted_out,
            marketing_stopped=row.marketing_stopped,
            last_inbound_at=row.contact_last_inbound_at,
            now=row.now,
        )
        if block is None:
            return row
        template = self._window_template
        if block is PolicyBlock.WINDOW_CLOSED and template is not None:
            body = bodies.template_message(row.contact_wa_id, template.name, template.language_code)
            async with self._pool.connection() as conn:
                await outbound.replace_content(conn, row.id, body)
            logger.info("outbound message %d: window closed, sent as the template", row.id)
            return dataclasses.replace(row, content=body, message_type="template")
        async with self._pool.connection() as conn:
            await outbound.record_blocked(conn, row.id, reason=block.value, title=block.explanation)
        logger.warning("outbound message %d not sent: %s", row.id, block.value)
        return None

    async def _acquire_slot(
        self, row: outbound.OutboundRow, decision: Decision | None = None
    ) -> bool:
        """``decision``: the one taken while loading the row, if that charged the limits."""
        if decision is None:
            decision = await self._limiter.acquire(row.phone_number_id, row.contact_wa_id)
        if not decision.allowed and decision.retry_after <= self._policy.max_pacing_seconds:
            telemetry.record_rate_limit_wait(decision.limit, "paced")
            decision = await self._pace(row, decision)
        if decision.allowed:
            return True
        # Spread the waiters over a little time so they do not all come back in the same instant.
        delay = decision.retry_after * random.uniform(1.0, 1.1)  # noqa: S311 - jitter
        telemetry.record_rate_limit_wait(decision.limit, "requeued")
        await self._requeue(row, delay)
        logger.info(
            "outbound message %d re-queued for %.1f s by the %s limit",
            row.id,
            delay,
            decision.limit,
        )
        return False

    async def _pace(self, row: outbound.OutboundRow, refusal: Decision) -> Decision:
        """Wait for a slot that is due within the pacing limit, asking again when it should be
        free. One send per number (per user, for the pair limit) of this worker asks at a time
        and the others queue behind it: when every waiting send polled on its own, a number at
        its cap cost ~30 refused database calls per send (measured at 80/s with 256 sessions
        waiting), and the first to ask after a slot freed up was a matter of luck."""
        await asyncio.sleep(refusal.retry_after)
        key = (
            (row.phone_number_id, row.contact_wa_id)
            if refusal.limit == "pair"
            else (row.phone_number_id, None)
        )
        gate = self._pacing_gates.setdefault(key, _PacingGate())
        gate.waiters += 1
        try:
            async with gate.lock:
                while True:
                    decision = await self._limiter.acquire(row.phone_number_id, row.contact_wa_id)
                    if decision.allowed or decision.retry_after > self._policy.max_pacing_seconds:
                        return decision
                    await asyncio.sleep(decision.retry_after)
        finally:
            gate.waiters -= 1
            if not gate.waiters:
                del self._pacing_gates[key]

    async def _send(self, row: outbound.OutboundRow) -> SendOutcome:
        # Committed before the request leaves: a send that then times out is known to be
        # possibly delivered, so it waits for a status instead of being sent twice.
        attempt = await self._attempts.submit(row.id)
        body = dict(row.content)
        body["biz_opaque_callback_data"] = outbound.callback_data_for(row.id)
        try:
            with telemetry.graph_send(row.id):
                sent = await self._graph.send_message(body, phone_number_id=row.phone_number_id)
        except TransportError as error:
            if error.request_may_have_been_sent:
                logger.warning(
                    "outbound message %d: %s after the request left; waiting for a status",
                    row.id,
                    type(error).__name__,
                )
                await self._requeue(
                    row, self._policy.confirmation_wait_seconds, keep_in_flight=True
                )
                return SendOutcome.AWAITING_CONFIRMATION
            return await self._retry_later(row, attempt, error, self._policy.backoff(attempt))
        except ThrottledError as error:
            await self._limiter.report_throttled(row.phone_number_id)
            return await self._retry_later(row, attempt, error, self._policy.backoff(attempt))
        except PairRateLimitError as error:
            delay = self._policy.pair_backoff(attempt)
            await self._limiter.report_pair_limited(
                row.phone_number_id, row.contact_wa_id, seconds=delay
            )
            return await self._retry_later(row, attempt, error, delay)
        except RetryableError as error:
            return await self._retry_later(row, attempt, error, self._policy.backoff(attempt))
        except GraphApiError as error:
            async with self._pool.connection() as conn:
                await outbound.record_failed(
                    conn, row.id, code=error.code, title=error.title, details=error.details
                )
            logger.warning("outbound message %d failed permanently (code %s)", row.id, error.code)
            return SendOutcome.FAILED
        await self._record_send(row.id, sent.wamid)
        return SendOutcome.SENT

    async def _record_send(self, row_id: int, wamid: str) -> None:
        """Record the wamid Meta returned, trying again while the database is down: it is the
        one fact that proves the message left, and without it the row would look ambiguous and
        wait for a status webhook that the same outage may hold back past the wait (seen after
        45-s outages: replies sent twice). Bounded within the function's time limit; past it
        the ambiguous-send path takes over."""
        tries = 0
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            stop=stop_after_delay(self._policy.record_sent_within_seconds),
            reraise=True,
        ):
            with attempt:
                tries += 1
                await self._sends.submit((row_id, wamid))
        if tries > 1:
            logger.info("outbound message %d: its wamid recorded after %d tries", row_id, tries)

    async def _begin_attempts(self, outbound_ids: Sequence[int]) -> list[int]:
        async with self._pool.connection() as conn:
            return await outbound.begin_attempts(conn, outbound_ids)

    async def _record_sends(self, sends: Sequence[tuple[int, str]]) -> list[None]:
        async with self._pool.connection() as conn:
            await outbound.record_sends(conn, sends)
        return [None] * len(sends)

    async def _retry_later(
        self, row: outbound.OutboundRow, attempt: int, error: GraphApiError, delay: float
    ) -> SendOutcome:
        if attempt >= self._policy.max_attempts:
            async with self._pool.connection() as conn:
                await outbound.record_failed(
                    conn,
                    row.id,
                    code=error.code,
                    title=f"gave up after {attempt} attempts: {error.title}",
                    details=error.details,
                    gave_up=True,
                )
            logger.error(
                "outbound message %d failed after %d attempts (last code %s); dead-lettering",
                row.id,
                attempt,
                error.code,
            )
            raise SendAttemptsExhausted(
                f"outbound message {row.id} failed after {attempt} attempts"
            )
        logger.info(
            "outbound message %d: attempt %d failed (%s, code %s); retrying in %.1f s",
            row.id,
            attempt,
            type(error).__name__,
            error.code,
            delay,
        )
        await self._requeue(row, delay, code=error.code, title=error.title)
        return SendOutcome.REQUEUED

    async def _requeue(
        self,
        row: outbound.OutboundRow,
        delay: float,
        *,
        keep_in_flight: bool = False,
        code: int | None = None,
        title: str | None = None,
    ) -> None:
        async with self._pool.connection() as conn:
            count, due = await outbound.record_requeue(
                conn,
                row.id,
                delay_seconds=delay,
                keep_in_flight=keep_in_flight,
                code=code,
                title=title,
            )
        await self._publish(row, due, requeue_count=count)

    async def _publish(
        self, row: outbound.OutboundRow, due: datetime, *, requeue_count: int | None = None
    ) -> None:
        # A failure raises: the current delivery is abandoned and comes back, and its next run
        # publishes the same re-queue again (the row remembers it).
        await self._bus.publish(
            self._queue,
            [
                outbound_bus_message(
                    row.id,
                    phone_number_id=row.phone_number_id,
                    contact_wa_id=row.contact_wa_id,
                    requeue_count=row.requeue_count if requeue_count is None else requeue_count,
                    scheduled_at=due,
                )
            ],
        )


class _PacingGate:
    """The sends of one number (or pair) waiting for a rate-limit slot in this worker."""

    __slots__ = ("lock", "waiters")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiters = 0


# A copy arriving slightly before its scheduled time (clock differences) is still the one.
_EARLY_TOLERANCE = timedelta(seconds=1)
# After an earlier reply's due time, so that one goes first.
_ORDER_GAP_SECONDS = 0.2
_ORDER_GIVE_UP = timedelta(minutes=5)
