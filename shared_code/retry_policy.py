"""How the sender retries: attempts, back-off with jitter, and the wait on ambiguous sends."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    # How long an ambiguous send waits for a status webhook before it is sent again. Meta posts
    # "sent" within seconds of accepting a message, so a minute of silence means it did not.
    confirmation_wait_seconds: float = 60.0
    # After a worker died with a request out, the wait is twice its downtime, but no longer
    # than this: replies after it in the conversation wait for it.
    confirmation_max_wait_seconds: float = 3600.0
    # How long a worker keeps trying to record a wamid Meta returned while the database is down
    # (within the Functions host's 5-minute function timeout).
    record_sent_within_seconds: float = 240.0
    # Our own rate control's waits up to this long are paced in place (that is throughput
    # shaping, not back-off); longer ones re-queue the message.
    max_pacing_seconds: float = 0.5

    def backoff(self, attempt: int) -> float:
        """Exponential, capped, with 'equal jitter' so retries of a burst spread out."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    def pair_backoff(self, attempt: int) -> float:
        # Meta's advice for 131056: wait 4^X seconds.
        return min(self.backoff_max_seconds, 4.0**attempt) * random.uniform(1.0, 1.2)  # noqa: S311
