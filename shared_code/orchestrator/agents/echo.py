"""The echo agent: answers with what the user sent. Useful to try the whole path end to end."""

from __future__ import annotations

from typing import Final

from shared_code.orchestrator.agents.base import (
    SILENT_MESSAGE_TYPES,
    AgentReply,
    AgentRequest,
    TextReply,
    fit_text,
)

__all__ = ["EchoAgent"]

WELCOME_TEXT: Final = "Hello! Send me a message and I will echo it back."

# How a reply names what arrived; other types are named by their type with spaces.
_NOUNS: Final = {
    "audio": "audio message",
    "contacts": "contact card",
    "unsupported": "message",
    "unknown": "message",
}


class EchoAgent:
    name = "echo"

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        message = request.message
        if message.message_type in SILENT_MESSAGE_TYPES:
            return None
        if message.message_type == "request_welcome":
            # The user opened the chat and has not written anything yet: nothing to echo.
            return TextReply(body=WELCOME_TEXT)
        if message.text and message.text.strip():
            # A text body, a caption, or the title of the button or list row the user tapped.
            return TextReply(body=fit_text(message.text))
        noun = _NOUNS.get(message.message_type, message.message_type.replace("_", " "))
        return TextReply(body=f"Received your {noun}.")
