"""Service Bus queue triggers, fed from the local PostgreSQL queue with the extension's behaviour.

As the Service Bus extension (5.x) does for Python functions:
- session-enabled triggers hold up to ``maxConcurrentSessions`` sessions at once, one message at a
  time per session, in order; a session with no message for ``sessionIdleTimeout`` is released;
- other triggers run up to ``maxConcurrentCalls`` messages at once;
- the function returns -> complete (``autoCompleteMessages``); it raises -> abandon, so the queue
  redelivers it and dead-letters it past its max delivery count;
- message and session locks are renewed every half lock duration while held, up to
  ``maxAutoLockRenewalDuration``.

One task per trigger accepts sessions (or receives messages) and hands each to a task of its own,
so an idle trigger has a single waiter blocked on LISTEN/NOTIFY instead of one per slot.

Stopping: idle waiters are cancelled at once; running functions get until the deadline, then are
cancelled without settling, so their messages come back when the lock expires, as when a
Functions instance dies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, Final, TypeVar

from azure.functions.servicebus import ServiceBusMessage

from local.functions import FunctionSpec, Invoker, resolve_setting
from local.host_json import HostConfig
from shared_code.bus.local_queue import (
    LocalQueue,
    MessageLockLost,
    ReceivedMessage,
    SessionLockLost,
    SessionReceiver,
)

__all__ = ["QueueTrigger", "TriggerConfigError", "queue_trigger_for", "to_function_message"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# An idle waiter wakes at least this often even without a notification (the queue's own due
# times wake it earlier); the wait itself runs no queries.
_IDLE_WAIT_SECONDS: Final = 30.0
# Sessions accepted by one query at most.
_ACCEPT_BATCH: Final = 16
_RETRY_MIN_SECONDS: Final = 0.5
_RETRY_MAX_SECONDS: Final = 10.0


class TriggerConfigError(ValueError):
    """A Service Bus trigger the dev host cannot run; the message names the function."""


class _Stopped(Exception):
    """An idle wait ended because the trigger is stopping."""


def queue_trigger_for(
    spec: FunctionSpec, bus: LocalQueue, invoker: Invoker, config: HostConfig
) -> QueueTrigger:
    """Build the runner for one ``serviceBusTrigger`` function (queues only, cardinality one)."""
    binding = spec.binding
    if "queueName" not in binding:
        raise TriggerConfigError(
            f"function {spec.name}: Service Bus topic triggers are not supported by the local host"
        )
    if str(binding.get("cardinality", "one")).lower() != "one":
        raise TriggerConfigError(
            f"function {spec.name}: cardinality {binding['cardinality']!r} is not supported by the "
            "local host; use cardinality one (the default)"
        )
    try:
        queue = resolve_setting(str(binding["queueName"]))
    except LookupError as error:
        raise TriggerConfigError(f"function {spec.name}: {error}") from None
    return QueueTrigger(
        spec,
        queue,
        bus=bus,
        invoker=invoker,
        config=config,
        sessions=bool(binding.get("isSessionsEnabled", False)),
    )


def to_function_message(message: ReceivedMessage) -> ServiceBusMessage:
    """The ``func.ServiceBusMessage`` the Python worker would pass for this message."""
    properties = dict(message.application_properties)
    return ServiceBusMessage(
        body=message.body,
        message_id=message.message_id,
        session_id=message.session_id,
        content_type=message.content_type,
        delivery_count=message.delivery_count,
        enqueued_time_utc=message.enqueued_time,
        scheduled_enqueue_time_utc=message.scheduled_enqueue_time,
        sequence_number=message.sequence_number,
        enqueued_sequence_number=message.sequence_number,
        lock_token=message.lock_token,
        locked_until=message.locked_until,
        label=message.subject,
        subject=message.subject,
        application_properties=properties,
        user_properties=dict(properties),
    )


class QueueTrigger:
    """Runs one Service Bus-triggered function against one local queue."""

    def __init__(
        self,
        spec: FunctionSpec,
        queue: str,
        *,
        bus: LocalQueue,
        invoker: Invoker,
        config: HostConfig,
        sessions: bool,
    ) -> None:
        self.spec = spec
        self.queue = queue
        self.sessions = sessions
        self._bus = bus
        self._invoker = invoker
        self._config = config
        self._concurrency = (
            config.max_concurrent_sessions if sessions else config.max_concurrent_calls
        )
        self._stopping = False
        self._feeder: asyncio.Task[None] | None = None
        self._workers: set[asyncio.Task[object]] = set()
        # Tasks parked in a wait that may be cancelled at no cost (no lock held mid-flight).
        self._idle: set[asyncio.Task[Any]] = set()
        # Worker task -> the message its function is running on, to name it if cut off.
        self._running: dict[asyncio.Task[Any], ReceivedMessage] = {}

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        loop = self._session_feeder() if self.sessions else self._message_feeder()
        self._feeder = asyncio.create_task(loop, name=f"trigger-{self.spec.name}")

    async def stop(self, deadline: float) -> None:
        """Stop taking work; running functions may finish until ``deadline`` (loop time)."""
        self._stopping = True
        for task in list(self._idle):
            task.cancel()
        tasks = [*self._workers, *([self._feeder] if self._feeder else [])]
        if not tasks:
            return
        _, pending = await asyncio.wait(
            tasks, timeout=max(0.0, deadline - asyncio.get_running_loop().time())
        )
        for task in pending:
            message = self._running.get(task)
            if message is not None:
                logger.warning(
                    "%s: cut off at shutdown; message #%s (delivery %s) is left to lock expiry",
                    self.spec.name,
                    message.sequence_number,
                    message.delivery_count,
                )
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # --- feeders: one per trigger, the only task that waits for new work --------------------

    async def _session_feeder(self) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        retry = _Backoff()
        while True:
            try:
                await self._idle_wait(slots.acquire())
            except _Stopped:
                return
            # Every free slot is filled by the same round trip, so that a burst of new sessions
            # is not taken one query (and one event-loop turn) at a time.
            wanted = 1
            while wanted < _ACCEPT_BATCH and not slots.locked():
                await slots.acquire()
                wanted += 1
            try:
                receivers = await self._bus.accept_next_sessions(self.queue, wanted)
            except Exception as error:
                _release(slots, wanted)
                if not await self._pause_after(error, retry):
                    return
                continue
            retry.reset()
            _release(slots, wanted - len(receivers))
            if not receivers:
                if not await self._wait_for_activity(_IDLE_WAIT_SECONDS):
                    return
                continue
            if self._stopping:
                _release(slots, len(receivers))
                for receiver in receivers:
                    await receiver.close()
                return
            for receiver in receivers:
                self._spawn(self._run_session(receiver), slots)
            # Asking again when no other free session had work would find nothing: wait for a
            # publish or a release instead (one noticed since the accept returns at once).
            if not receivers[-1].more_sessions and not await self._wait_for_activity(
                _IDLE_WAIT_SECONDS
            ):
                return

    async def _message_feeder(self) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        retry = _Backoff()
        while True:
            try:
                await self._idle_wait(slots.acquire())
            except _Stopped:
                return
            try:
                message = await self._bus.receive(self.queue)
            except Exception as error:
                slots.release()
                if not await self._pause_after(error, retry):
                    return
                continue
            retry.reset()
            if message is None:
                slots.release()
                if not await self._wait_for_activity(_IDLE_WAIT_SECONDS):
                    return
                continue
            # Received during shutdown: still run it, within the grace period, rather than leave
            # it locked for nothing.
            self._spawn(self._process(message), slots)

    def _spawn(self, work: Coroutine[Any, Any, object], slots: asyncio.Semaphore) -> None:
        task = asyncio.create_task(work)
        self._workers.add(task)

        def done(finished: asyncio.Task[object]) -> None:
            self._workers.discard(finished)
            slots.release()

        task.add_done_callback(done)

    # --- sessions -------------------------------------------------------------------------------

    async def _run_session(self, receiver: SessionReceiver) -> None:
        renew_until = time.monotonic() + self._config.max_auto_lock_renewal_duration.total_seconds()
        renewal = asyncio.create_task(
            _renew_until(
                receiver.renew_session_lock,
                self._renew_interval(),
                renew_until,
                f"{self.spec.name}: session lock",
            )
        )
        cut_off = False
        idle_timeout = self._config.session_idle_timeout.total_seconds()
        try:
            idle_until = time.monotonic() + idle_timeout
            message = await receiver.receive()
            # Past the renewal window the session lock would lapse under the next message and
            # that message would run twice; handing the session back first avoids it (the feeder
            # may well take it again at once).
            while not self._stopping and time.monotonic() < renew_until:
                if message is None:
                    remaining = idle_until - time.monotonic()
                    if remaining <= 0 or not await self._wait_for_session(receiver, remaining):
                        break
                    message = await receiver.receive()
                    continue
                cut_off = True
                succeeded = await self._process(message, complete=False)
                cut_off = False
                idle_until = time.monotonic() + idle_timeout
                if succeeded and self._config.auto_complete_messages and self.stopping:
                    await self._settle(self._bus.complete, message, "complete")
                    message = None
                elif succeeded and self._config.auto_complete_messages:
                    message = await self._complete_and_receive(receiver, message)
                else:
                    message = await receiver.receive()
            if message is not None:
                # Received, never run (stopping, or the renewal window ended): it returns to the
                # queue when the session is released (its lock only counts under the session's).
                logger.debug(
                    "%s: handing back message #%s", self.spec.name, message.sequence_number
                )
        except SessionLockLost:
            logger.warning(
                "%s: session lock lost; the session's messages go to the next holder",
                self.spec.name,
            )
        except asyncio.CancelledError:
            if not cut_off:
                await self._release(receiver)
            raise
        except Exception:
            logger.exception("%s: session receiver failed", self.spec.name)
        finally:
            renewal.cancel()
        if not cut_off:
            await self._release(receiver)

    async def _complete_and_receive(
        self, receiver: SessionReceiver, message: ReceivedMessage
    ) -> ReceivedMessage | None:
        try:
            return await receiver.complete_and_receive(message)
        except SessionLockLost:
            raise
        except Exception as error:
            self._log_settle_failure(message, "complete", error)
        return await receiver.receive()

    async def _release(self, receiver: SessionReceiver) -> None:
        try:
            await receiver.close()
        except Exception as error:
            # The lock simply expires; nothing is lost.
            logger.warning("%s: could not release a session: %s", self.spec.name, error)

    # --- one message ----------------------------------------------------------------------------

    async def _process(self, message: ReceivedMessage, *, complete: bool = True) -> bool:
        """Run the function on ``message``; abandon it if the function raised, else complete it
        (unless ``complete`` is False: the caller completes it). True when the function ran."""
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = message
        renewal = asyncio.create_task(
            _renew_until(
                lambda: self._bus.renew_message_lock(message),
                self._renew_interval(),
                time.monotonic() + self._config.max_auto_lock_renewal_duration.total_seconds(),
                f"{self.spec.name}: lock of message #{message.sequence_number}",
            )
        )
        started = time.perf_counter()
        failed = False
        try:
            await self._invoker.invoke(self.spec, to_function_message(message))
        except Exception as error:
            failed = True
            # Name, queue sequence number and delivery count only: bodies carry message text and
            # phone numbers, and message ids are wamids (base64 holding the user's number).
            logger.exception(
                "%s failed on message #%s (delivery %s): %s",
                self.spec.name,
                message.sequence_number,
                message.delivery_count,
                type(error).__name__,
            )
        finally:
            # Also on cancellation (cut off at shutdown): the lock then expires on its own.
            renewal.cancel()
            self._running.pop(task, None)
        if failed:
            await self._settle(self._bus.abandon, message, "abandon")
            return False
        if complete and self._config.auto_complete_messages:
            await self._settle(self._bus.complete, message, "complete")
        logger.info(
            "%s ran on message #%s (delivery %s) in %.1f ms",
            self.spec.name,
            message.sequence_number,
            message.delivery_count,
            (time.perf_counter() - started) * 1000,
        )
        return True

    async def _settle(
        self,
        settle: Callable[[ReceivedMessage], Awaitable[None]],
        message: ReceivedMessage,
        action: str,
    ) -> None:
        try:
            await settle(message)
        except Exception as error:
            self._log_settle_failure(message, action, error)

    def _log_settle_failure(self, message: ReceivedMessage, action: str, error: Exception) -> None:
        if isinstance(error, MessageLockLost):
            logger.warning(
                "%s: lock on message #%s expired before %s; it will be delivered again",
                self.spec.name,
                message.sequence_number,
                action,
            )
        else:
            logger.warning(
                "%s: could not %s message #%s (%s); it returns after its lock expires",
                self.spec.name,
                action,
                message.sequence_number,
                type(error).__name__,
            )

    # --- waiting --------------------------------------------------------------------------------

    def _renew_interval(self) -> float:
        return self._bus.options_for(self.queue).lock_duration.total_seconds() / 2

    async def _idle_wait(self, waiting: Awaitable[T]) -> T:
        """Await ``waiting`` where :meth:`stop` may cancel it; raises _Stopped when stopping."""
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:
            if isinstance(waiting, Coroutine):
                waiting.close()
            raise _Stopped
        self._idle.add(task)
        try:
            return await waiting
        except asyncio.CancelledError:
            # (Re-read: stop() may have run while this task waited.)
            if not self.stopping:
                raise
            # Our own cancellation, consumed here: later timeouts in this task must still work.
            task.uncancel()
            raise _Stopped from None
        finally:
            self._idle.discard(task)

    async def _wait_for_session(self, receiver: SessionReceiver, seconds: float) -> bool:
        """Sleep until the held session has a new message; False when none came within
        ``seconds`` (the session goes back) or the trigger is stopping."""
        try:
            notified = await self._idle_wait(receiver.wait_for_message(seconds))
        except _Stopped:
            return False
        return notified and not self._stopping

    async def _wait_for_activity(self, seconds: float) -> bool:
        """Sleep until the queue may have work; False when the trigger is stopping."""
        try:
            await self._idle_wait(self._bus.wait_for_activity(self.queue, seconds))
        except _Stopped:
            return False
        return not self._stopping

    async def _pause_after(self, error: Exception, retry: _Backoff) -> bool:
        delay = retry.next()
        logger.warning(
            "%s: cannot read queue %s (%s: %s); retrying in %.1f s",
            self.spec.name,
            self.queue,
            type(error).__name__,
            error,
            delay,
        )
        try:
            await self._idle_wait(asyncio.sleep(delay))
        except _Stopped:
            return False
        return not self._stopping


class _Backoff:
    def __init__(self) -> None:
        self._delay = _RETRY_MIN_SECONDS

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, _RETRY_MAX_SECONDS)
        return delay

    def reset(self) -> None:
        self._delay = _RETRY_MIN_SECONDS


async def _renew_until(
    renew: Callable[[], Awaitable[datetime]], interval: float, until: float, what: str
) -> None:
    """Renew a lock every ``interval`` seconds until ``until`` (monotonic) or cancellation."""
    while True:
        await asyncio.sleep(interval)
        if time.monotonic() >= until:
            logger.debug("%s: maxAutoLockRenewalDuration reached; no longer renewed", what)
            return
        try:
            await renew()
        except MessageLockLost:
            logger.warning("%s was lost; renewal stopped", what)
            return
        except Exception as error:
            # A database hiccup: the lock is still good for another half duration.
            logger.warning("%s could not be renewed (%s); will retry", what, error)


def _release(slots: asyncio.Semaphore, count: int) -> None:
    for _ in range(count):
        slots.release()
