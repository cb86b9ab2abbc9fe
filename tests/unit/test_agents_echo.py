"""The echo agent answers every inbound type Meta sends, and stays silent only where it should."""

from __future__ import annotations

import pytest

from shared_code.orchestrator.agents.base import (
    MAX_TEXT_LENGTH,
    AgentRequest,
    Contact,
    InboundMessage,
    TextReply,
)
from shared_code.orchestrator.agents.echo import WELCOME_TEXT, EchoAgent


def request_for(
    message_type: str, text: str | None = None, reply_id: str | None = None
) -> AgentRequest:
    return AgentRequest(
        conversation_id=7,
        phone_number_id="1234567890",
        contact=Contact(wa_id="16505551234"),
        message=InboundMessage(
            wamid="wamid.1", message_type=message_type, text=text, reply_id=reply_id
        ),
    )


@pytest.mark.parametrize(
    ("message_type", "text", "reply_id", "expected"),
    [
        ("text", "Hello there", None, "Hello there"),
        ("interactive", "Opening hours", "menu_hours", "Opening hours"),
        ("button", "Yes please", "PAYLOAD_YES", "Yes please"),
        ("image", "my broken screen", None, "my broken screen"),
        ("video", "unboxing", None, "unboxing"),
        ("document", "invoice attached", None, "invoice attached"),
        ("image", None, None, "Received your image."),
        ("video", None, None, "Received your video."),
        ("audio", None, None, "Received your audio message."),
        ("document", None, None, "Received your document."),
        ("sticker", None, None, "Received your sticker."),
        ("location", None, None, "Received your location."),
        ("contacts", None, None, "Received your contact card."),
        ("order", None, None, "Received your order."),
        ("unsupported", None, None, "Received your message."),
        ("unknown", None, None, "Received your message."),
        ("interactive", None, None, "Received your interactive."),
        ("some_new_type", None, None, "Received your some new type."),
        ("text", "   ", None, "Received your text."),
    ],
)
async def test_echo_answers(
    message_type: str, text: str | None, reply_id: str | None, expected: str
) -> None:
    reply = await EchoAgent().reply(request_for(message_type, text, reply_id))
    assert reply == TextReply(body=expected)


@pytest.mark.parametrize("message_type", ["reaction", "system"])
async def test_echo_stays_silent_on_reactions_and_system_notices(message_type: str) -> None:
    assert await EchoAgent().reply(request_for(message_type, "👍")) is None


async def test_echo_greets_a_new_chat() -> None:
    assert await EchoAgent().reply(request_for("request_welcome")) == TextReply(body=WELCOME_TEXT)


async def test_echo_fits_long_text_into_one_message() -> None:
    reply = await EchoAgent().reply(request_for("text", "a" * (MAX_TEXT_LENGTH + 10)))
    assert isinstance(reply, TextReply)
    assert len(reply.body) == MAX_TEXT_LENGTH
