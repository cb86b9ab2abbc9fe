"""Named hostile bodies, each checked on its own: one or more per defect class of the hostile
test report, and the others the fuzzing turned up.

Defect classes (the report's numbering):
1. deep nesting / raw bytes that are not UTF-8 -> 500, not stored;
2. NUL in a string that reaches a text column -> 503, and the batch's other bodies fail with it;
3. a lone surrogate escape in one message -> the whole body "not valid JSON", its messages lost;
4. a user's text with NUL -> the processor fails on every delivery;
5. repeats inside one insert batch undercounted in ``duplicate_count`` (a scenario, not a body:
   see ``test_corpus.py``).

Bodies that are not JSON text (raw bytes, deep nesting) are built here rather than kept as
files. Files named ``*.body`` in this folder are loaded as extra cases (raw bytes, checked for
the generic promises): that is where a body the full run found goes once it is understood.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fuzz.bodies import MAX_BODY_BYTES, WHATSAPP_OBJECT, FuzzBody, publishable_wamids

PHONE_NUMBER_ID = "106540352242922"
USER = "16505551234"
OTHER_USER = "16505559876"
TIMESTAMP = "1749416383"


@dataclass(frozen=True, slots=True)
class CorpusCase:
    name: str
    defect: int | None
    why: str
    body: bytes
    # Wamids that must reach the bus; by default what the contract promises for the JSON.
    must_publish: frozenset[str] = frozenset()
    # Wamids the processor must store as user messages (not reject): the user's text is kept.
    must_store: frozenset[str] = frozenset()

    def fuzz_body(self) -> FuzzBody:
        return FuzzBody(self.body, f"corpus:{self.name}", self.must_publish)


def text_message(wamid: str, text: str = "hello", sender: str = USER) -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": TIMESTAMP,
        "type": "text",
        "text": {"body": text},
    }


def change(
    messages: list[Any] | None = None,
    *,
    statuses: list[Any] | None = None,
    phone_number_id: Any = PHONE_NUMBER_ID,
    contacts: list[Any] | None = None,
    field: Any = "messages",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    }
    if messages is not None:
        value["contacts"] = (
            contacts
            if contacts is not None
            else [{"profile": {"name": "Sheena"}, "wa_id": m.get("from")} for m in messages[:1]]
        )
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {"field": field, "value": value}


def webhook(*changes: dict[str, Any], object_: Any = WHATSAPP_OBJECT) -> dict[str, Any]:
    return {"object": object_, "entry": [{"id": "102290129340398", "changes": list(changes)}]}


def status(wamid: str, state: str = "delivered", **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": state, "timestamp": TIMESTAMP, "recipient_id": USER, **extra}


def as_json(payload: object) -> bytes:
    """ASCII JSON: NUL and lone surrogates travel as \\u escapes, as Meta's encoder writes them."""
    return json.dumps(payload).encode()


def promised(
    name: str, defect: int | None, why: str, payload: object, *, stored: tuple[str, ...] = ()
) -> CorpusCase:
    """A JSON case whose valid messages must come through (the oracle says which)."""
    return CorpusCase(
        name, defect, why, as_json(payload), publishable_wamids(payload), frozenset(stored)
    )


def raw(name: str, defect: int | None, why: str, body: bytes) -> CorpusCase:
    """A case promised nothing beyond a 200 and its bytes stored."""
    return CorpusCase(name, defect, why, body)


def _with_raw_bytes(text_marker: str, junk: bytes) -> bytes:
    """A one-message text webhook with ``junk`` spliced into its text body."""
    body = as_json(webhook(change([text_message("wamid.C1raw", f"before{text_marker}after")])))
    return body.replace(text_marker.encode(), junk)


def _nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


def _deep_in_message(depth: int) -> bytes:
    body = as_json(webhook(change([text_message("wamid.C1deep", "deep")])))
    return body.replace(b'"type": "text"', b'"type": "text", "fz": ' + _nested(depth), 1)


def _exactly(size: int) -> bytes:
    body = as_json(webhook(change([text_message("wamid.C0size", "at the limit")])))
    return body + b" " * (size - len(body))


def _many_messages(count: int) -> dict[str, Any]:
    users = (USER, OTHER_USER)
    return webhook(
        change([text_message(f"wamid.C0many{n}", f"n{n}", users[n % 2]) for n in range(count)])
    )


def _many_entries(count: int) -> dict[str, Any]:
    return {
        "object": WHATSAPP_OBJECT,
        "entry": [
            {"id": str(n), "changes": [change(statuses=[status(f"wamid.C0out{n}")])]}
            for n in range(count)
        ],
    }


_NFM = {
    "type": "interactive",
    "interactive": {
        "type": "nfm_reply",
        "nfm_reply": {"name": "flow", "body": "Sent", "response_json": '{"a": "\\u0000\x00"}'},
    },
}

CASES: tuple[CorpusCase, ...] = (
    # --- 1: deep nesting, bytes that are not UTF-8 ---------------------------------------------
    raw(
        "nesting_1000_arrays",
        1,
        "RecursionError in the decoder",
        b'{"object":"whatsapp_business_account","entry":' + _nested(1000) + b"}",
    ),
    raw("nesting_1000_in_a_message", 1, "RecursionError, one level down", _deep_in_message(1000)),
    raw("nesting_100000_objects", 1, "far past any limit", _nested(100_000, b'{"a":', b"}")),
    raw("nesting_990_in_a_message", 1, "decodes, then deeper code recurses", _deep_in_message(990)),
    raw("invalid_utf8_in_text", 1, "UnicodeDecodeError", _with_raw_bytes("@", b"\xff\xfe")),
    raw(
        "cesu8_surrogate_in_text",
        1,
        "UTF-8-encoded surrogate",
        _with_raw_bytes("@", b"\xed\xa0\x80"),
    ),
    raw("overlong_utf8_in_text", 1, "overlong encoding of '/'", _with_raw_bytes("@", b"\xc0\xaf")),
    raw("truncated_utf8_in_text", 1, "a lead byte alone", _with_raw_bytes("@", b"\xe2\x82")),
    raw(
        "latin1_body",
        1,
        "an encoder that is not UTF-8",
        as_json(webhook()).replace(b"{", '{"\xe9":1,'.encode("latin-1"), 1),
    ),
    # --- 2: NUL where a text column gets it -----------------------------------------------------
    promised("nul_in_object", 2, "object column", webhook(object_="whatsapp_business_account\x00")),
    promised("nul_as_object", 2, "object column, the whole of it", {"object": "\x00"}),
    promised(
        "nul_in_a_field_name",
        2,
        "fields column; the other change's message must still come through",
        webhook(change(field="account_update\x00"), change([text_message("wamid.C2field", "hi")])),
    ),
    promised(
        "nul_in_phone_number_id",
        2,
        "bus session id; the other change's message must still come through",
        webhook(
            change([text_message("wamid.C2pnid0")], phone_number_id="10654035\x002242922"),
            change([text_message("wamid.C2pnid1")]),
        ),
    ),
    promised(
        "nul_in_from",
        2,
        "session id and contact wa_id; its sibling must still come through",
        webhook(
            change(
                [text_message("wamid.C2from0", sender="1650\x00555"), text_message("wamid.C2from1")]
            )
        ),
    ),
    promised(
        "nul_in_wamid",
        2,
        "bus message id; its sibling must still come through",
        webhook(change([text_message("wamid.\x00C2"), text_message("wamid.C2wamid1")])),
    ),
    promised(
        "nul_in_contact_wa_id",
        2,
        "contacts wa_id",
        webhook(
            change(
                [text_message("wamid.C2contact")],
                contacts=[{"profile": {"name": "A\x00"}, "wa_id": "1650\x00"}],
            )
        ),
        stored=("wamid.C2contact",),
    ),
    promised(
        "nul_in_a_status",
        2,
        "status row (text and jsonb), applied by the intake",
        webhook(
            change(
                [text_message("wamid.C2status")],
                statuses=[
                    status("wamid.C2out\x00", recipient_id="1650\x00"),
                    status(
                        "wamid.C2out1",
                        "failed",
                        errors=[
                            {"code": 131047, "title": "x\x00", "error_data": {"details": "\x00"}}
                        ],
                    ),
                ],
            )
        ),
    ),
    promised(
        "nul_in_a_key",
        2,
        "a NUL in an object key of a message",
        webhook(change([{**text_message("wamid.C2key"), "\x00": {"\x00": "\x00"}}])),
        stored=("wamid.C2key",),
    ),
    # --- 3: lone surrogates -------------------------------------------------------------------
    promised(
        "lone_high_surrogate_in_text",
        3,
        "the body was 'not valid JSON'; both messages must come through",
        webhook(change([text_message("wamid.C3hi", "a\ud800b"), text_message("wamid.C3hi2")])),
        stored=("wamid.C3hi", "wamid.C3hi2"),
    ),
    promised(
        "lone_low_surrogate_in_text",
        3,
        "a low surrogate first",
        webhook(change([text_message("wamid.C3lo", "\udfff")])),
        stored=("wamid.C3lo",),
    ),
    promised(
        "reversed_surrogate_pair",
        3,
        "low then high: two lone surrogates",
        webhook(change([text_message("wamid.C3rev", "\ude00\ud83d")])),
        stored=("wamid.C3rev",),
    ),
    promised(
        "surrogate_in_profile_name",
        3,
        "contact profile name",
        webhook(
            change(
                [text_message("wamid.C3name")],
                contacts=[{"profile": {"name": "\udc00Ana"}, "wa_id": USER}],
            )
        ),
        stored=("wamid.C3name",),
    ),
    promised(
        "surrogate_in_a_key",
        3,
        "an object key",
        webhook(change([{**text_message("wamid.C3key"), "\ud800": "\udfff"}])),
        stored=("wamid.C3key",),
    ),
    promised(
        "surrogate_in_a_wamid",
        3,
        "an unusable id; its sibling must still come through",
        webhook(change([text_message("wamid.\ud800"), text_message("wamid.C3id1")])),
    ),
    promised(
        "surrogate_and_nul_in_a_caption",
        3,
        "image caption",
        webhook(
            change(
                [
                    {
                        "from": USER,
                        "id": "wamid.C3caption",
                        "timestamp": TIMESTAMP,
                        "type": "image",
                        "image": {"id": "1", "mime_type": "image/jpeg", "caption": "\ud800\x00"},
                    }
                ]
            )
        ),
        stored=("wamid.C3caption",),
    ),
    # --- 4: the user's text with NUL, through the processor -------------------------------------
    promised(
        "nul_in_user_text",
        4,
        "text_body column and content jsonb",
        webhook(change([text_message("wamid.C4text", "hello\x00world")])),
        stored=("wamid.C4text",),
    ),
    promised(
        "nul_only_text",
        4,
        "a text of NULs",
        webhook(change([text_message("wamid.C4nuls", "\x00" * 100)])),
        stored=("wamid.C4nuls",),
    ),
    promised(
        "nul_in_button_reply_title",
        4,
        "interactive title is the routed text",
        webhook(
            change(
                [
                    {
                        "from": USER,
                        "id": "wamid.C4button",
                        "timestamp": TIMESTAMP,
                        "type": "interactive",
                        "interactive": {
                            "type": "button_reply",
                            "button_reply": {"id": "yes\x00", "title": "Yes\x00"},
                        },
                    }
                ]
            )
        ),
        stored=("wamid.C4button",),
    ),
    promised(
        "nul_in_reaction_emoji",
        4,
        "the emoji is the routed text",
        webhook(
            change(
                [
                    {
                        "from": USER,
                        "id": "wamid.C4reaction",
                        "timestamp": TIMESTAMP,
                        "type": "reaction",
                        "reaction": {"message_id": "wamid.X\x00", "emoji": "\x00"},
                    }
                ]
            )
        ),
        stored=("wamid.C4reaction",),
    ),
    promised(
        "nul_in_location_name",
        4,
        "location name is the routed text",
        webhook(
            change(
                [
                    {
                        "from": USER,
                        "id": "wamid.C4location",
                        "timestamp": TIMESTAMP,
                        "type": "location",
                        "location": {"latitude": 1.5, "longitude": 2, "name": "N\x00"},
                    }
                ]
            )
        ),
        stored=("wamid.C4location",),
    ),
    promised(
        "nul_in_flow_response",
        4,
        "nfm_reply response_json carries an escaped and a raw NUL",
        webhook(change([{"from": USER, "id": "wamid.C4flow", "timestamp": TIMESTAMP, **_NFM}])),
        stored=("wamid.C4flow",),
    ),
    promised(
        "nul_in_context_id",
        4,
        "context_wamid column",
        webhook(
            change(
                [
                    {
                        **text_message("wamid.C4context"),
                        "context": {"from": "1\x00", "id": "wamid.\x00"},
                    }
                ]
            )
        ),
        stored=("wamid.C4context",),
    ),
    # --- others -------------------------------------------------------------------------------
    raw("empty", None, "nothing at all", b""),
    raw("whitespace", None, "only whitespace", b" \n\t\r "),
    raw("json_null", None, "null", b"null"),
    raw("json_string", None, "a string", b'"whatsapp_business_account"'),
    raw("top_level_array", None, "an array", b"[1,2,3]"),
    raw(
        "nan_literal", None, "NaN is not JSON", as_json(webhook()).replace(b"{", b'{"n": NaN, ', 1)
    ),
    raw(
        "infinity_timestamp",
        None,
        "Infinity is not JSON",
        as_json(webhook(change([text_message("wamid.C0inf")]))).replace(
            f'"{TIMESTAMP}"'.encode(), b"Infinity"
        ),
    ),
    raw(
        "number_1e400",
        None,
        "a float out of range",
        as_json(webhook(change([text_message("wamid.C0e400")]))).replace(
            f'"{TIMESTAMP}"'.encode(), b"1e400"
        ),
    ),
    raw(
        "timestamp_of_400_digits",
        None,
        "an integer of 400 digits",
        as_json(webhook(change([text_message("wamid.C0digits")]))).replace(
            f'"{TIMESTAMP}"'.encode(), b"9" * 400
        ),
    ),
    raw(
        "integer_of_4301_digits",
        None,
        "past Python's int/str conversion limit",
        as_json(webhook()).replace(b"{", b'{"n": ' + b"9" * 4301 + b", ", 1),
    ),
    raw("bom", None, "a UTF-8 byte order mark", b"\xef\xbb\xbf" + as_json(webhook())),
    raw("trailing_garbage", None, "a second value", as_json(webhook()) + b"{}"),
    raw(
        "duplicate_object_key",
        None,
        "the last of two keys wins in most decoders",
        b'{"object":"x","object":"whatsapp_business_account","entry":[]}',
    ),
    raw(
        "raw_nul_byte_in_a_string",
        None,
        "a raw control character in a string is not JSON",
        _with_raw_bytes("@", b"\x00"),
    ),
    CorpusCase(
        "exactly_one_mebibyte",
        None,
        "the largest body accepted",
        _exactly(MAX_BODY_BYTES),
        frozenset({"wamid.C0size"}),
    ),
    raw("one_byte_over_the_limit", None, "answered 413, not stored", _exactly(MAX_BODY_BYTES + 1)),
    promised(
        "status_error_code_past_int32",
        None,
        "error_code is an integer column",
        webhook(
            change(
                statuses=[status("wamid.C0code", "failed", errors=[{"code": 2**31, "title": "x"}])]
            )
        ),
    ),
    promised(
        "status_error_code_of_30_digits",
        None,
        "past int64",
        webhook(
            change(
                statuses=[
                    status("wamid.C0code2", "failed", errors=[{"code": 10**30, "title": "x"}])
                ]
            )
        ),
    ),
    promised(
        "timestamp_as_a_number",
        None,
        "a number, not a string",
        webhook(change([{**text_message("wamid.C0tsnum"), "timestamp": int(TIMESTAMP)}])),
        stored=("wamid.C0tsnum",),
    ),
    promised(
        "timestamp_of_eleven_digits",
        None,
        "year 5138",
        webhook(change([{**text_message("wamid.C0ts11"), "timestamp": "99999999999"}])),
        stored=("wamid.C0ts11",),
    ),
    promised(
        "wamid_of_128_characters",
        None,
        "the longest id the bus takes",
        webhook(change([text_message("wamid." + "x" * 122)])),
        stored=("wamid." + "x" * 122,),
    ),
    promised(
        "wamid_of_129_characters",
        None,
        "one too long: skipped, stored",
        webhook(change([text_message("wamid." + "x" * 123), text_message("wamid.C0short")])),
    ),
    promised(
        "unicode_ids",
        None,
        "RTL, zero-width, emoji and non-characters in ids",
        webhook(change([text_message("wamid.\u202e\u200b😀\uffff\ufdd0", "x", "\u200f1650😀")])),
        stored=("wamid.\u202e\u200b😀\uffff\ufdd0",),
    ),
    promised(
        "underscore_raw_key",
        None,
        "'_raw' is the wire name of the typed views' raw field: found by the full run",
        webhook(change([{**text_message("wamid.C0raw"), "_raw": 1}])),
        stored=("wamid.C0raw",),
    ),
    promised(
        "underscore_raw_key_in_the_contact",
        None,
        "the profile is a nicety, yet a '_raw' key in it cost the message: found by the full run",
        webhook(
            change(
                [text_message("wamid.C0rawcontact")],
                contacts=[{"profile": {"name": "Ana"}, "wa_id": USER, "_raw": [1]}],
            )
        ),
        stored=("wamid.C0rawcontact",),
    ),
    promised("two_hundred_messages", None, "a big batch in one POST", _many_messages(200)),
    promised("five_hundred_entries", None, "many entries, a status each", _many_entries(500)),
)


def load_found() -> tuple[CorpusCase, ...]:
    """``*.body`` files in this folder: bodies the full run found, kept as regression cases."""
    folder = Path(__file__).parent
    return tuple(
        raw(path.stem, None, "found by scripts/fuzz_webhook.py", path.read_bytes())
        for path in sorted(folder.glob("*.body"))
    )


ALL_CASES: tuple[CorpusCase, ...] = CASES + load_found()
