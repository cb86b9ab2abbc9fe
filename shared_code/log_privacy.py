"""Identifiers fit for log lines.

Log lines must hold no phone number, and more identifiers carry one than it seems: a session id
is ``<phone_number_id>:<wa_id>``, and Meta's wamids are ``wamid.`` + base64 of a structure that
holds the user's number. Logs name internal ids (row ids, queue sequence numbers) where there
are some, and otherwise a :func:`pseudonym`: an HMAC under a key made at process start, so lines
of one worker about the same user can be matched, and nothing can be traced back to the number
(a plain hash of a phone number is reversed by trying the few billion numbers there are).

Tracebacks are the other leak: an exception's message may quote what it choked on (a KeyError
on a user's text, PostgreSQL quoting a value). :func:`install_log_record_factory` makes every
log record render its traceback with frames and exception types only, keeping the message of
the bridge's own exceptions (``shared_code``, ``local``), which are written to name fields and
ids, never content.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import traceback
from typing import Any, Final

__all__ = ["install_log_record_factory", "pseudonym", "safe_traceback"]

# Packages whose exception messages are written to carry no content.
_OWN_PACKAGES: Final = frozenset(
    {
        "shared_code",
        "local",
        "function_app",
        "webhook_function",
        "processor_function",
        "sender_function",
        "maintenance_function",
    }
)

_KEY: Final = secrets.token_bytes(32)


def pseudonym(value: str) -> str:
    """A short keyed hash of ``value``, stable within this process."""
    digest = hmac.new(_KEY, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"~{digest[:12]}"


def safe_traceback(error: BaseException) -> str:
    """The traceback of ``error`` (and its causes) without the messages of foreign exceptions."""
    lines: list[str] = []
    for link in _chain(error):
        lines.extend(traceback.format_tb(link.__traceback__))
        lines.append(f"{_describe(link)}\n")
    return "Traceback (most recent call last):\n" + "".join(lines)


def install_log_record_factory() -> None:
    """Make every log record of this process carry a :func:`safe_traceback` (idempotent)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_renders_safe_tracebacks", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            # Rendered now, and exc_info dropped: formatters append exc_text as it is.
            record.exc_text = safe_traceback(exc_info[1]).rstrip("\n")
            record.exc_info = None
        return record

    factory._renders_safe_tracebacks = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain and len(chain) < 10:
        chain.insert(0, link)
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return chain


def _describe(error: BaseException) -> str:
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__.partition(".")[0] in _OWN_PACKAGES:
        return f"{kind.__module__}.{name}: {error}"
    return f"{kind.__module__}.{name} (message withheld: it may quote content)"
