"""The Service Bus adapter at the SDK boundary: a fake client and sender record what would be sent.

The batches are the SDK's own ``ServiceBusMessageBatch`` (sized small), so splitting is driven by
the same ``MessageSizeExceededError`` the SDK raises from ``add_message`` when a batch is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    OperationTimeoutError,
    ServiceBusConnectionError,
    ServiceBusError,
)

from shared_code.bus import azure_service_bus
from shared_code.bus.azure_service_bus import AzureServiceBus
from shared_code.bus.port import OutgoingMessage, PublishError


class RecordingBatch(ServiceBusMessageBatch):
    """The SDK's batch, remembering what was added; optionally full after ``capacity`` messages."""

    def __init__(self, max_size_in_bytes: int | None = None, capacity: int | None = None) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.capacity = capacity
        self.added: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        if self.capacity is not None and len(self.added) >= self.capacity:
            raise MessageSizeExceededError(message="ServiceBusMessageBatch has reached its limit")
        super().add_message(message)
        self.added.append(message)


class FakeSender:
    def __init__(
        self,
        *,
        max_size_in_bytes: int | None = None,
        capacity: int | None = None,
        fail_with: Exception | None = None,
    ) -> None:
        self.max_size_in_bytes = max_size_in_bytes
        self.capacity = capacity
        self.fail_with = fail_with
        self.batches: list[list[ServiceBusMessage]] = []
        self.closed = False
        self.sending = False
        self.overlapped = False

    async def create_message_batch(self) -> ServiceBusMessageBatch:
        return RecordingBatch(self.max_size_in_bytes, self.capacity)

    async def send_messages(self, message: ServiceBusMessageBatch) -> None:
        assert isinstance(message, RecordingBatch)
        self.overlapped |= self.sending
        self.sending = True
        try:
            await asyncio.sleep(0.01)
            if self.fail_with is not None:
                raise self.fail_with
            self.batches.append(list(message.added))
        finally:
            self.sending = False

    async def close(self) -> None:
        self.closed = True

    @property
    def sent(self) -> list[ServiceBusMessage]:
        return [message for batch in self.batches for message in batch]


class FakeClient:
    def __init__(self, **sender_options: Any) -> None:
        self.sender_options = sender_options
        self.senders: dict[str, list[FakeSender]] = {}
        self.closed = False

    def get_queue_sender(self, queue_name: str) -> FakeSender:
        sender = FakeSender(**self.sender_options)
        self.senders.setdefault(queue_name, []).append(sender)
        return sender

    async def close(self) -> None:
        self.closed = True

    def only_sender(self, queue: str) -> FakeSender:
        [sender] = self.senders[queue]
        return sender


class FakeCredential:
    def __init__(self) -> None:
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no token is needed in these tests")

    async def close(self) -> None:
        self.closed = True


def outgoing(message_id: str, session_id: str | None = "100:200", **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(
        body=f"body of {message_id}".encode(),
        message_id=message_id,
        session_id=session_id,
        **fields,
    )


def body_of(message: ServiceBusMessage) -> bytes:
    return b"".join(message.body)


def ids(messages: Sequence[ServiceBusMessage]) -> list[str]:
    return [str(message.message_id) for message in messages]


async def test_a_message_keeps_every_field_the_bridge_relies_on() -> None:
    client = FakeClient()
    bus = AzureServiceBus(client)
    due = datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    await bus.publish(
        "outbound-messages",
        [
            OutgoingMessage(
                body=b'{"to": "15551230001"}',
                message_id="reply:wamid.1",
                session_id="100:15551230001",
                application_properties={"kind": "reply", "attempt": 2, "retry": True, "w": 0.5},
                content_type="application/json",
                subject="send",
                scheduled_enqueue_time=due,
            )
        ],
    )
    [sent] = client.only_sender("outbound-messages").sent
    assert body_of(sent) == b'{"to": "15551230001"}'
    assert sent.message_id == "reply:wamid.1"
    assert sent.session_id == "100:15551230001"
    assert sent.application_properties == {"kind": "reply", "attempt": 2, "retry": True, "w": 0.5}
    assert sent.content_type == "application/json"
    assert sent.subject == "send"
    assert sent.scheduled_enqueue_time_utc == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert sent.scheduled_enqueue_time_utc.tzinfo is UTC


async def test_optional_fields_stay_unset() -> None:
    client = FakeClient()
    await AzureServiceBus(client).publish("q", [outgoing("m1", None)])
    [sent] = client.only_sender("q").sent
    assert sent.session_id is None
    assert sent.subject is None
    assert sent.scheduled_enqueue_time_utc is None
    assert not sent.application_properties


async def test_messages_go_out_in_one_batch_when_they_fit() -> None:
    client = FakeClient()
    await AzureServiceBus(client).publish("q", [outgoing(f"m{i}") for i in range(50)])
    sender = client.only_sender("q")
    assert [len(batch) for batch in sender.batches] == [50]
    assert ids(sender.sent) == [f"m{i}" for i in range(50)]


async def test_a_full_batch_is_sent_and_a_new_one_started() -> None:
    client = FakeClient(capacity=3)
    await AzureServiceBus(client).publish("q", [outgoing(f"m{i}") for i in range(7)])
    sender = client.only_sender("q")
    assert [ids(batch) for batch in sender.batches] == [
        ["m0", "m1", "m2"],
        ["m3", "m4", "m5"],
        ["m6"],
    ]


async def test_batches_split_at_the_sdk_size_limit_in_order() -> None:
    client = FakeClient(max_size_in_bytes=1_000)
    messages = [outgoing(f"m{i}") for i in range(40)]
    await AzureServiceBus(client).publish("q", messages)
    sender = client.only_sender("q")
    assert len(sender.batches) > 1
    assert ids(sender.sent) == [m.message_id for m in messages]
    assert [body_of(m) for m in sender.sent] == [m.body for m in messages]


async def test_a_message_too_large_for_any_batch_is_a_publish_error() -> None:
    client = FakeClient(max_size_in_bytes=300)
    bus = AzureServiceBus(client)
    big = OutgoingMessage(body=b"x" * 1_000, message_id="big")
    with pytest.raises(PublishError, match="too large"):
        await bus.publish("q", [outgoing("small"), big])
    assert ids(client.only_sender("q").sent) == ["small"]


@pytest.mark.parametrize(
    "error",
    [
        ServiceBusError("boom"),
        OperationTimeoutError(message="timed out"),
        ServiceBusConnectionError(message="link detached"),
        ClientAuthenticationError("no token"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_sdk_errors_become_publish_errors_and_drop_the_sender(error: Exception) -> None:
    client = FakeClient(fail_with=error)
    bus = AzureServiceBus(client)
    with pytest.raises(PublishError) as raised:
        await bus.publish("q", [outgoing("m1")])
    assert raised.value.__cause__ is error
    [failed] = client.senders["q"]
    assert failed.closed
    client.sender_options = {}
    await bus.publish("q", [outgoing("m1")])
    assert ids(client.senders["q"][1].sent) == ["m1"]


async def test_one_sender_per_queue_is_created_once_and_reused() -> None:
    client = FakeClient()
    bus = AzureServiceBus(client)
    await asyncio.gather(*(bus.publish("inbound", [outgoing(f"m{i}")]) for i in range(5)))
    await bus.publish("outbound", [outgoing("o1")])
    await bus.publish("inbound", [outgoing("m5")])
    assert len(client.senders["inbound"]) == 1
    assert len(client.senders["outbound"]) == 1
    assert sorted(ids(client.only_sender("inbound").sent)) == [f"m{i}" for i in range(6)]


async def test_sends_to_one_queue_take_turns() -> None:
    client = FakeClient()
    bus = AzureServiceBus(client)
    await asyncio.gather(*(bus.publish("q", [outgoing(f"m{i}")]) for i in range(5)))
    assert not client.only_sender("q").overlapped


async def test_publishing_nothing_opens_no_sender() -> None:
    client = FakeClient()
    await AzureServiceBus(client).publish("q", [])
    assert client.senders == {}


async def test_close_closes_senders_client_and_credential() -> None:
    client = FakeClient()
    credential = FakeCredential()
    bus = AzureServiceBus(client, credential=credential)  # type: ignore[arg-type]
    await bus.publish("a", [outgoing("m1")])
    await bus.publish("b", [outgoing("m2")])
    await bus.close()
    assert client.only_sender("a").closed
    assert client.only_sender("b").closed
    assert client.closed
    assert credential.closed
    await bus.close()  # a second close is harmless
    with pytest.raises(PublishError, match="closed"):
        await bus.publish("a", [outgoing("m3")])


class RecordingServiceBusClient:
    """Stands in for the SDK client class, recording how it was built."""

    built: list[RecordingServiceBusClient] = []

    def __init__(self, fully_qualified_namespace: str, credential: Any) -> None:
        self.namespace = fully_qualified_namespace
        self.credential = credential
        self.connection_string: str | None = None
        self.closed = False
        RecordingServiceBusClient.built.append(self)

    @classmethod
    def from_connection_string(cls, conn_str: str) -> RecordingServiceBusClient:
        client = cls("", None)
        client.connection_string = conn_str
        return client

    async def close(self) -> None:
        self.closed = True


class RecordingCredential(FakeCredential):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs


class RecordingManagedIdentity(RecordingCredential):
    pass


class RecordingDefaultCredential(RecordingCredential):
    pass


@pytest.fixture
def recorded_clients(monkeypatch: pytest.MonkeyPatch) -> list[RecordingServiceBusClient]:
    RecordingServiceBusClient.built = []
    monkeypatch.setattr(azure_service_bus, "ServiceBusClient", RecordingServiceBusClient)
    monkeypatch.setattr(azure_service_bus, "ManagedIdentityCredential", RecordingManagedIdentity)
    monkeypatch.setattr(azure_service_bus, "DefaultAzureCredential", RecordingDefaultCredential)
    return RecordingServiceBusClient.built


async def test_from_connection_string(recorded_clients: list[RecordingServiceBusClient]) -> None:
    conn_str = (
        "Endpoint=sb://bridge.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v"
    )
    bus = AzureServiceBus.from_connection_string(conn_str)
    [client] = recorded_clients
    assert client.connection_string == conn_str
    await bus.close()
    assert client.closed


async def test_from_namespace_with_a_client_id_uses_that_managed_identity(
    recorded_clients: list[RecordingServiceBusClient],
) -> None:
    bus = AzureServiceBus.from_namespace("bridge.servicebus.windows.net", "client-id-1")
    [client] = recorded_clients
    assert client.namespace == "bridge.servicebus.windows.net"
    assert isinstance(client.credential, RecordingManagedIdentity)
    assert client.credential.kwargs == {"client_id": "client-id-1"}
    await bus.close()
    assert client.closed
    assert client.credential.closed


async def test_from_namespace_without_a_client_id_uses_the_default_chain(
    recorded_clients: list[RecordingServiceBusClient],
) -> None:
    bus = AzureServiceBus.from_namespace("bridge.servicebus.windows.net", None)
    [client] = recorded_clients
    assert isinstance(client.credential, RecordingDefaultCredential)
    await bus.close()
    assert client.credential.closed


async def test_the_async_identity_credentials_can_be_built() -> None:
    # azure.identity.aio needs azure-core's async HTTP transport, which is aiohttp; without it
    # from_namespace fails at start-up in Azure with "aiohttp package is not installed".
    bus = AzureServiceBus.from_namespace("bridge.servicebus.windows.net", "client-id-1")
    await bus.close()
