"""The simulator's HTTP face (Starlette) and its in-process server (uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Generator, Mapping
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from local.simulator.config import ConfigError, SimulatorConfig, public_view
from local.simulator.graph import Answer, CloudApi, UserMessage
from local.simulator.limits import Clock, SystemClock
from local.simulator.records import InboundResult, ReadReceipt, SentMessage

__all__ = ["CloudApiSimulator"]

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
_JSON = "application/json"
# The ASGI scope extension through which a handler closes its connection without an answer.
_CLOSE_EXTENSION = "local.simulator.close_connection"
# After closing, how long to wait for the server to see the connection gone.
_CLOSE_SETTLE_SECONDS = 1.0


class _UserMessageRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    text: str | None = None
    interactive_reply: dict[str, str] | None = None
    image: dict[str, str] | None = None
    profile_name: str | None = None
    phone_number_id: str | None = None
    context_message_id: str | None = None


class _WindowRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    phone_number_id: str | None = None


class _TemplateStatusRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    status: str
    reason: str | None = None


class _ClosingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with one scope extension, ``local.simulator.close_connection``:
    ``{"close": callable}`` closes the connection with no answer (the ``drop_before`` fault).
    ASGI itself cannot leave a request unanswered: returning without a response makes a 500."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extension: dict[object, object] = {"close": self.transport.close}
        self.scope["extensions"] = {_CLOSE_EXTENSION: extension}


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: whoever embeds the simulator owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _json(data: object, status: int = 200) -> Response:
    return Response(_encoder.encode(data), status_code=status, media_type=_JSON)


def _control_error(message: str, status: int = 400) -> Response:
    return _json({"error": message}, status)


async def _client_gone(request: Request) -> None:
    """Return once the client has hung up (the request's body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class CloudApiSimulator:
    """A fake graph.facebook.com for one app: serve :attr:`asgi_app` anywhere, or call
    :meth:`start` to run it on its own port inside the current event loop."""

    def __init__(self, config: SimulatorConfig, *, clock: Clock | None = None) -> None:
        self._api = CloudApi(config, clock or SystemClock())
        # Set while stopping: answers held back by the timeout fault are released at once.
        self._stopping = asyncio.Event()
        # Answers held back right now (timeout fault).
        self._held = 0
        self._server: _Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._base_url: str | None = None
        self.asgi_app = Starlette(
            routes=[
                Route("/simulator/users/{wa_id}/messages", self._user_message, methods=["POST"]),
                Route("/simulator/users/{wa_id}/window", self._open_window, methods=["POST"]),
                Route("/simulator/messages", self._list_messages, methods=["GET"]),
                Route("/simulator/read-receipts", self._list_read_receipts, methods=["GET"]),
                Route("/simulator/stats", self._stats, methods=["GET"]),
                Route("/simulator/reset", self._reset, methods=["POST"]),
                Route("/simulator/config", self._get_config, methods=["GET"]),
                Route("/simulator/config", self._put_config, methods=["PUT"]),
                Route("/simulator/templates", self._list_simulated_templates, methods=["GET"]),
                Route(
                    "/simulator/templates/{name}/{language}/status",
                    self._set_template_status,
                    methods=["POST"],
                ),
                Route("/media-download/{media_id}", self._download_media, methods=["GET"]),
                Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"]),
                Route("/{version}/{waba_id}/message_templates", self._templates, methods=["GET"]),
                Route("/{version}/{media_id}", self._media_info, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port) and return the base URL."""
        if self._serve_task is not None:
            raise RuntimeError("the simulator is already started")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound here, not by uvicorn: a busy port raises OSError instead of exiting the process,
        # and port 0 tells us the port it got.
        sock = socket.create_server((host, port), family=family, backlog=2048)
        sock.setblocking(False)
        # Inherited by accepted connections. Without it, on the default asyncio loop, every
        # answer waits ~40 ms for a delayed ACK (Nagle), capping a sequential client at 25/s.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bound_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.asgi_app,
            host=host,
            port=bound_port,
            loop="none",
            http=_ClosingHttpToolsProtocol,
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._stopping.clear()
        self._server = _Server(config)
        self._serve_task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="cloud-api-simulator"
        )
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("the simulator's HTTP server stopped during start-up")
            await asyncio.sleep(0.005)
        shown_host = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{shown_host}:{bound_port}"
        logger.info("WhatsApp Cloud API simulator on %s", self._base_url)
        return self._base_url

    async def stop(self) -> None:
        """Release held answers, stop serving, cancel pending webhooks. Safe to call twice."""
        self._stopping.set()
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            try:
                await self._serve_task
            except Exception:
                logger.exception("the simulator's HTTP server failed while stopping")
        self._server = None
        self._serve_task = None
        self._base_url = None
        await self._api.webhooks.stop()

    async def __aenter__(self) -> CloudApiSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # For hosts that serve asgi_app themselves and run lifespan events.
        yield
        self._stopping.set()
        await self._api.webhooks.stop()

    # --- Python API -----------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        return self._api.config

    def update_config(self, **changes: Any) -> SimulatorConfig:
        """Change settings at run time (``faults`` as a dict is merged); raises ConfigError."""
        return self._api.reconfigure(changes)

    def messages(self, to: str | None = None) -> list[SentMessage]:
        return self._api.messages(to)

    def read_receipts(self) -> list[ReadReceipt]:
        return self._api.read_receipts()

    def stats(self) -> dict[str, Any]:
        """Counters since start or reset; ``answers_held``: answers the timeout fault is holding
        back right now."""
        return self._api.stats_json() | {"answers_held": self._held}

    def reset(self) -> None:
        self._api.reset()

    def open_window(self, wa_id: str, phone_number_id: str | None = None) -> None:
        self._api.open_window(wa_id, phone_number_id)

    def templates(self) -> list[dict[str, Any]]:
        """The business account's templates as Meta lists them."""
        return self._api.templates.all()

    def set_template_status(
        self, name: str, language: str, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Change a template's status and post Meta's status webhook (KeyError: unknown)."""
        return self._api.set_template_status(name, language, status, reason)

    async def send_user_message(
        self,
        wa_id: str,
        *,
        text: str | None = None,
        interactive_reply: Mapping[str, str] | None = None,
        image: Mapping[str, str] | None = None,
        profile_name: str | None = None,
        phone_number_id: str | None = None,
        context_message_id: str | None = None,
    ) -> InboundResult:
        """A user writes to the business: Meta's signed webhook goes to the app."""
        message = UserMessage(
            text=text,
            interactive_reply=interactive_reply,
            image=image,
            profile_name=profile_name,
            phone_number_id=phone_number_id,
            context_message_id=context_message_id,
        )
        return await self._api.send_user_message(wa_id, message)

    # --- Graph API endpoints --------------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        answer = self._api.post_messages(
            request.path_params["phone_number_id"],
            request.headers.get("authorization"),
            await request.body(),
        )
        return await self._respond(answer, request)

    async def _templates(self, request: Request) -> Response:
        answer = self._api.list_templates(
            request.path_params["waba_id"],
            request.headers.get("authorization"),
            dict(request.query_params),
            str(request.url.replace(query="")),
        )
        return await self._respond(answer, request)

    async def _media_info(self, request: Request) -> Response:
        # GET /{version}/{id} names a business number or a media object, as on Graph.
        answer = self._api.phone_number_info(
            request.path_params["media_id"], request.headers.get("authorization")
        )
        if answer is None:
            answer = self._api.media_info(
                request.path_params["media_id"],
                request.headers.get("authorization"),
                str(request.base_url),
            )
        return await self._respond(answer, request)

    async def _download_media(self, request: Request) -> Response:
        refusal = self._api.check_token(request.headers.get("authorization"))
        if refusal is not None:
            return await self._respond(refusal, request)
        item = self._api.media(request.path_params["media_id"])
        return Response(item.content, media_type=item.mime_type)

    async def _respond(self, answer: Answer, request: Request) -> Response:
        if answer.drop:
            return await self._drop(request)
        if answer.hold_seconds:
            await self._hold(request, answer.hold_seconds)
        return Response(
            answer.body, status_code=answer.status, headers=answer.headers, media_type=_JSON
        )

    async def _drop(self, request: Request) -> Response:
        """Close the connection without an answer; the Response returned is never sent."""
        extension = request.scope.get("extensions", {}).get(_CLOSE_EXTENSION, {})
        close = extension.get("close")
        if not callable(close):
            # Served by another ASGI server: the closest is an answer the client gives up on.
            await self._hold(request, self.config.faults.hold_seconds)
            return Response(status_code=503)
        close()
        # Once the server has seen the connection go, it sends nothing more for this request.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_client_gone(request), _CLOSE_SETTLE_SECONDS)
        return Response(status_code=503)

    async def _hold(self, request: Request, seconds: float) -> None:
        """Wait ``seconds``, or less if the client hangs up (its own timeout) or we stop."""
        self._held += 1
        waits = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(_client_gone(request)),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._held -= 1
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    # --- control endpoints ----------------------------------------------------------------

    async def _user_message(self, request: Request) -> Response:
        try:
            parsed = msgspec.json.decode(await request.body(), type=_UserMessageRequest)
            result = await self.send_user_message(
                request.path_params["wa_id"],
                text=parsed.text,
                interactive_reply=parsed.interactive_reply,
                image=parsed.image,
                profile_name=parsed.profile_name,
                phone_number_id=parsed.phone_number_id,
                context_message_id=parsed.context_message_id,
            )
        except (msgspec.DecodeError, ValueError) as error:
            return _control_error(str(error))
        # The simulation itself worked: what the app answered (or why it could not be asked)
        # is in the body.
        return _json(result.as_json())

    async def _open_window(self, request: Request) -> Response:
        body = await request.body()
        try:
            parsed = msgspec.json.decode(body, type=_WindowRequest) if body else _WindowRequest()
            self.open_window(request.path_params["wa_id"], parsed.phone_number_id)
        except (msgspec.DecodeError, ValueError) as error:
            return _control_error(str(error))
        return _json({"wa_id": request.path_params["wa_id"], "window_open": True})

    async def _list_messages(self, request: Request) -> Response:
        messages = self.messages(request.query_params.get("to"))
        return _json({"messages": [message.as_json() for message in messages]})

    async def _list_read_receipts(self, request: Request) -> Response:
        return _json({"read_receipts": [receipt.as_json() for receipt in self.read_receipts()]})

    async def _stats(self, request: Request) -> Response:
        return _json(self.stats())

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return _json({"reset": True})

    async def _list_simulated_templates(self, request: Request) -> Response:
        return _json({"templates": self._api.templates.all()})

    async def _set_template_status(self, request: Request) -> Response:
        """Meta reviewed (or paused, disabled...) a template: its status changes and Meta's
        signed ``message_template_status_update`` webhook goes to the app."""
        try:
            parsed = msgspec.json.decode(await request.body(), type=_TemplateStatusRequest)
            result = self.set_template_status(
                request.path_params["name"],
                request.path_params["language"],
                parsed.status,
                parsed.reason,
            )
        except KeyError:
            return _control_error("no such template", 404)
        except (msgspec.DecodeError, ValueError) as error:
            return _control_error(str(error))
        return _json(result)

    async def _get_config(self, request: Request) -> Response:
        return _json(public_view(self.config))

    async def _put_config(self, request: Request) -> Response:
        try:
            changes = msgspec.json.decode(await request.body())
            if not isinstance(changes, dict):
                raise ConfigError("the body must be a JSON object of settings")
            config = self.update_config(**changes)
        except (msgspec.DecodeError, ConfigError) as error:
            return _control_error(str(error))
        return _json(public_view(config))
