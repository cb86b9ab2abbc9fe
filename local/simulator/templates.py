"""The business account's message templates: listed as Meta lists them, checked on every send.

``GET /{version}/{waba-id}/message_templates`` answers Meta's shape: ``{"data": [...], "paging":
{"cursors": {"before", "after"}, "next"?}}``, ``limit`` templates a page (25 by default), the
``fields``, ``status`` and ``name`` query parameters honoured. A template send is refused as the
live API refuses it: an unknown name or language, or a template not approved, with 132001 (404);
a paused one with 132015 and a disabled one with 132016; a parameter count that differs from the
template's placeholders with 132000. Changing a template's status (a control endpoint) posts
Meta's signed ``message_template_status_update`` webhook.

Sources: Meta's message_template_status_update webhook reference (payload: ``entry[].time``,
``value.event``, ``message_template_id``, ``message_template_name``,
``message_template_language``, ``reason``, ``message_template_category``); pywa 4.5's
``errors.py`` for 132000 (parameter count mismatch), 132001 (template does not exist in the
language or is not approved), 132015 (paused), 132016 (disabled).
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from local.simulator.errors import GraphError

__all__ = [
    "DEFAULT_TEMPLATES",
    "TEMPLATE_STATUSES",
    "TemplateStore",
    "template_status_webhook",
]

_encoder = msgspec.json.Encoder()
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
DEFAULT_PAGE_SIZE: Final = 25
MAX_PAGE_SIZE: Final = 1000
TEMPLATE_STATUSES: Final = frozenset(
    {
        "APPROVED",
        "PENDING",
        "REJECTED",
        "PAUSED",
        "DISABLED",
        "IN_APPEAL",
        "PENDING_DELETION",
        "DELETED",
        "ARCHIVED",
        "LIMIT_EXCEEDED",
    }
)

DEFAULT_TEMPLATES: Final[tuple[dict[str, Any], ...]] = (
    {
        "id": "900000000000001",
        "name": "hello_world",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
            {
                "type": "BODY",
                "text": "Welcome and congratulations!! This message demonstrates your ability "
                "to send a WhatsApp message notification from the Cloud API.",
            },
            {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"},
        ],
    },
    {
        "id": "900000000000002",
        "name": "welcome_message",
        "language": "fr",
        "status": "APPROVED",
        "category": "MARKETING",
        "components": [
            {
                "type": "BODY",
                "text": "Bonjour {{1}} {{2}}, bienvenue ! Répondez à ce message pour commencer.",
                "example": {"body_text": [["John", "Doe"]]},
            }
        ],
    },
    {
        "id": "900000000000003",
        "name": "welcome_message",
        "language": "en_US",
        "status": "APPROVED",
        "category": "MARKETING",
        "components": [
            {
                "type": "BODY",
                "text": "Hello {{1}} {{2}}, welcome! Reply to this message to get started.",
                "example": {"body_text": [["John", "Doe"]]},
            }
        ],
    },
    {
        "id": "900000000000004",
        "name": "order_update",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [
            {
                "type": "HEADER",
                "format": "TEXT",
                "text": "{{1}} order",
                "example": {"header_text": ["Summer"]},
            },
            {
                "type": "BODY",
                "text": "Your order {{1}} is on its way.",
                "example": {"body_text": [["42"]]},
            },
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Thanks"},
                    {
                        "type": "URL",
                        "text": "Track it",
                        "url": "https://example.com/{{1}}",
                        "example": ["https://example.com/orders/42"],
                    },
                    {"type": "COPY_CODE", "example": "SAVE25"},
                ],
            },
        ],
    },
    {
        "id": "900000000000005",
        "name": "welcome",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "parameter_format": "NAMED",
        "components": [
            {
                "type": "BODY",
                "text": "Welcome, {{first_name}}!",
                "example": {
                    "body_text_named_params": [{"param_name": "first_name", "example": "John"}]
                },
            }
        ],
    },
    {
        "id": "900000000000006",
        "name": "appointment_reminder",
        "language": "en_US",
        "status": "PENDING",
        "category": "UTILITY",
        "components": [{"type": "BODY", "text": "Reminder: your appointment is on {{1}}."}],
    },
    {
        "id": "900000000000007",
        "name": "black_friday_promo",
        "language": "en_US",
        "status": "REJECTED",
        "category": "MARKETING",
        "rejected_reason": "PROMOTIONAL",
        "components": [{"type": "BODY", "text": "Everything is 90% off today only, {{1}}!"}],
    },
)


def _not_found(name: str, language: str) -> GraphError:
    return GraphError(
        http_status=404,
        code=132001,
        message="(#132001) Template name does not exist in the translation",
        details=f"template name ({name[:128]}) does not exist in {language[:16]}",
    )


def _count_mismatch(part: str, given: int, expected: int) -> GraphError:
    return GraphError(
        http_status=400,
        code=132000,
        message="(#132000) Number of parameters does not match the expected number of params",
        details=(
            f"{part}: number of localizable_params ({given}) does not match the expected "
            f"number of params ({expected})"
        ),
    )


_PAUSED = GraphError(
    http_status=400,
    code=132015,
    message="(#132015) Template is Paused",
    details="Template is paused due to low quality so it cannot be sent in a template message.",
)
_DISABLED = GraphError(
    http_status=400,
    code=132016,
    message="(#132016) Template is Disabled",
    details="Template has been paused too many times due to low quality and is now disabled.",
)


class TemplateStore:
    """The templates of one business account, in creation order."""

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str], dict[str, Any]] = {}
        self.reset()

    def reset(self) -> None:
        self._templates = {(t["name"], t["language"]): copy.deepcopy(t) for t in DEFAULT_TEMPLATES}

    def all(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(t) for t in self._templates.values()]

    def get(self, name: str, language: str) -> dict[str, Any] | None:
        return self._templates.get((name, language))

    def set_status(
        self, name: str, language: str, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Change a template's status; raises KeyError (unknown) or ValueError (bad status)."""
        if status not in TEMPLATE_STATUSES:
            raise ValueError(f"status must be one of {', '.join(sorted(TEMPLATE_STATUSES))}")
        template = self._templates[(name, language)]
        template["status"] = status
        if reason is not None:
            template["rejected_reason"] = reason
        return copy.deepcopy(template)

    def page(self, query: Mapping[str, str], base_url: str) -> tuple[dict[str, Any], str | None]:
        """One page of the list for these query parameters, or (empty, problem) when a
        parameter is unusable."""
        try:
            limit = int(query.get("limit", DEFAULT_PAGE_SIZE))
        except ValueError:
            return {}, "limit must be an integer"
        if not 1 <= limit <= MAX_PAGE_SIZE:
            return {}, f"limit must be between 1 and {MAX_PAGE_SIZE}"
        start: int | None = _decode_cursor(query["after"]) if "after" in query else 0
        if start is None:
            return {}, "after is not a cursor of this list"
        selected = [
            t
            for t in self._templates.values()
            if ("status" not in query or t["status"] == query["status"].upper())
            and ("name" not in query or query["name"] in t["name"])
        ]
        window = selected[start : start + limit]
        fields = [f for f in query.get("fields", "").split(",") if f]
        data = [_with_fields(t, fields) for t in window]
        page: dict[str, Any] = {"data": data}
        if window:
            after = _encode_cursor(start + len(window))
            page["paging"] = {"cursors": {"before": _encode_cursor(start), "after": after}}
            if start + len(window) < len(selected):
                next_query = {**query, "limit": str(limit), "after": after}
                encoded = "&".join(f"{key}={value}" for key, value in next_query.items())
                page["paging"]["next"] = f"{base_url}?{encoded}"
        return page, None

    def check_send(self, template: object) -> GraphError | None:
        """What Meta answers a send of this ``template`` object, None when it is accepted."""
        if not isinstance(template, dict):
            return None  # the schema check answers for that
        name = template.get("name")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(name, str) or not isinstance(code, str):
            return None
        known = self._templates.get((name, code))
        if known is None or known["status"] not in ("APPROVED", "PAUSED", "DISABLED"):
            return _not_found(name, code)
        if known["status"] == "PAUSED":
            return _PAUSED
        if known["status"] == "DISABLED":
            return _DISABLED
        expected = _expected_counts(known)
        given = _given_counts(template.get("components"))
        for part in ("header", "body"):
            if given.get(part, 0) != expected.get(part, 0):
                return _count_mismatch(part, given.get(part, 0), expected.get(part, 0))
        for part, count in given.items():
            if part.startswith("button") and part not in expected:
                return _count_mismatch(part, count, 0)
        for part, count in expected.items():
            if part.startswith("button") and count and given.get(part, 0) != count:
                return _count_mismatch(part, given.get(part, 0), count)
        return None


def template_status_webhook(
    waba_id: str, template: Mapping[str, Any], event: str, reason: str | None, at: float
) -> bytes:
    """Meta's ``message_template_status_update`` webhook body for a status change."""
    value: dict[str, Any] = {
        "event": event,
        "message_template_id": int(template["id"]),
        "message_template_name": template["name"],
        "message_template_language": template["language"],
        "reason": reason if reason is not None else "NONE",
        "message_template_category": template.get("category"),
    }
    return _encoder.encode(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": waba_id,
                    "time": int(at),
                    "changes": [{"value": value, "field": "message_template_status_update"}],
                }
            ],
        }
    )


def _expected_counts(template: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for component in template.get("components", ()):
        kind = component.get("type")
        if kind == "BODY":
            counts["body"] = _placeholders(component.get("text"))
        elif kind == "HEADER":
            fmt = component.get("format", "TEXT")
            counts["header"] = _placeholders(component.get("text")) if fmt == "TEXT" else 1
        elif kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons", ())):
                if button.get("type") == "URL":
                    counts[f"button {index}"] = _placeholders(button.get("url"))
                elif button.get("type") == "COPY_CODE":
                    counts[f"button {index}"] = 1
                else:
                    # A quick reply's payload is optional: any count passes below.
                    counts[f"button {index}"] = 0
    return counts


def _given_counts(components: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not isinstance(components, list):
        return counts
    for component in components:
        if not isinstance(component, dict):
            continue
        # The live API reads component types without regard to case (pywa sends "BODY").
        kind = str(component.get("type", "")).lower()
        parameters = component.get("parameters")
        count = len(parameters) if isinstance(parameters, list) else 0
        if kind in ("header", "body"):
            counts[kind] = counts.get(kind, 0) + count
        elif kind == "button":
            counts[f"button {component.get('index')}"] = count
    return counts


def _placeholders(text: object) -> int:
    return len(set(_PLACEHOLDER.findall(text))) if isinstance(text, str) else 0


def _with_fields(template: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    if not fields:
        return copy.deepcopy(dict(template))
    # Graph always returns the id, whatever fields were asked for.
    return {
        key: copy.deepcopy(value) for key, value in template.items() if key in fields or key == "id"
    }


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    prefix, _, digits = text.partition(":")
    return int(digits) if prefix == "offset" and digits.isdigit() else None
