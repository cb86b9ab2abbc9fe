"""The dev host: runs a FunctionApp the way ``func start`` would, in one asyncio loop.

HTTP triggers are served by uvicorn (httptools, uvloop) under ``/<routePrefix>/``; Service Bus
queue triggers consume the local PostgreSQL queue; timer triggers follow their schedules. The
functions, the host's pool and the queue dispatcher share the loop, like the Python worker's
functions share the worker's loop.

The host keeps its own small pool and :class:`LocalQueue` for receiving; the app builds its own for
publishing, exactly as in Azure, where the Functions host and the app do not share clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, NoReturn, Self

import psycopg
import uvicorn
from psycopg import conninfo

from local.functions import FunctionSpec, Invoker, index_functions, resolve_setting
from local.host_json import HostConfig, HostConfigError
from local.http_adapter import HttpAdapter
from local.http_protocol import ConnectionGuard, HttpLimits
from local.postgres import EmbeddedPostgres, start_embedded_postgres
from local.routes import Router, RouteTemplateError
from local.servicebus_dispatch import QueueTrigger, TriggerConfigError, queue_trigger_for
from local.settings import DEV_DEFAULTS, LocalSettings, LocalSettingsError, load_local_settings
from local.simulator import BusinessNumber, CloudApiSimulator, SimulatorConfig
from local.simulator.config import DEFAULT_WABA_ID
from local.timers import ScheduleError, TimerTrigger, timer_trigger_for
from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS, LocalQueue, QueueOptions
from shared_code.db.migrations import apply_migrations
from shared_code.db.pool import Pool, open_pool

__all__ = [
    "DEFAULT_PORT",
    "REPO_ROOT",
    "FunctionInfo",
    "HostStartError",
    "HttpLimits",
    "LocalHost",
    "main",
    "serve",
]

logger = logging.getLogger(__name__)

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_PORT: Final = 7071
DEFAULT_APP: Final = "function_app:app"
DEFAULT_SIMULATOR_PORT: Final = 7072
WEBHOOK_ROUTE: Final = "v1/whatsapp/webhook"
SHUTDOWN_GRACE_SECONDS: Final = 10.0
# Past the grace period every step of a stop is bounded, because what still runs then may never
# end (a function waiting on a black-holed database, a hook that hangs): cancelled work gets
# _CANCEL_SECONDS to unwind, shutdown hooks _HOOK_SECONDS together, the host's clients
# _CLOSE_SECONDS; whatever ignores all that is left behind.
_CANCEL_SECONDS: Final = 1.0
_HOOK_SECONDS: Final = 1.5
_CLOSE_SECONDS: Final = 0.5
# The CLI exits this long after the grace period whatever still holds the process (a thread
# stuck in a blocking call, a task that swallows its cancellation): the sum of the bounded steps
# above and in _run, plus a margin.
STOP_OVERRUN_SECONDS: Final = 5.0
_HTTP_TRIGGER: Final = "httpTrigger"
_SERVICE_BUS_TRIGGER: Final = "serviceBusTrigger"
_TIMER_TRIGGER: Final = "timerTrigger"

ShutdownHook = Callable[[], Awaitable[None]]


class HostStartError(RuntimeError):
    """The app cannot be hosted as configured; the message names every problem found."""


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """One line of the start-up banner."""

    name: str
    trigger: str
    detail: str


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the host owns SIGINT/SIGTERM and the shutdown order.

    (uvicorn's own handlers re-raise the signal after serving, which would kill the process with
    a signal status instead of exiting 0 after a clean stop.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class LocalHost:
    """A running (after :meth:`start`) dev host for one FunctionApp."""

    def __init__(
        self,
        app: Any,
        *,
        database_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        config: HostConfig | None = None,
        timers: bool = True,
        queue_options: QueueOptions | None = None,
        queue_options_by_name: Mapping[str, QueueOptions] | None = None,
        pool_max_size: int = 10,
        shutdown_grace: float = SHUTDOWN_GRACE_SECONDS,
        on_shutdown: Sequence[ShutdownHook] = (),
        function_directory: Path = REPO_ROOT,
        only_functions: Sequence[str] | None = None,
        http_limits: HttpLimits | None = None,
    ) -> None:
        self._app = app
        # Like `func start --functions a b`: run only these (None: all).
        self._only = frozenset(only_functions) if only_functions else None
        self._database_url = database_url
        self._host = host
        self._requested_port = port
        self._config = (
            config
            if config is not None
            else HostConfig.for_dev_host(REPO_ROOT / "host.json", os.environ)
        )
        self._timers_enabled = timers
        self._queue_options = queue_options or QueueOptions()
        self._queue_options_by_name = dict(queue_options_by_name or {})
        self._pool_max_size = pool_max_size
        self._grace = shutdown_grace
        self._on_shutdown = list(on_shutdown)
        self._invoker = Invoker(
            function_timeout=self._config.function_timeout,
            function_directory=str(function_directory),
        )
        self._router: Router[FunctionSpec] = Router(self._config.route_prefix)
        self._queue_triggers: list[QueueTrigger] = []
        self._timers: list[TimerTrigger] = []
        self._functions: list[FunctionInfo] = []
        self._pool: Pool | None = None
        self._bus: LocalQueue | None = None
        self._http_limits = http_limits or HttpLimits()
        self._guard: ConnectionGuard | None = None
        self._server: _Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._started = False
        self._stopped = False

    # --- public surface -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the host is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def functions(self) -> list[FunctionInfo]:
        return list(self._functions)

    @property
    def shutdown_grace(self) -> float:
        return self._grace

    @property
    def bus(self) -> LocalQueue | None:
        """The host's receiving queue client (None when the app has no queue triggers)."""
        return self._bus

    async def start(self) -> None:
        """Index the app, bind the port, start every trigger. Raises HostStartError."""
        if self._started:
            raise RuntimeError("the host was already started")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking work, let running functions finish (up to ``grace`` s), release all.

        Past ``grace`` what still runs is cancelled, and each later step is bounded too, so this
        returns within about ``grace`` + 3 s even if a function or a shutdown hook never ends
        (it is then left behind, cancelled).
        """
        if self._stopped:
            return
        self._stopped = True
        grace = max(0.0, self._grace if grace is None else grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._server is not None:
            self._server.should_exit = True
            if grace <= 0:
                self._server.force_exit = True
        await asyncio.gather(self._stop_http(deadline), self._stop_triggers(deadline))
        hooks_deadline = loop.time() + _HOOK_SECONDS
        for hook in self._on_shutdown:
            name = getattr(hook, "__qualname__", repr(hook))
            await _bounded(hook(), hooks_deadline - loop.time(), f"shutdown hook {name}")
        await _bounded(self._close_clients(), _CLOSE_SECONDS, "closing the host's database pool")
        self._invoker.close()
        if self._guard is not None:
            self._guard.close()

    async def _stop_http(self, deadline: float) -> None:
        server, serving = self._server, self._serve_task
        if server is None or serving is None:
            return
        loop = asyncio.get_running_loop()
        # uvicorn stops listening, closes idle connections and waits for running requests.
        await asyncio.wait([serving], timeout=max(0.0, deadline - loop.time()))
        if not serving.done():
            requests = list(server.server_state.tasks)
            if requests:
                logger.warning("cutting off %d HTTP request(s) still running", len(requests))
            for request in requests:
                request.cancel()  # the adapter answers 503
            await asyncio.wait([serving], timeout=_CANCEL_SECONDS)
        if not serving.done():
            # Connections that still will not close (their requests ignore the cancellation).
            server.force_exit = True
            await asyncio.wait([serving], timeout=_CLOSE_SECONDS / 2)
        if not serving.done():
            logger.warning("the HTTP server did not stop in time; abandoned")
            serving.cancel()
        elif not serving.cancelled() and serving.exception() is not None:
            logger.error("the HTTP server failed while stopping", exc_info=serving.exception())

    async def _stop_triggers(self, deadline: float) -> None:
        stops = [
            *(trigger.stop(deadline) for trigger in self._queue_triggers),
            *(timer.stop(deadline) for timer in self._timers),
        ]
        if stops:
            # The triggers cancel their functions at the deadline and then wait for them.
            seconds = deadline - asyncio.get_running_loop().time() + _CANCEL_SECONDS
            await _bounded(asyncio.gather(*stops), seconds, "stopping queue and timer triggers")

    async def _close_clients(self) -> None:
        if self._bus is not None:
            await self._bus.close()
        if self._pool is not None:
            await self._pool.close(timeout=_CLOSE_SECONDS)

    async def wait_closed(self) -> None:
        """Return when the HTTP server ends (after :meth:`stop`, or if it fails on its own)."""
        if self._serve_task is not None:
            await asyncio.shield(self._serve_task)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- start-up -------------------------------------------------------------------------------

    async def _start(self) -> None:
        problems: list[str] = []
        queue_specs: list[FunctionSpec] = []
        specs = index_functions(self._app)
        if self._only is not None:
            unknown = self._only - {spec.name for spec in specs}
            if unknown:
                problems.append(f"no such function(s): {', '.join(sorted(unknown))}")
            specs = [spec for spec in specs if spec.name in self._only]
        for spec in specs:
            if spec.trigger_type == _HTTP_TRIGGER:
                self._add_http(spec, problems)
            elif spec.trigger_type == _SERVICE_BUS_TRIGGER:
                queue_specs.append(spec)
            elif spec.trigger_type == _TIMER_TRIGGER:
                self._add_timer(spec, problems)
            else:
                logger.warning(
                    "function %s: trigger %s is not supported by the local host; skipped",
                    spec.name,
                    spec.trigger_type,
                )
                self._functions.append(FunctionInfo(spec.name, spec.trigger_type, "not supported"))
        if queue_specs:
            if not self._database_url:
                problems.append("Service Bus triggers need a database_url for the local queue")
            else:
                await self._open_bus()
                for spec in queue_specs:
                    self._add_queue_trigger(spec, problems)
        if problems:
            raise HostStartError("; ".join(problems))
        await self._start_http()
        for trigger in self._queue_triggers:
            trigger.start()
        for timer in self._timers:
            timer.start()

    def _add_http(self, spec: FunctionSpec, problems: list[str]) -> None:
        binding = spec.binding
        route = str(binding.get("route") or spec.name)
        methods = binding.get("methods") or None
        try:
            route = resolve_setting(route)
            self._router.add(route, methods, spec)
        except (RouteTemplateError, LookupError) as error:
            problems.append(f"function {spec.name}: {error}")
            return
        prefix = f"/{self._config.route_prefix}" if self._config.route_prefix else ""
        verbs = ",".join(m.upper() for m in methods) if methods else "ALL"
        self._functions.append(FunctionInfo(spec.name, "http", f"[{verbs}] {prefix}/{route}"))

    def _add_timer(self, spec: FunctionSpec, problems: list[str]) -> None:
        try:
            timer = timer_trigger_for(spec, self._invoker)
        except ScheduleError as error:
            problems.append(str(error))
            return
        detail = timer.schedule.describe() + (" (run on startup)" if timer.run_on_startup else "")
        if self._timers_enabled:
            self._timers.append(timer)
        else:
            detail += " — disabled by --no-timers"
        self._functions.append(FunctionInfo(spec.name, "timer", detail))

    def _add_queue_trigger(self, spec: FunctionSpec, problems: list[str]) -> None:
        assert self._bus is not None
        try:
            trigger = queue_trigger_for(spec, self._bus, self._invoker, self._config)
        except TriggerConfigError as error:
            problems.append(str(error))
            return
        self._queue_triggers.append(trigger)
        if trigger.sessions:
            detail = (
                f"queue {trigger.queue} (sessions, up to "
                f"{self._config.max_concurrent_sessions} at a time)"
            )
        else:
            detail = f"queue {trigger.queue} (up to {self._config.max_concurrent_calls} at a time)"
        self._functions.append(FunctionInfo(spec.name, "serviceBus", detail))

    async def _open_bus(self) -> None:
        assert self._database_url is not None
        self._pool = await open_pool(
            self._database_url,
            max_size=self._pool_max_size,
            name="local-host",
            synchronous_commit=False,  # safe for the bus alone: see shared_code/bus/local_queue.py
        )
        self._bus = LocalQueue(
            self._pool,
            options=self._queue_options_by_name,
            default_options=self._queue_options,
        )

    async def _start_http(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # Bound here rather than by uvicorn: a busy port is an exception we can report, not a
        # sys.exit inside the server task, and port 0 (tests) tells us the port it got.
        sock = socket.create_server((self._host, self._requested_port), family=family, backlog=2048)
        # Accepted connections inherit it: without it, Nagle's algorithm holds small answers
        # ~40 ms on the plain asyncio loop (uvloop sets it itself).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._port = int(sock.getsockname()[1])
        limits = _within_descriptor_limit(self._http_limits)
        self._guard = ConnectionGuard(limits)
        config = uvicorn.Config(
            HttpAdapter(
                self._router,
                self._invoker,
                max_body_bytes=limits.max_body_bytes,
                run_now={timer.spec.name: timer.run_now for timer in self._timers},
            ),
            host=self._host,
            port=self._port,
            loop="none",
            # httptools with the timeouts and size limits of local.http_protocol. Not uvicorn's
            # limit_concurrency: it counts connections when a request arrives, so slow clients
            # holding connections would turn every other request into a 503.
            http=self._guard.protocol_class,
            ws="none",
            lifespan="off",
            interface="asgi3",
            access_log=False,  # the adapter logs one line per request itself
            log_config=None,
            proxy_headers=False,
            server_header=False,
            # Unused by that protocol, which keeps its own; stated for whoever reads the config.
            timeout_keep_alive=max(1, math.ceil(limits.keep_alive_timeout)),
            # stop() cuts requests off at the grace period itself; this is uvicorn's backstop.
            timeout_graceful_shutdown=math.ceil(self._grace) + 1,
        )
        self._server = _Server(config)
        self._serve_task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="http-server"
        )
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise HostStartError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.005)


async def serve(
    app: Any,
    *,
    database_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    config: HostConfig | None = None,
    timers: bool = True,
    queue_options: QueueOptions | None = None,
    queue_options_by_name: Mapping[str, QueueOptions] | None = None,
    pool_max_size: int = 10,
    shutdown_grace: float = SHUTDOWN_GRACE_SECONDS,
    on_shutdown: Sequence[ShutdownHook] = (),
    http_limits: HttpLimits | None = None,
) -> LocalHost:
    """Start a dev host for ``app`` in the running loop; ``await host.stop()`` to end it.

    ``port=0`` picks a free port (``host.port``). ``config`` defaults to the repo's host.json.
    The database must already be migrated (the CLI does it).
    """
    local_host = LocalHost(
        app,
        database_url=database_url,
        host=host,
        port=port,
        config=config,
        timers=timers,
        queue_options=queue_options,
        queue_options_by_name=queue_options_by_name,
        pool_max_size=pool_max_size,
        shutdown_grace=shutdown_grace,
        on_shutdown=on_shutdown,
        http_limits=http_limits,
    )
    await local_host.start()
    return local_host


async def _bounded(work: Awaitable[object], seconds: float, what: str) -> bool:
    """Await ``work`` for at most ``seconds``; past that cancel it and go on without waiting for
    it (it may well ignore the cancellation). False when it did not finish in time."""
    task = asyncio.ensure_future(work)
    # However late, a step gets a moment: one that is already done should not be abandoned.
    await asyncio.wait([task], timeout=max(seconds, 0.05))
    if not task.done():
        task.cancel()
        task.add_done_callback(_ignore_outcome)
        logger.warning("%s did not finish within %.1f s; abandoned", what, seconds)
        return False
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed", what, exc_info=task.exception())
    return True


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    # Retrieved so that asyncio does not report it: the step was already given up on.
    if not task.cancelled():
        task.exception()


def _within_descriptor_limit(limits: HttpLimits) -> HttpLimits:
    """``limits`` with at most half the process's file descriptors for HTTP connections: the rest
    are the app's (database, Graph API), which a flood of clients must not starve."""
    try:
        import resource
    except ImportError:  # not on Unix
        return limits
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or limits.max_connections <= soft // 2:
        return limits
    logger.info("at most %d HTTP connections (half the open-file limit of %d)", soft // 2, soft)
    return dataclasses.replace(limits, max_connections=max(1, soft // 2))


# --- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m local``: settings, embedded PostgreSQL, migrations, the app, until stopped."""
    args = _parse_args(argv)
    _configure_logging(args.log_level)
    try:
        local_settings = load_local_settings(REPO_ROOT)
        # After the local settings: they may hold AzureFunctionsJobHost__ overrides.
        config = HostConfig.for_dev_host(REPO_ROOT / "host.json", os.environ)
    except (LocalSettingsError, HostConfigError) as error:
        logger.error("%s", error)
        return 2
    port = args.port if args.port is not None else local_settings.local_http_port or DEFAULT_PORT
    embedded: EmbeddedPostgres | None = None
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); its fallback is fine here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    if not os.environ.get("DATABASE_URL", "").strip():
        data_dir = REPO_ROOT / ".local" / "pgdata"
        logger.info("starting the embedded PostgreSQL in %s", data_dir)
        try:
            embedded = start_embedded_postgres(data_dir)
        except Exception:
            logger.exception("could not start the embedded PostgreSQL; set DATABASE_URL instead")
            return 1
        os.environ["DATABASE_URL"] = embedded.database_url
    watchdog = _ExitWatchdog()
    runner = asyncio.Runner(loop_factory=_loop_factory())
    code, left_behind = 130, False
    try:
        code, left_behind = runner.run(_run(args, config, local_settings, port, embedded, watchdog))
    except (KeyboardInterrupt, asyncio.CancelledError):
        logger.warning("interrupted")
    finally:
        try:
            if not left_behind:
                # It cancels and awaits what is left; should that hang, the watchdog ends it.
                runner.close()
        finally:
            if embedded is not None:
                embedded.stop()
                logger.info("embedded PostgreSQL released")
    if left_behind or _threads_still_running(_CLOSE_SECONDS):
        # The interpreter's exit would wait for them (a sync function stuck in its thread, a
        # task that swallows its cancellation) for as long as they take: maybe forever.
        logger.warning("exiting without waiting for work that ignored the stop")
        _exit_now(code)
    return code


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="Run the Functions app locally, as `func start` would.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"HTTP port (default: local.settings.json Host.LocalHttpPort, else {DEFAULT_PORT})",
    )
    parser.add_argument("--no-timers", action="store_true", help="do not run timer triggers")
    parser.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=SHUTDOWN_GRACE_SECONDS,
        metavar="SECONDS",
        help=(
            "on Ctrl-C or SIGTERM, how long running functions may finish before they are cut off "
            f"(default {SHUTDOWN_GRACE_SECONDS:g})"
        ),
    )
    parser.add_argument(
        "--functions",
        nargs="+",
        metavar="NAME",
        help="run only these functions, like `func start --functions` (default: all)",
    )
    parser.add_argument(
        "--simulator-port",
        type=int,
        default=DEFAULT_SIMULATOR_PORT,
        help=(
            "port of the WhatsApp Cloud API simulator, started unless WHATSAPP_GRAPH_BASE_URL is "
            f"set (default {DEFAULT_SIMULATOR_PORT}; 0 picks a free one)"
        ),
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    parser.add_argument(
        "--app", default=DEFAULT_APP, help=f"module:attribute of the FunctionApp ({DEFAULT_APP})"
    )
    return parser.parse_args(argv)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}")
    return value


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Chatty libraries: their INFO lines are about internals, not the app.
    for name in ("embedded_postgres", "psycopg.pool", "uvicorn", "azure"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _run(
    args: argparse.Namespace,
    config: HostConfig,
    local_settings: LocalSettings,
    port: int,
    embedded: EmbeddedPostgres | None,
    watchdog: _ExitWatchdog,
) -> tuple[int, bool]:
    """The CLI's life in the loop: (exit code, whether tasks that ignored the stop are left)."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    stop_requested = asyncio.Event()
    started = False
    received: list[int] = []

    def means_now(signum: int) -> bool:
        # Before start-up completes there is nothing to drain: abandon start-up at once. A second
        # Ctrl-C while draining means "now"; a repeated SIGTERM does not (supervisors such as
        # `timeout` send it to the whole process group, so one request can arrive twice).
        return not started or (bool(received) and signum == signal.SIGINT)

    def on_signal(signum: int, now: bool) -> None:
        if now:
            main_task.cancel()
        stop_requested.set()

    def on_os_signal(signum: int, frame: FrameType | None) -> None:
        # A plain signal handler rather than loop.add_signal_handler: it runs even while a
        # function blocks the loop in a call (the call is interrupted), so the watchdog is armed
        # whatever the loop is doing. Only assignments and a pipe write here: no locks.
        now = means_now(signum)
        received.append(signum)
        if now:
            watchdog.arm(STOP_OVERRUN_SECONDS, 130)
        else:
            watchdog.arm(args.shutdown_grace + STOP_OVERRUN_SECONDS, 0)
        loop.call_soon_threadsafe(on_signal, signum, now)

    previous_handlers = {
        signum: signal.signal(signum, on_os_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    simulator: CloudApiSimulator | None = None
    try:
        database_url = os.environ["DATABASE_URL"]
        try:
            if port == 0:
                # The simulator must know the webhook URL before the app can make any request.
                port = _free_port(args.host)
            simulator = await _start_simulator(args, config, port)
            host = await _start_host(args, config, port, database_url)
        except (HostStartError, OSError, psycopg.OperationalError) as error:
            logger.error("cannot start: %s", error)
            if simulator is not None:
                await simulator.stop()
            return 1, False
        except Exception:
            # The app failed to import or index: its traceback is what the developer needs.
            logger.exception("cannot start")
            return 1, False
        started = True
        _warn_about_bus_backend(host)
        sys.stdout.write(_banner(host, args.app, local_settings, database_url, embedded, simulator))
        sys.stdout.flush()
        stop_waiter = asyncio.create_task(stop_requested.wait())
        server_waiter = asyncio.create_task(host.wait_closed())
        await asyncio.wait([stop_waiter, server_waiter], return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        server_waiter.cancel()
        if not stop_requested.is_set():
            logger.error("the HTTP server stopped unexpectedly")
        logger.info(
            "stopping: letting running functions finish (up to %.0f s)", host.shutdown_grace
        )
        await host.stop()
        if simulator is not None:
            await _bounded(simulator.stop(), _CLOSE_SECONDS, "stopping the simulator")
        all_ended = await _cancel_left_over_tasks()
        logger.info("stopped")
        return (0 if stop_requested.is_set() else 1), not all_ended
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)


async def _cancel_left_over_tasks() -> bool:
    """Cancel the tasks a stop left behind; False when some ignore it (nothing can end them)."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=_CLOSE_SECONDS)
    if pending:
        logger.warning("%d task(s) ignored their cancellation", len(pending))
    return not pending


def _threads_still_running(seconds: float) -> bool:
    """Whether a thread the interpreter would wait for at exit is still running ``seconds`` on."""
    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return True
    return False


def _exit_now(code: int) -> NoReturn:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _ExitWatchdog:
    """Ends the process when a requested stop overruns its bound. What holds it then (a thread
    stuck in a blocking call, a loop blocked by one, a task that swallows its cancellation) would
    otherwise hold it forever, and a supervisor's SIGTERM would seem ignored."""

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._code = 0
        # Armed from a signal handler, where taking a lock (starting a thread, setting an Event)
        # could deadlock: arming is two assignments and a pipe write to a thread already waiting.
        self._wake_read, self._wake_write = os.pipe()
        threading.Thread(target=self._watch, name="exit-watchdog", daemon=True).start()

    def arm(self, seconds: float, code: int) -> None:
        """Exit with ``code`` in ``seconds`` unless the process ends first (earliest arm wins)."""
        deadline = time.monotonic() + seconds
        if self._deadline is None or deadline < self._deadline:
            self._code = code
            self._deadline = deadline
        os.write(self._wake_write, b"!")

    def _watch(self) -> None:
        os.read(self._wake_read, 1)
        while True:
            deadline = self._deadline
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            # Re-read now and then: a later arm may bring the deadline forward.
            time.sleep(min(remaining, 0.25))
        logger.error("the host did not stop in time; exiting without waiting any longer")
        _exit_now(self._code)


async def _start_simulator(
    args: argparse.Namespace, config: HostConfig, port: int
) -> CloudApiSimulator | None:
    """Start the Cloud API simulator and point the app at it, unless a Graph URL is set."""
    if os.environ.get("WHATSAPP_GRAPH_BASE_URL", "").strip():
        return None
    prefix = f"/{config.route_prefix}" if config.route_prefix else ""
    simulator = CloudApiSimulator(
        SimulatorConfig(
            app_secret=os.environ["WHATSAPP_APP_SECRET"],
            access_token=os.environ["WHATSAPP_ACCESS_TOKEN"],
            webhook_url=f"http://{_client_address(args.host)}:{port}{prefix}/{WEBHOOK_ROUTE}",
            business_numbers=(
                BusinessNumber(phone_number_id=os.environ["WHATSAPP_PHONE_NUMBER_ID"]),
            ),
            waba_id=os.environ.get("WHATSAPP_BUSINESS_ACCOUNT_ID") or DEFAULT_WABA_ID,
        )
    )
    os.environ["WHATSAPP_GRAPH_BASE_URL"] = await simulator.start(
        _client_address(args.host), args.simulator_port
    )
    return simulator


def _client_address(listen_address: str) -> str:
    return "127.0.0.1" if listen_address in ("0.0.0.0", "") else listen_address


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((_client_address(address), 0))
        return int(sock.getsockname()[1])


async def _start_host(
    args: argparse.Namespace, config: HostConfig, port: int, database_url: str
) -> LocalHost:
    await apply_migrations(database_url)
    await apply_migrations(database_url, LOCAL_BUS_MIGRATIONS, set_name="local_bus")
    host = LocalHost(
        _load_app(args.app),
        database_url=database_url,
        host=args.host,
        port=port,
        config=config,
        timers=not args.no_timers,
        shutdown_grace=args.shutdown_grace,
        on_shutdown=[_shutdown_app_services],
        only_functions=args.functions,
    )
    await host.start()
    return host


def _load_app(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    module = importlib.import_module(module_name)
    app = getattr(module, attribute or "app", None)
    if app is None or not callable(getattr(app, "get_functions", None)):
        raise HostStartError(f"{reference} is not an azure.functions FunctionApp")
    return app


async def _shutdown_app_services() -> None:
    # Only if the app built them: the host must not build the app's services just to close them.
    runtime = sys.modules.get("shared_code.runtime")
    shutdown = getattr(runtime, "shutdown_services", None)
    if shutdown is not None:
        await shutdown()


def _warn_about_bus_backend(host: LocalHost) -> None:
    backend = os.environ.get("BUS_BACKEND", "").strip().lower()
    if backend and backend != "local" and any(f.trigger == "serviceBus" for f in host.functions):
        logger.warning(
            "BUS_BACKEND=%s: the app publishes to Azure Service Bus, but this host's queue "
            "triggers read the local queue, so they will not see those messages",
            backend,
        )


def describe_database_url(url: str) -> str:
    """The URL without its password, for the banner."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except Exception:
        return "(unreadable DATABASE_URL)"
    user = params.get("user") or ""
    host = str(params.get("host") or "localhost")
    port = params.get("port")
    database = params.get("dbname") or ""
    credentials = f"{user}@" if user else ""
    if host.startswith("/"):  # a Unix socket directory
        return f"postgresql://{credentials}/{database}?host={host}"
    location = f"{host}:{port}" if port else host
    return f"postgresql://{credentials}{location}/{database}"


def _banner(
    host: LocalHost,
    app_reference: str,
    local_settings: LocalSettings,
    database_url: str,
    embedded: EmbeddedPostgres | None,
    simulator: CloudApiSimulator | None = None,
) -> str:
    lines = ["", f"Functions in {app_reference}:", ""]
    width = max((len(f.name) for f in host.functions), default=0)
    for function in host.functions:
        detail = function.detail
        if function.trigger == "http":
            verbs, _, path = detail.partition(" ")
            detail = f"{verbs} {host.url}{path}"
        lines.append(f"  {function.name:<{width}}  {function.trigger:<10}  {detail}")
    if not host.functions:
        lines.append("  (none)")
    source = "embedded, data in .local/pgdata" if embedded is not None else "from DATABASE_URL"
    settings_file = (
        local_settings.settings_file.name if local_settings.settings_file else "none found"
    )
    lines += [
        "",
        f"Database: {describe_database_url(database_url)} ({source})",
        f"Settings: local.settings.json: {settings_file}",
    ]
    for name in DEV_DEFAULTS:
        if name in local_settings.applied_defaults:
            # Dev-only values, printed on purpose: needed to sign a test webhook.
            lines.append(f"  {name} = {local_settings.applied_defaults[name]}  (dev default)")
        else:
            lines.append(f"  {name}  (from {local_settings.sources.get(name, 'environment')})")
    if simulator is not None:
        user = "15551234567"
        lines += [
            "",
            f"WhatsApp Cloud API simulator: {simulator.base_url} (the app sends its replies here)",
            "  a simulated user writes to the bridge:",
            f"    curl -s -X POST {simulator.base_url}/simulator/users/{user}/messages "
            "-H 'Content-Type: application/json' -d '{\"text\": \"hello\"}'",
            f"  the replies it received: curl -s {simulator.base_url}/simulator/messages?to={user}",
        ]
    else:
        lines += ["", f"Graph API: {os.environ.get('WHATSAPP_GRAPH_BASE_URL')} (no simulator)"]
    if "MANAGEMENT_API_READ_KEYS" in local_settings.applied_defaults:
        read_key = local_settings.applied_defaults["MANAGEMENT_API_READ_KEYS"]
        lines += [
            "",
            f"Management API (OpenAPI: {host.url}/api/v1/whatsapp/openapi.json):",
            f"  curl -s {host.url}/api/v1/whatsapp/conversations "
            f"-H 'Authorization: Bearer {read_key}'",
        ]
    lines += ["", f"Listening on {host.url} — Ctrl-C to stop", "", ""]
    return "\n".join(lines)
