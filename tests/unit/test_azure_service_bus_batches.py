"""Publishing against a fake Service Bus that enforces the service's own batch rules.

The rules (Service Bus troubleshooting guide; azure-sdk-for-python#21955): a batch of a session
queue on a partitioned entity holds one session id, and with duplicate detection one message id;
no message or batch exceeds the link's maximum message size (256 KB on the Standard tier). The
fake refuses what the service refuses, so a publish that passes here would pass there.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import ServiceBusError

from shared_code.bus.azure_service_bus import AzureServiceBus
from shared_code.bus.port import STANDARD_TIER_MAX_MESSAGE_BYTES, OutgoingMessage, PublishError


class RecordingBatch(ServiceBusMessageBatch):
    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.added: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.added.append(message)


class StrictSender:
    """Refuses, as Service Bus does, batches that mix session ids (or message ids when
    ``partitioned``) and batches over the size limit."""

    def __init__(self, *, partitioned: bool, max_size_in_bytes: int) -> None:
        self.partitioned = partitioned
        self.max_size_in_bytes = max_size_in_bytes
        self.batches: list[list[ServiceBusMessage]] = []

    async def create_message_batch(self) -> ServiceBusMessageBatch:
        return RecordingBatch(self.max_size_in_bytes)

    async def send_messages(self, message: ServiceBusMessageBatch) -> None:
        assert isinstance(message, RecordingBatch)
        if message.size_in_bytes > self.max_size_in_bytes:
            raise ServiceBusError("The received message (batch) exceeds the size limit")
        sessions = {m.session_id for m in message.added}
        if len(sessions) > 1:
            raise ServiceBusError(
                "Batching brokered messages with distinct SessionId, PartitionKey, or MessageId "
                "is not supported for an entity with partitioning and duplicate detection enabled."
            )
        if self.partitioned and len({m.message_id for m in message.added}) > 1:
            raise ServiceBusError("Batching brokered messages with distinct MessageId ...")
        self.batches.append(list(message.added))

    async def close(self) -> None:
        pass

    @property
    def sent_ids(self) -> list[str]:
        return [str(m.message_id) for batch in self.batches for m in batch]


class StrictClient:
    def __init__(
        self, *, partitioned: bool = False, max_size_in_bytes: int = STANDARD_TIER_MAX_MESSAGE_BYTES
    ) -> None:
        self.sender = StrictSender(partitioned=partitioned, max_size_in_bytes=max_size_in_bytes)

    def get_queue_sender(self, queue_name: str) -> StrictSender:
        return self.sender

    async def close(self) -> None:
        pass


def message(message_id: str, session_id: str | None, size: int = 100) -> OutgoingMessage:
    return OutgoingMessage(body=b"x" * size, message_id=message_id, session_id=session_id)


async def test_one_batch_per_session_each_in_order() -> None:
    client = StrictClient()
    interleaved = [message(f"{s}{i}", f"session-{s}") for i in range(5) for s in "abc"]
    await AzureServiceBus(client).publish("inbound-events", interleaved)
    batches = client.sender.batches
    assert len(batches) == 3
    for batch in batches:
        assert len({m.session_id for m in batch}) == 1
    by_session = {batch[0].session_id: [str(m.message_id) for m in batch] for batch in batches}
    assert by_session == {f"session-{s}": [f"{s}{i}" for i in range(5)] for s in "abc"}


async def test_messages_without_a_session_share_a_batch() -> None:
    client = StrictClient()
    await AzureServiceBus(client).publish("q", [message(f"m{i}", None) for i in range(4)])
    assert [len(batch) for batch in client.sender.batches] == [4]


async def test_a_partitioned_entity_gets_one_message_per_batch() -> None:
    client = StrictClient(partitioned=True)
    messages = [message(f"m{i}", "same-session") for i in range(3)]
    await AzureServiceBus(client, partitioned=True).publish("q", messages)
    assert [len(batch) for batch in client.sender.batches] == [1, 1, 1]
    assert client.sender.sent_ids == ["m0", "m1", "m2"]


async def test_a_session_over_one_batch_is_split_at_the_size_limit() -> None:
    client = StrictClient()
    # Six messages of 100 KB: at most two fit under 256 KB.
    messages = [message(f"m{i}", "s", size=100 * 1024) for i in range(6)]
    await AzureServiceBus(client).publish("q", messages)
    assert [len(batch) for batch in client.sender.batches] == [2, 2, 2]
    assert client.sender.sent_ids == [f"m{i}" for i in range(6)]


async def test_a_message_over_the_standard_limit_is_refused_alone_and_the_rest_are_sent() -> None:
    client = StrictClient()
    messages = [
        message("before", "a"),
        message("huge", "a", size=STANDARD_TIER_MAX_MESSAGE_BYTES + 1),
        message("after", "a"),
        message("other", "b"),
    ]
    with pytest.raises(PublishError) as raised:
        await AzureServiceBus(client).publish("q", messages)
    assert raised.value.permanent
    assert raised.value.refused_message_ids == frozenset({"huge"})
    assert "huge" not in str(raised.value)  # ids may be wamids: never in the text
    assert client.sender.sent_ids == ["before", "after", "other"]


async def test_a_message_just_under_the_limit_goes() -> None:
    client = StrictClient()
    await AzureServiceBus(client).publish("q", [message("big", "a", size=250 * 1024)])
    assert client.sender.sent_ids == ["big"]
