"""The request validator: Meta's schemas as corrected, readable problems, documented limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from local.meta_schema import (
    LIVE_API_OVERRIDES,
    SCHEMAS_FILE,
    Refusal,
    _corrected,
    message_request_refusal,
    message_types,
    validate_mark_read_request,
    validate_message_request,
)
from scripts.extract_meta_schemas import DEFAULT_SOURCE, extract

PHONE = "16505551234"
SECRET_TEXT = "my card number is 4111"


def message(message_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": PHONE,
        "type": message_type,
        **fields,
    }


def reply_buttons(count: int) -> list[dict[str, Any]]:
    return [
        {"type": "reply", "reply": {"id": f"b{i}", "title": f"Option {i}"}} for i in range(count)
    ]


def list_action(*row_counts: int) -> dict[str, Any]:
    return {
        "button": "Menu",
        "sections": [
            {
                "title": f"Section {s}",
                "rows": [
                    {"id": f"s{s}r{r}", "title": "Row", "description": "Details"}
                    for r in range(count)
                ],
            }
            for s, count in enumerate(row_counts)
        ],
    }


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


VALID_MESSAGES: dict[str, dict[str, Any]] = {
    "text": message("text", text={"body": "Hello", "preview_url": True}),
    "text with reply context and callback data": message(
        "text",
        text={"body": "Hello"},
        context={"message_id": "wamid.HBgL"},
        biz_opaque_callback_data="outbound:42",
    ),
    "template, name and language only": message(
        "template", template={"name": "hello_world", "language": {"code": "en_US"}}
    ),
    "template with every component": message(
        "template",
        template={
            "name": "order_update",
            "language": {"code": "fr", "policy": "deterministic"},
            "components": [
                {
                    "type": "header",
                    "parameters": [{"type": "image", "image": {"link": "https://x.example/a.jpg"}}],
                },
                {"type": "body", "parameters": [{"type": "text", "text": "John"}]},
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": "0",
                    "parameters": [{"type": "payload", "payload": "YES"}],
                },
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "1",
                    "parameters": [{"type": "text", "text": "order/42"}],
                },
            ],
        },
    ),
    "reply buttons": message(
        "interactive",
        interactive={
            "type": "button",
            "header": {"type": "text", "text": "Choose"},
            "body": {"text": "Which one?"},
            "footer": {"text": "Thanks"},
            "action": {"buttons": reply_buttons(3)},
        },
    ),
    "list": message(
        "interactive",
        interactive={"type": "list", "body": {"text": "Pick"}, "action": list_action(6, 4)},
    ),
    "cta_url": message(
        "interactive",
        interactive={
            "type": "cta_url",
            "body": {"text": "See the offer"},
            "action": {
                "name": "cta_url",
                "parameters": {"display_text": "Open", "url": "https://shop.example/offer"},
            },
        },
    ),
    "image by link with caption": message(
        "image", image={"link": "https://x.example/a.jpg", "caption": "Look"}
    ),
    "video by id": message("video", video={"id": "1234567890"}),
    "audio by id": message("audio", audio={"id": "1234567890"}),
    "document with filename": message(
        "document", document={"id": "1234567890", "filename": "invoice.pdf", "caption": "Invoice"}
    ),
    "sticker by link": message("sticker", sticker={"link": "https://x.example/s.webp"}),
    "reaction": message("reaction", reaction={"message_id": "wamid.HBgL", "emoji": "\U0001f44d"}),
    "reaction removed": message("reaction", reaction={"message_id": "wamid.HBgL", "emoji": ""}),
    "location": message("location", location={"latitude": "48.85", "longitude": "2.35"}),
    # What the live API accepts beyond Meta's description (see LIVE_API_OVERRIDES).
    "location as numbers, unset parts null": message(
        "location", location={"latitude": 48.85, "longitude": -2, "name": None, "address": None}
    ),
    "no recipient_type": without(message("text", text={"body": "Hi"}), "recipient_type"),
    "no type: text": without(message("text", text={"body": "Hi"}), "type"),
    "location request": message(
        "interactive",
        interactive={
            "type": "location_request_message",
            "body": {"text": "Where are you?"},
            "action": {"name": "send_location"},
        },
    ),
    "template components in capitals, index as a number": message(
        "template",
        template={
            "name": "coupon",
            "language": {"code": "en_US"},
            "components": [
                {"type": "BODY", "parameters": [{"type": "text", "text": "John"}]},
                {
                    "type": "button",
                    "sub_type": "COPY_CODE",
                    "index": 0,
                    "parameters": [{"type": "coupon_code", "coupon_code": "SAVE25"}],
                },
            ],
        },
    ),
    "contact with a free phone label and null parts": message(
        "contacts",
        contacts=[
            {
                "name": {"formatted_name": "Ana Bell", "first_name": "Ana", "last_name": None},
                "phones": [{"phone": "+15550100123", "type": "MOBILE", "wa_id": None}],
                "org": None,
            }
        ],
    ),
}


@pytest.mark.parametrize("body", VALID_MESSAGES.values(), ids=VALID_MESSAGES.keys())
def test_realistic_bodies_are_accepted(body: dict[str, Any]) -> None:
    assert validate_message_request(body) == []


def interactive(**fields: Any) -> dict[str, Any]:
    return message("interactive", interactive=fields)


INVALID_MESSAGES: list[tuple[str, object, str]] = [
    ("missing to", without(VALID_MESSAGES["text"], "to"), "to: is required"),
    (
        "missing type, not a text",
        without(message("video", video={"id": "1"}), "type"),
        "text: is required",
    ),
    ("unknown type", message("carousel", carousel={}), "type: must be one of audio,"),
    ("not an object", ["text"], "(root): must be an object"),
    (
        "wrong product",
        {**VALID_MESSAGES["text"], "messaging_product": "sms"},
        "messaging_product: must be 'whatsapp'",
    ),
    (
        "text body not a string",
        message("text", text={"body": 42}),
        "text.body: must be of type string (got int)",
    ),
    ("text without body", message("text", text={"preview_url": True}), "text.body: is required"),
    ("empty text body", message("text", text={"body": ""}), "text.body: is required"),
    ("null text body", message("text", text={"body": None}), "text.body: is required"),
    (
        "location without longitude",
        message("location", location={"latitude": 1.5}),
        "location.longitude: is required",
    ),
    (
        "latitude not a number",
        message("location", location={"latitude": "north", "longitude": 2}),
        "location.latitude: must match",
    ),
    (
        "contact without formatted name",
        message("contacts", contacts=[{"name": {"first_name": "Ana"}}]),
        "contacts[0].name.formatted_name: is required",
    ),
    (
        "no reply buttons",
        interactive(type="button", body={"text": "?"}, action={"buttons": []}),
        "interactive.action.buttons: must have 1 to 3 items (got 0)",
    ),
    (
        "text body too long",
        message("text", text={"body": "x" * 4097}),
        "text.body: must be at most 4096 characters (got 4097)",
    ),
    (
        "unknown top-level field",
        {**VALID_MESSAGES["text"], "priority": "high"},
        "'priority' was unexpected",
    ),
    (
        "callback data too long",
        {**VALID_MESSAGES["text"], "biz_opaque_callback_data": "x" * 513},
        "biz_opaque_callback_data: must be at most 512",
    ),
    (
        "context without message id",
        {**VALID_MESSAGES["text"], "context": {}},
        "context.message_id: is required",
    ),
    (
        "four buttons",
        interactive(type="button", body={"text": "?"}, action={"buttons": reply_buttons(4)}),
        "interactive.action.buttons: must have at most 3 items (got 4)",
    ),
    (
        "button title too long",
        interactive(
            type="button",
            body={"text": "?"},
            action={"buttons": [{"type": "reply", "reply": {"id": "a", "title": "x" * 21}}]},
        ),
        "interactive.action.buttons[0].reply.title: must be at most 20 characters (got 21)",
    ),
    (
        "duplicate button ids",
        interactive(
            type="button", body={"text": "?"}, action={"buttons": [reply_buttons(1)[0]] * 2}
        ),
        "interactive.action.buttons: reply ids must be unique",
    ),
    (
        "buttons message with a list action",
        interactive(type="button", body={"text": "?"}, action=list_action(2)),
        "interactive.action.buttons: is required",
    ),
    (
        "button message without body",
        interactive(type="button", action={"buttons": reply_buttons(1)}),
        "interactive.body: is required",
    ),
    (
        "eleven rows over two sections",
        interactive(type="list", body={"text": "?"}, action=list_action(6, 5)),
        "interactive.action.sections: must have at most 10 rows in total (got 11)",
    ),
    (
        "row title too long",
        interactive(
            type="list",
            body={"text": "?"},
            action={"button": "Menu", "sections": [{"rows": [{"id": "a", "title": "x" * 25}]}]},
        ),
        "interactive.action.sections[0].rows[0].title: must be at most 24 characters (got 25)",
    ),
    (
        "untitled section among several",
        interactive(
            type="list",
            body={"text": "?"},
            action={
                "button": "Menu",
                "sections": [
                    {"rows": [{"id": "a", "title": "A"}]},
                    {"title": "B", "rows": [{"id": "b", "title": "B"}]},
                ],
            },
        ),
        "interactive.action.sections[0].title: is required when there are several sections",
    ),
    (
        "cta display text too long",
        interactive(
            type="cta_url",
            body={"text": "?"},
            action={
                "name": "cta_url",
                "parameters": {"display_text": "x" * 21, "url": "https://a.example"},
            },
        ),
        "interactive.action.parameters.display_text: must be at most 20 characters",
    ),
    (
        "media with id and link",
        message("image", image={"id": "1", "link": "https://x.example/a.jpg"}),
        "image: give either 'id' or 'link', not both",
    ),
    (
        "media with neither",
        message("video", video={"caption": "c"}),
        "video: needs one of 'id', 'link'",
    ),
    (
        "caption too long",
        message("image", image={"id": "1", "caption": "x" * 1025}),
        "image.caption: must be at most 1024 characters",
    ),
    (
        "audio with caption",
        message("audio", audio={"id": "1", "caption": "c"}),
        "audio.caption: audio messages take no caption",
    ),
    (
        "sticker with caption",
        message("sticker", sticker={"id": "1", "caption": "c"}),
        "'caption' was unexpected",
    ),
    (
        "template button index out of range",
        message(
            "template",
            template={
                "name": "t",
                "language": {"code": "en"},
                "components": [
                    {
                        "type": "button",
                        "sub_type": "quick_reply",
                        "index": "10",
                        "parameters": [{"type": "payload", "payload": "P"}],
                    }
                ],
            },
        ),
        "template.components[0].index: must match ^[0-9]$",
    ),
    (
        "template without language",
        message("template", template={"name": "t"}),
        "template.language: is required",
    ),
    (
        "reaction without message id",
        message("reaction", reaction={"emoji": "x"}),
        "reaction.message_id: is required",
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(body, expected) for _, body, expected in INVALID_MESSAGES],
    ids=[name for name, _, _ in INVALID_MESSAGES],
)
def test_broken_bodies_are_rejected_with_a_readable_problem(body: object, expected: str) -> None:
    problems = validate_message_request(body)
    assert any(expected in problem for problem in problems), problems
    assert not any("is not valid under any" in problem for problem in problems), problems


def test_problems_never_echo_the_values_sent() -> None:
    body = message("text", text={"body": SECRET_TEXT * 200}, to=12345)
    problems = validate_message_request(body)
    assert len(problems) == 2
    assert not any(SECRET_TEXT in problem or "12345" in problem for problem in problems)


def test_every_message_type_of_meta_is_known() -> None:
    assert message_types() == {
        "text", "audio", "document", "image", "location", "video", "sticker",
        "reaction", "interactive", "template", "contacts",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"}, []),
        (
            {
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": "wamid.X",
                "typing_indicator": {"type": "text"},
            },
            [],
        ),
        (
            {"messaging_product": "whatsapp", "status": "delivered", "message_id": "wamid.X"},
            ["status: must be 'read'"],
        ),
        ({"messaging_product": "whatsapp", "status": "read"}, ["message_id: is required"]),
        (
            {
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": "wamid.X",
                "typing_indicator": {"type": "audio"},
            },
            ["typing_indicator.type: must be 'text'"],
        ),
    ],
)
def test_mark_read_request(body: dict[str, Any], expected: list[str]) -> None:
    assert validate_mark_read_request(body) == expected


def test_corrected_schemas_are_valid_json_schema() -> None:
    document = _corrected(json.loads(SCHEMAS_FILE.read_text()))
    for override in LIVE_API_OVERRIDES:
        if override.patch_schemas is not None:
            override.patch_schemas(document["components"]["schemas"])
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.skipif(
    not DEFAULT_SOURCE.exists(), reason="Meta's OpenAPI YAML is not beside the repo"
)
def test_committed_extract_matches_metas_description() -> None:
    assert json.loads(SCHEMAS_FILE.read_text()) == extract(DEFAULT_SOURCE)


REFUSALS: list[tuple[str, dict[str, Any], tuple[int, str, str | None]]] = [
    (
        "empty text body",
        message("text", text={"body": ""}),
        (
            100,
            "(#100) The parameter text.body is required.",
            "The parameter text.body is required.",
        ),
    ),
    (
        "four reply buttons",
        interactive(type="button", body={"text": "?"}, action={"buttons": reply_buttons(4)}),
        (
            131009,
            "(#131009) Parameter value is not valid",
            "Invalid buttons count. Min allowed buttons: 1, Max allowed buttons: 3",
        ),
    ),
    (
        "empty button title",
        interactive(
            type="button",
            body={"text": "?"},
            action={"buttons": [{"type": "reply", "reply": {"id": "a", "title": ""}}]},
        ),
        (
            131009,
            "(#131009) Parameter value is not valid",
            "Button title length invalid. Min length: 1, Max length: 20",
        ),
    ),
    (
        "cta display text too long",
        interactive(
            type="cta_url",
            body={"text": "?"},
            action={
                "name": "cta_url",
                "parameters": {"display_text": "x" * 21, "url": "https://a.example"},
            },
        ),
        (131009, "(#131009) Parameter value is not valid", None),
    ),
    (
        "anything else the schema refuses",
        message("text", text={"body": "x" * 4097}),
        (100, "(#100) Invalid parameter", "text.body: must be at most 4096 characters (got 4097)"),
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(body, expected) for _, body, expected in REFUSALS],
    ids=[name for name, _, _ in REFUSALS],
)
def test_refusals_carry_metas_code_and_words(
    body: dict[str, Any], expected: tuple[int, str, str | None]
) -> None:
    refusal = message_request_refusal(body)
    assert isinstance(refusal, Refusal)
    assert (refusal.code, refusal.message, refusal.details) == expected
    assert refusal.problem in validate_message_request(body)


@pytest.mark.parametrize("body", VALID_MESSAGES.values(), ids=VALID_MESSAGES.keys())
def test_accepted_bodies_have_no_refusal(body: dict[str, Any]) -> None:
    assert message_request_refusal(body) is None


def test_refusals_survive_any_shape() -> None:
    # Overrides look at bodies before the schema does; odd shapes must not break them.
    for odd in ({"type": "interactive", "interactive": []}, {"type": "text", "text": "hi"}, {}):
        assert message_request_refusal(odd) is not None


def test_checking_leaves_the_body_as_sent() -> None:
    body = message("location", location={"latitude": 1, "longitude": 2, "name": None})
    message_request_refusal(body)
    assert body["location"] == {"latitude": 1, "longitude": 2, "name": None}


def test_every_live_api_override_says_why_and_where_from() -> None:
    names = [override.name for override in LIVE_API_OVERRIDES]
    assert len(set(names)) == len(names)
    for override in LIVE_API_OVERRIDES:
        assert override.why and "\n" not in override.why, override.name
        assert override.source, override.name
        assert override.patch_schemas or override.normalize or override.refuse, override.name
