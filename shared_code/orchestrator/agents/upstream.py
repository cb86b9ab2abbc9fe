"""POSTs to an agent's upstream (a model endpoint, an agent platform), retried when the answer
says "try again": HTTP 429, 502, 503, 504, or a connection that never carried the request.

A request that may have reached the upstream (a read timeout, a dropped connection mid-answer, an
HTTP 500) is not sent again: the upstream may have acted on it. ``Retry-After`` (in seconds) is
honoured up to :data:`MAX_RETRY_AFTER_SECONDS`. The orchestrator's agent timeout bounds the whole
exchange, retries included; when it runs out the user gets the fallback message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_WAIT",
    "MAX_RETRY_AFTER_SECONDS",
    "RETRYABLE_STATUS_CODES",
    "post_with_retries",
]

RETRYABLE_STATUS_CODES: Final = frozenset({429, 502, 503, 504})
DEFAULT_ATTEMPTS: Final = 3
DEFAULT_WAIT: Final = wait_random_exponential(multiplier=0.25, max=2.0)
MAX_RETRY_AFTER_SECONDS: Final = 5.0


class _TryAgain(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: the exponential wait applies
    return max(0.0, min(seconds, MAX_RETRY_AFTER_SECONDS))


class _WaitHonouringRetryAfter(wait_base):
    def __init__(self, fallback: wait_base) -> None:
        self._fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            error = outcome.exception()
            if isinstance(error, _TryAgain):
                seconds = _retry_after_seconds(error.response)
                if seconds is not None:
                    return seconds
        return float(self._fallback(retry_state))


async def post_with_retries(
    http: httpx.AsyncClient,
    url: str,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    wait: wait_base = DEFAULT_WAIT,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **request: Any,
) -> httpx.Response:
    """The upstream's last answer, whatever its status (the caller judges it).

    Raises :class:`httpx.HTTPError` when the last attempt got no answer.
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=_WaitHonouringRetryAfter(wait),
        retry=retry_if_exception_type((httpx.ConnectError, httpx.ConnectTimeout, _TryAgain)),
        reraise=True,
        sleep=sleep,
    )
    try:
        async for attempt in retrying:
            with attempt:
                response = await http.post(url, **request)
                if response.status_code in RETRYABLE_STATUS_CODES:
                    raise _TryAgain(response)
                return response
    except _TryAgain as last:
        return last.response
    raise AssertionError("tenacity ended without an outcome")  # pragma: no cover
