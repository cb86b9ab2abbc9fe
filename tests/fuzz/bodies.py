"""Hostile webhook bodies, built from choices so one generator serves two drivers.

Every builder here takes a :class:`Chooser`. The hypothesis strategies (``strategies.py``) pass a
chooser whose every choice is a hypothesis draw, so failures shrink; the full run
(``scripts/fuzz_webhook.py``) passes a seeded :class:`RandomChooser`, which generates 100,000
bodies in seconds where hypothesis would take many minutes. Both therefore produce the same kinds
of bodies from the same building blocks:

- :func:`envelope_body`: a realistic WhatsApp envelope made of Meta's own example payloads (the
  ``tests/data/webhooks`` files: every message type, statuses, errors, other fields), whose
  leaves and structure are then made hostile;
- :func:`mutated_body`: the raw bytes of a clean envelope, mutated (truncated, invalid UTF-8,
  deep nesting, NaN, 400-digit numbers...).

Each body carries its oracle, :attr:`FuzzBody.must_publish`: the wamids that the intake's
contract says must reach the bus whatever else the body holds (see :func:`publishable_wamids`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

WHATSAPP_OBJECT = "whatsapp_business_account"
MAX_BODY_BYTES = 1024 * 1024
# What the intake's contract allows for ids (Service Bus refuses longer message or session ids).
MAX_BUS_ID_LENGTH = 128
MAX_TIMESTAMP_DIGITS = 11
# The intake refuses a body nested deeper than 64 levels as unreadable (no webhook of Meta's
# goes past about ten; deeper is an attack on recursive code downstream). Below this margin
# its messages must come through.
PROMISED_DEPTH = 60

WEBHOOK_SAMPLES = Path(__file__).resolve().parents[1] / "data" / "webhooks"
PHONE_NUMBER_IDS = ("106540352242922", "100000000000001", "1")
USERS = ("16505551234", "16505559876", "15551230001", "447700900123")


class Chooser(Protocol):
    """The choices a body is made of; every builder below goes through one."""

    def integer(self, low: int, high: int) -> int: ...

    def chance(self, percent: int) -> bool: ...

    def choice(self, options: Sequence[T]) -> T: ...

    def text(self, max_size: int) -> str: ...


class RandomChooser:
    """Choices from a seeded ``random.Random``: fast, reproducible from the seed."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def chance(self, percent: int) -> bool:
        return self._rng.randrange(100) < percent

    def choice(self, options: Sequence[T]) -> T:
        return options[self._rng.randrange(len(options))]

    def text(self, max_size: int) -> str:
        chars = []
        for _ in range(self._rng.randint(0, max_size)):
            roll = self._rng.randrange(10)
            if roll < 6:
                chars.append(chr(self._rng.randint(0x20, 0x7E)))
            elif roll < 9:
                chars.append(self._rng.choice(SPECIAL_CHARACTERS))
            else:
                # Any code point, surrogates included: JSON can carry them as escapes.
                chars.append(chr(self._rng.randint(0, 0x10FFFF)))
        return "".join(chars)


# --- hostile values -------------------------------------------------------------------------

SPECIAL_CHARACTERS: tuple[str, ...] = (
    "\x00",
    "\x01",
    "\x08",
    "\x1b",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\u2029",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\u202e",
    "\u200f",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\ufffd",
    "\ufffe",
    "\uffff",
    "\ufdd0",
    "\U0001fffe",
    "\U0010ffff",
    "\u0301",
    "😀",
    "é",
    "ß",
    "İ",
    "م",
    "ש",
    "中",
    '"',
    "\\",
    "/",
    "\n",
    "\r",
    "\t",
)

HOSTILE_FRAGMENTS: tuple[str, ...] = (
    "\x00",
    "a\x00b",
    "\x00" * 8,
    "\x01\x02\x07\x08\x0b\x0c\x1b\x1f\x7f",
    "\x1b[31mred\x1b[0m",
    "\x85\u2028\u2029",
    "\ud800",
    "\udfff",
    "x\udc00y",
    "\ude00\ud83d",
    "\ud83d",
    "\ud800\x00\udfff",
    "\u202eevil\u202c",
    "\u200f\u200e",
    "\u200b\u200c\u200d\u2060",
    "\ufeff",
    "\uffff\ufffe",
    "\ufdd0\ufdef",
    "\U0001fffe\U0010ffff",
    "😀",
    "👩\u200d👩\u200d👧\u200d👦",
    "🇫🇷🏳️\u200d🌈",
    "👍🏽",
    "e\u0301\u0302\u0303\u0304",
    "Z\u0337\u0322\u034ea\u0338l\u0334g\u0336o",
    "مرحبا بالعالم",
    "שלום",
    "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594",  # fraktur "Hello"
    "'; DROP TABLE whatsapp_messages; --",
    "%s %(wamid)s {} {0} $1",
    "\\u0000",
    '"},{"x":"',
    "</script><script>",
    "\r\n\r\n",
    "\t",
    "null",
)

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    *HOSTILE_FRAGMENTS,
    "0",
    "-1",
    "1.5",
    "1e400",
    "NaN",
    "١٢٣٤٥٦٧٨٩٠",
    "99999999999999999999",
    "0x1F",
    " 1749416383",
    "x" * 5_000,
    "é" * 2_000,
    "😀" * 1_000,
    "\x00" * 500,
    "\ud800" * 500,
)

# Rarely chosen: big enough to matter, small enough to keep most bodies under 1 MiB.
VERY_LONG_STRINGS: tuple[str, ...] = (
    "x" * 200_000,
    "\u00e9\u0301" * 60_000,
    "a\x00" * 50_000,
    "x" * (MAX_BODY_BYTES + 1),
)

HOSTILE_NUMBERS: tuple[int | float, ...] = (
    0,
    -1,
    1,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**400,
    -(10**400),
    0.5,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    1749416383,
    1749416383.5,
    99999999999,
    100000000000,
)


def nested_list(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


def nested_dict(depth: int) -> object:
    value: object = {}
    for _ in range(depth):
        value = {"a": value}
    return value


HOSTILE_CONTAINERS: tuple[object, ...] = (
    None,
    True,
    False,
    [],
    {},
    [None],
    {"": ""},
    [[[[[]]]]],
    [0] * 1000,
    {"\x00": "\x00"},
    {"\ud800": "\udfff"},
    # Deep, but within what Python's own json module can write (its recursion limit).
    nested_list(200),
    nested_dict(200),
)

HOSTILE_KEYS: tuple[str, ...] = (
    "",
    "\x00",
    "id\x00",
    "\ud800",
    "_raw",
    "kind",
    "webhook_event_id",
    "__proto__",
    "constructor",
    "k" * 1000,
    "😀",
    "\u202e",
    "messages",
    "id",
    "from",
    "type",
    "errors",
)


def hostile_string(c: Chooser) -> str:
    if c.chance(1):
        return c.choice(VERY_LONG_STRINGS)
    if c.chance(30):
        return c.text(12)
    return c.choice(HOSTILE_STRINGS)


def hostile_value(c: Chooser) -> object:
    kind = c.integer(0, 3)
    if kind == 0:
        return hostile_string(c)
    if kind == 1:
        return c.choice(HOSTILE_NUMBERS)
    return copy.deepcopy(c.choice(HOSTILE_CONTAINERS))


def inject(c: Chooser, text: str) -> str:
    """``text`` with a hostile fragment at its start, end or middle."""
    fragment = c.choice(HOSTILE_FRAGMENTS) if c.chance(80) else c.text(6)
    where = c.integer(0, 2)
    if where == 0:
        return fragment + text
    if where == 1:
        return text + fragment
    middle = len(text) // 2
    return text[:middle] + fragment + text[middle:]


# --- realistic parts, from Meta's examples --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Samples:
    messages: tuple[dict[str, Any], ...]
    statuses: tuple[dict[str, Any], ...]
    contacts: tuple[dict[str, Any], ...]
    errors: tuple[list[Any], ...]
    other_changes: tuple[dict[str, Any], ...]


@cache
def samples() -> Samples:
    messages: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    contacts: list[dict[str, Any]] = []
    errors: list[list[Any]] = []
    other: list[dict[str, Any]] = []
    for path in sorted(WEBHOOK_SAMPLES.glob("*.json")):
        payload = json.loads(path.read_text())
        for entry in payload["entry"]:
            for change in entry["changes"]:
                value = change["value"]
                if change["field"] != "messages":
                    other.append(change)
                    continue
                messages.extend(value.get("messages", ()))
                statuses.extend(value.get("statuses", ()))
                contacts.extend(value.get("contacts", ()))
                if "errors" in value:
                    errors.append(value["errors"])
    # Status values the samples lack.
    for state in ("deleted", "played", "warning"):
        statuses.append({**statuses[0], "status": state})
    return Samples(tuple(messages), tuple(statuses), tuple(contacts), tuple(errors), tuple(other))


@dataclass
class _Ids:
    """Fresh wamids per body: a message published earlier must not hide a lost one."""

    serial: int
    count: int = 0

    def next(self) -> str:
        self.count += 1
        return f"wamid.FZ{self.serial}x{self.count}"


def _message(c: Chooser, ids: _Ids, sender: str) -> dict[str, Any]:
    message = copy.deepcopy(c.choice(samples().messages))
    message["id"] = ids.next()
    message["from"] = sender
    message["timestamp"] = str(1_749_416_383 + c.integer(0, 10**6))
    return message


def _status(c: Chooser, ids: _Ids, recipient: str) -> dict[str, Any]:
    status = copy.deepcopy(c.choice(samples().statuses))
    status["id"] = ids.next()
    status["recipient_id"] = recipient
    status["timestamp"] = str(1_749_416_383 + c.integer(0, 10**6))
    return status


def _change(c: Chooser, ids: _Ids, parts: int) -> dict[str, Any]:
    # Roughly Meta's mix: mostly messages (0-5), statuses (4-7), now and then Meta-reported
    # errors (8) or another subscribed field (9).
    kind = c.integer(0, 9)
    if kind == 9:
        return copy.deepcopy(c.choice(samples().other_changes))
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": "15550783881",
            "phone_number_id": c.choice(PHONE_NUMBER_IDS),
        },
    }
    if kind == 8:
        value["errors"] = copy.deepcopy(c.choice(samples().errors))
        return {"field": "messages", "value": value}
    users = [c.choice(USERS) for _ in range(c.integer(1, 2))]
    if kind <= 5:
        value["contacts"] = []
        for user in users:
            contact = copy.deepcopy(c.choice(samples().contacts))
            contact["wa_id"] = user
            value["contacts"].append(contact)
        value["messages"] = [_message(c, ids, users[n % len(users)]) for n in range(parts)]
    if kind >= 4:
        value["statuses"] = [_status(c, ids, users[n % len(users)]) for n in range(parts)]
    return {"field": "messages", "value": value}


def clean_envelope(c: Chooser, serial: int, *, many: int = 300) -> dict[str, Any]:
    """A realistic webhook: mostly one to three entries, changes and parts; now and then
    ``many`` of one of them (a burst Meta batched into one POST)."""
    ids = _Ids(serial)
    shape = c.integer(0, 199)
    entries = many if shape == 197 else c.integer(1, 2)
    changes = many // 4 if shape == 198 else c.integer(1, 2)
    parts = many if shape == 199 else c.integer(1, 3)
    return {
        "object": WHATSAPP_OBJECT,
        "entry": [
            {"id": "102290129340398", "changes": [_change(c, ids, parts) for _ in range(changes)]}
            for _ in range(entries)
        ],
    }


# --- hostile structure ----------------------------------------------------------------------

_ID_KEYS = frozenset(
    ("id", "from", "timestamp", "type", "phone_number_id", "object", "field", "recipient_id")
)


def _nodes(value: object, path: str = "$") -> Iterator[tuple[dict[Any, Any] | list[Any], Any, str]]:
    """Every (container, key) slot of a decoded JSON value, with a printable path."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, dict):
            for key, item in current.items():
                slot = f"{where}.{key}" if isinstance(key, str) and key.isidentifier() else where
                yield current, key, slot
                stack.append((item, slot))
        elif isinstance(current, list):
            # Long hostile lists (a thousand zeros) hold nothing worth another mutation.
            for index, item in enumerate(current[:50]):
                yield current, index, f"{where}[{index}]"
                stack.append((item, f"{where}[{index}]"))


def _mutate_structure(c: Chooser, payload: dict[str, Any]) -> str:
    slots = list(_nodes(payload))
    if not slots:
        return "nothing left to mutate"
    container, key, path = c.choice(slots)
    value = container[key]
    operation = c.integer(0, 7)
    if operation == 0:
        container[key] = hostile_value(c)
        return f"replace {path}"
    if operation == 1:
        container[key] = inject(c, value) if isinstance(value, str) else hostile_string(c)
        return f"inject into {path}"
    if operation == 2:
        del container[key]
        return f"delete {path}"
    if operation == 3:
        if isinstance(value, dict):
            value[c.choice(HOSTILE_KEYS)] = hostile_value(c)
            return f"extra key in {path}"
        container[key] = [value]
        return f"wrap {path} in a list"
    if operation == 4:
        if isinstance(value, dict):
            container[key] = list(value.values())
        elif isinstance(value, list):
            container[key] = {str(n): item for n, item in enumerate(value)}
        else:
            container[key] = {"value": value}
        return f"wrong container at {path}"
    if operation == 5:
        if isinstance(value, list) and value:
            copies = c.choice((1, 2, 10, 100, 1000))
            value.extend(copy.deepcopy(value[-1]) for _ in range(copies))
            return f"repeat the last item of {path} {copies} times"
        container[key] = [value, value]
        return f"duplicate {path}"
    if operation == 6:
        if isinstance(value, str) and value.isdigit():
            container[key] = int(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            container[key] = str(value)
        else:
            container[key] = c.choice(HOSTILE_NUMBERS)
        return f"string/number swap at {path}"
    container[key] = bool(c.integer(0, 1))
    return f"boolean at {path}"


def _inject_content(c: Chooser, payload: dict[str, Any]) -> str | None:
    """Hostile text where users put text (bodies, names, captions): the message stays valid."""
    slots = [
        (container, key, path)
        for container, key, path in _nodes(payload)
        if isinstance(container[key], str) and key not in _ID_KEYS
    ]
    if not slots:
        return None
    container, key, path = c.choice(slots)
    container[key] = inject(c, container[key])
    return f"hostile text in {path}"


def serialize(c: Chooser, payload: object) -> bytes:
    """JSON as different senders write it; lone surrogates always travel as escapes."""
    ascii_only = c.chance(50)
    indent = 2 if c.chance(10) else None
    separators = (",", ":") if c.chance(50) else (", ", ": ")
    text = json.dumps(
        payload, ensure_ascii=ascii_only, indent=indent, separators=separators, allow_nan=False
    )
    # Python's backslashreplace writes a lone surrogate as \udxxx: a JSON escape, as Meta would.
    return text.encode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class FuzzBody:
    body: bytes
    origin: str
    # The wamids the contract says must reach the bus (empty: no promise beyond storage).
    must_publish: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()
    sha256: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.body).digest())

    def __repr__(self) -> str:
        # Failing examples are printed: a megabyte of body helps nobody.
        return f"FuzzBody({self.describe(120)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis's printer shows a dataclass field by field unless it finds this hook.
        printer.text(repr(self))

    def describe(self, limit: int = 300) -> str:
        head = self.body[:limit]
        more = f"... ({len(self.body)} bytes)" if len(self.body) > limit else ""
        notes = "; ".join(self.notes) or "no mutation"
        return f"[{self.origin}: {notes}] {head!r}{more}"


def envelope_body(c: Chooser, serial: int, *, many: int = 300) -> FuzzBody:
    """A realistic envelope with hostile leaves and structure."""
    payload = clean_envelope(c, serial, many=many)
    notes = []
    for _ in range(c.integer(0, 3)):
        note = _inject_content(c, payload)
        if note:
            notes.append(note)
    for _ in range(c.integer(0, 4) if c.chance(70) else 0):
        notes.append(_mutate_structure(c, payload))
    body = serialize(c, payload)
    return FuzzBody(body, "envelope", publishable_wamids(payload), tuple(notes))


# --- the oracle -----------------------------------------------------------------------------


def storable(text: str) -> bool:
    """Text PostgreSQL can hold as is: no NUL, no lone surrogate."""
    return "\x00" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text)


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and bool(value) and storable(value)


def _valid_timestamp(value: object) -> bool:
    if isinstance(value, str):
        return 0 < len(value) <= MAX_TIMESTAMP_DIGITS and value.isascii() and value.isdigit()
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value < 10**MAX_TIMESTAMP_DIGITS
    )


def depth(value: object) -> int:
    """Nesting depth of a JSON value, counted as the intake counts it (a scalar is 0)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        current, level = stack.pop()
        if isinstance(current, dict):
            children: Iterable[object] = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def publishable_wamids(payload: object) -> frozenset[str]:
    """The messages the intake promises to publish: those whose id, from, type and timestamp
    are valid, in a change whose route (object, entry, changes, field, value,
    metadata.phone_number_id) is intact, whatever the rest of the body holds."""
    found: set[str] = set()
    if not isinstance(payload, dict) or payload.get("object") != WHATSAPP_OBJECT:
        return frozenset()
    if depth(payload) > PROMISED_DEPTH:
        return frozenset()
    entries = payload.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            if not isinstance(change, dict) or change.get("field") != "messages":
                continue
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            messages = value.get("messages") if isinstance(value, dict) else None
            if not _valid_id(number) or not isinstance(messages, list):
                continue
            for message in messages:
                if not isinstance(message, dict):
                    continue
                wamid, sender = message.get("id"), message.get("from")
                if (
                    isinstance(wamid, str)
                    and _valid_id(wamid)
                    and _valid_id(sender)
                    and _valid_id(message.get("type"))
                    and _valid_timestamp(message.get("timestamp"))
                    and len(wamid) <= MAX_BUS_ID_LENGTH
                    and len(f"{number}:{sender}") <= MAX_BUS_ID_LENGTH
                ):
                    found.add(wamid)
    return frozenset(found)


# --- raw byte mutations ---------------------------------------------------------------------

INVALID_UTF8: tuple[bytes, ...] = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc3",  # a lead byte without its continuation
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong, three bytes
    b"\xed\xa0\x80",  # a UTF-16 surrogate written as UTF-8 (CESU-8)
    b"\xed\xa0\xbd\xed\xb8\x80",  # an emoji as a CESU-8 surrogate pair
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # five-byte form
    b"\xe2\x82",  # truncated euro sign
)
RAW_CONTROL: tuple[bytes, ...] = (b"\x00", b"\x01", b"\x1f", b"\n", b"\t", b"\x7f")
ESCAPES: tuple[bytes, ...] = (
    b"\\u0000",
    b"\\ud800",
    b"\\udfff",
    b"\\udc00\\ud800",
    b"\\uDBFF\\uDFFF",
    b"\\ud83d\\ude00",
    b"\\uD800\\u0041",
    b"\\x41",
    b"\\u12",
    b"\\uZZZZ",
    b"\\",
    b"\\U0001F600",
)
NUMBERS: tuple[bytes, ...] = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"9" * 400,
    b"-" + b"9" * 400,
    b"1" + b"0" * 400 + b".5",
    b"0." + b"0" * 400 + b"1",
    b"1e400",
    b"-1e400",
    b"1E+999999999",
    b"9" * 4300,
    b"9" * 4301,
    b"-0",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
)
TRAILERS: tuple[bytes, ...] = (b"}", b"]", b"\x00", b"garbage", b",{}", b"\xff", b"[]", b"{}{}")
NESTING_DEPTHS: tuple[int, ...] = (100, 500, 900, 960, 990, 1000, 1100, 5000, 100_000)
WHOLE_BODIES: tuple[bytes, ...] = (
    b"",
    b" ",
    b"\n\t\r ",
    b"null",
    b"true",
    b"0",
    b'"whatsapp_business_account"',
    b"[]",
    b"{}",
    b'{"object":null}',
    b'{"object":"whatsapp_business_account"}',
    b'{"object":"whatsapp_business_account","entry":{}}',
    b'{"object":"whatsapp_business_account","entry":[null,1,"x",[],{}]}',
    b"\x00",
    b"\xff\xfe",
    b"{",
    b"[" * 100_000,
    b"{" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
)


_JSON_STRING = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)


def _string_spans(body: bytes) -> list[tuple[int, int]]:
    """(start, end) of the inside of every JSON string of a well-formed body."""
    return [match.span(1) for match in _JSON_STRING.finditer(body)]


def _inside_a_string(c: Chooser, body: bytes) -> int:
    spans = _string_spans(body)
    if not spans:
        return c.integer(0, len(body))
    start, end = c.choice(spans)
    position = c.integer(start, end)
    # Never between a backslash and what it escapes.
    while position > start and body[position - 1] == 0x5C:
        position -= 1
    return position


def _after_an_open_brace(c: Chooser, body: bytes) -> int | None:
    """Just after a '{' that opens a non-empty object: room for one more member."""
    # In the well-formed JSON these mutations start from, '{"' occurs only where an object
    # opens; inside a string the quote would be escaped.
    braces: list[int] = []
    at = body.find(b'{"')
    while at >= 0 and len(braces) < 10_000:
        braces.append(at + 1)
        at = body.find(b'{"', at + 1)
    return c.choice(braces) if braces else None


def _byte_mutation(c: Chooser, body: bytes) -> tuple[bytes, str, bool]:
    """One mutation: (body, note, whether the body still means the same)."""
    operation = c.integer(0, 12)
    if operation == 0:
        cut = c.integer(0, max(0, len(body) - 1))
        return body[:cut], f"truncate at {cut}", False
    if operation == 1:
        at = c.integer(0, max(0, len(body) - 1))
        mask = c.choice((0x01, 0x20, 0x40, 0x80, 0xFF))
        flipped = bytes([body[at] ^ mask]) if body else b""
        return body[:at] + flipped + body[at + 1 :], f"flip byte {at} with {mask:#x}", False
    if operation == 2:
        at = _inside_a_string(c, body)
        junk = c.choice(INVALID_UTF8)
        return body[:at] + junk + body[at:], f"invalid UTF-8 {junk!r} at {at}", False
    if operation == 3:
        at = _inside_a_string(c, body)
        junk = c.choice(RAW_CONTROL)
        return body[:at] + junk + body[at:], f"raw control {junk!r} at {at}", False
    if operation == 4:
        at = _inside_a_string(c, body)
        escape = c.choice(ESCAPES)
        return body[:at] + escape + body[at:], f"escape {escape!r} at {at}", False
    if operation == 5:
        bom = c.choice((b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe"))
        return bom + body, f"BOM {bom!r}", False
    if operation == 6:
        tail = c.choice(TRAILERS)
        return body + tail, f"trailing {tail!r}", False
    if operation == 7:
        space = c.choice((b" ", b"\n", b"\r\n", b"\t", b" \n\t\r " * 20))
        if c.chance(50):
            return space + body, "leading whitespace", True
        return body + space, "trailing whitespace", True
    if operation == 8:
        slot = _after_an_open_brace(c, body)
        depth = c.choice(NESTING_DEPTHS)
        nest = (
            b"[" * depth + b"]" * depth if c.chance(50) else b'{"a":' * depth + b"1" + b"}" * depth
        )
        if slot is None:
            return nest, f"nesting {depth} deep", False
        return body[:slot] + b'"fz":' + nest + b"," + body[slot:], f"nesting {depth} deep", False
    if operation == 9:
        slot = _after_an_open_brace(c, body)
        key = c.choice((b"object", b"entry", b"id", b"from", b"type", b"timestamp", b"messages"))
        value = c.choice((b"null", b'"dup"', b"1", b"[]", b"{}", b'"whatsapp_business_account"'))
        member = b'"' + key + b'":' + value + b","
        if slot is None:
            return body, "no object for a duplicate key", True
        return body[:slot] + member + body[slot:], f"duplicate key {member!r}", False
    if operation == 10:
        number = c.choice(NUMBERS)
        slot = _after_an_open_brace(c, body)
        if c.chance(50) and b'"timestamp":"' in body:
            start = body.index(b'"timestamp":"') + len(b'"timestamp":')
            end = body.index(b'"', start + 1) + 1
            return body[:start] + number + body[end:], f"timestamp {number[:20]!r}", False
        if slot is None:
            return number, f"number {number[:20]!r}", False
        return (
            body[:slot] + b'"fz":' + number + b"," + body[slot:],
            f"number {number[:20]!r}",
            False,
        )
    if operation == 11:
        whole = c.choice(WHOLE_BODIES)
        return whole, f"whole body {whole[:30]!r}", False
    if not c.chance(10):
        return body.replace(b":", b": ", c.integer(1, 5)), "spaces after colons", True
    # Right at the limit (accepted) or one byte over (413): whitespace keeps the meaning.
    size = MAX_BODY_BYTES + c.choice((0, 1))
    if len(body) > size:
        return body, "already over the size", True
    return body + b" " * (size - len(body)), f"padded to {size} bytes", True


def mutated_body(c: Chooser, serial: int) -> FuzzBody:
    """The raw bytes of a clean envelope, mutated one to a few times."""
    payload = clean_envelope(c, serial, many=20)
    body = serialize(c, payload)
    notes = []
    same_meaning = True
    for _ in range(c.integer(1, 3)):
        body, note, preserved = _byte_mutation(c, body)
        notes.append(note)
        same_meaning = same_meaning and preserved
    must_publish = publishable_wamids(payload) if same_meaning else frozenset()
    return FuzzBody(body, "bytes", must_publish, tuple(notes))


def any_body(c: Chooser, serial: int, *, many: int = 300) -> FuzzBody:
    if c.chance(55):
        return envelope_body(c, serial, many=many)
    return mutated_body(c, serial)
