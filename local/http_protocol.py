"""uvicorn's httptools protocol with the limits a server facing untrusted clients needs.

uvicorn bounds only the idle time between two requests. A client may take forever to send a
request's head or body (slowloris), send a head of any size (httptools joins a header's pieces
by repeated concatenation: a 200 MB header held the event loop for 38 s) or pipeline thousands
of requests in one read (each queued with its own scope, ~2.5 KB apiece). With
:class:`HttpLimits`:

- a request's head (request line and headers) must arrive within ``header_timeout`` of the
  connection opening, or of the first byte after an idle keep-alive; its body within
  ``body_timeout`` of its head. Past either, the client gets 408 when nothing else is being
  answered on the connection, and the connection is closed;
- an idle keep-alive connection is closed after ``keep_alive_timeout``;
- a head over ``max_header_bytes`` gets 431 and the connection is closed;
- past ``max_connections`` open connections, a new one gets 503 and is closed at once;
- at most ``_MAX_PIPELINED`` requests wait behind the one being answered; more close the
  connection;
- what is left of a body the app answered without reading (413, 404) is read and dropped, up to
  ``max_body_bytes``, so that a client that sends its whole body before reading still gets the
  answer; past that the connection is closed.

Deadlines are kept as numbers and checked by one sweep over the open connections a few times
per shortest timeout, so a request costs a few clock reads rather than timer handles.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Final, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["ConnectionGuard", "GuardedHttpProtocol", "HttpLimits"]

logger = logging.getLogger(__name__)

# Requests parsed while an earlier one on the same connection is still being answered. Honest
# clients pipeline a few at most (browsers never do).
_MAX_PIPELINED: Final = 16
# Refused connections are counted and reported at most this often.
_REFUSAL_LOG_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """How long and how much the dev host's HTTP server gives a client (seconds, bytes)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_header_bytes", "max_body_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class _Phase(enum.Enum):
    HEAD = "receiving a request head"
    BODY = "receiving a request body"
    BUSY = "the request is with the app"
    IDLE = "idle between requests"


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing; ``status`` None means just close."""

    def __init__(self, status: int | None) -> None:
        super().__init__(status)
        self.status = status


class ConnectionGuard:
    """The limits of one server, its open connections and the sweep that enforces deadlines."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self._open: set[GuardedHttpProtocol] = set()
        self._sweeper: asyncio.Task[None] | None = None
        shortest = min(limits.header_timeout, limits.body_timeout, limits.keep_alive_timeout)
        self._interval = min(max(shortest / 4, 0.01), 1.0)
        self._refused = 0
        self._refusal_logged_at = -math.inf

        guard = self

        class _Protocol(GuardedHttpProtocol):
            _guard = guard

        # What uvicorn.Config(http=...) takes: it builds one protocol per connection.
        self.protocol_class: type[asyncio.Protocol] = _Protocol

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, protocol: GuardedHttpProtocol, loop: asyncio.AbstractEventLoop) -> bool:
        if len(self._open) >= self.limits.max_connections:
            self._refused += 1
            now = loop.time()
            if now - self._refusal_logged_at >= _REFUSAL_LOG_SECONDS:
                logger.warning(
                    "refused %d HTTP connection(s): %d open, max_connections is %d",
                    self._refused,
                    len(self._open),
                    self.limits.max_connections,
                )
                self._refused = 0
                self._refusal_logged_at = now
            return False
        self._open.add(protocol)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep(loop), name="http-deadlines")
        return True

    def release(self, protocol: GuardedHttpProtocol) -> None:
        self._open.discard(protocol)

    def close(self) -> None:
        """Stop the sweep and close every connection still open (the server has stopped)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for protocol in list(self._open):
            protocol.abort()

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        # Runs while connections are open, so a stopped server leaves no task behind.
        try:
            while self._open:
                await asyncio.sleep(self._interval)
                now = loop.time()
                for protocol in [p for p in self._open if p.deadline <= now]:
                    protocol.expire()
        finally:
            if self._sweeper is asyncio.current_task():
                self._sweeper = None


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection. Bound to its :class:`ConnectionGuard` by ``ConnectionGuard.protocol_class``.

    ``data_received`` and ``on_response_complete`` replace uvicorn 0.54's (same steps, plus the
    phase bookkeeping; uvicorn's keep-alive timer is not used); the parser callbacks extend them.
    """

    _guard: ClassVar[ConnectionGuard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = self._guard.limits
        self._admitted = False
        self._phase = _Phase.HEAD
        # Loop time by which the current phase must end (the sweep reads it).
        self.deadline = math.inf
        # Between the first byte of a request and the end of its head.
        self._in_head = False
        # Bytes received while a head was incomplete: bounds a head that never ends.
        self._head_bytes = 0
        # Bytes of a body dropped after its request was answered.
        self._dropped = 0

    # --- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are ones.
        stream = cast(asyncio.Transport, transport)
        if not self._guard.admit(self, self.loop):
            # Never registered with uvicorn: its shutdown need not wait for this one.
            self.transport = stream
            stream.write(self._final_response(503))
            stream.close()
            return
        self._admitted = True
        super().connection_made(stream)
        self._enter(_Phase.HEAD, self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = math.inf
        if self._admitted:
            self._guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._phase is _Phase.IDLE:
            # The next request's first bytes: its head is due from now on.
            self._enter(_Phase.HEAD, self._limits.header_timeout)
        if self._in_head or self._phase is _Phase.HEAD:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Not followed: the request is answered as plain HTTP, as uvicorn does without ws.
            self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as error:
            cause = error.__context__
            if isinstance(cause, _Refusal):
                self._close_with(cause.status)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._close_with(400)
            return
        if self._in_head and self._head_bytes > self._limits.max_header_bytes:
            logger.warning(
                "refused a request whose head exceeds %d bytes; connection closed",
                self._limits.max_header_bytes,
            )
            self._close_with(431)

    def _unsupported_upgrade_warning(self) -> None:
        logger.info("HTTP upgrade requested; not supported, answered as plain HTTP")

    # --- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._phase is _Phase.IDLE:
            # Begun in the same read as the end of an answered request's body.
            self._enter(_Phase.HEAD, self._limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes > self._limits.max_header_bytes and self._head_size() > (
            self._limits.max_header_bytes
        ):
            logger.warning(
                "refused a request whose head exceeds %d bytes; connection closed",
                self._limits.max_header_bytes,
            )
            raise _Refusal(431)
        self._head_bytes = 0
        self._dropped = 0
        running = self.cycle
        queued = running is not None and not running.response_complete
        if queued and len(self.pipeline) >= _MAX_PIPELINED:
            logger.warning("closed a connection pipelining more than %d requests", _MAX_PIPELINED)
            raise _Refusal(None)
        super().on_headers_complete()
        if not queued:
            self._enter(_Phase.BODY, self._limits.body_timeout)
        # A queued request's body waits with reading paused; its deadline starts with it.

    def on_body(self, body: bytes) -> None:
        if self.cycle.response_complete:
            self._dropped += len(body)
            if self._dropped > self._limits.max_body_bytes:
                raise _Refusal(None)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._phase is _Phase.BODY:
            if self.cycle.response_complete:
                self._enter(_Phase.IDLE, self._limits.keep_alive_timeout)
            else:
                self._phase = _Phase.BUSY
                self.deadline = math.inf

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            self.deadline = math.inf
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            if not self.pipeline and cycle.more_body:
                self._enter(_Phase.BODY, self._limits.body_timeout)
            else:
                self._phase = _Phase.BUSY
                self.deadline = math.inf
        elif self._phase is _Phase.BODY:
            pass  # answered before its body arrived: the body's deadline stands
        elif self._in_head:
            self._enter(_Phase.HEAD, self._limits.header_timeout)
        else:
            self._enter(_Phase.IDLE, self._limits.keep_alive_timeout)

    # --- deadlines ------------------------------------------------------------------------------

    def expire(self) -> None:
        """The current phase ran out of time (called by the guard's sweep)."""
        phase = self._phase
        self.deadline = math.inf
        if self.transport.is_closing():
            return
        if phase is _Phase.IDLE:
            self.transport.close()
            return
        limit = self._limits.header_timeout if phase is _Phase.HEAD else self._limits.body_timeout
        if phase is _Phase.HEAD and not self._in_head and self._head_bytes == 0:
            logger.info("closed an HTTP connection that sent no request within %g s", limit)
            self.transport.close()
            return
        part = "headers" if phase is _Phase.HEAD else "body"
        logger.warning("request %s not received within %g s; connection closed", part, limit)
        self._close_with(408)

    def abort(self) -> None:
        self.deadline = math.inf
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _enter(self, phase: _Phase, seconds: float) -> None:
        self._phase = phase
        self.deadline = self.loop.time() + seconds

    # --- helpers --------------------------------------------------------------------------------

    def _close_with(self, status: int | None) -> None:
        """Answer ``status`` unless the request in progress has (or is getting) another answer;
        close the connection."""
        cycle = self.cycle
        if status is not None:
            if self._phase is _Phase.HEAD:
                # No request in progress: the head is the next one's.
                self.transport.write(self._final_response(status))
            elif self._phase is _Phase.BODY and cycle is not None and not cycle.response_started:
                # The app still waits for this request's body: it now reads a disconnect, and
                # anything it sends is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
                self.transport.write(self._final_response(status))
        self.deadline = math.inf
        self.transport.close()

    def _final_response(self, status: int) -> bytes:
        body = http.HTTPStatus(status).phrase.encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        return b"".join(content)

    def _head_size(self) -> int:
        """The request target plus header names and values: the head without its syntax."""
        return len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
