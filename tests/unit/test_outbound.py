"""Outbound request bodies: exact wire shapes, Meta's limits, and Meta's schema for every builder."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

import shared_code.whatsapp.outbound as outbound_module
from local.meta_schema import validate_mark_read_request, validate_message_request
from shared_code.whatsapp.outbound import (
    ListRow,
    ListSection,
    ReplyButton,
    cta_url_interactive,
    interactive_message,
    list_interactive,
    mark_read_body,
    media_message,
    reaction_message,
    reply_buttons_interactive,
    template_body_component,
    template_header_media,
    template_header_text,
    template_message,
    template_quick_reply_button,
    template_url_button,
    text_message,
)

TO = "16505551234"
WAMID = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUFBMTIzNDU2Nzg5MEFCQ0RFRgA="
SECRET_TEXT = "my card number is 4111"


def rows(count: int, prefix: str = "r") -> list[ListRow]:
    return [ListRow(f"{prefix}{i}", f"Row {i}", "Some details") for i in range(count)]


BUILT: dict[str, Callable[[], dict[str, Any]]] = {
    "text": lambda: text_message(TO, "Hello"),
    "text, every option": lambda: text_message(
        TO, "See https://x.example", preview_url=True, reply_to=WAMID, callback_data="outbound:7"
    ),
    "text at the length limit": lambda: text_message(TO, "x" * 4096),
    "template, seed shorthand": lambda: template_message(
        TO, "welcome_message", "fr", parameters=["John", "Doe"]
    ),
    "template, no parameters": lambda: template_message(TO, "hello_world", "en_US"),
    "template, full components": lambda: template_message(
        TO,
        "order_update",
        "en",
        parameters=["John"],
        components=[
            template_header_text("Order 42"),
            template_quick_reply_button(0, "TRACK"),
            template_url_button(1, "orders/42"),
        ],
        callback_data="outbound:8",
    ),
    "template, image header": lambda: template_message(
        TO,
        "promo",
        "en",
        components=[template_header_media("image", link="https://x.example/a.jpg")],
    ),
    "template, document header": lambda: template_message(
        TO,
        "invoice",
        "en",
        components=[template_header_media("document", media_id="123", filename="invoice.pdf")],
    ),
    "template, video header": lambda: template_message(
        TO, "clip", "en", components=[template_header_media("video", media_id="456")]
    ),
    "template, currency parameter": lambda: template_message(
        TO,
        "total",
        "en",
        components=[
            template_body_component(
                [
                    "John",
                    {
                        "type": "currency",
                        "currency": {"fallback_value": "$10", "code": "USD", "amount_1000": 10000},
                    },
                ]
            )
        ],
    ),
    "reply buttons": lambda: interactive_message(
        TO,
        reply_buttons_interactive(
            "Which one?",
            [ReplyButton("yes", "Yes"), ReplyButton("no", "No"), ReplyButton("x" * 256, "y" * 20)],
            header="Question",
            footer="Tap one",
        ),
        reply_to=WAMID,
    ),
    "reply buttons, image header": lambda: interactive_message(
        TO,
        reply_buttons_interactive(
            "Like it?",
            [ReplyButton("like", "Like")],
            header={"type": "image", "image": {"link": "https://x.example/a.jpg"}},
        ),
    ),
    "list": lambda: interactive_message(
        TO,
        list_interactive(
            "Pick a product",
            "Menu",
            [ListSection(rows(6, "a"), "Fruit"), ListSection(rows(4, "b"), "Vegetables")],
            header="Shop",
            footer="Prices include tax",
        ),
        callback_data="outbound:9",
    ),
    "list, one untitled section": lambda: interactive_message(
        TO, list_interactive("Pick", "Menu", [ListSection([ListRow("1", "One")])])
    ),
    "cta_url": lambda: interactive_message(
        TO, cta_url_interactive("See the offer", "Open", "https://shop.example/offer")
    ),
    "image by id with caption": lambda: media_message(TO, "image", media_id="1", caption="Look"),
    "image by link": lambda: media_message(TO, "image", link="https://x.example/a.jpg"),
    "video by link with caption": lambda: media_message(
        TO, "video", link="https://x.example/v.mp4", caption="Watch"
    ),
    "audio by id": lambda: media_message(TO, "audio", media_id="2"),
    "document with filename and caption": lambda: media_message(
        TO, "document", media_id="3", filename="invoice.pdf", caption="Your invoice"
    ),
    "sticker by id": lambda: media_message(TO, "sticker", media_id="4", reply_to=WAMID),
    "reaction": lambda: reaction_message(TO, WAMID, "\U0001f44d\U0001f3fd"),
    "reaction removed": lambda: reaction_message(TO, WAMID, ""),
}


@pytest.mark.parametrize("build", BUILT.values(), ids=BUILT.keys())
def test_every_builder_passes_metas_schema(build: Callable[[], dict[str, Any]]) -> None:
    body = build()
    assert validate_message_request(body) == []
    assert body["messaging_product"] == "whatsapp"
    assert body["to"] == TO


def test_text_message_on_the_wire() -> None:
    assert text_message(TO, "Hello", reply_to=WAMID, callback_data="outbound:1") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": "text",
        "text": {"body": "Hello", "preview_url": False},
        "context": {"message_id": WAMID},
        "biz_opaque_callback_data": "outbound:1",
    }


def test_seed_template_parameters_become_body_text_parameters() -> None:
    body = template_message(TO, "welcome_message", "fr", parameters=["John", "Doe"])
    assert body["template"] == {
        "name": "welcome_message",
        "language": {"code": "fr"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "John"}, {"type": "text", "text": "Doe"}],
            }
        ],
    }


def test_template_components_on_the_wire() -> None:
    assert template_quick_reply_button(0, "TRACK") == {
        "type": "button",
        "sub_type": "quick_reply",
        "index": "0",
        "parameters": [{"type": "payload", "payload": "TRACK"}],
    }
    assert template_url_button(1, "orders/42") == {
        "type": "button",
        "sub_type": "url",
        "index": "1",
        "parameters": [{"type": "text", "text": "orders/42"}],
    }
    assert template_header_media("document", media_id="9", filename="a.pdf") == {
        "type": "header",
        "parameters": [{"type": "document", "document": {"id": "9", "filename": "a.pdf"}}],
    }


def test_reply_buttons_on_the_wire() -> None:
    interactive = reply_buttons_interactive("Which?", [ReplyButton("yes", "Yes")], footer="f")
    assert interactive == {
        "type": "button",
        "body": {"text": "Which?"},
        "footer": {"text": "f"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]},
    }


def test_mark_read_bodies() -> None:
    plain = mark_read_body(WAMID)
    typing = mark_read_body(WAMID, typing_indicator=True)
    assert plain == {"messaging_product": "whatsapp", "status": "read", "message_id": WAMID}
    assert typing == {**plain, "typing_indicator": {"type": "text"}}
    assert validate_mark_read_request(plain) == []
    assert validate_mark_read_request(typing) == []


def button_message(*buttons: ReplyButton, body: str = "Which?") -> dict[str, Any]:
    return interactive_message(TO, reply_buttons_interactive(body, list(buttons)))


def list_message(*sections: ListSection, label: str = "Menu") -> dict[str, Any]:
    return interactive_message(TO, list_interactive("Pick", label, list(sections)))


INVALID: dict[str, tuple[Callable[[], object], str]] = {
    "empty text": (lambda: text_message(TO, ""), "text.body: must be a non-empty string"),
    "text too long": (
        lambda: text_message(TO, "x" * 4097),
        "text.body: must be at most 4096 characters (got 4097)",
    ),
    "no recipient": (lambda: text_message("", "Hi"), "to: must be a non-empty string"),
    "callback data too long": (
        lambda: text_message(TO, "Hi", callback_data="x" * 513),
        "biz_opaque_callback_data: must be at most 512 characters",
    ),
    "empty reply_to": (lambda: text_message(TO, "Hi", reply_to=""), "context.message_id"),
    "four buttons": (
        lambda: button_message(*(ReplyButton(str(i), "t") for i in range(4))),
        "interactive.action.buttons: must hold 1 to 3 buttons",
    ),
    "no buttons": (lambda: button_message(), "must hold 1 to 3 buttons"),
    "button title too long": (
        lambda: button_message(ReplyButton("a", "x" * 21)),
        "interactive.action.buttons[0].reply.title: must be at most 20 characters (got 21)",
    ),
    "button id too long": (
        lambda: button_message(ReplyButton("x" * 257, "t")),
        "buttons[0].reply.id: must be at most 256",
    ),
    "duplicate button ids": (
        lambda: button_message(ReplyButton("a", "One"), ReplyButton("a", "Two")),
        "ids must be unique",
    ),
    "interactive body too long": (
        lambda: button_message(ReplyButton("a", "t"), body="x" * 1025),
        "interactive.body.text: must be at most 1024",
    ),
    "eleven rows": (
        lambda: list_message(ListSection(rows(6, "a"), "A"), ListSection(rows(5, "b"), "B")),
        "at most 10 rows in total (got 11)",
    ),
    "row title too long": (
        lambda: list_message(ListSection([ListRow("a", "x" * 25)])),
        "sections[0].rows[0].title: must be at most 24",
    ),
    "row description too long": (
        lambda: list_message(ListSection([ListRow("a", "A", "x" * 73)])),
        "rows[0].description: must be at most 72",
    ),
    "row id too long": (
        lambda: list_message(ListSection([ListRow("x" * 201, "A")])),
        "rows[0].id: must be at most 200",
    ),
    "untitled section among two": (
        lambda: list_message(ListSection(rows(1, "a")), ListSection(rows(1, "b"), "B")),
        "sections[0].title: must be a non-empty string",
    ),
    "list button label too long": (
        lambda: list_message(ListSection(rows(1)), label="x" * 21),
        "interactive.action.button: must be at most 20",
    ),
    "empty section": (lambda: list_message(ListSection([])), "sections[0].rows: must hold"),
    "duplicate row ids": (
        lambda: list_message(ListSection(rows(2, "a"), "A"), ListSection(rows(1, "a"), "B")),
        "row ids must be unique",
    ),
    "list with an image header": (
        lambda: interactive_message(
            TO,
            {
                "type": "list",
                "header": {"type": "image", "image": {"id": "1"}},
                "body": {"text": "Pick"},
                "action": {"button": "Menu", "sections": [{"rows": [{"id": "1", "title": "A"}]}]},
            },
        ),
        "a list message takes a text header only",
    ),
    "cta display text too long": (
        lambda: cta_url_interactive("Body", "x" * 21, "https://a.example"),
        "display_text: must be at most 20",
    ),
    "cta url not http": (
        lambda: cta_url_interactive("Body", "Open", "javascript:alert(1)"),
        "url: must be an http(s) URL",
    ),
    "agent interactive without body": (
        lambda: interactive_message(
            TO, {"type": "button", "action": {"buttons": [{"reply": {"id": "a", "title": "A"}}]}}
        ),
        "interactive.body: must be an object",
    ),
    "agent interactive without reply": (
        lambda: interactive_message(
            TO, {"type": "button", "body": {"text": "?"}, "action": {"buttons": [{"id": "a"}]}}
        ),
        "interactive.action.buttons[0].reply: is required",
    ),
    "interactive without type": (
        lambda: interactive_message(TO, {"action": {}}),
        "interactive.type: is required",
    ),
    "media with id and link": (
        lambda: media_message(TO, "image", media_id="1", link="https://a.example/a.jpg"),
        "image: give exactly one of media_id and link",
    ),
    "media with neither": (
        lambda: media_message(TO, "video"),
        "video: give exactly one of media_id and link",
    ),
    "media link not http": (
        lambda: media_message(TO, "image", link="file:///etc/passwd"),
        "image.link: must be an http(s) URL",
    ),
    "audio caption": (
        lambda: media_message(TO, "audio", media_id="1", caption="c"),
        "audio: audio messages take no caption",
    ),
    "sticker caption": (
        lambda: media_message(TO, "sticker", media_id="1", caption="c"),
        "sticker: sticker messages take no caption",
    ),
    "caption too long": (
        lambda: media_message(TO, "image", media_id="1", caption="x" * 1025),
        "image.caption: must be at most 1024",
    ),
    "filename on an image": (
        lambda: media_message(TO, "image", media_id="1", filename="a.png"),
        "only documents take a filename",
    ),
    "body parameters given twice": (
        lambda: template_message(
            TO, "t", "en", parameters=["a"], components=[template_body_component(["b"])]
        ),
        "either as parameters or components",
    ),
    "template without language": (
        lambda: template_message(TO, "t", ""),
        "template.language.code: must be a non-empty string",
    ),
    "template button index 10": (
        lambda: template_quick_reply_button(10, "P"),
        "index: must be 0 to 9",
    ),
    "template header media of the wrong kind": (
        lambda: template_header_media("audio", media_id="1"),  # type: ignore[arg-type]
        "media must be image, video or document",
    ),
    "template parameter mapping without type": (
        lambda: template_body_component([{"text": "a"}]),
        "template parameter: needs a 'type'",
    ),
    "reaction with a sentence": (
        lambda: reaction_message(TO, WAMID, "not an emoji at all"),
        "reaction.emoji: must be a single emoji",
    ),
    "mark read without wamid": (lambda: mark_read_body(""), "message_id"),
}


@pytest.mark.parametrize(("build", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid_input_raises_before_anything_is_sent(
    build: Callable[[], object], expected: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        build()


def test_errors_do_not_echo_the_text() -> None:
    with pytest.raises(ValueError, match=r"^text\.body: ") as raised:
        text_message(TO, SECRET_TEXT * 300)
    assert SECRET_TEXT not in str(raised.value)
    assert TO not in str(raised.value)


def test_builders_do_not_share_mutable_state() -> None:
    interactive = reply_buttons_interactive("Which?", [ReplyButton("a", "A")])
    body = interactive_message(TO, interactive)
    body["interactive"]["body"]["text"] = "changed"
    again = template_message(TO, "t", "en", components=[template_header_text("H")])
    again["template"]["components"][0]["type"] = "changed"
    assert template_header_text("H")["type"] == "header"
    assert body["interactive"] is not interactive


def test_public_api() -> None:
    assert set(outbound_module.__all__) == {
        "MAX_TEXT_BODY",
        "ListRow",
        "ListSection",
        "MediaKind",
        "ReplyButton",
        "cta_url_interactive",
        "interactive_message",
        "list_interactive",
        "mark_read_body",
        "media_message",
        "reaction_message",
        "reply_buttons_interactive",
        "template_body_component",
        "template_header_media",
        "template_header_text",
        "template_message",
        "template_quick_reply_button",
        "template_url_button",
        "text_message",
    }
