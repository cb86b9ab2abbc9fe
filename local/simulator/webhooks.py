"""Webhooks to the app: Meta's envelopes for statuses and inbound messages, and their delivery.

Delivery never blocks request handling: a post is scheduled on the event loop's timer (no task
per post), then taken by one of a fixed number of workers. A simulated user's message is the
exception: its first attempt is made at once, so that its caller learns the app's answer.

Retries follow Meta's: a post that gets no answer or one that is not 2xx is tried again "with
decreasing frequency" (Meta keeps trying for up to 7 days). Here the pause starts at
``webhook_retry_seconds``, grows ``webhook_retry_backoff``-fold after each failure up to
``webhook_retry_max_interval_seconds``, is jittered by ±``webhook_retry_jitter``, and the post is
abandoned (and counted) once ``webhook_retry_for_seconds`` have passed since its first attempt,
or after ``webhook_max_attempts`` attempts if that optional bound is set. The last pause is cut
short so that one attempt falls on the deadline. So a status posted while the app's host is down
(killed and restarted 20 s later) is delivered when it is back, as Meta would deliver it, instead
of being lost. The body is signed again on each attempt with the current app secret, over the
exact bytes sent. Pending posts are bounded (``webhook_queue_limit``); beyond the bound new ones
are dropped, counted and logged. :meth:`WebhookDispatcher.stop` cancels everything still pending.

Posts go out on a plain aiohttp session rather than httpx: the simulator stands in for Meta, so
its CPU on a benchmark machine is taken from the app under test, and httpx's request and response
objects (URL merging, cookie extraction) were ~27 % of the simulator's CPU in bench/e2e.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from local.simulator.config import BusinessNumber, SimulatorConfig
from local.simulator.records import Stats
from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign

__all__ = ["FirstAttempt", "WebhookDispatcher", "WebhookPostError", "envelope"]

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
# What Meta's webhook requests identify themselves as.
_USER_AGENT = "facebookexternalua"


def envelope(waba_id: str, number: BusinessNumber, value: dict[str, Any]) -> bytes:
    """One ``whatsapp_business_account`` webhook body with a single ``messages`` change."""
    return _encoder.encode(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": waba_id,
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": number.display_phone_number,
                                    "phone_number_id": number.phone_number_id,
                                },
                                **value,
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }
    )


class WebhookPostError(Exception):
    """A post got no HTTP answer. ``reason``: ConnectError (no connection could be made),
    Timeout (no answer in time) or ReadError (the connection broke while sending or reading)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True, eq=False)
class _Post:
    body: bytes
    is_status: bool
    generation: int
    # time.monotonic() values.
    created_at: float
    first_attempt_at: float | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class FirstAttempt:
    """How the first post of a simulated user's message went: the app's HTTP status, or why there
    was none (``error``); ``retrying`` when it failed and is being retried in the background."""

    status: int | None
    error: str | None
    retrying: bool


_USER_MESSAGE_CONNECTIONS = 64
# Past this many exponent steps the pause is at its cap anyway; keeps the power finite.
_MAX_BACKOFF_STEPS = 100
_DROP_LOG_EVERY = 10_000


class WebhookDispatcher:
    def __init__(self, settings: Callable[[], SimulatorConfig], stats: Stats) -> None:
        self._settings = settings
        self._stats = stats
        self._ready: asyncio.Queue[_Post] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        # Every post not yet delivered, abandoned or cleared, oldest first (insertion order).
        self._pending: dict[_Post, None] = {}
        # Pending posts that have failed at least once.
        self._retrying = 0
        # Bumped by clear(): posts of an older generation are dropped when they come due.
        self._generation = 0
        self._jitter = random.Random()  # noqa: S311 - retry jitter, not security

    @property
    def pending(self) -> int:
        """Posts scheduled, waiting for a retry or being sent."""
        return len(self._pending)

    @property
    def retrying(self) -> int:
        """Pending posts that have failed at least once."""
        return self._retrying

    def oldest_pending_seconds(self) -> float:
        """Age of the oldest pending post (0 when none): how far behind delivery is."""
        oldest = next(iter(self._pending), None)
        if oldest is None:
            return 0.0
        return max(0.0, time.monotonic() - oldest.created_at)

    def _ensure_started(self) -> aiohttp.ClientSession:
        # Started on first use, inside the serving loop, whoever serves the ASGI app.
        if self._session is not None:
            return self._session
        config = self._settings()
        # The status workers use at most webhook_concurrency connections; simulated users'
        # messages (first attempts) get connections of their own, as Meta does not hold an
        # inbound message back behind the status webhooks of other conversations.
        connector = aiohttp.TCPConnector(
            limit=config.webhook_concurrency + _USER_MESSAGE_CONNECTIONS, limit_per_host=0
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=config.webhook_timeout_seconds),
            headers={"User-Agent": _USER_AGENT},
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"simulator-webhook-{i}")
            for i in range(config.webhook_concurrency)
        ]
        return self._session

    async def stop(self) -> None:
        self.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def clear(self) -> None:
        """Forget every pending post (those being sent finish, and are not retried)."""
        self._generation += 1
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        while not self._ready.empty():
            self._ready.get_nowait()
        self._pending.clear()
        self._retrying = 0

    def schedule(self, body: bytes, delay: float, *, is_status: bool) -> bool:
        """Post ``body`` in ``delay`` seconds; False (and counted) when too many are pending."""
        post = _Post(body, is_status, self._generation, created_at=time.monotonic())
        if not self._admit(post):
            return False
        self._enqueue_later(post, delay)
        return True

    async def post_user_message(self, body: bytes) -> FirstAttempt:
        """Post a simulated user's message now; if that fails, keep retrying it in the
        background like a status webhook."""
        config = self._settings()
        if config.webhook_url is None:
            raise RuntimeError("no webhook URL configured")
        now = time.monotonic()
        post = _Post(body, False, self._generation, created_at=now, first_attempt_at=now)
        post.attempts = 1
        status: int | None = None
        try:
            status = await self._send(config, body)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except WebhookPostError as failure:
            error = failure.reason
        if error is None:
            self._stats.webhooks_posted += 1
            return FirstAttempt(status, None, retrying=False)
        self._stats.webhook_post_failures += 1
        # Not when a reset or stop came meanwhile: it forgot every pending post.
        retrying = (
            post.generation == self._generation
            and self._admit(post)
            and self._retry_or_abandon(post, config, error)
        )
        return FirstAttempt(status, None if status is not None else error, retrying=retrying)

    def _admit(self, post: _Post) -> bool:
        if len(self._pending) >= self._settings().webhook_queue_limit:
            self._stats.webhooks_dropped += 1
            if self._stats.webhooks_dropped % _DROP_LOG_EVERY == 1:
                logger.warning(
                    "webhook queue full (%d pending): posts are dropped, %d so far",
                    len(self._pending),
                    self._stats.webhooks_dropped,
                )
            return False
        self._pending[post] = None
        return True

    def _release(self, post: _Post) -> None:
        """The post leaves the pending set: delivered or abandoned (clear() empties it at once)."""
        if post.generation != self._generation or post not in self._pending:
            return
        del self._pending[post]
        # Counted as retrying from its first failure on; a post's second attempt follows one.
        if post.attempts >= 2:
            self._retrying -= 1

    def _enqueue_later(self, post: _Post, delay: float) -> None:
        self._ensure_started()
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def due() -> None:
            assert timer is not None
            self._timers.discard(timer)
            if post.generation == self._generation:
                self._ready.put_nowait(post)

        timer = loop.call_later(delay, due)
        self._timers.add(timer)

    async def _work(self) -> None:
        while True:
            post = await self._ready.get()
            try:
                await self._attempt(post)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not kill the worker: the post is lost, the rest go on.
                logger.exception("webhook post failed unexpectedly")
                self._stats.webhooks_abandoned += 1
                self._release(post)

    async def _attempt(self, post: _Post) -> None:
        config = self._settings()
        if config.webhook_url is None:
            self._stats.webhooks_abandoned += 1
            self._release(post)
            return
        if post.first_attempt_at is None:
            post.first_attempt_at = time.monotonic()
        else:
            self._stats.webhook_retries += 1
        post.attempts += 1
        try:
            status = await self._send(config, post.body)
            failure = None if 200 <= status < 300 else f"HTTP {status}"
        except WebhookPostError as error:
            failure = error.reason
        if failure is None:
            self._stats.webhooks_posted += 1
            if post.is_status:
                self._stats.statuses_posted += 1
            self._release(post)
            return
        self._stats.webhook_post_failures += 1
        self._retry_or_abandon(post, config, failure)

    def _retry_or_abandon(self, post: _Post, config: SimulatorConfig, failure: str) -> bool:
        """Schedule the next attempt of a post that just failed; False when it is abandoned."""
        pause = None if post.generation != self._generation else self._next_pause(post, config)
        if pause is None:
            logger.warning("webhook post abandoned after %d attempts: %s", post.attempts, failure)
            self._stats.webhooks_abandoned += 1
            self._release(post)
            return False
        if post.attempts == 1:
            self._retrying += 1
        logger.debug("webhook post failed (%s), retrying in %.2f s", failure, pause)
        self._enqueue_later(post, pause)
        return True

    def _next_pause(self, post: _Post, config: SimulatorConfig) -> float | None:
        if config.webhook_max_attempts is not None and post.attempts >= config.webhook_max_attempts:
            return None
        assert post.first_attempt_at is not None
        elapsed = time.monotonic() - post.first_attempt_at
        remaining = config.webhook_retry_for_seconds - elapsed
        if remaining <= 0:
            return None
        steps = min(post.attempts - 1, _MAX_BACKOFF_STEPS)
        pause = min(
            config.webhook_retry_max_interval_seconds,
            config.webhook_retry_seconds * config.webhook_retry_backoff**steps,
        )
        pause *= 1.0 + config.webhook_retry_jitter * self._jitter.uniform(-1.0, 1.0)
        return min(pause, remaining)

    async def _send(self, config: SimulatorConfig, body: bytes) -> int:
        assert config.webhook_url is not None
        session = self._ensure_started()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, config.app_secret),
        }
        try:
            async with session.post(config.webhook_url, data=body, headers=headers) as response:
                await response.read()
                return response.status
        except aiohttp.ClientConnectorError as error:
            raise WebhookPostError("ConnectError", str(error)) from error
        except TimeoutError as error:
            raise WebhookPostError("Timeout", str(error) or "no answer in time") from error
        except (aiohttp.ClientError, OSError) as error:
            raise WebhookPostError("ReadError", str(error) or type(error).__name__) from error
