"""A TCP proxy that cuts PostgreSQL away from the bridge in the ways networks and servers fail.

It runs its own event loop in a thread, so the test may block (psycopg, subprocess waits)
without stalling the traffic it forwards. Modes:

- ``PASS``: forward both ways.
- ``REFUSE``: stop listening (new connections get ECONNREFUSED, as from a stopped server) and
  close every open connection with a FIN, as a server restart does.
- ``DROP``: reset every open connection (RST) and reset new ones as soon as they speak: a
  failover or a NAT that forgets its flows, cutting sessions mid-stream.
- ``BLACKHOLE``: accept, forward nothing and never answer; bytes stay in flight (as TCP keeps
  retransmitting through a partition) and flow again when the mode is ``PASS`` once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from psycopg import conninfo

__all__ = ["Mode", "ProxyStats", "TcpProxy", "Upstream", "upstream_of"]

_T = TypeVar("_T")
_CHUNK = 65536


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    DROP = "drop"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True)
class Upstream:
    """Where PostgreSQL listens: a TCP address, or a Unix socket file."""

    host: str | None = None
    port: int | None = None
    unix_path: str | None = None


def upstream_of(url: str) -> Upstream:
    """The server a libpq URL points to (embedded PostgreSQL in CI listens on a Unix socket)."""
    params = conninfo.conninfo_to_dict(url)
    host = str(params.get("host") or "localhost")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        socket_path = Path(host) / f".s.PGSQL.{port}"
        if not socket_path.exists():
            # The URL may leave the port out while the server runs on another one.
            found = sorted(p for p in Path(host).glob(".s.PGSQL.*") if p.suffix != ".lock")
            if found:
                socket_path = found[0]
        return Upstream(unix_path=str(socket_path))
    return Upstream(host=host, port=port)


@dataclass
class ProxyStats:
    accepted: int = 0
    reset: int = 0
    closed_by_refuse: int = 0
    held_by_blackhole: int = 0
    upstream_failures: int = 0


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN, which is what a peer sees when the path
        # or the server dies under an open session.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


class TcpProxy:
    def __init__(self, upstream: Upstream, *, listen_host: str = "127.0.0.1") -> None:
        self._upstream = upstream
        self._listen_host = listen_host
        self._port = 0
        self._mode = Mode.PASS
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def mode(self) -> Mode:
        return self._mode

    def url_for(self, database_url: str) -> str:
        """``database_url`` with its server replaced by this proxy."""
        params = conninfo.conninfo_to_dict(database_url)
        params["host"] = self._listen_host
        params["port"] = str(self._port)
        return conninfo.make_conninfo("", **{k: v for k, v in params.items() if v is not None})

    # --- control, from any thread ------------------------------------------------------------

    def start(self) -> int:
        self._thread.start()
        self._port = self._call(self._start())
        return self._port

    def set_mode(self, mode: Mode) -> None:
        self._call(self._set_mode(mode))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # --- inside the proxy's loop -------------------------------------------------------------

    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen(0)
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(
            self._accept, self._listen_host, port, reuse_address=True, backlog=512
        )

    async def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        previous, self._mode = self._mode, mode
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is Mode.REFUSE:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for link in list(self._links):
                self.stats.closed_by_refuse += 1
                self._end(link, reset=False)
        elif mode is Mode.DROP:
            for link in list(self._links):
                self._end(link, reset=True)
        if mode is not Mode.REFUSE and previous is Mode.REFUSE and self._server is None:
            await self._listen(self._port)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links):
            self._end(link, reset=True)

    def _end(self, link: _Link, *, reset: bool) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        if reset:
            self.stats.reset += 1
            _reset(link.client)
            _reset(link.server)
        else:
            _close(link.client)
            _close(link.server)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.stats.accepted += 1
        link = _Link(client=writer)
        self._links.add(link)
        task = asyncio.current_task()
        assert task is not None
        link.tasks.add(task)
        try:
            if self._mode is Mode.BLACKHOLE:
                self.stats.held_by_blackhole += 1
            # A new connection in a black hole is accepted and then ignored until the path heals.
            await self._flowing.wait()
            if link not in self._links:
                return
            try:
                if self._upstream.unix_path is not None:
                    server_reader, server_writer = await asyncio.open_unix_connection(
                        self._upstream.unix_path
                    )
                else:
                    server_reader, server_writer = await asyncio.open_connection(
                        self._upstream.host, self._upstream.port
                    )
            except OSError:
                self.stats.upstream_failures += 1
                self._end(link, reset=True)
                return
            if link not in self._links:
                _reset(server_writer)
                return
            link.server = server_writer
            pumps = [
                asyncio.create_task(self._pump(link, reader, server_writer)),
                asyncio.create_task(self._pump(link, server_reader, writer)),
            ]
            link.tasks.update(pumps)
            await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            self._end(link, reset=False)

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, target: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                # Nothing is read during a black hole: the peers' kernels hold the bytes, and
                # their writes block once the buffers are full, as through a real partition.
                await self._flowing.wait()
                data = await source.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self._mode is Mode.DROP:
                    self._end(link, reset=True)
                    return
                if link not in self._links:
                    return
                target.write(data)
                await target.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        # One side finished: finish the other, as a plain TCP relay would.
        self._end(link, reset=False)
