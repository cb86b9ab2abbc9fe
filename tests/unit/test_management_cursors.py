"""Keyset cursors: opaque, signed over the operation and its filters; anything else is a 400."""

from __future__ import annotations

import base64

import msgspec
import pytest

from shared_code.management.cursors import CursorSigner
from shared_code.management.problems import InvalidRequest

SIGNER = CursorSigner.derived_from("test-app-secret")
FILTERS: dict[str, object] = {"status": "open", "agent": "echo"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize(
    "position", [[1], [9_223_372_036_854_775_807], ["2026-01-01T00:00:00Z", 42], [None, 7]]
)
def test_a_cursor_round_trips(position: list[object]) -> None:
    cursor = SIGNER.encode("conversations", FILTERS, position)
    assert SIGNER.decode("conversations", FILTERS, cursor) == position


def test_a_cursor_is_url_safe_and_opaque() -> None:
    cursor = SIGNER.encode("contacts", {"search": "Sheena"}, [12345])
    assert all(c.isalnum() or c in "-_." for c in cursor)
    assert "Sheena" not in cursor


def test_filter_order_does_not_matter() -> None:
    cursor = SIGNER.encode("conversations", {"status": "open", "agent": "echo"}, [5])
    assert SIGNER.decode("conversations", {"agent": "echo", "status": "open"}, cursor) == [5]


def test_the_same_secret_on_another_instance_reads_the_cursor() -> None:
    cursor = SIGNER.encode("contacts", {}, [3])
    assert CursorSigner.derived_from("test-app-secret").decode("contacts", {}, cursor) == [3]


def _refused(scope: str, filters: dict[str, object], cursor: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        SIGNER.decode(scope, filters, cursor)
    assert refused.value.status == 400
    assert refused.value.code == "invalid_cursor"


def test_a_tampered_payload_is_refused() -> None:
    cursor = SIGNER.encode("contacts", {}, [100])
    payload, mac = cursor.split(".")
    forged = _b64(msgspec.json.encode([99_999])) + "." + mac
    _refused("contacts", {}, forged)
    # One flipped character anywhere in the payload.
    flipped = ("A" if payload[0] != "A" else "B") + payload[1:]
    _refused("contacts", {}, f"{flipped}.{mac}")


def test_a_tampered_mac_is_refused() -> None:
    cursor = SIGNER.encode("contacts", {}, [100])
    payload, mac = cursor.split(".")
    raw = bytearray(_unb64(mac))
    raw[-1] ^= 1
    _refused("contacts", {}, f"{payload}.{_b64(bytes(raw))}")
    _refused("contacts", {}, f"{payload}.{mac[:-2]}")
    _refused("contacts", {}, f"{payload}.")


def test_a_cursor_made_for_other_filters_is_refused() -> None:
    cursor = SIGNER.encode("conversations", FILTERS, [100])
    _refused("conversations", {"status": "closed", "agent": "echo"}, cursor)
    _refused("conversations", {"status": "open"}, cursor)
    _refused("conversations", {**FILTERS, "contact_id": 3}, cursor)
    _refused("conversations", {}, cursor)


def test_a_cursor_of_another_scope_is_refused() -> None:
    cursor = SIGNER.encode("messages:1", {}, [100])
    _refused("messages:2", {}, cursor)
    _refused("contacts", {}, cursor)


def test_a_cursor_signed_with_another_secret_is_refused() -> None:
    cursor = CursorSigner.derived_from("another-secret").encode("contacts", {}, [100])
    _refused("contacts", {}, cursor)


@pytest.mark.parametrize(
    "cursor",
    ["", ".", "abc", "a.b.c", "!!!.###", "é.é", "x" * 600, "a" * 300 + "." + "b" * 300],
)
def test_garbage_is_refused(cursor: str) -> None:
    _refused("contacts", {}, cursor)


def test_a_signed_payload_that_is_not_a_position_is_refused() -> None:
    # Only reachable with the secret: still a 400, never an exception.
    for payload in (b"{}", b"not json", b'"text"'):
        mac = SIGNER._mac("contacts", {}, payload)
        _refused("contacts", {}, f"{_b64(payload)}.{_b64(mac)}")
