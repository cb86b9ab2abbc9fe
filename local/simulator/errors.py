"""Meta's Graph API error answers, as the Cloud API sends them.

Sources (looked up 2026-11; third-party mirrors of Meta's pages where Meta's own was not
retrievable):

- Body shape: Meta's error-codes page, "Error response syntax", and its sample
  ``{"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
  "error_data": {"messaging_product": "whatsapp", "details": "Message failed to send because
  there were too many messages sent from this phone number in a short period of time"},
  "fbtrace_id": "..."}}`` (mirrored by developers.aivo.co/engage). ``error_subcode`` is left
  out: Meta no longer sends it from v16.0 on (help.verloop.io's copy of the same page).
- HTTP statuses: 401 for 190 (the same table, mirrored by aivo); 400 for 130429 (heltar.com,
  "error code 130429") and for 131047 (dualhook.com, "error 131047"). 400 for 100 and 131056
  and 500 for 131000 follow Meta's table too, but those rows could not be retrieved here.
- Titles and details: Meta's table as mirrored by pywa's ``errors.py`` (131026, 131047, 131056,
  130429, 131000).
- 190's text is what graph.facebook.com answers for a token it cannot parse (Neurotech-HQ/heyoo
  issue 13); the unknown-object answer (100, subcode 33) is quoted in
  voiceflow-community/example-integration-whatsapp issue 5.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import msgspec

from local.meta_schema import Refusal

__all__ = [
    "FAILED_STATUS_ERROR",
    "INVALID_TOKEN",
    "PAIR_RATE_LIMIT_HIT",
    "RATE_LIMIT_HIT",
    "REENGAGEMENT_MESSAGE",
    "SERVER_ERRORS",
    "GraphError",
    "fbtrace_id",
    "invalid_parameter",
    "refused",
    "unknown_object",
]

_encoder = msgspec.json.Encoder()


def fbtrace_id() -> str:
    """A trace id shaped like Meta's (23 url-safe base64 characters)."""
    return secrets.token_urlsafe(18)[:23]


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphError:
    """One error answer: HTTP status plus the ``error`` object of the body."""

    http_status: int
    code: int
    message: str
    type: str = "OAuthException"
    details: str | None = None
    subcode: int | None = None
    is_transient: bool | None = None

    def body(self) -> bytes:
        error: dict[str, object] = {"message": self.message, "type": self.type, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.is_transient is not None:
            error["is_transient"] = self.is_transient
        if self.details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id()
        return _encoder.encode({"error": error})


INVALID_TOKEN = GraphError(
    http_status=401,
    code=190,
    message="Invalid OAuth access token - Cannot parse access token",
)

RATE_LIMIT_HIT = GraphError(
    http_status=400,
    code=130429,
    message="(#130429) Rate limit hit",
    details=(
        "Message failed to send because there were too many messages sent from this phone "
        "number in a short period of time"
    ),
)

PAIR_RATE_LIMIT_HIT = GraphError(
    http_status=400,
    code=131056,
    message="(#131056) (Business Account, Consumer Account) pair rate limit hit",
    details=(
        "Message failed to send because there were too many messages sent from this phone "
        "number to the same phone number in a short period of time"
    ),
)

REENGAGEMENT_MESSAGE = GraphError(
    http_status=400,
    code=131047,
    message="(#131047) Re-engagement message",
    details=(
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number."
    ),
)

# The injectable service errors. Meta's table gives 500 for 131000; codes 1 and 2 are Graph API
# generic errors, answered here with 500 as well so every injected one reads as "retry".
SERVER_ERRORS: dict[int, GraphError] = {
    131000: GraphError(
        http_status=500,
        code=131000,
        message="(#131000) Something went wrong",
        details="Message failed to send due to an unknown error.",
    ),
    1: GraphError(
        http_status=500,
        code=1,
        message="An unknown error occurred",
        is_transient=True,
    ),
    2: GraphError(
        http_status=500,
        code=2,
        message="An unexpected error has occurred. Please retry your request later.",
        is_transient=True,
    ),
}

# What a ``failed`` status webhook carries (Meta's "Message undeliverable", code 131026).
FAILED_STATUS_ERROR: dict[str, object] = {
    "code": 131026,
    "title": "Message undeliverable",
    "message": "Message undeliverable",
    "error_data": {"details": "Message Undeliverable."},
    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
}

_MAX_DETAILS_LENGTH = 1000


def invalid_parameter(problems: list[str]) -> GraphError:
    """Error 100 with the validation problems as ``details``."""
    return GraphError(
        http_status=400,
        code=100,
        message="(#100) Invalid parameter",
        details=_shortened("; ".join(problems) or "Invalid parameter"),
    )


def refused(refusal: Refusal) -> GraphError:
    """The 400 answer to a body Meta refuses (see ``local.meta_schema``)."""
    details = None if refusal.details is None else _shortened(refusal.details)
    return GraphError(http_status=400, code=refusal.code, message=refusal.message, details=details)


def _shortened(details: str) -> str:
    if len(details) > _MAX_DETAILS_LENGTH:
        return details[: _MAX_DETAILS_LENGTH - 1] + "…"
    return details


def unknown_object(object_id: str) -> GraphError:
    """What Graph answers for a phone number id this token cannot reach."""
    object_id = object_id[:64]
    return GraphError(
        http_status=400,
        code=100,
        subcode=33,
        type="GraphMethodException",
        message=(
            f"Unsupported post request. Object with ID '{object_id}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation. Please read "
            "the Graph API documentation at https://developers.facebook.com/docs/graph-api"
        ),
    )
