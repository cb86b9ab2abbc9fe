"""Meta's error answers → the error class the sender switches on."""

from __future__ import annotations

import json

import httpx
import pytest

import shared_code.whatsapp.errors as errors_module
from shared_code.whatsapp.errors import (
    AccountRestrictedError,
    AuthError,
    GraphApiError,
    PairRateLimitError,
    PermanentError,
    RetryableError,
    ThrottledError,
    TransportError,
    UnexpectedResponseError,
    WindowClosedError,
    error_from_response,
    error_from_transport,
)

PHONE = "+16505551234"


def meta_error(code: int | str, *, message: str = "(#0) Something", **extra: object) -> bytes:
    """A body shaped like Meta's error answers."""
    error = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": "More detail"},
        "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam",
        **extra,
    }
    return json.dumps({"error": error}).encode()


# Every row of the error table in shared/whatsapp-facts.md, with the HTTP status Meta uses.
FACTS_TABLE = [
    (130429, 400, ThrottledError),
    (131056, 400, PairRateLimitError),
    (4, 400, ThrottledError),
    (80007, 400, ThrottledError),
    (131057, 400, ThrottledError),
    (131047, 400, WindowClosedError),
    (131026, 400, PermanentError),
    (131048, 400, PermanentError),
    (131049, 400, PermanentError),
    (131050, 400, PermanentError),
    (132000, 400, PermanentError),
    (132001, 404, PermanentError),
    (132005, 400, PermanentError),
    (132012, 400, PermanentError),
    (190, 401, AuthError),
    (100, 400, PermanentError),
    (131008, 400, PermanentError),
    (131009, 400, PermanentError),
    (131000, 500, RetryableError),
    (1, 400, RetryableError),
    (2, 503, RetryableError),
    (368, 403, AccountRestrictedError),
    (131031, 403, AccountRestrictedError),
]


@pytest.mark.parametrize(("code", "status", "expected"), FACTS_TABLE)
def test_each_documented_code_maps_to_its_class(
    code: int, status: int, expected: type[GraphApiError]
) -> None:
    error = error_from_response(status, meta_error(code))
    assert type(error) is expected
    assert error.code == code
    assert error.http_status == status


@pytest.mark.parametrize(
    ("error_class", "retryable"),
    [
        (ThrottledError, True),
        (PairRateLimitError, True),
        (RetryableError, True),
        (TransportError, True),
        (WindowClosedError, False),
        (AuthError, False),
        (PermanentError, False),
        (AccountRestrictedError, False),
    ],
)
def test_retryable_flag(error_class: type[GraphApiError], retryable: bool) -> None:
    assert error_class.retryable is retryable


def test_account_restricted_is_permanent() -> None:
    assert issubclass(AccountRestrictedError, PermanentError)
    assert issubclass(TransportError, RetryableError)


def test_fields_are_kept() -> None:
    error = error_from_response(
        400, meta_error(131047, message="(#131047) Re-engagement message", error_subcode=2494010)
    )
    assert error.title == "(#131047) Re-engagement message"
    assert error.subcode == 2494010
    assert error.details == "More detail"
    assert error.fbtrace_id == "Az8or2yhqkZfEZ-_4Qn_Bam"
    assert str(error) == (
        "(#131047) Re-engagement message (code 131047, subcode 2494010, HTTP 400)"
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, b"", RetryableError),
        (503, b"<html><body>Service Unavailable</body></html>", RetryableError),
        (502, b'{"error": "Bad gateway"}', RetryableError),
        (400, b"<html>Bad Request</html>", PermanentError),
        (404, b"null", PermanentError),
        (401, b"", AuthError),
        (429, b"Too Many Requests", ThrottledError),
        (500, meta_error(999999), RetryableError),  # unknown code on a 5xx
        (400, meta_error(999999), PermanentError),  # unknown code on a 4xx
        (500, meta_error(131026), PermanentError),  # a known code wins over the status
    ],
)
def test_bodies_without_a_known_code_fall_back_on_the_status(
    status: int, body: bytes, expected: type[GraphApiError]
) -> None:
    error = error_from_response(status, body)
    assert type(error) is expected
    assert error.http_status == status
    assert f"HTTP {status}" in str(error)


def test_code_survives_malformed_neighbours() -> None:
    body = json.dumps(
        {"error": {"code": "130429", "error_data": "not an object", "message": 12}}
    ).encode()
    error = error_from_response(400, body)
    assert type(error) is ThrottledError
    assert error.code == 130429
    assert error.details is None
    assert error.title == "HTTP 400 from the Graph API"


def test_details_and_phone_numbers_stay_out_of_the_message() -> None:
    body = meta_error(
        131030,
        message=f"(#131030) Recipient phone number {PHONE} not in allowed list",
        error_data={"details": f"Add {PHONE} to the allowed list"},
    )
    error = error_from_response(400, body)
    assert PHONE in (error.details or "")
    for text in (str(error), repr(error)):
        assert PHONE not in text
        assert "5551234" not in text
        assert "to the allowed list" not in text  # details
    assert "(code 131030, HTTP 400)" in str(error)


@pytest.mark.parametrize(
    ("exception", "may_have_been_sent"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow handshake"), False),
        (httpx.PoolTimeout("pool full"), False),
        (httpx.ProxyError("tunnel failed"), False),
        (httpx.UnsupportedProtocol("ftp"), False),
        (httpx.LocalProtocolError("bad header"), False),
        (httpx.WriteTimeout("stalled"), False),
        (httpx.WriteError("broken pipe"), False),
        (httpx.ReadTimeout("no answer"), True),
        (httpx.ReadError("reset"), True),
        (httpx.RemoteProtocolError("server disconnected"), True),
        (httpx.DecodingError("bad gzip"), True),
        (httpx.NetworkError("something new"), True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_transport_failures_say_whether_the_request_may_have_been_sent(
    exception: httpx.RequestError, may_have_been_sent: bool
) -> None:
    error = error_from_transport(exception)
    assert isinstance(error, TransportError)
    assert error.request_may_have_been_sent is may_have_been_sent
    assert error.retryable
    assert error.__cause__ is exception
    assert type(exception).__name__ in str(error)


def test_unexpected_2xx_is_an_ambiguous_transport_error() -> None:
    error = UnexpectedResponseError("no message id", http_status=200)
    assert isinstance(error, TransportError)
    assert error.request_may_have_been_sent is True
    assert error.http_status == 200


def test_public_api() -> None:
    assert set(errors_module.__all__) == {
        "AccountRestrictedError",
        "AuthError",
        "GraphApiError",
        "MediaTooLargeError",
        "PairRateLimitError",
        "PermanentError",
        "RetryableError",
        "ThrottledError",
        "TransportError",
        "UnexpectedResponseError",
        "WindowClosedError",
        "error_from_response",
        "error_from_transport",
    }
