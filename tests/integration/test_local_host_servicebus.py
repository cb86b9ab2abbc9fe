"""The dev host's Service Bus triggers on the local queue (real PostgreSQL): order per session,
settlement by outcome, redelivery up to dead-letter, lock renewal, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import azure.functions as func
import psycopg
import pytest

from local import HostConfig, HostStartError, LocalHost, serve
from shared_code.bus.local_queue import MAX_DELIVERY_COUNT_EXCEEDED, LocalQueue, QueueOptions
from shared_code.bus.port import OutgoingMessage
from shared_code.db.pool import Pool, open_pool

pytestmark = pytest.mark.integration

T = TypeVar("T")

SESSION_QUEUE = "host-sessions"
PLAIN_QUEUE = "host-plain"
FAILING_QUEUE = "host-failing"
FLAKY_QUEUE = "host-flaky"
SLOW_QUEUE = "host-slow"

MAX_DELIVERIES = 3
# Short enough that the renewal test finishes quickly, long enough for a loaded machine.
LOCK = timedelta(milliseconds=800)
FAST = HostConfig(
    max_concurrent_sessions=4,
    max_concurrent_calls=4,
    session_idle_timeout=timedelta(milliseconds=200),
)


@dataclass
class Recorder:
    """What the test functions saw; reset per test."""

    by_session: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    plain: list[str] = field(default_factory=list)
    failing: list[int] = field(default_factory=list)
    flaky: list[int] = field(default_factory=list)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    slow_finished: list[str] = field(default_factory=list)
    slow_seconds: float = 0.0
    concurrent: int = 0
    peak_concurrent: int = 0
    properties: list[dict[str, object]] = field(default_factory=list)


seen = Recorder()
bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="message",
    connection="ServiceBusConnection",
    queue_name="%TEST_SESSION_QUEUE%",
    is_sessions_enabled=True,
)
async def record_session(message: func.ServiceBusMessage) -> None:
    seen.concurrent += 1
    seen.peak_concurrent = max(seen.peak_concurrent, seen.concurrent)
    try:
        await asyncio.sleep(0.002)  # let other sessions interleave
        assert message.session_id is not None
        seen.by_session[message.session_id].append(message.get_body().decode())
        seen.properties.append(dict(message.application_properties))
    finally:
        seen.concurrent -= 1


@bp.service_bus_queue_trigger(
    arg_name="msg", connection="ServiceBusConnection", queue_name=PLAIN_QUEUE
)
def record_plain(msg: func.ServiceBusMessage) -> None:
    # Sync: runs in the worker's thread pool.
    seen.plain.append(msg.get_body().decode())


@bp.service_bus_queue_trigger(
    arg_name="message",
    connection="ServiceBusConnection",
    queue_name=FAILING_QUEUE,
    is_sessions_enabled=True,
)
async def always_fails(message: func.ServiceBusMessage) -> None:
    seen.failing.append(message.delivery_count or 0)
    raise RuntimeError("the body must never be logged")


@bp.service_bus_queue_trigger(
    arg_name="message",
    connection="ServiceBusConnection",
    queue_name=FLAKY_QUEUE,
    is_sessions_enabled=True,
)
async def fails_once(message: func.ServiceBusMessage) -> None:
    seen.flaky.append(message.delivery_count or 0)
    if message.delivery_count == 1:
        raise RuntimeError("first delivery fails")


@bp.service_bus_queue_trigger(
    arg_name="message",
    connection="ServiceBusConnection",
    queue_name=SLOW_QUEUE,
    is_sessions_enabled=True,
)
async def slow(message: func.ServiceBusMessage) -> None:
    seen.slow_started.set()
    await asyncio.sleep(seen.slow_seconds)
    seen.slow_finished.append(message.get_body().decode())


app = func.FunctionApp()
app.register_functions(bp)


@pytest.fixture(autouse=True)
def fresh_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    global seen
    seen = Recorder()
    monkeypatch.setenv("TEST_SESSION_QUEUE", SESSION_QUEUE)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(database_url, max_size=4, name="tests")
    yield pool
    await pool.close()


@pytest.fixture
async def publisher(pool: Pool) -> AsyncIterator[LocalQueue]:
    """The app's side: a queue client of its own, as the real app has."""
    bus = LocalQueue(pool)
    yield bus
    await bus.close()


async def start_host(database_url: str, config: HostConfig = FAST) -> LocalHost:
    return await serve(
        app,
        port=0,
        database_url=database_url,
        config=config,
        queue_options=QueueOptions(lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES),
    )


@pytest.fixture
async def host(database_url: str) -> AsyncIterator[LocalHost]:
    running = await start_host(database_url)
    yield running
    await running.stop()


def message(message_id: str, session_id: str | None, body: str | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        body=(body or message_id).encode(),
        message_id=message_id,
        session_id=session_id,
        application_properties={"kind": "test"},
    )


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def settled(
    read: Callable[[], Awaitable[T]], want: object = None, timeout: float = 10.0
) -> T:
    """The first value of ``read()`` that is truthy (or equals ``want``), polling until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if (value == want if want is not None else bool(value)) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def test_session_messages_run_in_order_per_session(
    host: LocalHost, publisher: LocalQueue
) -> None:
    sessions = [f"s{n}" for n in range(6)]
    expected = {s: [f"{s}-{i:02d}" for i in range(15)] for s in sessions}
    # Interleaved publishing, several batches: order must follow each session's sequence.
    for i in range(15):
        await publisher.publish(SESSION_QUEUE, [message(expected[s][i], s) for s in sessions])
    await eventually(lambda: sum(len(v) for v in seen.by_session.values()) == 90)
    assert dict(seen.by_session) == expected
    assert 1 < seen.peak_concurrent <= FAST.max_concurrent_sessions
    assert seen.properties[0] == {"kind": "test"}
    assert await settled(lambda: publisher.count_active(SESSION_QUEUE), want=0) == 0


async def test_new_message_is_picked_up_within_milliseconds(
    host: LocalHost, publisher: LocalQueue
) -> None:
    await asyncio.sleep(0.3)  # every waiter idle on LISTEN
    started = time.monotonic()
    await publisher.publish(SESSION_QUEUE, [message("quick", "q1")])
    await eventually(lambda: seen.by_session["q1"] == ["quick"])
    assert time.monotonic() - started < 0.5


async def test_non_session_trigger_runs_sync_function(
    host: LocalHost, publisher: LocalQueue
) -> None:
    await publisher.publish(PLAIN_QUEUE, [message(f"p{i}", None) for i in range(20)])
    await eventually(lambda: len(seen.plain) == 20)
    assert sorted(seen.plain) == sorted(f"p{i}" for i in range(20))
    assert await settled(lambda: publisher.count_active(PLAIN_QUEUE), want=0) == 0


async def test_failure_abandons_until_dead_lettered(
    host: LocalHost, publisher: LocalQueue, caplog: pytest.LogCaptureFixture
) -> None:
    await publisher.publish(FAILING_QUEUE, [message("doomed", "f1", body="private text")])
    await eventually(lambda: len(seen.failing) == MAX_DELIVERIES)
    dead = await settled(lambda: publisher.dead_letters(FAILING_QUEUE))
    assert seen.failing == [1, 2, 3]
    assert [d.message_id for d in dead] == ["doomed"]
    assert dead[0].dead_letter_reason == MAX_DELIVERY_COUNT_EXCEEDED
    failures = [r for r in caplog.records if "always_fails failed" in r.getMessage()]
    assert failures
    # Named by its queue sequence number: a message id is a wamid (base64 of a phone number).
    assert f"message #{dead[0].sequence_number}" in failures[0].getMessage()
    assert "doomed" not in failures[0].getMessage()
    assert "delivery 1" in failures[0].getMessage()
    assert all("private text" not in r.getMessage() for r in caplog.records)


async def test_failed_delivery_is_retried(host: LocalHost, publisher: LocalQueue) -> None:
    await publisher.publish(FLAKY_QUEUE, [message("flaky", "k1")])
    await eventually(lambda: seen.flaky == [1, 2])
    await asyncio.sleep(0.1)
    assert seen.flaky == [1, 2]
    assert await publisher.dead_letters(FLAKY_QUEUE) == []


async def test_lock_is_renewed_while_the_function_runs(
    host: LocalHost, publisher: LocalQueue
) -> None:
    seen.slow_seconds = LOCK.total_seconds() * 2.5
    await publisher.publish(SLOW_QUEUE, [message("long", "l1")])
    await eventually(lambda: seen.slow_finished == ["long"])
    await asyncio.sleep(0.2)
    assert seen.slow_finished == ["long"]  # never redelivered while it ran
    assert await settled(lambda: publisher.count_active(SLOW_QUEUE), want=0) == 0


async def test_idle_session_is_released_for_the_next_one(
    database_url: str, publisher: LocalQueue
) -> None:
    one_at_a_time = HostConfig(
        max_concurrent_sessions=1, session_idle_timeout=timedelta(milliseconds=150)
    )
    running = await start_host(database_url, one_at_a_time)
    try:
        await publisher.publish(SESSION_QUEUE, [message("a1", "A"), message("b1", "B")])
        await eventually(lambda: seen.by_session["A"] == ["a1"] and seen.by_session["B"] == ["b1"])
        assert seen.peak_concurrent == 1
    finally:
        await running.stop()


async def test_stop_lets_a_running_function_finish_and_complete(
    database_url: str, publisher: LocalQueue
) -> None:
    running = await start_host(database_url)
    seen.slow_seconds = 0.5
    await publisher.publish(SLOW_QUEUE, [message("finishing", "z1")])
    await asyncio.wait_for(seen.slow_started.wait(), 10)
    await running.stop()
    assert seen.slow_finished == ["finishing"]
    assert await publisher.count_active(SLOW_QUEUE) == 0


async def test_function_cut_off_at_shutdown_is_left_to_lock_expiry(
    database_url: str, publisher: LocalQueue
) -> None:
    running = await start_host(database_url)
    seen.slow_seconds = 30
    await publisher.publish(SLOW_QUEUE, [message("cut", "c1")])
    await asyncio.wait_for(seen.slow_started.wait(), 10)
    started = time.monotonic()
    await running.stop(grace=0.2)
    assert time.monotonic() - started < 3
    assert seen.slow_finished == []
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT delivery_count, lock_token IS NOT NULL FROM local_bus_messages"
            " WHERE message_id = 'cut'"
        )
        # Neither completed nor abandoned: still there, still locked, delivered once.
        assert await cursor.fetchone() == (1, True)


async def test_stop_is_quick_when_idle(host: LocalHost) -> None:
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await host.stop()
    assert time.monotonic() - started < 2


async def test_unset_queue_setting_is_named(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_SESSION_QUEUE")
    with pytest.raises(HostStartError, match="TEST_SESSION_QUEUE"):
        await start_host(database_url)


async def test_cardinality_many_is_refused(database_url: str) -> None:
    many_bp = func.Blueprint()

    @many_bp.service_bus_queue_trigger(
        arg_name="messages", connection="c", queue_name="q", cardinality="many"
    )
    async def batch(messages: list[func.ServiceBusMessage]) -> None:
        return None

    many_app = func.FunctionApp()
    many_app.register_functions(many_bp)
    with pytest.raises(HostStartError, match="cardinality"):
        await serve(many_app, port=0, database_url=database_url, config=FAST)


async def test_timer_runs_on_startup_and_on_schedule() -> None:
    runs: list[bool] = []
    timer_bp = func.Blueprint()

    @timer_bp.timer_trigger(schedule="* * * * * *", arg_name="timer", run_on_startup=True)
    def every_second(timer: func.TimerRequest) -> None:
        runs.append(timer.past_due)
        if len(runs) == 1:
            raise RuntimeError("a failing run must not stop the schedule")

    timer_app = func.FunctionApp()
    timer_app.register_functions(timer_bp)
    running = await serve(timer_app, port=0, config=FAST)
    try:
        await eventually(lambda: len(runs) >= 3, timeout=5)
    finally:
        await running.stop()
    assert runs[0] is False


async def test_timers_can_be_disabled() -> None:
    runs: list[int] = []
    timer_bp = func.Blueprint()

    @timer_bp.timer_trigger(schedule="* * * * * *", arg_name="timer", run_on_startup=True)
    async def never(timer: func.TimerRequest) -> None:
        runs.append(1)

    timer_app = func.FunctionApp()
    timer_app.register_functions(timer_bp)
    running = await serve(timer_app, port=0, config=FAST, timers=False)
    await asyncio.sleep(1.2)
    await running.stop()
    assert runs == []
    assert "disabled" in running.functions[0].detail


async def test_busy_session_is_handed_back_before_its_renewal_window_ends(
    database_url: str, publisher: LocalQueue
) -> None:
    short_window = HostConfig(
        max_concurrent_sessions=1,
        session_idle_timeout=timedelta(milliseconds=200),
        max_auto_lock_renewal_duration=timedelta(milliseconds=100),
    )
    running = await start_host(database_url, short_window)
    try:
        expected = [f"w{i:02d}" for i in range(30)]
        await publisher.publish(SESSION_QUEUE, [message(m, "W") for m in expected])
        await eventually(lambda: len(seen.by_session["W"]) >= 30)
        await asyncio.sleep(0.1)
        # Several holds of the same session, each well inside its lock: no message ran twice.
        assert seen.by_session["W"] == expected
    finally:
        await running.stop()
