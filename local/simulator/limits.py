"""The limits the Cloud API enforces on sends, as token buckets, and the 24-hour window.

Model (one bucket = ``capacity`` tokens, refilled continuously at ``rate`` tokens per second,
never above ``capacity``; a send takes one token, and is refused when less than one is left):

- **Throughput**, one bucket per business number: capacity = cap, rate = cap per second
  (default 80). A burst of ``cap`` sends passes at once, then ``cap`` per second are sustained.
  Refused → 130429. Meta counts inbound messages too; the simulator counts sends only, so that
  simulated users never throttle the app.
- **Pair limit**, one bucket per (business number, recipient): capacity = burst (default 45),
  rate = one per ``interval`` seconds (default 6). This is GCRA with a burst tolerance of 45:
  45 messages in a row, then one every 6 s. Refused → 131056.
- A send is checked against both buckets before either is charged, so a refused send costs
  nothing.
- **Customer-service window**: a non-template message needs an inbound message from that user
  (to that business number) less than 24 h old. Refused → 131047.

Time comes from a :class:`Clock` so that tests can freeze and advance it.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = [
    "Clock",
    "SendLimits",
    "ServiceWindows",
    "SystemClock",
    "TokenBucket",
]

# Past this many pair buckets, full ones (the same as no bucket at all) are dropped.
_PAIR_PRUNE_THRESHOLD = 50_000


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (timestamps, the 24-hour window)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (token buckets)."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class TokenBucket:
    __slots__ = ("_tokens", "_updated", "capacity", "rate")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self._tokens = capacity
        self._updated = now

    def tokens(self, now: float) -> float:
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        return self._tokens

    def has_token(self, now: float) -> bool:
        return self.tokens(now) >= 1.0

    def take(self, now: float) -> None:
        self._tokens = self.tokens(now) - 1.0

    def is_full(self, now: float) -> bool:
        return self.tokens(now) >= self.capacity

    def reshape(self, capacity: float, rate: float, now: float) -> None:
        """New limits keep the tokens already earned, up to the new capacity."""
        tokens = self.tokens(now)
        self.capacity = capacity
        self.rate = rate
        self._tokens = min(tokens, capacity)


class SendLimits:
    """Throughput per business number and the pair limit per (business number, recipient)."""

    def __init__(
        self,
        clock: Clock,
        *,
        throughput_per_second: float,
        pair_burst: int,
        pair_interval_seconds: float,
    ) -> None:
        self._clock = clock
        self._throughput = throughput_per_second
        self._pair_burst = pair_burst
        self._pair_rate = 1.0 / pair_interval_seconds
        self._numbers: dict[str, TokenBucket] = {}
        self._pairs: dict[tuple[str, str], TokenBucket] = {}

    def admit(self, phone_number_id: str, recipient: str) -> int | None:
        """Charge one send, or return the error code that refuses it (nothing charged)."""
        now = self._clock.monotonic()
        number = self._numbers.get(phone_number_id)
        if number is None:
            number = TokenBucket(self._throughput, self._throughput, now)
            self._numbers[phone_number_id] = number
        if not number.has_token(now):
            return 130429
        key = (phone_number_id, recipient)
        pair = self._pairs.get(key)
        if pair is None:
            if len(self._pairs) >= _PAIR_PRUNE_THRESHOLD:
                self._prune_pairs(now)
            pair = TokenBucket(self._pair_burst, self._pair_rate, now)
            self._pairs[key] = pair
        if not pair.has_token(now):
            return 131056
        number.take(now)
        pair.take(now)
        return None

    def reconfigure(
        self, *, throughput_per_second: float, pair_burst: int, pair_interval_seconds: float
    ) -> None:
        now = self._clock.monotonic()
        self._throughput = throughput_per_second
        self._pair_burst = pair_burst
        self._pair_rate = 1.0 / pair_interval_seconds
        for bucket in self._numbers.values():
            bucket.reshape(self._throughput, self._throughput, now)
        for bucket in self._pairs.values():
            bucket.reshape(self._pair_burst, self._pair_rate, now)

    def reset(self) -> None:
        self._numbers.clear()
        self._pairs.clear()

    def _prune_pairs(self, now: float) -> None:
        full = [key for key, bucket in self._pairs.items() if bucket.is_full(now)]
        for key in full:
            del self._pairs[key]


class ServiceWindows:
    """When each user last wrote to each business number (wall-clock seconds)."""

    def __init__(self, clock: Clock, *, window_seconds: float) -> None:
        self._clock = clock
        self.window_seconds = window_seconds
        self._last_inbound: dict[tuple[str, str], float] = {}

    def open(self, phone_number_id: str, wa_id: str, at: float | None = None) -> None:
        when = self._clock.time() if at is None else at
        key = (phone_number_id, wa_id)
        self._last_inbound[key] = max(when, self._last_inbound.get(key, when))

    def is_open(self, phone_number_id: str, wa_id: str) -> bool:
        last = self._last_inbound.get((phone_number_id, wa_id))
        return last is not None and self._clock.time() - last < self.window_seconds

    def reset(self) -> None:
        self._last_inbound.clear()
