"""What every agent receives and answers, and the guard that keeps a failing agent from
costing the user an answer.

An agent answers one :class:`AgentRequest` with a :class:`TextReply`, an
:class:`InteractiveReply`, a :class:`TemplateReply`, or ``None`` when it deliberately stays
silent (a reaction, say). Replies may be shared between calls (the rules agent hands out the
same objects every time): treat them, and the mappings inside them, as read-only.

Error tree::

    Exception
    └── AgentError   (messages name the upstream and the problem: never message text or numbers)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from shared_code.log_privacy import pseudonym

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_TEXT_LENGTH",
    "SILENT_MESSAGE_TYPES",
    "Agent",
    "AgentError",
    "AgentReply",
    "AgentRequest",
    "Contact",
    "HandoffReply",
    "HistoryEntry",
    "InboundMessage",
    "InteractiveReply",
    "TemplateReply",
    "TextReply",
    "fit_text",
    "reply_or_fallback",
]

MAX_TEXT_LENGTH: Final = 4096
"""Meta's limit on a text message body, in characters."""

SILENT_MESSAGE_TYPES: Final = frozenset({"reaction", "system"})
"""Inbound types that are not something to answer: an emoji on an earlier message, or a notice
from WhatsApp itself (the user changed number)."""

_ELLIPSIS = "…"


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    wa_id: str
    profile_name: str | None = None

    def __repr__(self) -> str:
        return "Contact(<redacted>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessage:
    """The message to answer.

    ``message_type`` is Meta's type name (text, image, interactive, button, ...). ``text`` is the
    text body, a media caption, a template button's text or an interactive reply's title;
    ``reply_id`` is an interactive button/list reply id or a template quick-reply payload.
    """

    wamid: str
    message_type: str
    text: str | None = None
    reply_id: str | None = None
    timestamp: datetime | None = None

    def __repr__(self) -> str:
        return f"InboundMessage(wamid={pseudonym(self.wamid)}, message_type={self.message_type!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    direction: Literal["inbound", "outbound"]
    message_type: str
    text: str | None
    at: datetime

    def __repr__(self) -> str:
        return f"HistoryEntry(direction={self.direction!r}, message_type={self.message_type!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRequest:
    """One message to answer, with its conversation; ``history`` is oldest first and does not
    include ``message``."""

    conversation_id: int
    phone_number_id: str
    contact: Contact
    message: InboundMessage
    history: Sequence[HistoryEntry] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TextReply:
    body: str
    preview_url: bool = False
    # The agent asks for a person: the conversation goes to handoff after this reply (every
    # reply type has it; see shared_code/policy.py).
    handoff: bool = False

    def __repr__(self) -> str:
        return f"TextReply(<{len(self.body)} chars>, preview_url={self.preview_url})"


@dataclass(frozen=True, slots=True, kw_only=True)
class InteractiveReply:
    """Meta's ``interactive`` object as sent: reply buttons, a list menu, a CTA URL, ..."""

    interactive: Mapping[str, Any]
    handoff: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateReply:
    """An approved template; ``components`` are Meta's template components (parameters)."""

    name: str
    language_code: str
    components: Sequence[Mapping[str, Any]] = ()
    handoff: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffReply:
    """No answer of the agent's own: hand the conversation to a person (who may get the
    configured handoff notice)."""

    handoff: bool = True


AgentReply = TextReply | InteractiveReply | TemplateReply | HandoffReply


class Agent(Protocol):
    name: str

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        """The answer to ``request.message``; ``None`` means deliberately no reply."""
        ...


class AgentError(Exception):
    """An agent could not answer: its upstream failed or answered something unusable."""


def fit_text(text: str) -> str:
    """``text`` cut to WhatsApp's body limit, with an ellipsis showing that it was cut."""
    if len(text) <= MAX_TEXT_LENGTH:
        return text
    return text[: MAX_TEXT_LENGTH - len(_ELLIPSIS)].rstrip() + _ELLIPSIS


async def reply_or_fallback(
    agent: Agent, request: AgentRequest, *, timeout_seconds: float, fallback: TextReply
) -> AgentReply | None:
    """The agent's reply, or ``fallback`` when it fails or takes longer than ``timeout_seconds``.

    Never raises, except :class:`asyncio.CancelledError` when the caller itself is cancelled:
    a user who wrote should hear something even when the agent behind the bridge is down.
    """
    try:
        async with asyncio.timeout(timeout_seconds):
            return await agent.reply(request)
    except TimeoutError:
        logger.error(
            "Agent %s timed out after %ss on conversation %s; sending the fallback reply",
            agent.name,
            timeout_seconds,
            request.conversation_id,
        )
    except AgentError as exc:
        # AgentError messages are written by our agents to carry no message text or numbers.
        logger.error(
            "Agent %s failed on conversation %s (AgentError: %s); sending the fallback reply",
            agent.name,
            request.conversation_id,
            exc,
        )
    except Exception as exc:
        # Any other exception is a bug whose message may quote the user's text: log its class
        # only, and keep the traceback for whoever turns on debug logging locally.
        logger.error(
            "Agent %s failed on conversation %s (%s); sending the fallback reply",
            agent.name,
            request.conversation_id,
            type(exc).__name__,
        )
        logger.debug("Agent %s failure", agent.name, exc_info=True)
    return fallback
