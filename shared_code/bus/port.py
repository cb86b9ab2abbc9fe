"""The bus port: what the domain needs from a queue, whichever broker carries it.

Publishing is the only thing the domain does with the bus; receiving is the trigger's business
(the Functions host in Azure, the local dev host here), so receiving lives on the local adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "STANDARD_TIER_MAX_MESSAGE_BYTES",
    "MessageBus",
    "OutgoingMessage",
    "PropertyValue",
    "PublishError",
    "QueueDepth",
    "QueueInspector",
]

PropertyValue = str | int | float | bool

# Service Bus Standard: 256 KB per message, and per batch (a batch travels as one AMQP message).
# Premium allows more; the Azure adapter learns the real limit from its link.
STANDARD_TIER_MAX_MESSAGE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingMessage:
    """One message to publish, with the Service Bus fields we rely on.

    ``message_id`` drives duplicate detection; ``session_id`` keeps a conversation's messages in
    order and on one consumer at a time; ``scheduled_enqueue_time`` (timezone-aware) delays
    delivery, which is how back-off works without sleeping inside a function.
    """

    body: bytes
    message_id: str
    session_id: str | None = None
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    content_type: str = "application/json"
    subject: str | None = None
    scheduled_enqueue_time: datetime | None = None


class PublishError(RuntimeError):
    """The broker did not accept the messages; the caller keeps them for a later retry.

    ``permanent`` says the broker refused the messages themselves (too large, a value it cannot
    store): sending them again will fail again, so a caller isolates them instead of retrying.

    ``refused_message_ids``, when not empty, names the messages refused for good (``permanent``
    is then true) and says that every *other* message of the call was accepted: a caller marks
    only the events those ids belong to as failed.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        refused_message_ids: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.permanent = permanent or bool(refused_message_ids)
        self.refused_message_ids = refused_message_ids


class MessageBus(Protocol):
    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        """Send all messages or raise :class:`PublishError`; re-sending the same ids is harmless."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDepth:
    """How many messages wait in one queue: deliverable now (locked ones included), scheduled for
    later, and dead-lettered."""

    queue: str
    active: int
    scheduled: int
    dead_lettered: int


class QueueDepthsForbidden(Exception):
    """The broker answered, but this identity may not read queue properties (on Azure Service
    Bus that needs the Manage right, which sending and receiving do not)."""


@runtime_checkable
class QueueInspector(Protocol):
    """What ``GET status`` asks of a bus; both adapters implement it (test fakes need not)."""

    async def queue_depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """One entry per queue, in order; raises if the broker cannot be asked."""
        ...
