"""The external agent platform: the bridge POSTs each message to it, signed, and sends its answer.

Request: ``POST <AGENT_HTTP_URL>`` with ``Content-Type: application/json`` and this body::

    {"conversation_id": 42, "phone_number_id": "1234567890",
     "contact": {"wa_id": "16505551234", "profile_name": "Ana"},
     "message": {"wamid": "wamid.HBg...", "type": "text", "text": "Hi", "reply_id": null,
                 "timestamp": "2026-11-25T09:30:00Z"},
     "history": [{"direction": "inbound", "type": "text", "text": "Hello", "at": "..."}, ...]}

``history`` is oldest first without the message itself; times are RFC 3339 date-times.

Signature: two headers let the platform check that a request comes from the bridge and is fresh:

- ``X-Bridge-Timestamp``: the Unix time in seconds when the request was signed;
- ``X-Bridge-Signature``: ``sha256=`` followed by the lower-case hex HMAC-SHA256, keyed with the
  shared secret (``AGENT_HTTP_SECRET``), of the timestamp, a full stop, and the raw body bytes:
  ``HMAC_SHA256(secret, "<timestamp>." + body)``.

To verify: recompute the HMAC over the exact bytes received (never re-serialised JSON), compare
in constant time, and refuse timestamps more than five minutes from your clock, so a captured
request cannot be replayed later. :func:`verify_bridge_signature` does all three.

Response: ``2xx`` with one reply in the JSON form of :mod:`.replies`
(``{"type": "text", "text": "..."}``, ``{"type": "interactive", ...}``,
``{"type": "template", ...}`` or ``{"type": "none"}``). Anything else raises :class:`AgentError`,
and the user gets the fallback message. A text longer than WhatsApp's 4,096 characters is cut.
Any reply may add ``"handoff": true`` to hand the conversation to a person after it (no agent
answers until an operator releases it; see :mod:`shared_code.policy`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, Final

import httpx
import msgspec

from shared_code.orchestrator.agents.base import AgentError, AgentReply, AgentRequest
from shared_code.orchestrator.agents.replies import ReplyFormatError, decode_reply
from shared_code.orchestrator.agents.upstream import post_with_retries
from shared_code.secrets import Secret

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "HttpPlatformAgent",
    "bridge_signature",
    "request_payload",
    "verify_bridge_signature",
]

TIMESTAMP_HEADER: Final = "X-Bridge-Timestamp"
SIGNATURE_HEADER: Final = "X-Bridge-Signature"

_PREFIX = "sha256="
_HEX_DIGEST_LENGTH = 2 * hashlib.sha256().digest_size


class HttpPlatformAgent:
    name = "http"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        url: str,
        secret: Secret,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret.reveal():
            raise ValueError("the agent platform secret is empty")
        self._http = http
        self._url = url
        self._secret = secret
        self._clock = clock

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        body = msgspec.json.encode(request_payload(request))
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: bridge_signature(self._secret, timestamp, body),
        }
        try:
            response = await post_with_retries(self._http, self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise AgentError(f"agent platform request failed ({type(exc).__name__})") from exc
        if not response.is_success:
            raise AgentError(f"agent platform answered HTTP {response.status_code}")
        try:
            return decode_reply(response.content, trim_long_text=True)
        except ReplyFormatError as exc:
            raise AgentError(f"agent platform answer is not a valid reply: {exc}") from exc


def request_payload(request: AgentRequest) -> dict[str, Any]:
    """The JSON-ready body posted for ``request`` (the contract in the module docstring)."""
    message = request.message
    return {
        "conversation_id": request.conversation_id,
        "phone_number_id": request.phone_number_id,
        "contact": {
            "wa_id": request.contact.wa_id,
            "profile_name": request.contact.profile_name,
        },
        "message": {
            "wamid": message.wamid,
            "type": message.message_type,
            "text": message.text,
            "reply_id": message.reply_id,
            "timestamp": message.timestamp,
        },
        "history": [
            {
                "direction": entry.direction,
                "type": entry.message_type,
                "text": entry.text,
                "at": entry.at,
            }
            for entry in request.history
        ],
    }


def bridge_signature(secret: Secret | str, timestamp: str, body: bytes) -> str:
    """The ``X-Bridge-Signature`` value for ``body`` sent with ``X-Bridge-Timestamp: timestamp``."""
    key = (secret.reveal() if isinstance(secret, Secret) else secret).encode()
    return _PREFIX + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_bridge_signature(
    secret: Secret | str,
    timestamp: str | None,
    body: bytes,
    signature: str | None,
    *,
    max_age_seconds: float = 300,
    now: float | None = None,
) -> bool:
    """True only for a well-formed signature of ``body`` made with ``secret`` within
    ``max_age_seconds`` of ``now`` (either side, for clock skew). Never raises."""
    key = secret.reveal() if isinstance(secret, Secret) else secret
    if not key or not isinstance(timestamp, str) or not isinstance(signature, str):
        # An empty secret would make every forged signature computable: refuse, never accept.
        return False
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > max_age_seconds:
        return False
    value = signature.strip()
    if len(value) != len(_PREFIX) + _HEX_DIGEST_LENGTH or not value.startswith(_PREFIX):
        return False
    expected = bridge_signature(key, timestamp, body)
    return hmac.compare_digest(value.lower().encode(), expected.encode())
