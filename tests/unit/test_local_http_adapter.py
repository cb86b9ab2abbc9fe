"""The ASGI adapter driven directly (no server): request and response mapping, limits, logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any

import azure.functions as func
import pytest

from local.functions import Invoker, index_functions
from local.http_adapter import HttpAdapter, redact_path
from local.routes import Router

bp = func.Blueprint()


@bp.route(route="users/{wa_id}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def user(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        f"{req.route_params['wa_id']}|{req.params.get('tag')}|{req.headers.get('x-multi')}|"
        f"{len(req.get_body())}",
        mimetype="text/csv",
        charset="latin-1",
    )


@bp.route(route="binary", auth_level=func.AuthLevel.ANONYMOUS)
async def binary(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        b"\x00\x01", mimetype="application/octet-stream", headers={"Content-Length": "999"}
    )


hanging = asyncio.Event()


@bp.route(route="hang/{wa_id}", auth_level=func.AuthLevel.ANONYMOUS)
async def hang(req: func.HttpRequest) -> func.HttpResponse:
    hanging.set()
    await asyncio.Event().wait()
    return func.HttpResponse("unreachable")


app = func.FunctionApp()
app.register_functions(bp)


@pytest.fixture
def adapter() -> HttpAdapter:
    router: Router[Any] = Router("api")
    for spec in index_functions(app):
        router.add(spec.binding["route"], spec.binding.get("methods"), spec)
    return HttpAdapter(router, Invoker(), max_body_bytes=100)


async def call(
    adapter: HttpAdapter,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    pending = list(chunks or [b""])
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers or [(b"host", b"testserver")],
        "scheme": "http",
        "server": ("127.0.0.1", 7071),
    }
    await adapter(scope, receive, send)
    start, body = sent
    collected: dict[bytes, list[bytes]] = {}
    for name, value in start["headers"]:
        collected.setdefault(name, []).append(value)
    return start["status"], collected, body["body"]


async def test_request_mapping_and_text_charset(adapter: HttpAdapter) -> None:
    status, headers, body = await call(
        adapter,
        "POST",
        "/api/users/15551234567",
        query=b"tag=a&tag=b",
        headers=[(b"host", b"h"), (b"x-multi", b"1"), (b"x-multi", b"2")],
        chunks=[b"abc", b"de"],
    )
    assert status == 200
    assert body == b"15551234567|a,b|1, 2|5"
    assert headers[b"content-type"] == [b"text/csv; charset=latin-1"]
    assert headers[b"content-length"] == [b"22"]


async def test_user_content_length_is_replaced(adapter: HttpAdapter) -> None:
    status, headers, body = await call(adapter, "GET", "/api/binary")
    assert (status, body) == (200, b"\x00\x01")
    assert headers[b"content-length"] == [b"2"]
    assert headers[b"content-type"] == [b"application/octet-stream"]


async def test_declared_and_streamed_bodies_over_the_cap(adapter: HttpAdapter) -> None:
    declared = await call(
        adapter, "POST", "/api/users/1", headers=[(b"content-length", b"101")], chunks=[b""]
    )
    assert declared[0] == 413
    streamed = await call(adapter, "POST", "/api/users/1", chunks=[b"x" * 60, b"x" * 60])
    assert streamed[0] == 413
    exact = await call(adapter, "POST", "/api/users/1", chunks=[b"x" * 50, b"x" * 50])
    assert exact[0] == 200


async def test_one_log_line_per_request_without_query_or_phone_number(
    adapter: HttpAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="local.http_adapter"):
        await call(adapter, "GET", "/api/users/15551234567", query=b"hub.verify_token=s3cret")
        await call(adapter, "GET", "/api/missing")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("GET /api/users/*******4567 200 ")
    assert lines[0].endswith(" ms")
    assert lines[1].startswith("GET /api/missing 404 ")
    assert all("s3cret" not in line and "15551234567" not in line for line in lines)


def scope_for(method: str, path: str) -> MutableMapping[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "scheme": "http",
        "server": ("127.0.0.1", 7071),
    }


@pytest.mark.parametrize("where", ["function", "body"])
async def test_request_cut_off_at_shutdown_is_answered_503(
    adapter: HttpAdapter, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    # The host cancels the request's task when the grace period is over, in the function or
    # while the body is still coming.
    sent: list[MutableMapping[str, Any]] = []
    body_wanted = asyncio.Event()

    async def receive() -> MutableMapping[str, Any]:
        if where == "body":
            body_wanted.set()
            await asyncio.Event().wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    hanging.clear()
    request = asyncio.create_task(
        adapter(scope_for("POST", "/api/hang/15551234567"), receive, send)
    )
    await asyncio.wait_for((hanging if where == "function" else body_wanted).wait(), 5)
    with caplog.at_level(logging.INFO, logger="local.http_adapter"):
        request.cancel()
        await request  # ends normally: the cancellation stops at the request's own task
    start, body = sent
    assert start["status"] == 503
    assert (b"connection", b"close") in start["headers"]
    assert body["body"] == b"Service Unavailable"
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("POST /api/hang/*******4567 503 cut off at shutdown after ")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/whatsapp/webhook", "/api/v1/whatsapp/webhook"),
        ("/api/contacts/15551234567/messages", "/api/contacts/*******4567/messages"),
        ("/api/items/123456", "/api/items/123456"),
    ],
)
def test_redact_path(path: str, expected: str) -> None:
    assert redact_path(path) == expected
