"""Webhook bodies as a dashboard may show them: structure and technical fields, no personal data.

An allow-list, not a deny-list: Meta adds fields, and a field we have never seen must come out
redacted rather than leak. Kept: field names, shapes, and values of the keys below (types,
statuses, times, error codes, our own business number). Replaced: every other string, which
covers phone numbers (``from``, ``wa_id``, ``recipient_id``), names, texts, captions, addresses
and wamids (base64 of a structure holding the user's number), and every fractional number (a
location's coordinates).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["REDACTED", "redact_webhook_body"]

REDACTED: Final = "[redacted]"

_KEPT_STRINGS: Final = frozenset(
    {
        "object",
        "field",
        "messaging_product",
        "type",
        "status",
        "timestamp",
        "phone_number_id",
        "display_phone_number",
        "mime_type",
        "code",
        "category",
        "pricing_model",
        "origin",
        "expiration_timestamp",
        "event",
        "message_template_id",
        "message_template_name",
        "message_template_language",
        "reason",
    }
)
# Entry ids are the business account's id: ours, not a user's.
_KEPT_IN_ENTRY: Final = frozenset({"id"})


def redact_webhook_body(body: Any, *, _key: str | None = None, _in_entry: bool = False) -> Any:
    if isinstance(body, dict):
        is_entry = _key == "entry"
        return {
            key: redact_webhook_body(value, _key=key, _in_entry=is_entry)
            for key, value in body.items()
        }
    if isinstance(body, list):
        return [redact_webhook_body(item, _key=_key, _in_entry=_in_entry) for item in body]
    if isinstance(body, str):
        if _key in _KEPT_STRINGS or (_in_entry and _key in _KEPT_IN_ENTRY):
            return body
        return REDACTED
    if isinstance(body, float):
        # Fractions are measurements of the user's world (a shared location's coordinates);
        # Meta's technical numbers (error codes, ids, counts) are integers.
        return REDACTED
    # Integers, booleans and null say nothing about a person (error codes, flags, counts).
    return body
