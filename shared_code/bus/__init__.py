"""Message bus port and its adapters (Azure Service Bus, local PostgreSQL queue)."""

from shared_code.bus.port import MessageBus, OutgoingMessage, PublishError

__all__ = ["MessageBus", "OutgoingMessage", "PublishError"]
