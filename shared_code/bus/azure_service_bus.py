"""The bus in Azure: publishing to Service Bus queues with azure-servicebus (async).

One long-lived client per worker, one sender per queue created on first use and reused (a sender's
AMQP link takes about a second to open). Messages go out in as few batches as the service allows:
one batch holds one session's messages only (a partitioned entity refuses a batch that mixes
session ids, and with duplicate detection one that mixes message ids: there every message travels
alone), and no more bytes than the link's maximum message size (256 KB on the Standard tier). A
session's messages keep their order; sessions are independent, so their batches may go in any
order.

A message too large for any batch is left out: the others are sent and the publish then raises a
permanent :class:`PublishError` naming the refused ids, so the caller fails that event only.

A failed publish may have sent its first batches already; the caller publishes everything again and
the queue's duplicate detection (on ``message_id``) drops what arrived the first time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.aio.management import ServiceBusAdministrationClient
from azure.servicebus.exceptions import MessageSizeExceededError

from shared_code.bus.port import OutgoingMessage, PublishError, QueueDepth, QueueDepthsForbidden
from shared_code.log_privacy import pseudonym

__all__ = ["AzureServiceBus"]

logger = logging.getLogger(__name__)


class _Sender(Protocol):
    """The part of ``azure.servicebus.aio.ServiceBusSender`` used here."""

    async def create_message_batch(self) -> ServiceBusMessageBatch: ...
    async def send_messages(self, message: ServiceBusMessageBatch) -> None: ...
    async def close(self) -> None: ...


class _Client(Protocol):
    """The part of ``azure.servicebus.aio.ServiceBusClient`` used here."""

    def get_queue_sender(self, queue_name: str) -> _Sender: ...
    async def close(self) -> None: ...


class _RuntimeProperties(Protocol):
    """The part of ``azure.servicebus.management.QueueRuntimeProperties`` used here."""

    @property
    def active_message_count(self) -> int | None: ...
    @property
    def scheduled_message_count(self) -> int | None: ...
    @property
    def dead_letter_message_count(self) -> int | None: ...


class _Administration(Protocol):
    """The part of ``azure.servicebus.aio.management.ServiceBusAdministrationClient`` used here."""

    async def get_queue_runtime_properties(self, queue_name: str) -> _RuntimeProperties: ...
    async def close(self) -> None: ...


class _QueueSender:
    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        # The SDK's async sender is not safe for concurrent use (a reconnect in one send can
        # pull the link from under another: Azure/azure-sdk-for-python#35618), so sends to one
        # queue take turns.
        self.lock = asyncio.Lock()


class AzureServiceBus:
    """Implements ``MessageBus`` on Azure Service Bus."""

    def __init__(
        self,
        client: _Client,
        *,
        credential: AsyncTokenCredential | None = None,
        administration: _Administration | None = None,
        partitioned: bool = False,
    ) -> None:
        """``client`` is usually an ``azure.servicebus.aio.ServiceBusClient``; ``credential``, when
        given, is closed with the client (the client does not own it). ``administration`` (same
        namespace and credential) reads queue depths for ``GET status``; it needs the Manage
        right (Azure Service Bus Data Owner), which a sender's role does not include.
        ``partitioned``: the queues are partitioned with duplicate detection (infra/ creates
        them unpartitioned), so every message is sent in a batch of its own."""
        self._client = client
        self._one_message_per_batch = partitioned
        self._administration = administration
        self._credential = credential
        self._senders: dict[str, _QueueSender] = {}
        self._senders_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_connection_string(cls, conn_str: str) -> AzureServiceBus:
        return cls(
            ServiceBusClient.from_connection_string(conn_str),
            administration=ServiceBusAdministrationClient.from_connection_string(conn_str),
        )

    @classmethod
    def from_namespace(
        cls, fully_qualified_namespace: str, managed_identity_client_id: str | None = None
    ) -> AzureServiceBus:
        """Identity-based: the user-assigned managed identity when its client id is given (no
        probing through the other credential types at start), else ``DefaultAzureCredential``
        (developer sign-in locally)."""
        credential: AsyncTokenCredential
        if managed_identity_client_id:
            credential = ManagedIdentityCredential(client_id=managed_identity_client_id)
        else:
            credential = DefaultAzureCredential()
        client = ServiceBusClient(fully_qualified_namespace, credential)
        administration = ServiceBusAdministrationClient(fully_qualified_namespace, credential)
        return cls(client, credential=credential, administration=administration)

    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        if self._closed:
            raise PublishError("the Service Bus publisher is closed")
        try:
            outgoing = [_to_service_bus(message) for message in messages]
        except ValueError as error:
            # The SDK's own checks (an id over 128 characters, a bad property): never sendable.
            raise PublishError(
                f"a message for queue {queue} is invalid ({type(error).__name__})", permanent=True
            ) from error
        queue_sender = await self._sender_for(queue)
        async with queue_sender.lock:
            try:
                batches, too_large = await _send_in_batches(
                    queue_sender.sender, outgoing, one_per_batch=self._one_message_per_batch
                )
            except MessageSizeExceededError as error:
                raise PublishError(
                    f"a message for queue {queue} is too large", permanent=True
                ) from error
            except AzureError as error:
                # The link may be broken for good (entity recreated, credentials rotated): the
                # next publish starts from a new sender.
                await self._discard_sender(queue, queue_sender)
                # The error class only: the SDK's text may quote a message id (a wamid).
                raise PublishError(
                    f"Service Bus did not accept {len(messages)} message(s) for queue {queue}: "
                    f"{type(error).__name__}"
                ) from error
        logger.debug("queue %s: sent %s message(s) in %s batch(es)", queue, len(outgoing), batches)
        if too_large:
            raise PublishError(
                f"{len(too_large)} message(s) for queue {queue} are too large for Service Bus "
                "(the others were sent)",
                refused_message_ids=frozenset(too_large),
            )

    async def close(self) -> None:
        """Close the senders, the client and the credential; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        async with self._senders_lock:
            senders, self._senders = self._senders, {}
        for queue, queue_sender in senders.items():
            try:
                await queue_sender.sender.close()
            except AzureError as error:
                logger.warning("closing the sender of queue %s failed: %s", queue, error)
        try:
            await self._client.close()
            if self._administration is not None:
                await self._administration.close()
        finally:
            if self._credential is not None:
                await self._credential.close()

    async def queue_depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """Each queue's runtime properties (one management request per queue, concurrently)."""
        administration = self._administration
        if administration is None:
            raise RuntimeError("this publisher was built without a Service Bus management client")
        try:
            properties = await asyncio.gather(
                *(administration.get_queue_runtime_properties(queue) for queue in queues)
            )
        except HttpResponseError as error:
            if error.status_code in (401, 403):
                raise QueueDepthsForbidden("no Manage right on the namespace") from None
            raise
        return [
            QueueDepth(
                queue=queue,
                active=item.active_message_count or 0,
                scheduled=item.scheduled_message_count or 0,
                dead_lettered=item.dead_letter_message_count or 0,
            )
            for queue, item in zip(queues, properties, strict=True)
        ]

    async def _sender_for(self, queue: str) -> _QueueSender:
        async with self._senders_lock:
            queue_sender = self._senders.get(queue)
            if queue_sender is None:
                queue_sender = _QueueSender(self._client.get_queue_sender(queue_name=queue))
                self._senders[queue] = queue_sender
            return queue_sender

    async def _discard_sender(self, queue: str, queue_sender: _QueueSender) -> None:
        async with self._senders_lock:
            if self._senders.get(queue) is queue_sender:
                del self._senders[queue]
        try:
            await queue_sender.sender.close()
        except AzureError as error:
            logger.debug("closing a failed sender of queue %s: %s", queue, error)


async def _send_in_batches(
    sender: _Sender, messages: Sequence[ServiceBusMessage], *, one_per_batch: bool
) -> tuple[int, list[str]]:
    """Send each session's messages in order, filling batches up to the link's size limit.

    Returns the number of batches sent and the ids of the messages too large for any batch
    (left out; the rest are sent).
    """
    sent = 0
    too_large: list[str] = []
    for group in _batch_groups(messages, one_per_batch=one_per_batch):
        batch = await sender.create_message_batch()
        for message in group:
            if _added(batch, message):
                continue
            if len(batch):
                await sender.send_messages(batch)
                sent += 1
                batch = await sender.create_message_batch()
                if _added(batch, message):
                    continue
            too_large.append(str(message.message_id))
        if len(batch):
            await sender.send_messages(batch)
            sent += 1
    return sent, too_large


def _batch_groups(
    messages: Sequence[ServiceBusMessage], *, one_per_batch: bool
) -> Iterator[list[ServiceBusMessage]]:
    """The messages that may share a batch, in order: one session's (or, on a partitioned entity,
    each message alone)."""
    if one_per_batch:
        yield from ([message] for message in messages)
        return
    by_session: dict[str | None, list[ServiceBusMessage]] = {}
    for message in messages:
        by_session.setdefault(message.session_id, []).append(message)
    yield from by_session.values()


def _added(batch: ServiceBusMessageBatch, message: ServiceBusMessage) -> bool:
    try:
        batch.add_message(message)
    except MessageSizeExceededError:
        return False
    return True


def _to_service_bus(message: OutgoingMessage) -> ServiceBusMessage:
    scheduled = message.scheduled_enqueue_time
    if scheduled is not None:
        if scheduled.utcoffset() is None:
            raise ValueError(f"scheduled_enqueue_time of {pseudonym(message.message_id)} is naive")
        scheduled = scheduled.astimezone(UTC)
    return ServiceBusMessage(
        message.body,
        session_id=message.session_id,
        message_id=message.message_id,
        application_properties=dict(message.application_properties.items()) or None,
        content_type=message.content_type,
        subject=message.subject,
        scheduled_enqueue_time_utc=scheduled,
    )
