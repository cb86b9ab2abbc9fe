"""Webhooks to the app: Meta's envelopes for statuses and inbound messages, and their delivery.

Delivery never blocks request handling: a post is scheduled on the event loop's timer (no task
per post), then taken by one of a fixed number of workers. A post that fails (no answer, or not
2xx) is tried again after a doubling pause, a few times, as Meta retries; the body is signed
again on each attempt with the current app secret, over the exact bytes sent. Pending posts are
bounded; beyond the bound new ones are dropped and counted. :meth:`WebhookDispatcher.stop`
cancels everything still pending.

Posts go out on a plain aiohttp session rather than httpx: the simulator stands in for Meta, so
its CPU on a benchmark machine is taken from the app under test, and httpx's request and response
objects (URL merging, cookie extraction) were ~27 % of the simulator's CPU in bench/e2e.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from local.simulator.config import BusinessNumber, SimulatorConfig
from local.simulator.records import Stats
from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign

__all__ = ["WebhookDispatcher", "WebhookPostError", "envelope"]

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


@dataclass(slots=True)
class _Post:
    body: bytes
    is_status: bool
    generation: int
    attempts: int = 0


_USER_MESSAGE_CONNECTIONS = 64


class WebhookDispatcher:
    def __init__(self, settings: Callable[[], SimulatorConfig], stats: Stats) -> None:
        self._settings = settings
        self._stats = stats
        self._ready: asyncio.Queue[_Post] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        # Bumped by clear(): posts of an older generation are dropped when they come due.
        self._generation = 0

    @property
    def pending(self) -> int:
        return len(self._timers) + self._ready.qsize() + self._in_flight

    def _ensure_started(self) -> aiohttp.ClientSession:
        # Started on first use, inside the serving loop, whoever serves the ASGI app.
        if self._session is not None:
            return self._session
        config = self._settings()
        # The status workers use at most webhook_concurrency connections; simulated users'
        # messages (post_now) get connections of their own, as Meta does not hold an inbound
        # message back behind the status webhooks of other conversations.
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

    def schedule(self, body: bytes, delay: float, *, is_status: bool) -> bool:
        """Post ``body`` in ``delay`` seconds; False (and counted) when too many are pending."""
        if self.pending >= self._settings().webhook_queue_limit:
            self._stats.webhooks_dropped += 1
            return False
        self._enqueue_later(_Post(body, is_status, self._generation), delay)
        return True

    async def post_now(self, body: bytes) -> int:
        """Post once and return the app's HTTP status; raises WebhookPostError without one."""
        config = self._settings()
        if config.webhook_url is None:
            raise RuntimeError("no webhook URL configured")
        status = await self._send(config, body)
        self._stats.webhooks_posted += 1
        return status

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
            self._in_flight += 1
            try:
                await self._attempt(post)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not kill the worker: the post is lost, the rest go on.
                logger.exception("webhook post failed unexpectedly")
                self._stats.webhooks_abandoned += 1
            finally:
                self._in_flight -= 1

    async def _attempt(self, post: _Post) -> None:
        config = self._settings()
        if config.webhook_url is None:
            self._stats.webhooks_abandoned += 1
            return
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
            return
        self._stats.webhook_post_failures += 1
        if post.attempts >= config.webhook_max_attempts or post.generation != self._generation:
            logger.warning("webhook post abandoned after %d attempts: %s", post.attempts, failure)
            self._stats.webhooks_abandoned += 1
            return
        logger.debug("webhook post failed (%s), retrying", failure)
        self._enqueue_later(post, config.webhook_retry_seconds * 2 ** (post.attempts - 1))

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
