"""The HTTP side of the dev host: a hand-written ASGI callable in front of HTTP-triggered functions.

Per request: route lookup, body read (capped), ``func.HttpRequest`` in, ``func.HttpResponse`` out,
one log line. No framework, because the webhook path is benchmarked and every microsecond of host
overhead is paid thousands of times a second.

Behaviour follows the Functions host: a function that raises gives 500 with a generic body (the
traceback goes to the log); returning ``None`` gives 204; a ``str`` is a ``text/plain`` 200.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qsl

import azure.functions as func

from local.functions import FunctionSpec, Invoker
from local.routes import MethodNotAllowed, RouteMatch, Router

__all__ = ["MAX_BODY_BYTES", "HttpAdapter", "redact_path"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The app enforces its own, smaller limits (413: the webhook takes 1 MiB); this only keeps a
# runaway client from filling the dev machine's memory.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024

_TEXT: Final = b"text/plain; charset=utf-8"
_CLOSE: Final = (b"connection", b"close")
_SKIPPED_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
# Digit runs this long are phone numbers or ids tied to one; the log keeps the last four.
_LONG_NUMBER: Final = re.compile(r"\d{7,}")
_HOST_STATUS_PATH: Final = "/admin/host/status"
_HOST_STATUS_BODY: Final = b'{"id":"local","state":"Running"}'
_ADMIN_FUNCTIONS_PATH: Final = "/admin/functions/"


def redact_path(path: str) -> str:
    return _LONG_NUMBER.sub(lambda m: "*" * (len(m[0]) - 4) + m[0][-4:], path)


class _ClientGone(Exception):
    pass


class _CutOff(Exception):
    """The request's task was cancelled before its answer started: the host is stopping and the
    grace period is over. The task is the request's own and ends with a 503 (re-raised, the
    cancellation would reach uvicorn, which logs it as a crash and answers 500)."""


class HttpAdapter:
    """ASGI 3 application serving the app's HTTP functions."""

    def __init__(
        self,
        router: Router[FunctionSpec],
        invoker: Invoker,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        run_now: Mapping[str, Callable[[], None]] | None = None,
    ) -> None:
        self._router = router
        self._invoker = invoker
        self._max_body = max_body_bytes
        # Non-HTTP functions by name, run by POST /admin/functions/{name} as under `func start`.
        self._run_now = dict(run_now or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not a Functions feature
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        found = self._router.match(path, method)
        if isinstance(found, RouteMatch):
            try:
                status = await self._invoke(found, scope, receive, send)
            except _ClientGone:
                logger.info(
                    "%s %s client disconnected after %.1f ms",
                    method,
                    redact_path(path),
                    (time.perf_counter() - started) * 1000,
                )
                return
            except _CutOff:
                await _respond(send, 503, b"Service Unavailable", _TEXT, [_CLOSE])
                logger.warning(
                    "%s %s 503 cut off at shutdown after %.1f ms",
                    method,
                    redact_path(path),
                    (time.perf_counter() - started) * 1000,
                )
                return
        elif isinstance(found, MethodNotAllowed):
            status = 405
            allow = ", ".join(found.allowed).encode()
            await _respond(send, 405, b"Method Not Allowed", _TEXT, [(b"allow", allow)])
        elif path == _HOST_STATUS_PATH and method == "GET":
            status = 200
            await _respond(send, 200, _HOST_STATUS_BODY, b"application/json")
        elif path.startswith(_ADMIN_FUNCTIONS_PATH) and method == "POST":
            run = self._run_now.get(path.removeprefix(_ADMIN_FUNCTIONS_PATH))
            status = 404 if run is None else 202
            if run is not None:
                run()
            await _respond(send, status, b"" if run else b"Not Found", _TEXT)
        else:
            status = 404
            await _respond(send, 404, b"Not Found", _TEXT)
        logger.info(
            "%s %s %s %.2f ms",
            method,
            redact_path(path),
            status,
            (time.perf_counter() - started) * 1000,
        )

    async def _invoke(
        self, found: RouteMatch[FunctionSpec], scope: Scope, receive: Receive, send: Send
    ) -> int:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name in headers:
                # Repeated headers reach the function joined, as the Functions host does.
                value = headers[name] + ("; " if name == "cookie" else ", ") + value
            headers[name] = value
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            await _respond(send, 413, b"Request body too large", _TEXT)
            return 413
        try:
            body = await _read_body(receive, self._max_body)
        except asyncio.CancelledError:
            raise _CutOff from None
        if body is None:
            await _respond(send, 413, b"Request body too large", _TEXT)
            return 413
        spec = found.target
        request = func.HttpRequest(
            scope["method"],
            _url(scope, headers),
            headers=headers,
            params=_query(scope["query_string"]),
            route_params=found.route_params,
            body=body,
        )
        try:
            result = await self._invoker.invoke(spec, request)
            status, content_type, extra, payload = _response(result)
        except asyncio.CancelledError:
            raise _CutOff from None
        except Exception:
            logger.exception(
                "function %s failed (%s %s)", spec.name, scope["method"], redact_path(scope["path"])
            )
            await _respond(send, 500, b"Internal Server Error", _TEXT)
            return 500
        await _respond(send, status, payload, content_type, extra)
        return status


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it grows past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    raw = headers if headers is not None else []
    if content_type is not None:
        raw.append((b"content-type", content_type))
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _response(result: Any) -> tuple[int, bytes | None, list[tuple[bytes, bytes]], bytes]:
    """(status, content type when not among the headers, headers, body) of a function result."""
    if isinstance(result, func.HttpResponse):
        headers: list[tuple[bytes, bytes]] = []
        content_type: bytes | None = None
        for name, value in result.headers.items():
            lowered = name.lower()
            if lowered in _SKIPPED_HEADERS:
                continue  # the body decides the length; a mismatch would hang the client
            if lowered == "content-type":
                content_type = str(value).encode("latin-1")
                continue
            headers.append((lowered.encode("latin-1"), str(value).encode("latin-1")))
        if content_type is None:
            # The worker's rule: a charset only for text types.
            mimetype: str = result.mimetype
            if mimetype.startswith("text/"):
                content_type = f"{mimetype}; charset={result.charset}".encode("latin-1")
            else:
                content_type = mimetype.encode("latin-1")
        return int(result.status_code), content_type, headers, result.get_body()
    if result is None:
        return 204, None, [], b""
    if isinstance(result, str):
        return 200, _TEXT, [], result.encode()
    if isinstance(result, bytes | bytearray):
        return 200, b"application/octet-stream", [], bytes(result)
    raise TypeError(
        f"an HTTP function must return func.HttpResponse, str or None, not {type(result).__name__}"
    )


def _url(scope: Scope, headers: dict[str, str]) -> str:
    host = headers.get("host")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query: bytes = scope["query_string"]
    url = f"{scope.get('scheme', 'http')}://{host}{path}"
    return f"{url}?{query.decode('latin-1')}" if query else url


def _query(query_string: bytes) -> dict[str, str]:
    if not query_string:
        return {}
    params: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        params[name] = f"{params[name]},{value}" if name in params else value
    return params
