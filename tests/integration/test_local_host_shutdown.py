"""Stopping the dev host is bounded: functions, shutdown hooks and a database that never answer
cannot keep it (or `python -m local` on SIGTERM) from ending within the grace period plus a few
seconds, and in-flight clients get an answer or a closed connection, never silence.

This module is also the app the subprocess tests run (``--app`` below); there, settings from the
environment make it record which functions started and make the app's shutdown hook hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from local import HostConfig, serve
from local.host import STOP_OVERRUN_SECONDS
from local.settings import DEV_DEFAULTS
from scripts.send_sample_webhook import text_message_webhook
from shared_code.bus.local_queue import LocalQueue
from shared_code.bus.port import OutgoingMessage
from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign
from tests.conftest import REPO_ROOT
from tests.faults.tcp_proxy import Mode, TcpProxy, upstream_of

pytestmark = pytest.mark.integration

THIS_APP = "tests.integration.test_local_host_shutdown:app"
FOREVER_QUEUE = "host-forever"
GRACE = 1.0
# The bound the host promises; the test allows a little for the process to end.
BOUND = GRACE + STOP_OVERRUN_SECONDS
MARKS_SETTING = "LOCAL_HOST_TEST_MARKS"
HANG_SETTING = "LOCAL_HOST_TEST_HANG_SHUTDOWN"

started: set[str] = set()


def mark(what: str) -> None:
    started.add(what)
    marks = os.environ.get(MARKS_SETTING)
    if marks:
        with open(marks, "a") as file:
            file.write(what + "\n")


async def hang(*, stubborn: bool) -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not stubborn:
                raise


bp = func.Blueprint()


@bp.route(route="ok", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def ok(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("ok")


@bp.route(route="forever", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def wait_forever(req: func.HttpRequest) -> func.HttpResponse:
    mark("forever")
    await hang(stubborn=False)
    return func.HttpResponse("unreachable")


@bp.route(route="stubborn", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def ignore_cancellation(req: func.HttpRequest) -> func.HttpResponse:
    mark("stubborn")
    await hang(stubborn=True)
    return func.HttpResponse("unreachable")


@bp.route(route="blocking", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def block_a_thread(req: func.HttpRequest) -> func.HttpResponse:
    # Sync: runs in the worker's thread pool, where nothing can interrupt it.
    mark("blocking")
    time.sleep(3600)
    return func.HttpResponse("unreachable")


@bp.route(route="block-loop", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def block_the_loop(req: func.HttpRequest) -> func.HttpResponse:
    # A blocking call in an async function: the whole event loop stops with it.
    mark("block-loop")
    time.sleep(3600)
    return func.HttpResponse("unreachable")


@bp.service_bus_queue_trigger(
    arg_name="message", connection="ServiceBusConnection", queue_name=FOREVER_QUEUE
)
async def wait_forever_on_a_message(message: func.ServiceBusMessage) -> None:
    mark("message")
    await hang(stubborn=False)


app = func.FunctionApp()
app.register_functions(bp)

if os.environ.get(HANG_SETTING):
    # The CLI's shutdown hook calls shared_code.runtime.shutdown_services: make it hang, and
    # ignore its cancellation too.
    import shared_code.runtime

    async def _hang_forever() -> None:
        await hang(stubborn=True)

    shared_code.runtime.shutdown_services = _hang_forever


async def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def answered_or_closed(outcome: httpx.Response | BaseException) -> bool:
    """A client that got an answer (503: cut off) or saw its connection close, not a timeout."""
    if isinstance(outcome, httpx.Response):
        return outcome.status_code == 503
    return isinstance(outcome, httpx.TransportError) and not isinstance(
        outcome, httpx.TimeoutException
    )


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=BOUND + 10) as client:
        return await client.get(url)


# --- in process ---------------------------------------------------------------------------------


async def test_stop_cuts_off_functions_and_hooks_that_never_end(
    database_url: str, local_queue: LocalQueue
) -> None:
    started.clear()
    hook_called = asyncio.Event()

    async def hanging_hook() -> None:
        hook_called.set()
        await hang(stubborn=False)

    host = await serve(
        app,
        port=0,
        database_url=database_url,
        config=HostConfig(route_prefix="api"),
        timers=False,
        shutdown_grace=GRACE,
        on_shutdown=[hanging_hook],
    )
    in_flight = asyncio.create_task(get(f"{host.url}/api/forever"))
    await local_queue.publish(FOREVER_QUEUE, [OutgoingMessage(body=b"x", message_id="m1")])
    await eventually(lambda: {"forever", "message"} <= started)

    stopping = time.monotonic()
    await host.stop()
    elapsed = time.monotonic() - stopping

    # The grace period was given, and the rest is bounded: cancel 1 s, hooks 1.5 s, close 0.5 s.
    assert GRACE <= elapsed < GRACE + 3.5
    assert hook_called.is_set()
    outcome = (await asyncio.gather(in_flight, return_exceptions=True))[0]
    assert isinstance(outcome, httpx.Response)
    assert outcome.status_code == 503
    assert outcome.headers["connection"] == "close"


async def test_stop_without_grace_still_answers_the_client(database_url: str) -> None:
    started.clear()
    host = await serve(
        app, port=0, database_url=database_url, config=HostConfig(route_prefix="api"), timers=False
    )
    in_flight = asyncio.create_task(get(f"{host.url}/api/forever"))
    await eventually(lambda: "forever" in started)
    stopping = time.monotonic()
    await host.stop(grace=0)
    assert time.monotonic() - stopping < 2
    outcome = (await asyncio.gather(in_flight, return_exceptions=True))[0]
    assert isinstance(outcome, httpx.Response)
    assert outcome.status_code == 503


# --- python -m local ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_cli(
    log: Path, database_url: str, *args: str, **settings: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in DEV_DEFAULTS}
    env.update(
        DATABASE_URL=database_url,
        PYTHONUNBUFFERED="1",
        # No simulator: nothing here sends to the Graph API.
        WHATSAPP_GRAPH_BASE_URL="http://127.0.0.1:9",
        **settings,
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local",
                "--port",
                str(port),
                "--no-timers",
                "--shutdown-grace",
                str(GRACE),
                *args,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "Listening on" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"dev host did not start:\n{log.read_text(errors='replace')}")
        await asyncio.sleep(0.05)
    return process, f"http://127.0.0.1:{port}"


async def stop_cli(process: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    """SIGTERM, then (exit status or None if still running after a while, seconds it took)."""
    stopping = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(process.wait, BOUND + 10)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - stopping
    return code, time.monotonic() - stopping


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Host processes of a test, killed at its end if it failed to stop them."""
    running: list[subprocess.Popen[bytes]] = []
    yield running
    for process in running:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_sigterm_ends_the_host_in_time_whatever_hangs(
    database_url: str,
    local_queue: LocalQueue,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # An HTTP function awaiting forever, one that swallows its cancellation, a sync one blocked
    # in its thread, a queue-triggered one awaiting forever, and the app's shutdown hook hanging.
    log, marks = tmp_path / "host.log", tmp_path / "marks"
    marks.touch()
    process, url = await start_cli(
        log, database_url, "--app", THIS_APP, **{MARKS_SETTING: str(marks), HANG_SETTING: "1"}
    )
    processes.append(process)
    clients = [
        asyncio.create_task(get(f"{url}/api/{path}"))
        for path in ("forever", "stubborn", "blocking")
    ]
    await local_queue.publish(FOREVER_QUEUE, [OutgoingMessage(body=b"x", message_id="m2")])
    await eventually(
        lambda: {"forever", "stubborn", "blocking", "message"} <= set(marks.read_text().split())
    )

    code, elapsed = await stop_cli(process)

    output = log.read_text(errors="replace")
    assert code == 0, output
    assert elapsed < BOUND, output
    outcomes = await asyncio.gather(*clients, return_exceptions=True)
    assert all(answered_or_closed(outcome) for outcome in outcomes), outcomes
    assert "cut off at shutdown" in output


async def test_sigterm_ends_the_host_in_time_when_the_database_is_black_holed(
    database_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # The real app's webhook: its first request builds the app's services (pool, bus) through
    # the proxy; then every database connection, old and new, stops answering.
    proxy = TcpProxy(upstream_of(database_url))
    proxy.start()
    proxied_url = proxy.url_for(database_url)
    secret = "black-hole-test-secret"
    try:
        process, url = await start_cli(
            tmp_path / "host.log",
            proxied_url,
            "--functions",
            "webhook_receive",
            WHATSAPP_APP_SECRET=secret,
        )
        processes.append(process)
        webhook = f"{url}/api/v1/whatsapp/webhook"

        async def post_webhook() -> httpx.Response:
            payload = text_message_webhook(
                phone_number_id="100000000000001",
                waba_id="200000000000001",
                sender="15550001111",
                name="Test",
                text="hello",
            )
            body = json.dumps(payload).encode()
            async with httpx.AsyncClient(timeout=BOUND + 10) as client:
                return await client.post(
                    webhook,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        SIGNATURE_HEADER: sign(body, secret),
                    },
                )

        assert (await post_webhook()).status_code == 200
        proxy.set_mode(Mode.BLACKHOLE)
        in_flight = asyncio.create_task(post_webhook())
        await asyncio.sleep(0.5)  # well into its INSERT, which never returns
        assert not in_flight.done()

        code, elapsed = await stop_cli(process)

        output = (tmp_path / "host.log").read_text(errors="replace")
        assert code == 0, output
        assert elapsed < BOUND, output
        outcome = (await asyncio.gather(in_flight, return_exceptions=True))[0]
        assert answered_or_closed(outcome), outcome
    finally:
        proxy.stop()


async def test_sigterm_ends_the_host_even_when_a_function_blocks_the_loop(
    database_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # Nothing on the loop runs any more, timeouts included: the watchdog thread, armed by the
    # signal handler, ends the process at the bound.
    log, marks = tmp_path / "host.log", tmp_path / "marks"
    marks.touch()
    process, url = await start_cli(
        log, database_url, "--app", THIS_APP, **{MARKS_SETTING: str(marks)}
    )
    processes.append(process)
    client = asyncio.create_task(get(f"{url}/api/block-loop"))
    await eventually(lambda: "block-loop" in marks.read_text().split())

    code, elapsed = await stop_cli(process)

    output = log.read_text(errors="replace")
    assert code == 0, output
    assert elapsed < BOUND + 1, output
    assert "did not stop in time" in output
    outcome = (await asyncio.gather(client, return_exceptions=True))[0]
    assert answered_or_closed(outcome), outcome
