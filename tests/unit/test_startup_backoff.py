"""Queue triggers wait before giving back a message whose services could not start."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import processor_function
import sender_function
from shared_code import runtime
from shared_code.config import ConfigurationError
from shared_code.processing import Outcome
from shared_code.startup_backoff import StartupBackoff


class FakeMessage:
    """The parts of func.ServiceBusMessage the triggers read."""

    delivery_count = 1
    application_properties: dict[str, object] = {}  # read only
    enqueued_time_utc = None
    scheduled_enqueue_time_utc = None

    def get_body(self) -> bytes:
        raise AssertionError("a message is not read before the services start")


def user_function(builder: Any) -> Callable[..., Any]:
    function: Callable[..., Any] = builder._function.get_user_function()
    return function


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(runtime, "_startup_backoff", StartupBackoff(sleep=sleep))
    return slept


@pytest.mark.parametrize(
    "trigger",
    [processor_function.processor_handle_event, sender_function.sender_send_message],
    ids=["processor", "sender"],
)
async def test_a_failed_start_waits_longer_each_time_up_to_30_s_before_raising(
    trigger: Any,
    pauses: list[float],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing_start() -> runtime.Services:
        raise ConfigurationError("missing required setting(s): WHATSAPP_APP_SECRET")

    monkeypatch.setattr(runtime, "get_services", failing_start)
    handle = user_function(trigger)
    with caplog.at_level(logging.ERROR, logger="shared_code.startup_backoff"):
        for _ in range(8):
            with pytest.raises(ConfigurationError):
                await handle(FakeMessage())
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    # The log says why (the setting's name), so the operator need not wait for the DLQ.
    assert "WHATSAPP_APP_SECRET" in caplog.records[0].getMessage()


async def test_a_good_start_resets_the_back_off(
    pauses: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[Exception | None] = [
        OSError("db down"),
        OSError("db down"),
        None,
        OSError("db down"),
    ]
    handled: list[bytes] = []

    class FakeProcessor:
        async def handle(self, body: bytes) -> Outcome:
            handled.append(body)
            return Outcome.STORED

    class FakeSettings:
        inbound_queue_name = "inbound-events"

    class FakeServices:
        processor = FakeProcessor()
        settings = FakeSettings()

    async def start() -> Any:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return FakeServices()

    class Message(FakeMessage):
        def get_body(self) -> bytes:
            return b"{}"

    monkeypatch.setattr(runtime, "get_services", start)
    handle = user_function(processor_function.processor_handle_event)
    for _ in range(2):
        with pytest.raises(OSError, match="db down"):
            await handle(Message())
    await handle(Message())
    with pytest.raises(OSError, match="db down"):
        await handle(Message())
    assert pauses == [1.0, 2.0, 1.0]
    assert handled == [b"{}"]


async def test_the_log_of_a_failed_start_holds_only_the_class_of_foreign_errors(
    pauses: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    backoff = runtime._startup_backoff
    with caplog.at_level(logging.ERROR, logger="shared_code.startup_backoff"):
        await backoff.pause_after(OSError('connection to "db.example" as user "bridge" failed'))
    assert "OSError" in caplog.text and "db.example" not in caplog.text
    assert backoff.failures == 1
