"""Typed payloads, checked against named webhook scenarios (tests/data/webhooks/*.json).

Each scenario goes the way production does: split the webhook, put the envelope on the "bus"
(JSON bytes), decode it as the processor does, then a small predicate checks the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared_code.log_privacy import pseudonym
from shared_code.whatsapp import payloads
from shared_code.whatsapp.payloads import (
    Contact,
    InboundMessage,
    MessageEvent,
    MessageStatus,
    MessageType,
    PayloadError,
    StatusEvent,
    StatusKind,
    decode_event,
    encode_event,
    parse_contact,
    parse_inbound_message,
    parse_status,
)
from shared_code.whatsapp.webhook import split_webhook

WEBHOOKS = Path(__file__).resolve().parents[1] / "data" / "webhooks"
USER = "16505551234"
TS = datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)  # "1749416383"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WEBHOOKS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def first_value(payload: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = payload["entry"][0]["changes"][0]["value"]
    return value


def through_the_bus(payload: dict[str, Any]) -> list[MessageEvent | StatusEvent]:
    split = split_webhook(payload)
    assert split.status == "pending", split.reason
    assert not split.problems
    events = []
    for event in split.events:
        body = msgspec.json.encode({**event.envelope, "webhook_event_id": 42})
        events.append(decode_event(body))
    return events


def only_message(name: str) -> InboundMessage:
    (event,) = through_the_bus(load(name))
    assert isinstance(event, MessageEvent)
    return event.message


MessageCheck = Callable[[InboundMessage], bool]

# pywa style: one small predicate per scenario.
MESSAGE_SCENARIOS: dict[str, MessageCheck] = {
    "text": lambda m: (
        m.type is MessageType.TEXT
        and m.text is not None
        and m.text_preview == "Does it come in another color?"
        and m.reply_id is None
        and m.content == {"body": "Does it come in another color?"}
        and m.referral is None
        and m.context is None
    ),
    "image_with_caption": lambda m: (
        m.type is MessageType.IMAGE
        and m.image is not None
        and m.image.id == "1003383421387256"
        and m.image.mime_type == "image/jpeg"
        and m.image.sha256 == "SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI="
        and m.media is m.image
        and m.text_preview == "Taj Mahal"
    ),
    "video": lambda m: (
        m.type is MessageType.VIDEO
        and m.video is not None
        and m.video.mime_type == "video/mp4"
        and m.text_preview == "My vacation video"
    ),
    "audio_voice": lambda m: (
        m.type is MessageType.AUDIO
        and m.audio is not None
        and m.audio.voice is True
        and m.audio.mime_type == "audio/ogg; codecs=opus"
        and m.text_preview is None
    ),
    "document_with_filename": lambda m: (
        m.type is MessageType.DOCUMENT
        and m.document is not None
        and m.document.filename == "receipt.pdf"
        and m.document.caption is None
        and m.text_preview == "receipt.pdf"
    ),
    "sticker": lambda m: (
        m.type is MessageType.STICKER
        and m.sticker is not None
        and m.sticker.animated is False
        and m.sticker.mime_type == "image/webp"
        and m.text_preview is None
    ),
    "location": lambda m: (
        m.type is MessageType.LOCATION
        and m.location is not None
        and m.location.latitude == pytest.approx(37.44221496582)
        and m.location.longitude == pytest.approx(-122.16165924072)
        and m.location.address == "101 Forest Ave, Palo Alto, CA 94301"
        and m.location.url == "https://philzcoffee.com/"
        and m.text_preview == "Philz Coffee"
    ),
    "contacts_shared": lambda m: (
        m.type is MessageType.CONTACTS
        and m.contacts is not None
        and len(m.contacts) == 1
        and m.contacts[0]["phones"][0]["wa_id"] == "19835552319"
        and m.text_preview == "Lucía Gómez"
        and m.content == {"contacts": m.raw["contacts"]}
    ),
    "interactive_button_reply": lambda m: (
        m.type is MessageType.INTERACTIVE
        and m.interactive is not None
        and m.interactive.type == "button_reply"
        and m.reply_id == "cancel-button"
        and m.text_preview == "Cancel"
        and m.context is not None
        and m.context.from_ == "15550783881"
    ),
    "interactive_list_reply": lambda m: (
        m.interactive is not None
        and m.interactive.list_reply is not None
        and m.interactive.list_reply.description == "Next Day to 2 Days"
        and m.reply_id == "priority_express"
        and m.text_preview == "Priority Mail Express"
    ),
    "interactive_nfm_reply": lambda m: (
        m.interactive is not None
        and m.interactive.type == "nfm_reply"
        and m.interactive.nfm_reply is not None
        and m.interactive.nfm_reply.name == "flow"
        and json.loads(m.interactive.nfm_reply.response_json or "{}")["flow_token"]
        == "booking-2201"
        and m.text_preview == "Sent"
        and m.reply_id is None
    ),
    "button_quick_reply": lambda m: (
        m.type is MessageType.BUTTON
        and m.button is not None
        and m.reply_id == "STOP_PROMOTIONS"
        and m.text_preview == "Stop promotions"
        and m.context is not None
        and m.context.id is not None
    ),
    "reaction": lambda m: (
        m.type is MessageType.REACTION
        and m.reaction is not None
        and not m.reaction.is_removed
        and m.reaction.message_id is not None
        and m.reaction.message_id.startswith("wamid.")
        and m.text_preview == "\N{THUMBS UP SIGN}"
    ),
    "reaction_removed": lambda m: (
        m.reaction is not None
        and m.reaction.is_removed
        and m.reaction.emoji is None
        and m.text_preview is None
    ),
    "order": lambda m: (
        m.type is MessageType.ORDER
        and m.order is not None
        and m.order.catalog_id == "194836987003835"
        and [(i.product_retailer_id, i.quantity) for i in m.order.product_items]
        == [("di9ozbzfi4", 2), ("nqryix03ez", 1)]
        and m.order.product_items[1].item_price == pytest.approx(25.5)
        and m.text_preview is None  # Meta sends an empty text
    ),
    "system_user_changed_number": lambda m: (
        m.type is MessageType.SYSTEM
        and m.system is not None
        and m.system.type == "user_changed_number"
        and m.system.wa_id == "12195555358"
        and m.text_preview == m.system.body
    ),
    "referral_ad_text": lambda m: (
        m.type is MessageType.TEXT
        and m.referral is not None
        and m.referral.source_type == "ad"
        and m.referral.source_id == "120226305854810726"
        and m.referral.ctwa_clid is not None
        and m.text_preview == "Hi! Is the summer collection in stock?"
    ),
    "unsupported_with_errors": lambda m: (
        m.type is MessageType.UNSUPPORTED
        and [e.code for e in m.errors] == [131051]
        and m.errors[0].details == "Message type is currently not supported."
        and m.text_preview is None
        and m.content == {"errors": m.raw["errors"]}
    ),
    "unknown_type": lambda m: (
        m.type is MessageType.UNKNOWN and m.type_name == "unknown" and m.errors[0].code == 131051
    ),
    "new_type": lambda m: (
        m.type is MessageType.UNKNOWN
        and m.type_name == "poll_vote"
        and m.content == {"poll_id": "9023", "options": ["blue"]}
        and m.text_preview is None
    ),
    "request_welcome": lambda m: (
        m.type is MessageType.REQUEST_WELCOME and m.text_preview is None and m.content == {}
    ),
    "reply_with_context": lambda m: (
        m.context is not None
        and m.context.from_ == "15550783881"
        and m.context.id is not None
        and m.context.id.startswith("wamid.")
        and not m.context.forwarded
        and m.text_preview == "Yes, the blue one please"
    ),
    "forwarded_text": lambda m: (
        m.context is not None
        and m.context.forwarded
        and m.context.frequently_forwarded
        and m.context.id is None
    ),
    "product_inquiry": lambda m: (
        m.context is not None
        and m.context.referred_product is not None
        and m.context.referred_product.product_retailer_id == "di9ozbzfi4"
    ),
    "unknown_fields": lambda m: (
        m.text is not None
        and m.text.body == "Hello"
        and m.raw["some_future_field"] == {"nested": [1, 2, 3]}
        and m.content == {"body": "Hello", "rendering": "rich"}
    ),
}

StatusCheck = Callable[[MessageStatus], bool]

STATUS_SCENARIOS: dict[str, StatusCheck] = {
    "status_sent": lambda s: s.status == "sent" and s.kind is StatusKind.SENT and not s.errors,
    "status_delivered": lambda s: s.kind is StatusKind.DELIVERED and s.conversation is None,
    "status_read": lambda s: (
        s.kind is StatusKind.READ and s.timestamp == datetime(2025, 6, 8, 21, 9, 20, tzinfo=UTC)
    ),
    "status_failed_131047": lambda s: (
        s.kind is StatusKind.FAILED
        and s.error is not None
        and s.error.code == 131047
        and s.error.title == "Re-engagement message"
        and s.error.message == "Re-engagement message"
        and s.error.details is not None
        and "24 hours" in s.error.details
        and s.error.href is not None
    ),
    "status_with_pricing_conversation": lambda s: (
        s.pricing is not None
        and s.pricing.billable is True
        and s.pricing.pricing_model == "PMP"
        and s.pricing.category == "service"
        and s.pricing.type == "regular"
        and s.conversation is not None
        and s.conversation.id == "6ceb9d929c2a3d9e3f0f5e5d7e3e5f4a"
        and s.conversation.origin is not None
        and s.conversation.origin.type == "service"
        and s.conversation.expiration_timestamp == datetime(2025, 6, 9, 21, 8, 20, tzinfo=UTC)
        and s.biz_opaque_callback_data == "order-7781"
    ),
}

# Scenarios about whole webhooks rather than one message; tests/unit/test_webhook_split.py.
WEBHOOK_SCENARIOS = {
    "multi_entry_batch",
    "message_template_status_update",
    "account_update",
    "webhook_errors",
}


def test_every_scenario_file_is_checked() -> None:
    files = {path.stem for path in WEBHOOKS.glob("*.json")}
    assert files == set(MESSAGE_SCENARIOS) | set(STATUS_SCENARIOS) | WEBHOOK_SCENARIOS


@pytest.mark.parametrize(("name", "check"), MESSAGE_SCENARIOS.items(), ids=list(MESSAGE_SCENARIOS))
def test_message_scenario(name: str, check: MessageCheck) -> None:
    payload = load(name)
    original = first_value(payload)["messages"][0]
    message = only_message(name)

    assert check(message)
    assert message.raw == original
    assert message.id == original["id"]
    assert message.from_ == original["from"]
    assert message.timestamp.tzinfo is UTC
    assert message.timestamp == datetime.fromtimestamp(int(original["timestamp"]), UTC)
    assert message.type_name == original["type"]
    # Parsed directly from the webhook dict, the message is the same as after the bus.
    assert parse_inbound_message(original) == message


@pytest.mark.parametrize(("name", "check"), STATUS_SCENARIOS.items(), ids=list(STATUS_SCENARIOS))
def test_status_scenario(name: str, check: StatusCheck) -> None:
    payload = load(name)
    original = first_value(payload)["statuses"][0]
    (event,) = through_the_bus(payload)
    assert isinstance(event, StatusEvent)
    status = event.status

    assert check(status)
    assert status.raw == original
    assert status.id == original["id"]
    assert status.recipient_id == USER
    assert status.timestamp.tzinfo is UTC
    assert event.phone_number_id == "106540352242922"
    assert event.webhook_event_id == 42
    assert parse_status(original) == status


def test_message_event_carries_where_it_arrived_and_who_sent_it() -> None:
    (event,) = through_the_bus(load("text"))
    assert isinstance(event, MessageEvent)
    assert event.waba_id == "102290129340398"
    assert event.phone_number_id == "106540352242922"
    assert event.display_phone_number == "15550783881"
    assert event.webhook_event_id == 42
    assert event.contact is not None
    assert event.contact.name == "Sheena Nelson"
    assert event.contact.wa_id == USER
    assert event.contact.raw == first_value(load("text"))["contacts"][0]
    assert event.message.timestamp == TS


def test_system_message_has_no_contact() -> None:
    (event,) = through_the_bus(load("system_user_changed_number"))
    assert isinstance(event, MessageEvent)
    assert event.contact is None


@pytest.mark.parametrize("name", ["text", "contacts_shared", "status_with_pricing_conversation"])
def test_encode_event_is_the_inverse_of_decode_event(name: str) -> None:
    split = split_webhook(load(name))
    body = msgspec.json.encode({**split.events[0].envelope, "webhook_event_id": 7})
    event = decode_event(body)
    again = encode_event(event)
    assert json.loads(again) == json.loads(body)
    assert decode_event(again) == event


def test_raw_survives_a_jsonb_style_round_trip() -> None:
    message = only_message("unknown_fields")
    stored = json.loads(json.dumps(message.raw))
    assert parse_inbound_message(stored) == message


def test_unknown_fields_are_ignored_at_every_level() -> None:
    raw = {
        "from": USER,
        "id": "wamid.X",
        "timestamp": "1749416383",
        "type": "image",
        "image": {"id": "1", "mime_type": "image/jpeg", "new_flag": True},
        "context": {"from": "1555", "id": "wamid.Y", "extra": {"a": 1}},
        "brand_new": [1, 2],
    }
    message = parse_inbound_message(raw)
    assert message.image is not None
    assert message.image.id == "1"
    assert message.raw is raw


def test_contact_with_business_scoped_user_id_only() -> None:
    contact = parse_contact({"profile": {"name": "Ann"}, "user_id": "US.13491208655302741918"})
    assert isinstance(contact, Contact)
    assert contact.wa_id is None
    assert contact.user_id == "US.13491208655302741918"
    assert contact.name == "Ann"
    assert parse_contact({"wa_id": USER}).name is None


def test_numeric_strings_from_meta_are_converted() -> None:
    status = parse_status(
        {
            "id": "wamid.X",
            "status": "failed",
            "timestamp": 1749416383,
            "recipient_id": USER,
            "errors": [{"code": "131047", "title": "Re-engagement message"}],
        }
    )
    assert status.timestamp == TS
    assert status.errors[0].code == 131047
    assert status.errors[0].details is None


def test_unknown_status_value_is_kept_as_a_string() -> None:
    status = parse_status(
        {"id": "wamid.X", "status": "pending_review", "timestamp": "1", "recipient_id": USER}
    )
    assert status.status == "pending_review"
    assert status.kind is StatusKind.UNKNOWN
    assert parse_status({**status.raw, "status": "played"}).kind is StatusKind.PLAYED


def test_unknown_type_maps_to_unknown_but_keeps_its_name() -> None:
    message = parse_inbound_message(
        {"from": USER, "id": "wamid.X", "timestamp": "1", "type": "edit", "edit": {"x": 1}}
    )
    assert message.type is MessageType.UNKNOWN
    assert message.type_name == "edit"
    assert message.content == {"x": 1}


def test_reaction_with_an_empty_emoji_counts_as_removed() -> None:
    message = parse_inbound_message(
        {
            "from": USER,
            "id": "wamid.X",
            "timestamp": "1",
            "type": "reaction",
            "reaction": {"message_id": "wamid.Y", "emoji": ""},
        }
    )
    assert message.reaction is not None
    assert message.reaction.is_removed
    assert message.text_preview is None


def test_models_are_frozen() -> None:
    message = only_message("text")
    with pytest.raises(AttributeError):
        message.id = "other"  # type: ignore[misc]


def test_reprs_show_no_text_or_phone_numbers() -> None:
    (event,) = through_the_bus(load("text"))
    assert isinstance(event, MessageEvent)
    shown = repr(event)
    assert "another color" not in shown
    assert USER not in shown
    assert "Sheena" not in shown
    # A wamid is base64 of a structure holding the user's number: a keyed hash stands for it.
    assert event.message.id not in shown
    assert pseudonym(event.message.id) in shown
    (status_event,) = through_the_bus(load("status_failed_131047"))
    assert isinstance(status_event, StatusEvent)
    assert USER not in repr(status_event)
    assert status_event.status.id not in repr(status_event)
    assert "131047" in repr(status_event)


# --- errors ---------------------------------------------------------------------------------

SECRET_TEXT = "my card number is 4111"
VALID_MESSAGE = {"from": USER, "id": "wamid.X", "timestamp": "1749416383", "type": "text"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "message is a JSON null"),
        ([VALID_MESSAGE], "message is a JSON array"),
        (SECRET_TEXT, "message is a JSON string"),
        ({k: v for k, v in VALID_MESSAGE.items() if k != "id"}, "required field `id`"),
        ({**VALID_MESSAGE, "from": 16505551234}, "Expected `str`, got `int` at `$.from`"),
        ({**VALID_MESSAGE, "timestamp": SECRET_TEXT}, "at `$.timestamp`"),
        ({**VALID_MESSAGE, "id": ["wamid.X"]}, "Expected `str`, got `array` at `$.id`"),
        ({**VALID_MESSAGE, "type": 5}, "at `$.type`"),
    ],
)
def test_parse_errors_name_fields_never_content(raw: object, expected: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_inbound_message(raw)
    message = str(caught.value)
    assert expected in message
    assert SECRET_TEXT not in message
    assert USER not in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[1]", "JSON array"),
        (b'"' + SECRET_TEXT.encode() + b'"', "JSON string"),
        (b"{}", "required field `kind`"),
        (json.dumps({"kind": SECRET_TEXT}).encode(), "invalid value at `$.kind`"),
        (json.dumps({"kind": "message", "phone_number_id": "1"}).encode(), "`message`"),
        (
            json.dumps(
                {"kind": "status", "phone_number_id": "1", "status": {"id": "x", "status": "read"}}
            ).encode(),
            "status: Object missing required field `timestamp`",
        ),
    ],
)
def test_decode_event_errors(body: bytes, expected: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_event(body)
    assert expected in str(caught.value)
    assert SECRET_TEXT not in str(caught.value)


def test_a_malformed_contact_does_not_cost_the_message() -> None:
    contact = {"wa_id": 16505551234, "profile": "not an object"}
    body = json.dumps(
        {
            "kind": "message",
            "phone_number_id": "1",
            "contact": contact,
            "message": {**VALID_MESSAGE, "text": {"body": "hi"}},
        }
    ).encode()
    event = decode_event(body)
    assert isinstance(event, MessageEvent)
    assert event.contact is not None
    assert event.contact.wa_id is None
    assert event.contact.name is None
    assert event.contact.raw == contact
    assert event.message.text_preview == "hi"
    assert event.waba_id is None
    assert event.webhook_event_id is None

    for junk in ("x", 5, [contact]):
        event = decode_event(body.replace(json.dumps(contact).encode(), json.dumps(junk).encode()))
        assert isinstance(event, MessageEvent)
        assert event.contact is None


def test_a_malformed_optional_part_is_left_out_of_the_typed_view_only() -> None:
    raw = {
        **VALID_MESSAGE,
        "text": {"body": 4111},
        "context": ["not", "an", "object"],
        "errors": [{"title": "no code"}],
    }
    message = parse_inbound_message(raw)
    assert message.text is None
    assert message.context is None
    assert message.errors == ()
    assert message.text_preview is None
    assert message.raw is raw  # storage still gets everything Meta sent


def test_a_malformed_required_field_is_not_repaired() -> None:
    with pytest.raises(PayloadError, match=r"at `\$\.recipient_id`"):
        parse_status({"id": "x", "status": "read", "timestamp": "1", "recipient_id": 5})


def test_public_names() -> None:
    # Other modules are written against these names; renaming one is a breaking change.
    assert {
        "InboundMessage",
        "MessageStatus",
        "Contact",
        "Error",
        "MessageType",
        "StatusKind",
        "PayloadError",
        "MessageEvent",
        "StatusEvent",
        "decode_event",
        "encode_event",
        "parse_inbound_message",
        "parse_status",
        "parse_contact",
    } <= set(payloads.__all__)
    assert all(hasattr(payloads, name) for name in payloads.__all__)
