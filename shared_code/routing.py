"""The hand-over from stored inbound messages to whatever answers them (the orchestrator).

The processor calls :meth:`Router.route` once a message is committed and marks it routed when the
call returns; a message whose routing failed is routed again on redelivery, so a router must be
idempotent per message (the orchestrator's replies carry the key ``reply:<wamid>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["InboundForRouting", "Router"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundForRouting:
    message_id: int
    conversation_id: int
    contact_id: int
    wamid: str
    phone_number_id: str
    contact_wa_id: str
    message_type: str
    text: str | None
    reply_id: str | None
    # True when this delivery stored the message: nothing can have answered it yet, so the router
    # may skip looking for an earlier answer (its own idempotency still holds).
    first_routing: bool = False
    # The message could not be processed (see processing.py): answer with the fallback text,
    # without asking an agent.
    fallback_only: bool = False


class Router(Protocol):
    async def route(self, message: InboundForRouting) -> None: ...
