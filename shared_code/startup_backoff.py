"""The pause a queue trigger takes before giving back a message whose services could not start.

A start-up failure (a bad setting, Key Vault or PostgreSQL unreachable) fails every message the
same way. Raised at once, each message would come back at once, and a queue's maximum delivery
count would be spent in seconds, dead-lettering everything in flight. So a trigger waits first:
1, 2, 4 … 30 s over the consecutive failed starts of this worker (the next message retries the
start), and a good start resets the count. The HTTP triggers answer 503 instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from shared_code.config import ConfigurationError
from shared_code.secrets import KeyVaultUnavailable

logger = logging.getLogger(__name__)

__all__ = ["FIRST_PAUSE_SECONDS", "MAX_PAUSE_SECONDS", "StartupBackoff"]

FIRST_PAUSE_SECONDS: Final = 1.0
MAX_PAUSE_SECONDS: Final = 30.0


class StartupBackoff:
    def __init__(
        self,
        *,
        first_pause_seconds: float = FIRST_PAUSE_SECONDS,
        max_pause_seconds: float = MAX_PAUSE_SECONDS,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._first = first_pause_seconds
        self._max = max_pause_seconds
        self._sleep = sleep
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures

    def next_pause(self) -> float:
        return min(self._first * (1 << min(self._failures, 16)), self._max)

    def succeeded(self) -> None:
        self._failures = 0

    async def pause_after(self, error: BaseException) -> None:
        """Wait before the failed start's error is raised to the host (which abandons the message)."""
        pause = self.next_pause()
        self._failures += 1
        logger.error(
            "services could not start (%s); the message goes back in %.0f s (failed start %d)",
            _describe(error),
            pause,
            self._failures,
        )
        await self._sleep(pause)


def _describe(error: BaseException) -> str:
    # These messages name settings and secrets, never values; other errors' texts are not ours
    # to vouch for (a driver's message may quote a host or a user), so only their class.
    if isinstance(error, (ConfigurationError, KeyVaultUnavailable)):
        return f"{type(error).__name__}: {error}"
    return type(error).__name__
