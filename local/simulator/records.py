"""What the simulator keeps for inspection: accepted sends, read receipts, media, counters; and
the ids it hands out, shaped like Meta's."""

from __future__ import annotations

import base64
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = [
    "InboundResult",
    "MediaItem",
    "ReadReceipt",
    "SentMessage",
    "Stats",
    "digits_of",
    "new_conversation_id",
    "new_media_id",
    "new_wamid",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SentMessage:
    """One send the simulator accepted (answered with a wamid, or held back by a timeout fault)."""

    wamid: str
    phone_number_id: str
    to: str
    wa_id: str
    type: str
    body: dict[str, Any]
    accepted_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "wamid": self.wamid,
            "phone_number_id": self.phone_number_id,
            "to": self.to,
            "wa_id": self.wa_id,
            "type": self.type,
            "body": self.body,
            "time": self.accepted_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadReceipt:
    """One mark-as-read request."""

    message_id: str
    phone_number_id: str
    typing_indicator: str | None
    received_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "phone_number_id": self.phone_number_id,
            "typing_indicator": self.typing_indicator,
            "time": self.received_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaItem:
    media_id: str
    mime_type: str
    content: bytes
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundResult:
    """What happened to one simulated user message: its wamid and the app's HTTP answer to the
    first post (None when there is no webhook URL or the post got no answer; ``error`` then says
    why)."""

    wamid: str
    webhook_status: int | None
    error: str | None = None
    # The first post failed and is retried in the background, as a status webhook would be.
    retrying: bool = False

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"wamid": self.wamid, "webhook_status": self.webhook_status}
        if self.error is not None:
            data["error"] = self.error
        if self.retrying:
            data["retrying"] = True
        return data


class Stats:
    """Counters, all since start or the last reset."""

    __slots__ = (
        "_current_second",
        "_in_current_second",
        "accepted",
        "errors",
        "faults",
        "inbound_messages",
        "max_accepted_per_second",
        "read_receipts",
        "requests",
        "statuses_posted",
        "statuses_scheduled",
        "webhook_post_failures",
        "webhook_retries",
        "webhooks_abandoned",
        "webhooks_dropped",
        "webhooks_posted",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.accepted = 0
        self.read_receipts = 0
        self.errors: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.inbound_messages = 0
        self.statuses_scheduled = 0
        self.statuses_posted = 0
        self.webhooks_posted = 0
        self.webhook_post_failures = 0
        self.webhook_retries = 0
        self.webhooks_abandoned = 0
        self.webhooks_dropped = 0
        self.max_accepted_per_second = 0
        self._current_second = -1
        self._in_current_second = 0

    def record_accepted(self, monotonic_now: float) -> None:
        self.accepted += 1
        second = int(monotonic_now)
        if second != self._current_second:
            self._current_second = second
            self._in_current_second = 0
        self._in_current_second += 1
        if self._in_current_second > self.max_accepted_per_second:
            self.max_accepted_per_second = self._in_current_second

    def as_json(
        self, *, webhook_queue: int, webhooks_retrying: int, oldest_pending_webhook_seconds: float
    ) -> dict[str, Any]:
        """``webhook_queue``: posts pending (scheduled, waiting for a retry or being sent);
        ``webhooks_retrying``: those of them that failed at least once; ``webhook_retries``:
        attempts after a post's first; ``oldest_pending_webhook_seconds``: how long the oldest
        pending post has existed (0 when none)."""
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "read_receipts": self.read_receipts,
            "errors": {str(code): count for code, count in sorted(self.errors.items())},
            "faults": dict(sorted(self.faults.items())),
            "inbound_messages": self.inbound_messages,
            "statuses_scheduled": self.statuses_scheduled,
            "statuses_posted": self.statuses_posted,
            "webhooks_posted": self.webhooks_posted,
            "webhook_post_failures": self.webhook_post_failures,
            "webhook_retries": self.webhook_retries,
            "webhooks_abandoned": self.webhooks_abandoned,
            "webhooks_dropped": self.webhooks_dropped,
            "webhook_queue": webhook_queue,
            "webhooks_retrying": webhooks_retrying,
            "oldest_pending_webhook_seconds": round(oldest_pending_webhook_seconds, 3),
            "max_accepted_per_second": self.max_accepted_per_second,
        }


def digits_of(number: str) -> str:
    """The wa_id Meta derives from a ``to`` value such as ``+1 (555) 010-0123``."""
    return "".join(ch for ch in number if ch.isdigit())


def new_wamid(wa_id: str, *, inbound: bool) -> str:
    """``wamid.`` + base64 of the structure Meta's ids decode to: the user's number, a direction
    byte and a random hex id (e.g. ``wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRB...``)."""
    number = wa_id.encode()[:64]
    token = secrets.token_hex(10 if inbound else 9).upper().encode()
    raw = b"".join(
        (
            b"\x1c\x18",
            bytes((len(number),)),
            number,
            b"\x15\x02\x00",
            b"\x12" if inbound else b"\x11",
            b"\x18",
            bytes((len(token),)),
            token,
            b"\x00",
        )
    )
    return "wamid." + base64.b64encode(raw).decode()


def new_media_id() -> str:
    """A numeric id like Meta's media ids (16 digits)."""
    return str(1_000_000_000_000_000 + secrets.randbelow(9_000_000_000_000_000))


def new_conversation_id() -> str:
    return secrets.token_hex(16)
