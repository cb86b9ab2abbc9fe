"""Opaque, signed keyset cursors for the management API's pages.

A cursor holds the sort key of the last row of a page. It is signed (HMAC-SHA256, truncated to
128 bits) over the operation and the filters it was made for, so a client can neither forge a
position nor reuse a cursor with other filters: either gives 400, not a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

import msgspec

from shared_code.management.problems import InvalidRequest

__all__ = ["CursorSigner"]

_MAC_BYTES = 16
_MAX_CURSOR_LENGTH = 512
Position = list[str | int | None]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def derived_from(cls, app_secret: str) -> CursorSigner:
        """A signing key every instance derives alike, without another setting to keep."""
        return cls(hmac.new(app_secret.encode(), b"management-cursor-v1", hashlib.sha256).digest())

    def _mac(self, scope: str, filters: Mapping[str, object], payload: bytes) -> bytes:
        context = msgspec.json.encode([scope, sorted((k, str(v)) for k, v in filters.items())])
        return hmac.new(self._secret, context + b"\0" + payload, hashlib.sha256).digest()[
            :_MAC_BYTES
        ]

    def encode(self, scope: str, filters: Mapping[str, object], position: Sequence[object]) -> str:
        payload = msgspec.json.encode(list(position))
        return f"{_b64(payload)}.{_b64(self._mac(scope, filters, payload))}"

    def decode(self, scope: str, filters: Mapping[str, object], cursor: str) -> Position:
        invalid = InvalidRequest(
            "the cursor is invalid or was made for other filters", code="invalid_cursor"
        )
        if len(cursor) > _MAX_CURSOR_LENGTH or cursor.count(".") != 1:
            raise invalid
        encoded_payload, encoded_mac = cursor.split(".")
        try:
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (binascii.Error, ValueError):
            raise invalid from None
        if not hmac.compare_digest(mac, self._mac(scope, filters, payload)):
            raise invalid
        try:
            return msgspec.json.decode(payload, type=Position)
        except msgspec.DecodeError:
            raise invalid from None
