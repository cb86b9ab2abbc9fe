"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

The HMAC is computed over the exact bytes received, keyed with the app secret, and compared in
constant time. Anything that is not exactly one well-formed ``sha256=`` value is refused
without raising: the caller answers 401 and stores nothing.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-Hub-Signature-256"

_PREFIX = "sha256="
_DIGEST_SIZE = hashlib.sha256().digest_size
_HEADER_LENGTH = len(_PREFIX) + 2 * _DIGEST_SIZE


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta would send for ``body`` (for tests, the simulator and scripts)."""
    return _PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header_value: str | None, app_secret: str) -> bool:
    """True only when ``header_value`` is ``sha256=<64 hex digits>`` matching ``body``."""
    if not isinstance(header_value, str) or not app_secret:
        # An empty secret would make every forged signature computable: refuse, never accept.
        return False
    value = header_value.strip()
    if len(value) != _HEADER_LENGTH or not value.startswith(_PREFIX):
        return False
    try:
        # fromhex takes either case; it also skips spaces, which the length check then catches.
        received = bytes.fromhex(value[len(_PREFIX) :])
        expected = hmac.digest(app_secret.encode(), body, "sha256")
    except (TypeError, ValueError):
        return False
    return len(received) == _DIGEST_SIZE and hmac.compare_digest(received, expected)
