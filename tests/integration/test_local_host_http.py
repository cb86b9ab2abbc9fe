"""The dev host's HTTP side over real HTTP: routing, methods, request and response mapping."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import azure.functions as func
import httpx
import pytest

from local import HostConfig, LocalHost, serve
from local.http_adapter import MAX_BODY_BYTES

pytestmark = pytest.mark.integration

bp = func.Blueprint()


@bp.route(route="items/{id:int}/{name?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def items_get(req: func.HttpRequest) -> func.HttpResponse:
    payload = {
        "route": dict(req.route_params),
        "params": dict(req.params),
        "method": req.method,
        "url": req.url,
        "agent": req.headers.get("X-Test"),
    }
    return func.HttpResponse(json.dumps(payload), mimetype="application/json")


@bp.route(route="items/special", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def items_special(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("special")


@bp.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def echo(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        req.get_body(),
        status_code=201,
        headers={"X-Echo-Length": str(len(req.get_body())), "Content-Type": "application/x-echo"},
    )


@bp.route(route="hook", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def hook_verify(req: func.HttpRequest) -> func.HttpResponse:
    # Sync on purpose: runs in the worker's thread pool.
    return func.HttpResponse(req.params.get("hub.challenge", ""), status_code=200)


@bp.route(route="hook", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def hook_receive(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(status_code=200)


@bp.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
async def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret detail that must not reach the client")


@bp.route(route="nothing", auth_level=func.AuthLevel.ANONYMOUS)
async def nothing(req: func.HttpRequest) -> None:
    return None


@bp.route(route="text/{*rest}", auth_level=func.AuthLevel.ANONYMOUS)
def text(req: func.HttpRequest) -> str:
    return "rest=" + req.route_params.get("rest", "")


@bp.route(route="bad-return", auth_level=func.AuthLevel.ANONYMOUS)
async def bad_return(req: func.HttpRequest) -> object:
    return {"not": "a response"}


@bp.route(route="cookies", auth_level=func.AuthLevel.ANONYMOUS)
async def cookies(req: func.HttpRequest) -> func.HttpResponse:
    response = func.HttpResponse("ok")
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    return response


@bp.route(route="context", auth_level=func.AuthLevel.ANONYMOUS)
async def with_context(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return func.HttpResponse(context.function_name)


app = func.FunctionApp()
app.register_functions(bp)


@pytest.fixture
async def host() -> AsyncIterator[LocalHost]:
    running = await serve(app, port=0, config=HostConfig(route_prefix="api"))
    yield running
    await running.stop()


@pytest.fixture
async def client(host: LocalHost) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=host.url, timeout=10) as http:
        yield http


async def test_route_params_query_and_headers_reach_the_function(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/api/items/42/widget", params={"a": "1", "b": "x y"}, headers={"X-Test": "yes"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["route"] == {"id": "42", "name": "widget"}
    assert body["params"] == {"a": "1", "b": "x y"}
    assert body["method"] == "GET"
    assert body["agent"] == "yes"
    assert body["url"].endswith("/api/items/42/widget?a=1&b=x+y")


async def test_optional_parameter_may_be_absent(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/items/7")
    assert response.json()["route"] == {"id": "7"}


async def test_int_constraint_and_literal_precedence(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/items/special")).text == "special"
    assert (await client.get("/api/ITEMS/Special/")).text == "special"
    assert (await client.get("/api/items/abc")).status_code == 404


async def test_post_echo_with_custom_headers(client: httpx.AsyncClient) -> None:
    payload = bytes(range(256)) * 10
    response = await client.post("/api/echo", content=payload)
    assert response.status_code == 201
    assert response.content == payload
    assert response.headers["x-echo-length"] == str(len(payload))
    assert response.headers["content-type"] == "application/x-echo"
    assert response.headers["content-length"] == str(len(payload))


async def test_same_route_dispatches_by_method(client: httpx.AsyncClient) -> None:
    verify = await client.get("/api/hook", params={"hub.challenge": "12345"})
    assert (verify.status_code, verify.text) == (200, "12345")
    assert verify.headers["content-type"] == "text/plain; charset=utf-8"
    assert (await client.post("/api/hook", content=b"{}")).status_code == 200


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/hook")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


async def test_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/nope")).status_code == 404
    assert (await client.get("/items/7")).status_code == 404  # outside the route prefix


async def test_exception_is_500_with_generic_body_and_logged_traceback(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="local"):
        response = await client.get("/api/boom?token=hidden")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    failure = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "boom" in failure.getMessage()
    # Rendered when the record is made (shared_code.log_privacy), not kept as exc_info.
    assert failure.exc_text is not None
    assert "RuntimeError" in failure.exc_text
    access = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GET /api/boom")]
    assert len(access) == 1
    assert " 500 " in access[0]
    assert "hidden" not in access[0]  # no query string: it can carry the verify token


async def test_none_is_204_and_str_is_text(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/nothing")).status_code == 204
    response = await client.get("/api/text/a/b/c")
    assert (response.status_code, response.text) == (200, "rest=a/b/c")
    assert (await client.get("/api/text")).text == "rest="


async def test_unsupported_return_type_is_500(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/bad-return")).status_code == 500


async def test_repeated_response_headers_are_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


async def test_context_parameter_is_passed(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/context")).text == "with_context"


async def test_body_over_the_host_cap_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/echo", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        # No content-length: the cap must hold while streaming too.
        for _ in range(9):
            yield b"y" * (1024 * 1024)

    streamed = await client.post("/api/echo", content=chunks())
    assert streamed.status_code == 413


async def test_host_status_endpoint(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/host/status")
    assert response.json()["state"] == "Running"


async def test_custom_route_prefix() -> None:
    running = await serve(app, port=0, config=HostConfig(route_prefix=""))
    try:
        async with httpx.AsyncClient(base_url=running.url) as http:
            assert (await http.get("/items/special")).text == "special"
    finally:
        await running.stop()


async def test_stop_lets_an_in_flight_request_finish() -> None:
    slow_bp = func.Blueprint()

    @slow_bp.route(route="slow", auth_level=func.AuthLevel.ANONYMOUS)
    async def slow(req: func.HttpRequest) -> func.HttpResponse:
        await asyncio.sleep(0.5)
        return func.HttpResponse("done")

    slow_app = func.FunctionApp()
    slow_app.register_functions(slow_bp)
    running = await serve(slow_app, port=0, config=HostConfig())
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        request = asyncio.create_task(http.get("/api/slow"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await running.stop()
        response = await request
    assert response.text == "done"
    assert time.monotonic() - started < 5
