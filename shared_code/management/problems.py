"""Errors a management operation answers with, as RFC 9457 ``application/problem+json``.

Domain code raises :class:`Problem` (or one of the named subclasses) with the HTTP status it
means; the management adapter turns it into the answer. Texts name fields and rules, never a
phone number, a message text or a secret: they reach dashboards and, through them, screenshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "Problem",
    "ProblemBody",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The answer's body (RFC 9457); ``code`` is a stable machine-readable reason."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: str | None = None
    errors: list[dict[str, str]] | None = None


class Problem(Exception):
    """An answer other than success; ``status`` is the HTTP status."""

    status: int = 400
    title: str = "Bad Request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail or title or self.title)
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.detail = detail
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.errors = errors

    def body(self) -> ProblemBody:
        return ProblemBody(
            title=self.title,
            status=self.status,
            detail=self.detail,
            code=self.code,
            errors=self.errors,
        )

    def to_json(self) -> bytes:
        return msgspec.json.encode(self.body())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r})"

    def extra(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code}


class InvalidRequest(Problem):
    status = 400
    title = "Bad Request"


class Unauthorized(Problem):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="whatsapp-management"')


class Forbidden(Problem):
    status = 403
    title = "Forbidden"


class NotFound(Problem):
    status = 404
    title = "Not Found"


class Conflict(Problem):
    status = 409
    title = "Conflict"


class Unprocessable(Problem):
    status = 422
    title = "Unprocessable Content"


class TooManyRequests(Problem):
    status = 429
    title = "Too Many Requests"

    def __init__(self, detail: str | None = None, *, retry_after_seconds: int, **kwargs: Any):
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, int(retry_after_seconds))))


class Unavailable(Problem):
    status = 503
    title = "Service Unavailable"
