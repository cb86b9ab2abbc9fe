"""Graph API failures as a small hierarchy the sender can switch on.

Modelled on pywa's errors: each class declares the Meta error codes it stands for, and
:func:`error_from_response` picks the class from the code (then from the HTTP status when the
code is unknown or missing). ``retryable`` says whether the same request may be sent again later.

Error tree::

    GraphApiError
    ├── ThrottledError             130429, 4, 80007, 131057: back off, then retry
    ├── PairRateLimitError         131056: retry this recipient later
    ├── WindowClosedError          131047: free-form needs an open 24-h window; send a template
    ├── AuthError                  190, 0, 3, 10, 200-299, or HTTP 401: alert an operator
    ├── RetryableError             131000, 1, 2, 131016, 133004, any HTTP 5xx without a known code
    │   └── TransportError         no usable answer; see ``request_may_have_been_sent``
    │       └── UnexpectedResponseError  a 2xx whose body is not what Meta documents
    └── PermanentError             everything else (131026, 131048-50, 132000..., 100, ...)
        ├── AccountRestrictedError 368, 131031: stop sending, alert
        └── MediaTooLargeError     a media download over the caller's size cap

``str(error)`` shows Meta's title, code and HTTP status only. Meta's ``error_data.details`` can
name the recipient's phone number, so it stays in :attr:`GraphApiError.details` (stored with the
failed message, never logged), and long digit runs in the title are masked as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import msgspec

__all__ = [
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
]

# A phone number or similar identifier in free text; Meta's codes have at most 6 digits.
_LONG_DIGIT_RUN = re.compile(r"\+?\d[\d \-]{5,}\d")


class GraphApiError(Exception):
    """A request to the Graph API failed; ``code`` and the class say how."""

    codes: ClassVar[frozenset[int]] = frozenset()
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        title: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        details: str | None = None,
        http_status: int | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(title)
        self.title = title
        self.code = code
        self.subcode = subcode
        self.details = details
        self.http_status = http_status
        self.fbtrace_id = fbtrace_id

    def __str__(self) -> str:
        facts = [f"code {self.code}"] if self.code is not None else []
        if self.subcode is not None:
            facts.append(f"subcode {self.subcode}")
        if self.http_status is not None:
            facts.append(f"HTTP {self.http_status}")
        title = _LONG_DIGIT_RUN.sub("<number>", self.title)
        return f"{title} ({', '.join(facts)})" if facts else title

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, subcode={self.subcode!r}, "
            f"http_status={self.http_status!r}, fbtrace_id={self.fbtrace_id!r})"
        )


class ThrottledError(GraphApiError):
    """Throughput or app/account rate limit (131057: a throughput upgrade is in progress)."""

    codes = frozenset({130429, 4, 80007, 131057})
    retryable = True


class PairRateLimitError(GraphApiError):
    """Too many messages to one user in a short time; other recipients are unaffected."""

    codes = frozenset({131056})
    retryable = True


class WindowClosedError(GraphApiError):
    """More than 24 h since the user last wrote: only a template can reach them now."""

    codes = frozenset({131047})


class AuthError(GraphApiError):
    """The access token is invalid or expired, or lacks a permission; retrying will not help."""

    # Meta's "Authorization errors": 0 AuthException, 3 API method, 10 permission denied,
    # 190 access token expired, 200-299 API permission.
    codes = frozenset({0, 3, 10, 190, *range(200, 300)})


class RetryableError(GraphApiError):
    """A temporary failure on Meta's side or on the way there: the request may be sent again."""

    # 1 API unknown, 2 API service, 131000 something went wrong, 131016 service unavailable,
    # 133004 server temporarily unavailable.
    codes = frozenset({1, 2, 131000, 131016, 133004})
    retryable = True


class TransportError(RetryableError):
    """No usable answer from the Graph API (network failure, timeout, garbled response).

    ``request_may_have_been_sent`` is the one fact a sender of messages needs: ``False`` means
    Meta cannot have acted on the request, so sending it again cannot duplicate it; ``True``
    means it may have been delivered, so resending blindly could message the user twice.
    """

    def __init__(self, title: str, *, request_may_have_been_sent: bool) -> None:
        super().__init__(title)
        self.request_may_have_been_sent = request_may_have_been_sent

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.title!r}, "
            f"request_may_have_been_sent={self.request_may_have_been_sent})"
        )


class UnexpectedResponseError(TransportError):
    """Meta answered 2xx with a body we cannot read (no ``messages[0].id``, not JSON, ...).

    A 2xx means Meta accepted the request, so for a send the message has probably gone out
    without us learning its wamid: treat it like any ambiguous send and wait for a status
    webhook (they echo ``biz_opaque_callback_data``) before sending again.
    """

    def __init__(self, title: str, *, http_status: int) -> None:
        super().__init__(title, request_may_have_been_sent=True)
        self.http_status = http_status


class PermanentError(GraphApiError):
    """The request itself is wrong or cannot be delivered; sending it again will fail again."""

    # Listed for the record (any unknown code lands here too): 131026 undeliverable,
    # 131048 spam rate limit, 131049 ecosystem engagement, 131050 user stopped marketing,
    # 132000-132012 template problems, 100 invalid parameter, 131008 required parameter
    # missing, 131009 parameter value invalid.
    codes = frozenset(
        {131026, 131048, 131049, 131050, 132000, 132001, 132005, 132012, 100, 131008, 131009}
    )


class AccountRestrictedError(PermanentError):
    """The business account is restricted or locked (368, 131031): stop sending, alert."""

    codes = frozenset({368, 131031})


class MediaTooLargeError(PermanentError):
    """A media file is larger than the caller accepts; downloading it again will not shrink it."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"media is larger than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


_CLASS_BY_CODE: Mapping[int, type[GraphApiError]] = {
    code: error_class
    for error_class in (
        ThrottledError,
        PairRateLimitError,
        WindowClosedError,
        AuthError,
        RetryableError,
        PermanentError,
        AccountRestrictedError,
    )
    for code in error_class.codes
}


def error_from_response(http_status: int, body: bytes) -> GraphApiError:
    """The error for a non-2xx answer; any body is accepted (HTML, empty, partial JSON).

    Fields are read one by one, so a malformed part (say ``error_data`` as a string) loses only
    itself, never the code that decides the class.
    """
    error = _error_object(body)
    code = _integer(error.get("code"))
    error_data = error.get("error_data")
    return _class_for(code, http_status)(
        _text(error.get("message")) or f"HTTP {http_status} from the Graph API",
        code=code,
        subcode=_integer(error.get("error_subcode")),
        details=_text(error_data.get("details")) if isinstance(error_data, dict) else None,
        http_status=http_status,
        fbtrace_id=_text(error.get("fbtrace_id")),
    )


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return {}
    error = decoded.get("error") if isinstance(decoded, dict) else None
    return error if isinstance(error, dict) else {}


def _integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _class_for(code: int | None, http_status: int) -> type[GraphApiError]:
    if code is not None and code in _CLASS_BY_CODE:
        return _CLASS_BY_CODE[code]
    if http_status == httpx.codes.UNAUTHORIZED:
        return AuthError
    if http_status == httpx.codes.TOO_MANY_REQUESTS:
        return ThrottledError
    if http_status >= httpx.codes.INTERNAL_SERVER_ERROR:
        return RetryableError
    return PermanentError


# Whether the request can have reached Meta whole, per httpx exception (checked in this order,
# so a subclass must come before its base class):
_SENT_BY_EXCEPTION: tuple[tuple[type[Exception], bool], ...] = (
    # No connection was made: DNS, TCP or TLS failed before a byte of the request left.
    (httpx.ConnectError, False),
    (httpx.ConnectTimeout, False),
    # Waited for a free connection from our own pool; nothing was written.
    (httpx.PoolTimeout, False),
    # The proxy tunnel could not be opened, or the URL is unusable: nothing reached Meta.
    (httpx.ProxyError, False),
    (httpx.UnsupportedProtocol, False),
    # httpx refused to write a malformed request.
    (httpx.LocalProtocolError, False),
    # The request body was not written completely (writing stalled or the socket broke), and
    # the server cannot act on a JSON body it did not receive whole (we always send a
    # Content-Length, so it knows the body is incomplete).
    (httpx.WriteTimeout, False),
    (httpx.WriteError, False),
    # The whole request was written; the answer was slow, cut off or malformed. Meta may well
    # have acted on it.
    (httpx.ReadTimeout, True),
    (httpx.ReadError, True),
    (httpx.RemoteProtocolError, True),
)


def error_from_transport(error: httpx.RequestError) -> TransportError:
    """The :class:`TransportError` for an httpx failure, with its ambiguity decided.

    Anything not listed in ``_SENT_BY_EXCEPTION`` (a new httpx exception, a failure while
    decoding an answer that did arrive) counts as possibly sent: the cautious side.
    """
    may_have_been_sent = next(
        (sent for kind, sent in _SENT_BY_EXCEPTION if isinstance(error, kind)), True
    )
    transport_error = TransportError(
        f"{type(error).__name__} talking to the Graph API",
        request_may_have_been_sent=may_have_been_sent,
    )
    transport_error.__cause__ = error
    return transport_error
