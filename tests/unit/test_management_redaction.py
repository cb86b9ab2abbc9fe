"""Webhook bodies shown to dashboards: no personal data, same structure, technical fields kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared_code.management.redaction import REDACTED, redact_webhook_body
from tests.conftest import TEST_DATA, personal_data_in

WEBHOOKS = sorted((TEST_DATA / "webhooks").glob("*.json"))


def load(name: str) -> Any:
    return json.loads((TEST_DATA / "webhooks" / f"{name}.json").read_text())


def leaves(
    body: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(body, dict):
        for key, value in body.items():
            yield from leaves(value, (*path, key))
    elif isinstance(body, list):
        for index, value in enumerate(body):
            yield from leaves(value, (*path, index))
    else:
        yield path, body


def value_at(body: Any, *path: str | int) -> Any:
    for step in path:
        body = body[step]
    return body


@pytest.mark.parametrize("webhook", WEBHOOKS, ids=lambda p: p.stem)
def test_no_phone_number_or_wamid_is_left_and_the_structure_is_kept(webhook: Path) -> None:
    body = json.loads(webhook.read_text())
    redacted = redact_webhook_body(body)
    # The business's own display number is kept on purpose (it is public, and ours).
    business_numbers = {v for p, v in leaves(body) if p[-1] == "display_phone_number"}
    assert [
        found for found in personal_data_in(json.dumps(redacted)) if found not in business_numbers
    ] == []
    assert [path for path, _ in leaves(redacted)] == [path for path, _ in leaves(body)]


@pytest.mark.parametrize("webhook", WEBHOOKS, ids=lambda p: p.stem)
def test_every_free_text_of_the_user_is_gone(webhook: Path) -> None:
    body = json.loads(webhook.read_text())
    dumped = json.dumps(redact_webhook_body(body), ensure_ascii=False)
    free_text = ("body", "name", "caption", "title", "address", "formatted_name", "email")
    for path, value in leaves(body):
        if path[-1] in free_text and isinstance(value, str) and len(value) > 3:
            assert value not in dumped, path


def test_a_text_message() -> None:
    body = load("text")
    redacted = redact_webhook_body(body)
    dumped = json.dumps(redacted)
    for personal in ("Sheena Nelson", "16505551234", "Does it come in another color?", "wamid."):
        assert personal not in dumped
    change = value_at(redacted, "entry", 0, "changes", 0)
    message = value_at(change, "value", "messages", 0)
    assert redacted["object"] == "whatsapp_business_account"
    assert value_at(redacted, "entry", 0, "id") == "102290129340398"
    assert change["field"] == "messages"
    assert change["value"]["messaging_product"] == "whatsapp"
    assert change["value"]["metadata"] == {
        "display_phone_number": "15550783881",
        "phone_number_id": "106540352242922",
    }
    assert message["type"] == "text"
    assert message["timestamp"] == "1749416383"
    assert message["from"] == REDACTED
    assert message["id"] == REDACTED
    assert message["text"] == {"body": REDACTED}
    assert value_at(change, "value", "contacts", 0) == {
        "profile": {"name": REDACTED},
        "wa_id": REDACTED,
    }


def test_a_failed_status() -> None:
    body = load("status_failed_131047")
    redacted = redact_webhook_body(body)
    status = value_at(redacted, "entry", 0, "changes", 0, "value", "statuses", 0)
    assert status["id"] == REDACTED
    assert status["recipient_id"] == REDACTED
    assert status["status"] == "failed"
    assert status["timestamp"] == "1749417000"
    assert status["errors"][0]["code"] == 131047
    assert personal_data_in(json.dumps(redacted)) == []


def test_a_status_with_pricing() -> None:
    redacted = redact_webhook_body(load("status_with_pricing_conversation"))
    status = value_at(redacted, "entry", 0, "changes", 0, "value", "statuses", 0)
    assert status["status"] == "sent"
    assert status["pricing"] == {
        "billable": True,
        "pricing_model": "PMP",
        "category": "service",
        "type": "regular",
    }
    assert status["conversation"]["origin"] == {"type": "service"}
    assert status["conversation"]["expiration_timestamp"] == "1749503300"
    # Our own callback data may quote anything a caller put in it.
    assert status["biz_opaque_callback_data"] == REDACTED


def test_a_template_status_update_is_kept_whole() -> None:
    body = load("message_template_status_update")
    assert redact_webhook_body(body) == body


def test_a_shared_location_loses_its_coordinates() -> None:
    redacted = redact_webhook_body(load("location"))
    location = value_at(redacted, "entry", 0, "changes", 0, "value", "messages", 0, "location")
    assert set(location.values()) == {REDACTED}


def test_unknown_fields_are_redacted_not_leaked() -> None:
    body = {"object": "x", "entry": [{"id": "1", "new_field": {"secret_ish": "Jane +15551234567"}}]}
    redacted = redact_webhook_body(body)
    assert redacted["entry"][0]["new_field"] == {"secret_ish": REDACTED}
    assert redacted["entry"][0]["id"] == "1"


def test_a_user_controlled_id_outside_the_entry_is_redacted() -> None:
    # "id" is kept only as the entry's (our business account); elsewhere it is a wamid or a
    # user's id.
    body = {"entry": [{"changes": [{"value": {"id": "16505551234"}}]}], "id": "16505551234"}
    assert personal_data_in(json.dumps(redact_webhook_body(body))) == []


@pytest.mark.parametrize("value", [None, 3, True, "text", [], {}, [["nested"]]])
def test_any_json_value_is_accepted(value: Any) -> None:
    redact_webhook_body(value)
