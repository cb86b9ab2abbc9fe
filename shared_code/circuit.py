"""A circuit breaker: fail fast while a dependency is known to be down, and notice its return.

After a failure the circuit is *open*: callers are turned away at once instead of each waiting
out its own timeout against a database that is not answering (Meta gets its 503 in
milliseconds, not after 30 s). Every ``probe_interval`` seconds one caller is let through as a
probe; its success closes the circuit, so recovery is noticed within about a second of the
dependency's return instead of whenever a connection pool's back-off next tries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = ["Circuit"]


class Circuit:
    def __init__(
        self,
        name: str,
        *,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._probe_interval = probe_interval
        self._clock = clock
        self._opened_at: float | None = None
        self._last_probe_at = 0.0
        self.rejected = 0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allows(self) -> bool:
        """Whether a call may go ahead now; while open, one call per interval is the probe
        (whether or not the last probe has reported: one that hangs must not stop the next)."""
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._last_probe_at >= self._probe_interval:
            self._last_probe_at = now
            return True
        self.rejected += 1
        return False

    def succeeded(self) -> None:
        if self._opened_at is not None:
            logger.warning(
                "%s is back after %.1f s (%d calls turned away meanwhile)",
                self._name,
                self._clock() - self._opened_at,
                self.rejected,
            )
            self._opened_at = None
            self.rejected = 0

    def failed(self) -> None:
        if self._opened_at is None:
            logger.warning("%s is failing: turning calls away until a probe succeeds", self._name)
            self._opened_at = self._clock()
            self._last_probe_at = self._opened_at
