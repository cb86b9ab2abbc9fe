"""Replaying an Azure Service Bus dead-letter sub-queue, against a fake with peek-lock semantics.

The fake hands out received messages the way the SDK does (application property keys and string
values as bytes, Service Bus's dead-letter reason among them) and records every send, complete and
abandon in one log, so the order "send, then complete" is checked, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue

from shared_code.bus.dead_letters import AzureDeadLetterReplayer

QUEUE = "inbound-events"
WINDOW = timedelta(minutes=10)


@dataclass(eq=False)
class DeadLetter:
    sequence_number: int
    message_id: str
    session_id: str | None
    enqueued_time_utc: datetime
    body: list[bytes] = field(default_factory=lambda: [b'{"a": ', b"1}"])
    application_properties: dict[bytes, Any] = field(
        default_factory=lambda: {
            b"kind": b"message",
            b"webhook_event_id": 7,
            b"DeadLetterReason": b"MaxDeliveryCountExceeded",
            b"DeadLetterErrorDescription": b"Message could not be consumed after 10 attempts.",
        }
    )
    content_type: str | None = "application/json"
    subject: str | None = "message"
    correlation_id: str | None = None
    locked: bool = False


class FakeDeadLetterQueue:
    def __init__(self, messages: list[DeadLetter], log: list[tuple[str, str]]) -> None:
        self.messages = messages
        self.log = log
        self.closed = False

    async def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[DeadLetter]:
        free = [m for m in self.messages if not m.locked][: max_message_count or 1]
        for message in free:
            message.locked = True
        return free

    async def peek_messages(
        self, max_message_count: int = 1, *, sequence_number: int = 0
    ) -> list[DeadLetter]:
        return self.messages[:max_message_count]

    async def complete_message(self, message: DeadLetter) -> None:
        assert message.locked
        self.messages.remove(message)
        self.log.append(("complete", message.message_id))

    async def abandon_message(self, message: DeadLetter) -> None:
        message.locked = False
        self.log.append(("abandon", message.message_id))

    async def close(self) -> None:
        self.closed = True


class FakeSender:
    def __init__(self, log: list[tuple[str, str]], *, fail_on: str | None = None) -> None:
        self.log = log
        self.fail_on = fail_on
        self.sent: list[ServiceBusMessage] = []
        self.closed = False

    async def send_messages(self, message: ServiceBusMessage) -> None:
        if message.message_id == self.fail_on:
            raise RuntimeError("the namespace is unreachable")
        self.sent.append(message)
        self.log.append(("send", str(message.message_id)))

    async def close(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self, messages: list[DeadLetter], *, fail_on: str | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.dead_letters = FakeDeadLetterQueue(messages, self.log)
        self.sender = FakeSender(self.log, fail_on=fail_on)
        self.receiver_arguments: dict[str, Any] = {}

    def get_queue_receiver(self, queue_name: str, **kwargs: Any) -> FakeDeadLetterQueue:
        self.receiver_arguments = {"queue_name": queue_name, **kwargs}
        return self.dead_letters

    def get_queue_sender(self, queue_name: str) -> FakeSender:
        assert queue_name == QUEUE
        return self.sender


def old(sequence_number: int, message_id: str, session_id: str | None = "100:a") -> DeadLetter:
    enqueued = datetime.now(UTC) - WINDOW - timedelta(minutes=1)
    return DeadLetter(sequence_number, message_id, session_id, enqueued)


def recent(sequence_number: int, message_id: str) -> DeadLetter:
    return DeadLetter(sequence_number, message_id, "100:b", datetime.now(UTC))


async def test_each_message_is_sent_again_then_completed() -> None:
    client = FakeClient([old(1, "wamid.1"), old(2, "wamid.2", None)])
    report = await AzureDeadLetterReplayer(client).replay_dead_letters(QUEUE, max_messages=10)
    assert (report.replayed, report.held_back) == (2, 0)
    assert client.receiver_arguments == {
        "queue_name": QUEUE,
        "sub_queue": ServiceBusSubQueue.DEAD_LETTER,
    }
    assert client.log == [
        ("send", "wamid.1"),
        ("complete", "wamid.1"),
        ("send", "wamid.2"),
        ("complete", "wamid.2"),
    ]
    first, second = client.sender.sent
    assert (first.message_id, first.session_id) == ("wamid.1", "100:a")
    assert second.session_id is None
    assert b"".join(first.body) == b'{"a": 1}'
    assert first.content_type == "application/json" and first.subject == "message"
    # Properties as they were sent (str), without the old dead-letter reason.
    assert first.application_properties == {"kind": "message", "webhook_event_id": 7}
    assert client.dead_letters.messages == []
    assert client.dead_letters.closed and client.sender.closed


async def test_messages_within_the_duplicate_window_are_held_back_not_lost() -> None:
    held = recent(2, "wamid.new")
    client = FakeClient([old(1, "wamid.1"), held, old(3, "wamid.3")])
    report = await AzureDeadLetterReplayer(client).replay_dead_letters(QUEUE, max_messages=10)
    assert (report.replayed, report.held_back) == (2, 1)
    assert report.held_back_until == held.enqueued_time_utc + WINDOW
    assert ("send", "wamid.new") not in client.log
    # Kept locked during the run (not received twice), then given back.
    assert client.log[-1] == ("abandon", "wamid.new")
    assert client.dead_letters.messages == [held] and not held.locked


async def test_max_caps_the_messages_moved() -> None:
    client = FakeClient([old(i, f"wamid.{i}") for i in range(1, 6)])
    report = await AzureDeadLetterReplayer(client).replay_dead_letters(QUEUE, max_messages=2)
    assert report.replayed == 2
    assert [m.message_id for m in client.dead_letters.messages] == ["wamid.3", "wamid.4", "wamid.5"]


async def test_a_failed_send_completes_nothing_and_gives_back_what_it_held() -> None:
    held = recent(1, "wamid.new")
    client = FakeClient([held, old(2, "wamid.2")], fail_on="wamid.2")
    with pytest.raises(RuntimeError):
        await AzureDeadLetterReplayer(client).replay_dead_letters(QUEUE, max_messages=10)
    assert not [entry for entry in client.log if entry[0] == "complete"]
    assert len(client.dead_letters.messages) == 2
    assert ("abandon", "wamid.new") in client.log and ("abandon", "wamid.2") in client.log
    assert not any(m.locked for m in client.dead_letters.messages)


async def test_a_dry_run_peeks_and_moves_nothing() -> None:
    client = FakeClient([old(1, "wamid.1"), recent(2, "wamid.new")])
    report = await AzureDeadLetterReplayer(client).replay_dead_letters(
        QUEUE, max_messages=10, dry_run=True
    )
    assert (report.replayed, report.held_back, report.dry_run) == (1, 1, True)
    assert client.log == [] and client.sender.sent == []
    assert len(client.dead_letters.messages) == 2
