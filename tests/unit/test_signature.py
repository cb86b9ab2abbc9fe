"""X-Hub-Signature-256: the only gate in front of the webhook, so every malformed form is tried."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign, verify_signature

SECRET = "test-app-secret"
BODY = b'{"object":"whatsapp_business_account","entry":[]}'
# Computed once with hmac.new(SECRET, BODY, sha256) and pinned, so a change in sign() shows.
BODY_SIGNATURE = "sha256=c84a394cc475525991e78ff16e430b02e47f953877d2af0ade26956ce6f384dc"
# The published HMAC-SHA256 example ("key", "The quick brown fox jumps over the lazy dog").
FOX_BODY = b"The quick brown fox jumps over the lazy dog"
FOX_SIGNATURE = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_header_name() -> None:
    assert SIGNATURE_HEADER == "X-Hub-Signature-256"


def test_sign_matches_hmac_sha256_of_the_raw_bytes() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == f"sha256={expected}"


@pytest.mark.parametrize(
    ("body", "secret", "header"),
    [(BODY, SECRET, BODY_SIGNATURE), (FOX_BODY, "key", FOX_SIGNATURE)],
)
def test_fixed_vectors(body: bytes, secret: str, header: str) -> None:
    assert sign(body, secret) == header
    assert verify_signature(body, header, secret)


def test_round_trip_on_binary_and_empty_bodies() -> None:
    for body in (b"", b"\x00\xff" * 1000, "héllo ✓".encode()):
        assert verify_signature(body, sign(body, SECRET), SECRET)


def test_upper_case_hex_and_surrounding_whitespace_are_accepted() -> None:
    upper = "sha256=" + BODY_SIGNATURE.removeprefix("sha256=").upper()
    assert verify_signature(BODY, upper, SECRET)
    assert verify_signature(BODY, f"  {BODY_SIGNATURE}\t\n", SECRET)


def test_wrong_secret() -> None:
    assert not verify_signature(BODY, BODY_SIGNATURE, "another-secret")


def test_tampered_body() -> None:
    assert not verify_signature(BODY + b" ", BODY_SIGNATURE, SECRET)
    assert not verify_signature(BODY.replace(b"[]", b"[{}]"), BODY_SIGNATURE, SECRET)


@pytest.mark.parametrize("header", [None, "", "   ", "sha256=", "sha256"])
def test_missing_or_empty_header(header: str | None) -> None:
    assert not verify_signature(BODY, header, SECRET)


def test_sha1_prefix_is_refused_even_with_a_valid_sha1() -> None:
    sha1 = hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    assert not verify_signature(BODY, f"sha1={sha1}", SECRET)
    digest = BODY_SIGNATURE.removeprefix("sha256=")
    assert not verify_signature(BODY, f"sha1={digest}", SECRET)


@pytest.mark.parametrize(
    "header",
    [
        BODY_SIGNATURE[:-1],  # one hex digit short
        BODY_SIGNATURE + "0",  # one too many
        BODY_SIGNATURE[:-2],
        BODY_SIGNATURE + BODY_SIGNATURE.removeprefix("sha256="),
        BODY_SIGNATURE.removeprefix("sha256="),  # bare hex, no prefix
        "SHA256=" + BODY_SIGNATURE.removeprefix("sha256="),
        "sha256 =" + BODY_SIGNATURE.removeprefix("sha256=")[1:],
        BODY_SIGNATURE[:-2] + "zz",  # not hex
        BODY_SIGNATURE[:-4] + " 4dc",  # a space inside, same length
        BODY_SIGNATURE + "," + BODY_SIGNATURE,  # two values
        "sha256=" + "é" * 64,
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    assert not verify_signature(BODY, header, SECRET)


def test_empty_secret_never_verifies() -> None:
    assert not verify_signature(BODY, sign(BODY, ""), "")


def test_wrong_types_do_not_raise() -> None:
    assert not verify_signature(BODY, b"sha256=00", SECRET)  # type: ignore[arg-type]
    assert not verify_signature("text", BODY_SIGNATURE, SECRET)  # type: ignore[arg-type]
