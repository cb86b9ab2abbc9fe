"""Reading a signed webhook body as JSON, as leniently as the JSON grammar allows.

Meta signs the bytes, so whatever they hold is Meta's and must be kept: a body that decodes is
used even when parts of it cannot be stored as they are. Two things PostgreSQL refuses in
``text`` and ``jsonb`` are legal in JSON, and one more is a common encoder slip:

- ``\\u0000`` (NUL) inside a string;
- a lone surrogate escape such as ``\\ud800`` (legal by the grammar, not a character);
- raw bytes that are not UTF-8 inside a string.

Each is replaced by U+FFFD in the decoded value (the raw body is stored as it came) and named in
:attr:`DecodedBody.repairs`, so the stored row says what was changed. What is left unreadable
(not JSON at all, ``NaN``/``Infinity``, nesting deeper than :data:`MAX_DEPTH`) raises
:class:`UnreadableBody` with a reason that quotes nothing of the body.

The fast path is one msgspec decode plus a substring test; the repairs cost only the bodies
that need them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

import msgspec

__all__ = [
    "MAX_DEPTH",
    "REPLACEMENT",
    "DecodedBody",
    "UnreadableBody",
    "decode_json_body",
    "storable",
    "text_for_postgres",
]

REPLACEMENT: Final = "\ufffd"
# Meta's deepest payloads (an nfm_reply inside an interactive inside a message inside a change)
# are about ten levels deep; far deeper nesting is an attack on the recursive code downstream
# (encoders, PostgreSQL's jsonb parser), not a webhook.
MAX_DEPTH: Final = 64

_decoder = msgspec.json.Decoder()
_NUL_ESCAPE = b"\\u0000"
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
_NUL_REPLACED = "NUL characters replaced"
_SURROGATES_REPLACED = "lone surrogates replaced"


class UnreadableBody(ValueError):
    """The body is not JSON we can read; the message names the problem, never the content."""


@dataclass(frozen=True, slots=True)
class DecodedBody:
    payload: Any
    # What was replaced to make the payload storable, for the stored row's reason.
    repairs: tuple[str, ...] = ()


def decode_json_body(body: bytes) -> DecodedBody:
    """Decode ``body``; raises :class:`UnreadableBody` only for what cannot be read at all."""
    try:
        payload = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _decode_leniently(body)
    except RecursionError:
        raise UnreadableBody(_TOO_DEEP) from None
    if _NUL_ESCAPE in body:
        payload, repairs = _repaired(payload)
        return DecodedBody(payload, repairs)
    # Counting brackets is C-speed; only a body with more of them than the depth bound can
    # be nested that deep, so ordinary bodies are never walked.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check_depth(payload)
    return DecodedBody(payload)


def storable(value: Any) -> Any:
    """A copy of a JSON value with every string (keys too) as :func:`text_for_postgres` makes
    it: for values from elsewhere (an agent's reply) on their way to ``text``/``jsonb``."""
    return _walk(value, set())


def text_for_postgres(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced: what a ``text`` column accepts."""
    if "\x00" not in text and text.isascii():
        return text
    return _clean(text)


def _decode_leniently(body: bytes) -> DecodedBody:
    """The slow path, for what msgspec refused: bytes that are not UTF-8 (replaced), lone
    surrogate escapes (the stdlib decoder reads them), numbers out of range (refused)."""
    repairs: tuple[str, ...] = ()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("utf-8", errors="replace")
        repairs = ("invalid UTF-8 replaced",)
    try:
        payload = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise UnreadableBody(_TOO_DEEP) from None
    except ValueError as error:
        raise UnreadableBody(_json_error(error)) from None
    payload, found = _repaired(payload)
    return DecodedBody(payload, repairs + found)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if math.isinf(number):
        # jsonb and msgspec's encoder have no infinity: it would fail every later step.
        raise ValueError("a number is out of range")
    return number


def _json_error(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        # Its .msg names the problem ("Expecting value"); its str() would quote positions only,
        # but .doc holds the body: never use it.
        return f"body is not valid JSON: {error.msg} (character {error.pos})"
    return f"body is not valid JSON: {error}"


def _repaired(payload: Any) -> tuple[Any, tuple[str, ...]]:
    """A copy with every string made storable, and what had to be replaced."""
    found: set[str] = set()
    cleaned = _walk(payload, found)
    return cleaned, tuple(sorted(found))


def _check_depth(payload: Any) -> None:
    # Iterative: the point is to refuse what recursion would choke on.
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise UnreadableBody(_TOO_DEEP)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _walk(payload: Any, found: set[str]) -> Any:
    """Rebuild ``payload`` with clean strings, without recursion and with a depth bound."""
    root: list[Any] = [None]
    # (source container, target container, key in target or index, depth)
    stack: list[tuple[Any, Any, Any, int]] = [(payload, root, 0, 1)]
    while stack:
        value, target, slot, depth = stack.pop()
        if isinstance(value, str):
            target[slot] = _clean_noting(value, found)
        elif isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise UnreadableBody(_TOO_DEEP)
            copy: dict[str, Any] = {}
            target[slot] = copy
            for key, child in value.items():
                clean_key = _clean_noting(key, found)
                copy[clean_key] = None
                stack.append((child, copy, clean_key, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                raise UnreadableBody(_TOO_DEEP)
            items: list[Any] = [None] * len(value)
            target[slot] = items
            stack.extend((child, items, i, depth + 1) for i, child in enumerate(value))
        else:
            target[slot] = value
    return root[0]


def _clean_noting(text: str, found: set[str]) -> str:
    if text.isascii() and "\x00" not in text:
        return text
    if "\x00" in text:
        found.add(_NUL_REPLACED)
        text = text.replace("\x00", REPLACEMENT)
    if _has_lone_surrogate(text):
        found.add(_SURROGATES_REPLACED)
        text = _without_surrogates(text)
    return text


def _clean(text: str) -> str:
    text = text.replace("\x00", REPLACEMENT)
    return _without_surrogates(text) if _has_lone_surrogate(text) else text


def _has_lone_surrogate(text: str) -> bool:
    # A str holds surrogates only unpaired (a decoded pair is one code point); only they fail
    # to encode as UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _without_surrogates(text: str) -> str:
    return "".join(REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
