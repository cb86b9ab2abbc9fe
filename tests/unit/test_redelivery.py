"""Queue triggers pause before giving back a transient failure (shared_code/redelivery.py)."""

from __future__ import annotations

import time

import psycopg
import pytest

from shared_code.redelivery import (
    DeadLetterRequest,
    is_transient,
    pause_before_redelivery,
    redelivery_pause,
)
from shared_code.sending import SendAttemptsExhausted


def test_the_pause_doubles_with_each_delivery_up_to_thirty_seconds() -> None:
    assert [redelivery_pause(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    # Ten deliveries ride out about three minutes of outage before the dead-letter queue.
    assert sum(redelivery_pause(n) for n in range(1, 11)) >= 180
    assert redelivery_pause(0) == 1
    assert redelivery_pause(10_000) == 30


def test_a_dead_letter_request_is_never_transient() -> None:
    assert isinstance(SendAttemptsExhausted("gave up"), DeadLetterRequest)
    assert not is_transient(SendAttemptsExhausted("gave up"))


@pytest.mark.parametrize(
    ("error", "pauses"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (SendAttemptsExhausted("gave up"), False),
        (psycopg.DataError("NUL"), False),
    ],
)
async def test_only_transient_failures_pause(
    monkeypatch: pytest.MonkeyPatch, error: Exception, pauses: bool
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("shared_code.redelivery.asyncio.sleep", fake_sleep)
    started = time.monotonic()
    await pause_before_redelivery(error, delivery_count=3)
    assert time.monotonic() - started < 1
    assert slept == ([4.0] if pauses else [])
