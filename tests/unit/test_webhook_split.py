"""Splitting webhook bodies into bus events: every part used, broken parts noted, no raise."""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared_code.whatsapp.payloads import (
    MessageEvent,
    PayloadError,
    StatusEvent,
    TemplateStatusEvent,
    decode_event,
)
from shared_code.whatsapp.webhook import (
    MAX_BUS_ID_LENGTH,
    SplitEvent,
    SplitResult,
    session_id_for,
    split_webhook,
    status_message_id,
)

WEBHOOKS = Path(__file__).resolve().parents[1] / "data" / "webhooks"
PNID = "106540352242922"
PNID2 = "106540352242933"
USER = "16505551234"
USER2 = "16505559876"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WEBHOOKS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def webhook(*values: object, field: str = "messages") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": field, "value": v} for v in values]}],
    }


def value(**parts: object) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
        **parts,
    }


def text(wamid: str, sender: str = USER, body: str = "hello") -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": body},
    }


def status(wamid: str, state: str = "read", recipient: str = USER) -> dict[str, Any]:
    return {"id": wamid, "status": state, "timestamp": "1749416383", "recipient_id": recipient}


def decode(event: SplitEvent) -> MessageEvent | StatusEvent:
    return decode_event(msgspec.json.encode({**event.envelope, "webhook_event_id": 1}))


# --- the named scenarios --------------------------------------------------------------------


def test_multi_entry_batch_uses_every_entry_and_every_change() -> None:
    payload = load("multi_entry_batch")
    result = split_webhook(payload)

    assert result.status == "pending"
    assert result.is_whatsapp
    assert result.object == "whatsapp_business_account"
    assert result.fields == ("messages", "account_update")
    assert result.problems == ()
    assert result.reason is None
    assert [e.kind for e in result.events] == [
        "message",
        "message",
        "status",
        "status",
        "message",
        "status",
    ]
    entry0, entry1 = payload["entry"]
    messages0 = entry0["changes"][0]["value"]["messages"]
    statuses0 = entry0["changes"][1]["value"]["statuses"]
    message1 = entry1["changes"][0]["value"]["messages"][0]
    status1 = entry1["changes"][1]["value"]["statuses"][0]
    assert [e.message_id for e in result.events] == [
        messages0[0]["id"],
        messages0[1]["id"],
        f"{statuses0[0]['id']}:delivered",
        f"{statuses0[1]['id']}:read",
        message1["id"],
        f"{status1['id']}:sent",
    ]
    assert [e.session_id for e in result.events] == [
        f"{PNID}:{USER}",
        f"{PNID}:{USER2}",
        f"{PNID}:{USER}",
        f"{PNID}:{USER}",
        f"{PNID2}:{USER2}",
        f"{PNID2}:{USER2}",
    ]
    decoded = [decode(e) for e in result.events]
    assert [e.waba_id for e in decoded] == ["102290129340398"] * 4 + ["102290129340411"] * 2
    names = [e.contact.name if isinstance(e, MessageEvent) and e.contact else None for e in decoded]
    assert names == ["Sheena Nelson", "Kofi Mensah", None, None, "Kofi Mensah", None]


def test_envelope_is_exactly_what_decode_event_reads() -> None:
    payload = load("text")
    result = split_webhook(payload)
    (event,) = result.events
    change_value = payload["entry"][0]["changes"][0]["value"]
    assert event.envelope == {
        "kind": "message",
        "waba_id": "102290129340398",
        "phone_number_id": PNID,
        "display_phone_number": "15550783881",
        "contact": change_value["contacts"][0],
        "message": change_value["messages"][0],
    }
    # No copies on the hot path: the envelope holds the decoded body's own dicts.
    assert event.envelope["message"] is change_value["messages"][0]

    (status_event,) = split_webhook(load("status_sent")).events
    assert set(status_event.envelope) == {
        "kind",
        "waba_id",
        "phone_number_id",
        "display_phone_number",
        "status",
    }
    assert status_event.kind == "status"


@pytest.mark.parametrize(("name", "field"), [("account_update", "account_update")])
def test_other_fields_are_ignored_not_invalid(name: str, field: str) -> None:
    result = split_webhook(load(name))
    assert result.status == "ignored"
    assert result.fields == (field,)
    assert result.events == ()
    assert result.reason == f"no messages or statuses (fields: {field})"


def test_a_template_status_update_is_queued_for_the_processor() -> None:
    payload = load("message_template_status_update")
    payload["entry"][0]["time"] = 1749416383
    result = split_webhook(payload)
    assert result.status == "pending"
    assert result.fields == ("message_template_status_update",)
    (event,) = result.events
    assert event.kind == "template"
    assert event.message_id == "template:1256745578592710:APPROVED:1749416383"
    assert event.session_id == "templates:102290129340398"
    decoded = decode_event(msgspec.json.encode({**event.envelope, "webhook_event_id": 7}))
    assert isinstance(decoded, TemplateStatusEvent)
    assert decoded.update.message_template_name == "welcome_message"
    assert decoded.update.message_template_language == "fr"
    assert decoded.entry_time == datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)
    assert decoded.webhook_event_id == 7


def test_a_template_status_update_without_its_id_is_a_problem_not_an_event() -> None:
    payload = load("message_template_status_update")
    del payload["entry"][0]["changes"][0]["value"]["message_template_id"]
    result = split_webhook(payload)
    assert result.events == ()
    assert result.status == "invalid"
    assert "message_template_id" in (result.reason or "")


def test_whole_webhook_errors_are_noted_and_ignored() -> None:
    result = split_webhook(load("webhook_errors"))
    assert result.status == "ignored"
    assert result.events == ()
    assert result.problems == ("entry[0].changes[0]: webhook errors (codes: 131000)",)
    assert result.reason == result.problems[0]


def test_webhook_errors_next_to_messages_do_not_block_them() -> None:
    result = split_webhook(webhook(value(messages=[text("wamid.A")], errors=[{"code": 131000}])))
    assert result.status == "pending"
    assert len(result.events) == 1
    assert result.reason == "entry[0].changes[0]: webhook errors (codes: 131000)"


def test_failed_status_is_published() -> None:
    result = split_webhook(load("status_failed_131047"))
    assert result.status == "pending"
    (event,) = result.events
    assert event.message_id.endswith(":failed")


# --- ids ------------------------------------------------------------------------------------


def test_id_helpers() -> None:
    assert session_id_for(PNID, USER) == f"{PNID}:{USER}"
    assert status_message_id("wamid.A", "read") == "wamid.A:read"


def test_contact_is_matched_by_wa_id_else_the_only_one() -> None:
    contacts = [
        {"profile": {"name": "Two"}, "wa_id": USER2},
        {"profile": {"name": "One"}, "wa_id": USER},
    ]
    result = split_webhook(webhook(value(contacts=contacts, messages=[text("wamid.A")])))
    assert result.events[0].envelope["contact"] is contacts[1]

    # wa_id and the number in "from" may differ; a single contact is still the sender.
    only = [{"profile": {"name": "One"}, "wa_id": "5511912345678"}]
    brazil = text("wamid.A", "551112345678")
    result = split_webhook(webhook(value(contacts=only, messages=[brazil])))
    assert result.events[0].envelope["contact"] is only[0]

    result = split_webhook(webhook(value(contacts=contacts, messages=[text("wamid.A", "999")])))
    assert result.events[0].envelope["contact"] is None
    for junk in (None, "x", [1], {"wa_id": USER}):
        result = split_webhook(webhook(value(contacts=junk, messages=[text("wamid.A")])))
        assert result.events[0].envelope["contact"] is None


# --- broken parts ---------------------------------------------------------------------------


def test_malformed_parts_are_noted_and_the_rest_still_goes_out() -> None:
    no_id = text("wamid.B", body="secret text")
    del no_id["id"]
    no_from = text("wamid.C")
    del no_from["from"]
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": value(
                            messages=[text("wamid.A"), no_id, "junk", no_from],
                            statuses=[
                                status("wamid.S1"),
                                {k: v for k, v in status("wamid.S2").items() if k != "status"},
                                {**status("wamid.S3"), "recipient_id": None},
                                {**status("wamid.S4"), "timestamp": "yesterday"},
                            ],
                        ),
                    },
                    {"field": "messages", "value": {"messages": [text("wamid.D")]}},
                    {"field": "messages", "value": value(messages={"not": "a list"})},
                    {"field": "messages", "value": "nope"},
                    "not a change",
                    {"value": {}},
                    {"field": "messages", "value": value()},
                ],
            },
            "not an entry",
            {"id": "2", "changes": None},
            {"id": "3", "changes": [{"field": "messages", "value": value(statuses=5)}]},
        ],
    }
    result = split_webhook(payload)

    assert [e.message_id for e in result.events] == ["wamid.A", "wamid.S1:read"]
    assert result.status == "pending"
    assert result.problems == (
        "entry[0].changes[0].messages[1]: message without id",
        "entry[0].changes[0].messages[2]: not an object",
        "entry[0].changes[0].messages[3]: message without from",
        "entry[0].changes[0].statuses[1]: status without status",
        "entry[0].changes[0].statuses[2]: status without recipient_id",
        "entry[0].changes[0].statuses[3]: status without a unix timestamp",
        "entry[0].changes[1]: metadata.phone_number_id missing",
        "entry[0].changes[2]: messages is not a list",
        "entry[0].changes[3]: value missing or not an object",
        "entry[0].changes[4]: not an object",
        "entry[0].changes[5]: field missing or not a string",
        "entry[0].changes[6]: no messages, statuses or errors",
        "entry[1]: not an object",
        "entry[2]: changes missing or not a list",
        "entry[3].changes[0]: statuses is not a list",
    )
    assert result.reason is not None
    assert "secret text" not in result.reason
    assert USER not in result.reason


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({**text("wamid.A"), "id": ""}, "message without id"),
        ({**text("wamid.A"), "id": 12}, "message without id"),
        ({**text("wamid.A"), "from": ""}, "message without from"),
        ({**text("wamid.A"), "type": None}, "message without type"),
        ({**text("wamid.A"), "timestamp": "1749-06-08"}, "message without a unix timestamp"),
        ({**text("wamid.A"), "timestamp": "9" * 12}, "message without a unix timestamp"),
        ({**text("wamid.A"), "timestamp": True}, "message without a unix timestamp"),
        ({**text("wamid.A"), "id": "w" * (MAX_BUS_ID_LENGTH + 1)}, "too long for the bus"),
        ({**text("wamid.A"), "from": "1" * MAX_BUS_ID_LENGTH}, "too long for the bus"),
    ],
)
def test_a_message_needs_what_the_bus_and_processor_need(
    message: dict[str, Any], problem: str
) -> None:
    result = split_webhook(webhook(value(messages=[message])))
    assert result.events == ()
    assert result.status == "invalid"
    assert len(result.problems) == 1
    assert problem in result.problems[0]


def test_numeric_timestamp_is_accepted() -> None:
    result = split_webhook(webhook(value(messages=[{**text("wamid.A"), "timestamp": 1749416383}])))
    assert result.status == "pending"
    assert decode(result.events[0]).message.timestamp.year == 2025  # type: ignore[union-attr]


def test_status_ids_too_long_for_the_bus_are_skipped() -> None:
    wamid = "w" * (MAX_BUS_ID_LENGTH - 2)
    result = split_webhook(webhook(value(statuses=[status(wamid, "read")])))
    assert result.events == ()
    assert "too long for the bus" in result.problems[0]


def test_only_broken_parts_make_the_body_invalid() -> None:
    broken = webhook(value(messages=[{"type": "text"}], statuses=[{}]))
    result = split_webhook(broken)
    assert result.status == "invalid"
    assert result.reason == (
        "entry[0].changes[0].messages[0]: message without id; "
        "entry[0].changes[0].statuses[0]: status without id"
    )
    # The same broken change next to a usable one is only a note.
    broken["entry"][0]["changes"].append({"field": "account_update", "value": {}})
    result = split_webhook(broken)
    assert result.status == "ignored"
    assert result.fields == ("messages", "account_update")


def test_problems_and_reason_stay_small() -> None:
    payload = webhook(value(messages=[{"type": "text"}] * 1000))
    result = split_webhook(payload)
    assert len(result.problems) == 21
    assert result.problems[-1] == "980 more problems"
    assert result.reason is not None
    assert len(result.reason) <= 500


def test_fields_are_deduplicated_in_order() -> None:
    payload = webhook({}, {}, field="account_update")
    payload["entry"].append(
        {"id": "2", "changes": [{"field": "security", "value": {}}, {"field": "account_update"}]}
    )
    assert split_webhook(payload).fields == ("account_update", "security")


# --- invalid bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "body is a JSON null, not an object"),
        ([], "body is a JSON array, not an object"),
        ("whatsapp_business_account", "body is a JSON string, not an object"),
        (12, "body is a JSON number, not an object"),
        ({}, "missing object"),
        ({"object": 5, "entry": []}, "missing object"),
        ({"object": "page", "entry": []}, "unexpected object 'page'"),
        ({"object": "whatsapp_business_account"}, "entry missing or not a list"),
        ({"object": "whatsapp_business_account", "entry": {}}, "entry missing or not a list"),
    ],
)
def test_invalid_bodies(payload: object, reason: str) -> None:
    result = split_webhook(payload)
    assert result.status == "invalid"
    assert result.reason == reason
    assert result.events == ()


def test_wrong_object_is_recorded_but_not_whatsapp() -> None:
    result = split_webhook({"object": "instagram", "entry": [{"id": "1", "changes": []}]})
    assert result.object == "instagram"
    assert not result.is_whatsapp
    long = split_webhook({"object": "x" * 5000})
    assert long.object is not None
    assert len(long.object) <= 100
    assert long.reason is not None
    assert len(long.reason) < 100


def test_invalid_constructor_for_callers() -> None:
    result = SplitResult.invalid("empty body")
    assert result.status == "invalid"
    assert result.reason == "empty body"
    assert result.object is None
    assert result.fields == ()


def test_empty_entry_list_is_ignored() -> None:
    result = split_webhook({"object": "whatsapp_business_account", "entry": []})
    assert result.status == "ignored"
    assert result.reason == "no messages or statuses (fields: none)"


# --- fuzzing --------------------------------------------------------------------------------

KEYS = [
    "object",
    "entry",
    "id",
    "changes",
    "field",
    "value",
    "metadata",
    "phone_number_id",
    "display_phone_number",
    "contacts",
    "wa_id",
    "profile",
    "messages",
    "statuses",
    "errors",
    "from",
    "timestamp",
    "type",
    "status",
    "recipient_id",
    "code",
    "text",
    "body",
]
STRINGS = ["", "whatsapp_business_account", "messages", "text", "read", "1749416383", "x" * 200]


def random_json(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 5 or roll < 0.35:
        return rng.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                2**70,
                1.5,
                float("nan"),
                rng.choice(STRINGS),
                str(rng.random()),
            ]
        )
    if roll < 0.6:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(KEYS) if rng.random() < 0.8 else str(rng.random()): random_json(rng, depth + 1)
        for _ in range(rng.randint(0, 6))
    }


def mutate(rng: random.Random, node: object) -> None:
    """Break one random spot of a real payload: drop a key, swap a value, or wrap it."""
    path: list[tuple[object, object]] = []
    while isinstance(node, dict | list) and node:
        keys: list[Any] = list(node) if isinstance(node, dict) else list(range(len(node)))
        deeper = [k for k in keys if isinstance(node[k], dict | list)]
        key = rng.choice(deeper if deeper and rng.random() < 0.8 else keys)
        path.append((node, key))
        node = node[key]
    if not path:
        return
    # Mostly near the leaves, where Meta's variations are; sometimes anywhere.
    depth = rng.randrange(len(path)) if rng.random() < 0.2 else len(path) - 1 - rng.randrange(3)
    parent, key = path[max(depth, 0)]
    action = rng.random()
    if action < 0.3 and isinstance(parent, dict):
        del parent[key]
    elif action < 0.6:
        parent[key] = random_json(rng)  # type: ignore[index]
    else:
        parent[key] = [parent[key]]  # type: ignore[index]


def assert_sane(result: SplitResult) -> None:
    # The safety net in split_webhook must not be what kept it from raising.
    assert result.reason != "internal error while splitting"
    assert result.status in ("pending", "ignored", "invalid")
    assert (result.status == "pending") == bool(result.events)
    assert result.reason is None or len(result.reason) <= 500
    for event in result.events:
        assert len(event.message_id) <= MAX_BUS_ID_LENGTH
        assert len(event.session_id) <= MAX_BUS_ID_LENGTH
        body = msgspec.json.encode({**event.envelope, "webhook_event_id": 1})
        try:
            decoded = decode_event(body)
        except PayloadError:
            continue  # the processor drops it; any other exception would be a bug
        if isinstance(decoded, TemplateStatusEvent):
            assert event.session_id == f"templates:{decoded.waba_id or ''}"
        else:
            assert decoded.phone_number_id == event.session_id.split(":", 1)[0]


def test_random_structures_never_raise() -> None:
    rng = random.Random(20251125)
    for _ in range(3000):
        payload = random_json(rng)
        if isinstance(payload, dict) and rng.random() < 0.5:
            payload["object"] = "whatsapp_business_account"
        assert_sane(split_webhook(payload))


@pytest.mark.parametrize("name", sorted(p.stem for p in WEBHOOKS.glob("*.json")))
def test_broken_scenarios_never_raise(name: str) -> None:
    rng = random.Random(name)
    original = load(name)
    for _ in range(150):
        payload = copy.deepcopy(original)
        for _ in range(rng.randint(1, 4)):
            mutate(rng, payload)
        assert_sane(split_webhook(payload))


def test_unhashable_and_odd_python_values_never_raise() -> None:
    # Not JSON, but the contract is "whatever the input".
    odd: list[object] = [
        {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": ["messages"]}]}]},
        {"object": "whatsapp_business_account", "entry": [{"changes": [{1: 2}]}]},
        {"object": "whatsapp_business_account", "entry": (1, 2)},
        {("tuple",): 1},
        object(),
        b"bytes",
    ]
    for payload in odd:
        assert_sane(split_webhook(payload))
