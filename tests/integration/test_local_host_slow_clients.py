"""Hostile and slow HTTP clients against a started dev host, over real sockets: a request's head
and body are due in time, sizes and connections are capped, and none of it disturbs others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import azure.functions as func
import httpx
import pytest

from local import HostConfig, LocalHost, serve
from local.http_protocol import HttpLimits

pytestmark = pytest.mark.integration

bp = func.Blueprint()


@bp.route(route="ok", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def ok(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("ok")


@bp.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def echo_length(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(str(len(req.get_body())))


@bp.route(route="slow", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def slow(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0.2)
    return func.HttpResponse("slow")


app = func.FunctionApp()
app.register_functions(bp)

# Short, so the tests are quick; slack covers the deadline sweep and a loaded machine.
HEADER_TIMEOUT = 0.6
BODY_TIMEOUT = 0.6
KEEP_ALIVE = 2.0
SLACK = 1.5
MAX_BODY = 64 * 1024
LIMITS = HttpLimits(
    header_timeout=HEADER_TIMEOUT,
    body_timeout=BODY_TIMEOUT,
    keep_alive_timeout=KEEP_ALIVE,
    max_header_bytes=8 * 1024,
    max_body_bytes=MAX_BODY,
    max_connections=300,
)


async def start(limits: HttpLimits = LIMITS) -> LocalHost:
    return await serve(app, port=0, config=HostConfig(route_prefix="api"), http_limits=limits)


@pytest.fixture
async def host() -> AsyncIterator[LocalHost]:
    running = await start()
    yield running
    await running.stop(grace=0)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(host: LocalHost) -> Connection:
    return await asyncio.open_connection("127.0.0.1", host.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response with a Content-Length body: (status, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), timeout=5)
    return int(lines[0].split()[1]), body


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the host sends until it closes the connection (fails after ``timeout``)."""
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def test_half_sent_headers_are_answered_408_and_closed_in_time(
    host: LocalHost, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await connect(host)
    started = time.monotonic()
    writer.write(b"GET /api/ok HTTP/1.1\r\nHost: secret-client-host\r\nX-Par")
    received = await read_until_closed(reader, HEADER_TIMEOUT + SLACK)
    elapsed = time.monotonic() - started
    close(writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in received
    assert HEADER_TIMEOUT * 0.9 <= elapsed <= HEADER_TIMEOUT + SLACK
    lines = [r.getMessage() for r in caplog.records if "not received within" in r.getMessage()]
    assert lines == [f"request headers not received within {HEADER_TIMEOUT:g} s; connection closed"]


async def test_a_head_trickled_byte_by_byte_is_still_due_in_time(host: LocalHost) -> None:
    # A byte every 50 ms: far more often than any idle timeout would notice.
    reader, writer = await connect(host)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /api/ok HTTP/1.1\r\nHost: x\r\n" + b"X" * 1000:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        received = await read_until_closed(reader, HEADER_TIMEOUT + SLACK)
    finally:
        trickling.cancel()
        close(writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started <= HEADER_TIMEOUT + SLACK


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    host: LocalHost,
) -> None:
    reader, writer = await connect(host)
    received = await read_until_closed(reader, HEADER_TIMEOUT + SLACK)
    close(writer)
    assert received == b""


async def test_half_sent_body_is_answered_408_and_closed_in_time(
    host: LocalHost, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await connect(host)
    writer.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    started = time.monotonic()
    writer.write(b"private message text " * 2)
    received = await read_until_closed(reader, BODY_TIMEOUT + SLACK)
    elapsed = time.monotonic() - started
    close(writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert BODY_TIMEOUT * 0.9 <= elapsed <= BODY_TIMEOUT + SLACK
    timeouts = [r for r in caplog.records if "not received within" in r.getMessage()]
    assert [r.getMessage() for r in timeouts] == [
        f"request body not received within {BODY_TIMEOUT:g} s; connection closed"
    ]


async def test_a_chunked_body_trickled_chunk_by_chunk_is_still_due_in_time(
    host: LocalHost,
) -> None:
    reader, writer = await connect(host)
    writer.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    started = time.monotonic()

    async def trickle() -> None:
        while True:
            writer.write(b"1\r\nx\r\n")
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        received = await read_until_closed(reader, BODY_TIMEOUT + SLACK)
    finally:
        trickling.cancel()
        close(writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started <= BODY_TIMEOUT + SLACK


async def test_a_body_still_coming_after_an_early_answer_is_cut_off_without_a_second_one(
    host: LocalHost,
) -> None:
    # No such route: answered 404 at once, while the body is still on its way.
    reader, writer = await connect(host)
    writer.write(b"POST /api/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    assert (await read_response(reader))[0] == 404
    received = await read_until_closed(reader, BODY_TIMEOUT + SLACK)
    close(writer)
    assert received == b""


async def test_hundreds_of_slow_connections_do_not_hold_up_a_normal_request() -> None:
    # Heads due in 3 s: the slow connections are all still open when the normal request comes.
    limits = HttpLimits(header_timeout=3.0, body_timeout=3.0, max_connections=300)
    host = await start(limits)
    slow: list[Connection] = []
    try:
        for index in range(200):
            reader, writer = await connect(host)
            if index % 2:
                writer.write(b"GET /api/ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                writer.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhalf")
            slow.append((reader, writer))
        await asyncio.sleep(0.2)  # all of them accepted and parsed
        async with httpx.AsyncClient(base_url=host.url, timeout=5) as client:
            started = time.monotonic()
            response = await client.get("/api/ok")
            assert response.status_code == 200
            assert time.monotonic() - started < 1.0
        # And none of the slow ones outlives its deadline.
        results = await asyncio.gather(
            *(read_until_closed(reader, 3.0 + SLACK + 1) for reader, _ in slow)
        )
        assert all(result.startswith(b"HTTP/1.1 408 ") for result in results)
    finally:
        for _, writer in slow:
            close(writer)
        await host.stop(grace=0)


async def test_keep_alive_client_pausing_between_requests_keeps_its_connection(
    host: LocalHost,
) -> None:
    # Six requests on one connection, each sent in two parts 0.3 s apart and 0.3 s after the
    # previous answer: 3.6 s in all, far past the head and body timeouts, which count per
    # request, not per connection.
    reader, writer = await connect(host)
    try:
        for index in range(6):
            if index % 2:
                writer.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
                await asyncio.sleep(0.3)  # half the body now, half later: within BODY_TIMEOUT
                writer.write(b"def")
                assert await read_response(reader) == (200, b"6")
            else:
                writer.write(b"GET /api/ok HTTP/1.1\r\nHost: x\r\n")
                await asyncio.sleep(0.3)  # the head in two parts: within HEADER_TIMEOUT
                writer.write(b"\r\n")
                assert await read_response(reader) == (200, b"ok")
            await asyncio.sleep(0.3)
    finally:
        close(writer)


async def test_idle_keep_alive_connection_is_closed_quietly(host: LocalHost) -> None:
    reader, writer = await connect(host)
    writer.write(b"GET /api/ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await read_response(reader) == (200, b"ok")
    started = time.monotonic()
    assert await read_until_closed(reader, KEEP_ALIVE + SLACK) == b""
    assert time.monotonic() - started >= KEEP_ALIVE * 0.9
    close(writer)


async def test_a_head_over_the_limit_gets_431(host: LocalHost) -> None:
    # Sent in pieces and never finished: refused once it passes the limit, not at a timeout.
    reader, writer = await connect(host)
    writer.write(b"GET /api/ok HTTP/1.1\r\nHost: x\r\nX-Big: ")
    started = time.monotonic()
    with contextlib.suppress(ConnectionError):
        for _ in range(64):
            writer.write(b"a" * 1024)
            await writer.drain()
    received = await read_until_closed(reader, SLACK)
    close(writer)
    assert received.startswith(b"HTTP/1.1 431 ")
    assert time.monotonic() - started < HEADER_TIMEOUT

    # Complete, in a single write: counted all the same.
    reader, writer = await connect(host)
    writer.write(b"GET /api/ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    received = await read_until_closed(reader, SLACK)
    close(writer)
    assert received.startswith(b"HTTP/1.1 431 ")


async def test_a_head_under_the_limit_is_served(host: LocalHost) -> None:
    reader, writer = await connect(host)
    writer.write(b"GET /api/ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 7000 + b"\r\n\r\n")
    assert await read_response(reader) == (200, b"ok")
    close(writer)


async def test_declared_oversized_body_gets_413_before_it_is_sent(host: LocalHost) -> None:
    reader, writer = await connect(host)
    writer.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n")
    status, _ = await read_response(reader)
    close(writer)
    assert status == 413


async def test_endless_chunked_body_gets_413_and_is_not_read_for_ever(host: LocalHost) -> None:
    reader, writer = await connect(host)
    writer.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    sent = 0
    answer = asyncio.create_task(read_until_closed(reader, 10))
    # The host stops reading after the limit plus as much again (dropped, so that a client
    # which reads only after sending gets its answer): far less than this.
    with contextlib.suppress(ConnectionError):
        while sent < 256 * 1024 * 1024 and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    received = await answer
    close(writer)
    assert received.startswith(b"HTTP/1.1 413 ")
    assert sent < 64 * 1024 * 1024


async def test_a_body_just_over_the_limit_still_gets_its_413_over_httpx(host: LocalHost) -> None:
    # httpx sends the whole body before reading: the host must read (and drop) the rest.
    async with httpx.AsyncClient(base_url=host.url, timeout=5) as client:
        response = await client.post("/api/echo", content=b"x" * (MAX_BODY + 1000))
        assert response.status_code == 413
        # The connection stays usable.
        assert (await client.get("/api/ok")).status_code == 200


async def test_connections_past_the_cap_get_503_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = await start(HttpLimits(max_connections=5))
    idle: list[Connection] = []
    try:
        for _ in range(5):
            idle.append(await connect(host))
        await asyncio.sleep(0.1)
        reader, writer = await connect(host)
        received = await read_until_closed(reader, SLACK)
        close(writer)
        assert received.startswith(b"HTTP/1.1 503 ")
        assert any("refused 1 HTTP connection(s)" in r.getMessage() for r in caplog.records)
        # One goes away: there is room again.
        close(idle.pop()[1])
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=host.url, timeout=5) as client:
            assert (await client.get("/api/ok")).status_code == 200
    finally:
        for _, writer in idle:
            close(writer)
        await host.stop(grace=0)


async def test_a_pipelining_flood_closes_the_connection(host: LocalHost) -> None:
    reader, writer = await connect(host)
    writer.write(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
    received = await read_until_closed(reader, 5)
    close(writer)
    assert received.count(b"HTTP/1.1 200") < 20


async def test_a_few_pipelined_requests_are_all_answered_in_order(host: LocalHost) -> None:
    reader, writer = await connect(host)
    writer.write(
        b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /api/ok HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert await read_response(reader) == (200, b"slow")
    assert await read_response(reader) == (200, b"3")
    assert await read_response(reader) == (200, b"ok")
    close(writer)


async def test_garbage_gets_400(host: LocalHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    reader, writer = await connect(host)
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
    received = await read_until_closed(reader, SLACK)
    close(writer)
    assert received.startswith(b"HTTP/1.1 400 ")
