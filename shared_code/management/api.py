"""The management API's operations, described once and served by any HTTP adapter.

Each operation is declared with :meth:`OperationRegistry.operation`: method, route, the access it
needs, and the typed models of its path, query, body and answers (msgspec Structs). From those
declarations :func:`dispatch` authenticates, validates and calls the handler, and
:mod:`shared_code.management.openapi` writes the OpenAPI document, so the two cannot disagree.

The adapter (``management_function/``) only converts its request to an :class:`ApiRequest` and
the :class:`ApiResponse` back. Every error answer is ``application/problem+json``; a handler
never answers 500 for bad input: validation fails with 400, and a database that cannot be
reached with 503 and ``Retry-After``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

import msgspec
import psycopg
import psycopg_pool

from shared_code.management.auth import Access, Caller
from shared_code.management.problems import (
    PROBLEM_CONTENT_TYPE,
    Forbidden,
    InvalidRequest,
    Problem,
    Unavailable,
)

if TYPE_CHECKING:
    from shared_code.runtime import Services

logger = logging.getLogger(__name__)

__all__ = [
    "ApiRequest",
    "ApiResponse",
    "Call",
    "NoBody",
    "Operation",
    "OperationRegistry",
    "Reply",
    "dispatch",
]

JSON_CONTENT_TYPE = "application/json"
MAX_BODY_BYTES = 256 * 1024

Q = TypeVar("Q")
B = TypeVar("B")
P = TypeVar("P")


class NoBody(msgspec.Struct, forbid_unknown_fields=True):
    """Stands for "no parameters of this kind"."""


@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    # The route's parameters as the host matched them (e.g. ``{"id": "12"}``).
    route_params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    # The request's path (with the /api prefix), for the links in an answer.
    path: str


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer when it is not a plain 200 with a body."""

    status: int
    body: msgspec.Struct | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Call(Generic[P, Q, B]):
    """What a handler gets: the services, the authenticated caller and the validated input."""

    services: Services
    caller: Caller
    path: P
    query: Q
    body: B
    headers: Mapping[str, str]
    request_path: str


Handler = Callable[[Call[Any, Any, Any]], Awaitable[msgspec.Struct | Reply]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    operation_id: str
    method: str
    # Relative to the host's route prefix (/api), as the Functions route: "v1/whatsapp/contacts".
    route: str
    summary: str
    description: str = ""
    tag: str
    # None: no authentication (openapi.json, the webhook).
    access: Access | None
    path_model: type[msgspec.Struct] = NoBody
    query_model: type[msgspec.Struct] = NoBody
    body_model: type[msgspec.Struct] | None = None
    # HTTP status -> model of its body (None: empty). Problem answers are added by the document.
    responses: Mapping[int, type[msgspec.Struct] | None]
    # Problem statuses this operation may answer besides 400/401/403/503 (e.g. 404, 409, 422).
    problems: tuple[int, ...] = ()
    # Extra documented request headers, e.g. Idempotency-Key.
    headers: Mapping[str, str] = field(default_factory=dict)
    # None: served by another function (the webhook), described here for the OpenAPI document.
    handler: Handler | None
    # Answer media types other than JSON, by status (the webhook answers text/plain).
    media_types: Mapping[int, str] = field(default_factory=dict)

    def route_path(self, route_params: Mapping[str, str]) -> str:
        """The route with its parameters filled in (for the links in an answer)."""
        path = self.route
        for name, value in route_params.items():
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        return path


class OperationRegistry:
    def __init__(self) -> None:
        self._operations: dict[str, Operation] = {}

    def operation(
        self,
        *,
        method: str,
        route: str,
        summary: str,
        tag: str,
        access: Access | None,
        responses: Mapping[int, type[msgspec.Struct] | None],
        path_model: type[msgspec.Struct] = NoBody,
        query_model: type[msgspec.Struct] = NoBody,
        body_model: type[msgspec.Struct] | None = None,
        problems: tuple[int, ...] = (),
        headers: Mapping[str, str] | None = None,
        description: str = "",
        media_types: Mapping[int, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(
                Operation(
                    operation_id=handler.__name__,
                    method=method.upper(),
                    route=route,
                    summary=summary,
                    description=description or (handler.__doc__ or "").strip(),
                    tag=tag,
                    access=access,
                    path_model=path_model,
                    query_model=query_model,
                    body_model=body_model,
                    responses=dict(responses),
                    problems=problems,
                    headers=dict(headers or {}),
                    handler=handler,
                    media_types=dict(media_types or {}),
                )
            )
            return handler

        return register

    def add(self, operation: Operation) -> None:
        if operation.operation_id in self._operations:
            raise ValueError(f"operation {operation.operation_id} is declared twice")
        self._operations[operation.operation_id] = operation

    def all(self) -> list[Operation]:
        return list(self._operations.values())

    def routes(self) -> dict[str, dict[str, Operation]]:
        """Route -> method -> operation, in declaration order."""
        found: dict[str, dict[str, Operation]] = {}
        for operation in self._operations.values():
            found.setdefault(operation.route, {})[operation.method] = operation
        return found


def _problem_response(problem: Problem) -> ApiResponse:
    return ApiResponse(problem.status, problem.to_json(), PROBLEM_CONTENT_TYPE, problem.headers)


def _convert(data: Mapping[str, str], model: type[msgspec.Struct], where: str) -> Any:
    try:
        # Lax conversion: query and route values are strings ("20" -> 20, "true" -> True).
        converted = msgspec.convert(dict(data), type=model, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidRequest(f"{where}: {error}", code="invalid_parameter") from None
    for spec in msgspec.structs.fields(model):
        if spec.encode_name not in data:
            continue
        value = getattr(converted, spec.name)
        # Lax conversion also reads the text "null" as None, which would make `?status=null`
        # mean "no filter": a parameter given is a value, and one left out is the way to say none.
        if value is None:
            raise InvalidRequest(
                f"{where}: `{spec.encode_name}` has no value; leave the parameter out instead",
                code="invalid_parameter",
            )
        # ... and reads a number as a Unix time, and a time without offset in the server's zone:
        # a time is RFC 3339 with its offset, as documented.
        if not isinstance(value, datetime):
            continue
        if value.tzinfo is None or _is_number(data[spec.encode_name]):
            raise InvalidRequest(
                f"{where}: `{spec.encode_name}` must be an RFC 3339 date-time with an offset, "
                "e.g. 2026-01-31T12:00:00Z",
                code="invalid_parameter",
            )
        if not _has_utc_time(value):
            raise InvalidRequest(
                f"{where}: `{spec.encode_name}` is outside the years 1 to 9999 in UTC",
                code="time_out_of_range",
            )
    return converted


def _has_utc_time(value: datetime) -> bool:
    """False for a time whose offset takes it out of datetime's years 1-9999 in UTC."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _decode_body(operation: Operation, request: ApiRequest) -> Any:
    if operation.body_model is None:
        return None
    if len(request.body) > MAX_BODY_BYTES:
        raise Problem(
            f"the body is larger than {MAX_BODY_BYTES} bytes",
            status=413,
            title="Content Too Large",
            code="body_too_large",
        )
    if not request.body.strip():
        raise InvalidRequest("a JSON body is required", code="body_required")
    try:
        return msgspec.json.decode(request.body, type=operation.body_model)
    except msgspec.ValidationError as error:
        refused = error
    except msgspec.DecodeError:
        raise InvalidRequest("the body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply", code="invalid_json") from None
    # JSON has one number type: 5.0 is the integer 5 to JSON Schema (so to the OpenAPI document)
    # and to JavaScript clients, but msgspec's decoder refuses it for an int field.
    try:
        return msgspec.convert(
            _integral_floats_as_ints(msgspec.json.decode(request.body)),
            type=operation.body_model,
        )
    except (msgspec.DecodeError, RecursionError):
        # ValidationError included: the typed decoder may refuse a body on its first byte
        # ("[" for an object) before it would have found that the rest is not JSON.
        raise InvalidRequest(f"body: {refused}", code="invalid_body") from None


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


def _is_unavailable(error: BaseException) -> bool:
    return isinstance(
        error, psycopg.OperationalError | psycopg_pool.PoolTimeout | TimeoutError | ConnectionError
    )


async def dispatch(
    operation: Operation,
    request: ApiRequest,
    services_factory: Callable[[], Awaitable[Services]],
) -> ApiResponse:
    try:
        try:
            services = await services_factory()
        except Exception:
            logger.exception("management API unavailable: services could not start")
            raise Unavailable(
                "the service is starting or its database is unreachable",
                code="unavailable",
                headers={"Retry-After": "5"},
            ) from None
        caller = Caller("anonymous", Access.READ)
        if operation.access is not None:
            caller = await services.management.authenticator.authenticate(
                request.headers.get("authorization")
            )
            if not caller.may(operation.access):
                raise Forbidden(
                    f"this operation needs {operation.access.name.lower()} access",
                    code="insufficient_access",
                )
        call: Call[Any, Any, Any] = Call(
            services=services,
            caller=caller,
            path=_convert(request.route_params, operation.path_model, "path"),
            query=_convert(request.query, operation.query_model, "query"),
            body=_decode_body(operation, request),
            headers=request.headers,
            request_path=request.path,
        )
        assert operation.handler is not None, "dispatch() of an operation served elsewhere"
        answer = await operation.handler(call)
    except Problem as problem:
        return _problem_response(problem)
    except psycopg.DataError as error:
        # A value PostgreSQL refuses (out of range, NUL in a text) is the caller's, not ours.
        logger.warning(
            "%s: value refused by the database (%s)", operation.operation_id, type(error).__name__
        )
        return _problem_response(
            InvalidRequest(
                "a parameter's value is out of range or not allowed", code="invalid_value"
            )
        )
    except Exception as error:
        if _is_unavailable(error):
            logger.warning(
                "%s: database unavailable (%s)", operation.operation_id, type(error).__name__
            )
            return _problem_response(
                Unavailable(
                    "the database is unreachable; retry later",
                    code="unavailable",
                    headers={"Retry-After": "5"},
                )
            )
        logger.exception("%s failed", operation.operation_id)
        return _problem_response(
            Problem(
                "an unexpected error occurred; it has been logged",
                status=500,
                title="Internal Server Error",
                code="internal_error",
            )
        )
    if isinstance(answer, Reply):
        body = b"" if answer.body is None else msgspec.json.encode(answer.body)
        return ApiResponse(answer.status, body, JSON_CONTENT_TYPE, answer.headers)
    return ApiResponse(200, msgspec.json.encode(answer), JSON_CONTENT_TYPE)
