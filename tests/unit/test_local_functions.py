"""Indexing a FunctionApp and invoking its functions as the Python worker does."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta

import azure.functions as func
import pytest

from local.functions import (
    FunctionTimeoutError,
    Invoker,
    SettingMissingError,
    index_functions,
    resolve_setting,
)


def test_resolve_setting() -> None:
    env = {"QUEUE": "inbound-events", "ENV": "dev"}
    assert resolve_setting("%QUEUE%", env) == "inbound-events"
    assert resolve_setting("q-%ENV%-x", env) == "q-dev-x"
    assert resolve_setting("plain", env) == "plain"
    with pytest.raises(SettingMissingError, match="MISSING"):
        resolve_setting("%MISSING%", env)


def test_index_skips_functions_with_unsupported_bindings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = func.FunctionApp()

    @app.route(route="ok", auth_level=func.AuthLevel.ANONYMOUS)
    async def ok(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
        return func.HttpResponse()

    @app.route(route="out", auth_level=func.AuthLevel.ANONYMOUS)
    @app.queue_output(arg_name="out", queue_name="q", connection="c")
    def with_output(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
        return func.HttpResponse()

    with caplog.at_level(logging.WARNING):
        specs = index_functions(app)
    assert [s.name for s in specs] == ["ok"]
    assert specs[0].is_async and specs[0].wants_context and specs[0].arg_name == "req"
    assert "methods" not in specs[0].binding  # no methods: every method
    assert any("with_output" in r.getMessage() for r in caplog.records)


def test_index_can_run_twice_on_one_app() -> None:
    app = func.FunctionApp()

    @app.route(route="x", auth_level=func.AuthLevel.ANONYMOUS)
    def x(req: func.HttpRequest) -> str:
        return "x"

    assert [s.name for s in index_functions(app)] == ["x"]
    assert [s.name for s in index_functions(app)] == ["x"]


async def test_sync_functions_run_off_the_loop_async_on_it() -> None:
    app = func.FunctionApp()
    loop_thread = threading.get_ident()

    @app.route(route="sync", auth_level=func.AuthLevel.ANONYMOUS)
    def sync(req: object) -> int:
        return threading.get_ident()

    @app.route(route="async", auth_level=func.AuthLevel.ANONYMOUS)
    async def on_loop(req: object) -> int:
        return threading.get_ident()

    specs = {s.name: s for s in index_functions(app)}
    invoker = Invoker()
    try:
        assert await invoker.invoke(specs["sync"], None) != loop_thread
        assert await invoker.invoke(specs["on_loop"], None) == loop_thread
    finally:
        invoker.close()


async def test_function_timeout() -> None:
    app = func.FunctionApp()

    @app.route(route="slow", auth_level=func.AuthLevel.ANONYMOUS)
    async def slow(req: object) -> None:
        await asyncio.sleep(5)

    (spec,) = index_functions(app)
    invoker = Invoker(function_timeout=timedelta(milliseconds=50))
    try:
        with pytest.raises(FunctionTimeoutError, match="functionTimeout"):
            await invoker.invoke(spec, None)
    finally:
        invoker.close()
