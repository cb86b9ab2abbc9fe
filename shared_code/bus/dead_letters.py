"""Replaying dead-lettered messages: back to their queue after the cause was fixed.

A message is dead-lettered after its last delivery failed (a bad setting, a bug, an outage longer
than the retries). Once fixed, each is sent again to its queue with the same body, message id,
session id and application properties, and removed from the dead letters only after the queue
accepted it: a crash in between leaves a copy in both, and processing is idempotent.

The same message id also means the queue's duplicate detection sees the replay: a message first
accepted less than one duplicate detection window ago (10 minutes in infra/) would be dropped
silently by Azure Service Bus, and then completing its dead-letter copy would lose it. Such
messages are held back (left dead-lettered, counted in :attr:`ReplayReport.held_back`) until the
window has passed; run the replay again then.

Two implementations: :meth:`shared_code.bus.local_queue.LocalQueue.replay_dead_letters` (the dev
host's queue, one SQL statement) and :class:`AzureDeadLetterReplayer` (the dead-letter sub-queue
of an Azure Service Bus queue).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue

__all__ = [
    "DEFAULT_DUPLICATE_DETECTION_WINDOW",
    "AzureDeadLetterReplayer",
    "DeadLetterReplayer",
    "ReplayReport",
]

logger = logging.getLogger(__name__)

# What infra/ sets on both queues (it can only be chosen when a queue is created).
DEFAULT_DUPLICATE_DETECTION_WINDOW = timedelta(minutes=10)
# Service Bus records why it dead-lettered a message among the application properties; a replayed
# message must not carry the old reason into its next life.
_DEAD_LETTER_PROPERTIES = frozenset({"DeadLetterReason", "DeadLetterErrorDescription"})
_RECEIVE_BATCH = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayReport:
    queue: str
    # Sent back to the queue (with ``dry_run``: would be).
    replayed: int
    # Left dead-lettered: first accepted within the duplicate detection window (see above).
    held_back: int
    dry_run: bool = False
    # When every held-back message may be replayed (None: nothing held back, or unknown).
    held_back_until: datetime | None = None


class DeadLetterReplayer(Protocol):
    async def replay_dead_letters(
        self, queue: str, *, max_messages: int, dry_run: bool = False
    ) -> ReplayReport: ...


class _Receiver(Protocol):
    """The part of ``azure.servicebus.aio.ServiceBusReceiver`` used here."""

    async def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[ServiceBusReceivedMessage]: ...
    async def peek_messages(
        self, max_message_count: int = 1, *, sequence_number: int = 0
    ) -> list[ServiceBusReceivedMessage]: ...
    async def complete_message(self, message: ServiceBusReceivedMessage) -> None: ...
    async def abandon_message(self, message: ServiceBusReceivedMessage) -> None: ...
    async def close(self) -> None: ...


class _Sender(Protocol):
    async def send_messages(self, message: ServiceBusMessage) -> None: ...
    async def close(self) -> None: ...


class _Client(Protocol):
    """The part of ``azure.servicebus.aio.ServiceBusClient`` used here."""

    def get_queue_receiver(self, queue_name: str, **kwargs: Any) -> _Receiver: ...
    def get_queue_sender(self, queue_name: str) -> _Sender: ...


class AzureDeadLetterReplayer:
    """Replays the dead-letter sub-queue of an Azure Service Bus queue (peek-lock: a message is
    completed there only after its copy was sent)."""

    def __init__(
        self,
        client: _Client,
        *,
        duplicate_detection_window: timedelta = DEFAULT_DUPLICATE_DETECTION_WINDOW,
        receive_wait_seconds: float = 5.0,
    ) -> None:
        self._client = client
        self._window = duplicate_detection_window
        self._wait = receive_wait_seconds

    async def replay_dead_letters(
        self, queue: str, *, max_messages: int, dry_run: bool = False
    ) -> ReplayReport:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        # The dead-letter sub-queue has no sessions, even when its queue requires them.
        receiver = self._client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
        try:
            if dry_run:
                return await self._count(queue, receiver, max_messages)
            sender = self._client.get_queue_sender(queue)
            try:
                return await self._move(queue, receiver, sender, max_messages)
            finally:
                await sender.close()
        finally:
            await receiver.close()

    async def _move(
        self, queue: str, receiver: _Receiver, sender: _Sender, max_messages: int
    ) -> ReplayReport:
        replayed = 0
        held: list[ServiceBusReceivedMessage] = []
        seen: set[int] = set()
        now = datetime.now(UTC)
        try:
            while replayed + len(held) < max_messages:
                batch = await receiver.receive_messages(
                    max_message_count=min(_RECEIVE_BATCH, max_messages - replayed - len(held)),
                    max_wait_time=self._wait,
                )
                new = [m for m in batch if m.sequence_number not in seen]
                for message in batch:
                    if message.sequence_number in seen:
                        # Its lock expired while held back: it is already counted.
                        await receiver.abandon_message(message)
                if not new:
                    break
                for message in new:
                    seen.add(message.sequence_number or 0)
                    if self._within_window(message, now):
                        held.append(message)  # locked until the end, so not received again
                        continue
                    try:
                        await sender.send_messages(resent_copy(message))
                    except Exception:
                        held.append(message)  # given back below, for the next run
                        raise
                    await receiver.complete_message(message)
                    replayed += 1
        finally:
            for message in held:
                await receiver.abandon_message(message)
        return self._report(queue, replayed, held, dry_run=False)

    async def _count(self, queue: str, receiver: _Receiver, max_messages: int) -> ReplayReport:
        peeked = await receiver.peek_messages(max_message_count=max_messages)
        now = datetime.now(UTC)
        held = [m for m in peeked if self._within_window(m, now)]
        return self._report(queue, len(peeked) - len(held), held, dry_run=True)

    def _within_window(self, message: ServiceBusReceivedMessage, now: datetime) -> bool:
        # The enqueued time of the dead-lettered copy is no earlier than the first accept of
        # its id, so waiting a window past it is always enough.
        enqueued = message.enqueued_time_utc
        return enqueued is None or enqueued + self._window > now

    def _report(
        self,
        queue: str,
        replayed: int,
        held: list[ServiceBusReceivedMessage],
        *,
        dry_run: bool,
    ) -> ReplayReport:
        times = [m.enqueued_time_utc + self._window for m in held if m.enqueued_time_utc]
        return ReplayReport(
            queue=queue,
            replayed=replayed,
            held_back=len(held),
            dry_run=dry_run,
            held_back_until=max(times) if times else None,
        )


def resent_copy(message: ServiceBusReceivedMessage) -> ServiceBusMessage:
    """A new message with the dead-lettered one's body, ids, session and properties."""
    return ServiceBusMessage(
        b"".join(message.body),
        message_id=message.message_id,
        session_id=message.session_id,
        application_properties=_properties_of(message.application_properties or {}) or None,
        content_type=message.content_type,
        subject=message.subject,
        correlation_id=message.correlation_id,
    )


def _properties_of(received: Mapping[Any, Any]) -> dict[str | bytes, Any]:
    # Received keys and string values are bytes; sent, they were str.
    properties: dict[str | bytes, Any] = {}
    for key, value in received.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in _DEAD_LETTER_PROPERTIES:
            continue
        properties[name] = value.decode() if isinstance(value, bytes) else value
    return properties
