"""The aiohttp-backed httpx transport against a real socket server: bytes through, failures typed.

What matters most is the ambiguity of a failure: only "no connection was made" may count as not
sent, because the sender resends after that and must never message a user twice.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from shared_code.http_transport import async_client
from shared_code.whatsapp.errors import error_from_transport

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=5.0)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


class Server:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.behaviour(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Behaviour], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(behaviour: Behaviour) -> Server:
        server = Server(behaviour)
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.server is not None
        server.server.close()


def client(read_timeout: float = 5.0) -> httpx.AsyncClient:
    return async_client(timeout=httpx.Timeout(5.0, read=read_timeout), limits=LIMITS)


async def test_a_request_and_its_answer_pass_through_whole_on_one_kept_alive_connection(
    serve: Callable[[Behaviour], Awaitable[Server]],
) -> None:
    async def answer_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            server.requests.append(request)
            body = b'{"messages":[{"id":"wamid.1"}]}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Trace: a\r\n"
                b"X-Trace: b\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    server = await serve(answer_json)
    async with client() as http:
        for n in range(3):
            response = await http.post(
                server.url + "/v21.0/123/messages",
                content=b'{"to":"%d"}' % n,
                headers={"Authorization": "Bearer token", "Content-Type": "application/json"},
            )
            assert response.status_code == 200
            assert response.json() == {"messages": [{"id": "wamid.1"}]}
            assert response.headers.get_list("x-trace") == ["a", "b"]
    assert server.connections == 1
    assert [body for _, body in server.requests] == [b'{"to":"0"}', b'{"to":"1"}', b'{"to":"2"}']
    head = server.requests[0][0].lower()
    assert head.startswith(b"post /v21.0/123/messages http/1.1\r\n")
    assert b"authorization: bearer token\r\n" in head
    assert b"content-length: 10\r\n" in head
    assert head.count(b"host:") == 1


async def test_cookies_set_by_the_server_are_never_sent_back(
    serve: Callable[[Behaviour], Awaitable[Server]],
) -> None:
    async def set_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            server.requests.append(await read_request(reader))
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/\r\nContent-Length: 2\r\n\r\n{}"
            )
            await writer.drain()

    server = await serve(set_cookie)
    async with client() as http:
        for _ in range(2):
            response = await http.get(server.url + "/v21.0/media")
            assert response.headers["set-cookie"] == "session=abc; Path=/"
        assert not http.cookies
        with pytest.raises(ValueError, match="no cookies"):
            http.cookies = {"session": "abc"}
        with pytest.raises(ValueError, match="no cookies"):
            http.cookies.set("session", "abc")
    assert [b"cookie:" in head.lower() for head, _ in server.requests] == [False, False]


async def test_a_streamed_answer_arrives_in_pieces_and_can_be_abandoned(
    serve: Callable[[Behaviour], Awaitable[Server]],
) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):
            writer.write(b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await serve(chunked)
    async with client() as http:
        async with http.stream("GET", server.url + "/media") as response:
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
        assert received == 200_000


async def test_no_listener_is_a_connect_error_that_cannot_have_been_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client() as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.post(f"http://127.0.0.1:{port}/x", content=b"{}")
    assert error_from_transport(caught.value).request_may_have_been_sent is False


async def test_a_connection_closed_after_the_request_arrived_may_have_been_sent(
    serve: Callable[[Behaviour], Awaitable[Server]],
) -> None:
    async def read_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.requests.append(await read_request(reader))

    server = await serve(read_then_hang_up)
    async with client() as http:
        with pytest.raises(httpx.TransportError) as caught:
            await http.post(server.url + "/x", content=b'{"to":"1"}')
    assert server.requests, "the request reached the server"
    assert error_from_transport(caught.value).request_may_have_been_sent is True


async def test_an_answer_that_never_comes_is_a_read_timeout_that_may_have_been_sent(
    serve: Callable[[Behaviour], Awaitable[Server]],
) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    server = await serve(never_answer)
    async with client(read_timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await http.post(server.url + "/x", content=b"{}")
    assert error_from_transport(caught.value).request_may_have_been_sent is True


async def test_a_garbled_answer_is_a_protocol_error_that_may_have_been_sent(
    serve: Callable[[Behaviour], Awaitable[Server]],
) -> None:
    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()

    server = await serve(garble)
    async with client() as http:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await http.post(server.url + "/x", content=b"{}")
    assert error_from_transport(caught.value).request_may_have_been_sent is True
