"""Sending from a dashboard: free-form messages inside the window, approved templates anytime.

Both sends become outbound rows that the sender delivers like an agent's reply (rate control,
retries, order within the conversation, statuses). With an ``Idempotency-Key`` header, repeating
a request (a retry after a timeout) returns the first answer and sends nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Annotated, Any, Literal

import msgspec

from shared_code.management import send_commands
from shared_code.management.api import Call, Reply
from shared_code.management.auth import Access
from shared_code.management.problems import InvalidRequest
from shared_code.management.registry import MANAGEMENT_ROUTE_PREFIX, registry
from shared_code.templates import TemplateCatalogueUnavailable

logger = logging.getLogger(__name__)

PREFIX = MANAGEMENT_ROUTE_PREFIX
IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_TEXT = (
    "Any unique string (e.g. a UUID), at most 255 characters: a repeat with the same key and "
    "body returns the first answer and sends nothing more; with another body it is refused (422)."
)


def _idempotency_key(call: Call[Any, Any, Any]) -> str | None:
    key = call.headers.get(IDEMPOTENCY_HEADER.lower())
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 255 or not key.isprintable():
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable characters", code="invalid_idempotency_key"
        )
    return key


@registry.operation(
    method="POST",
    route=f"{PREFIX}/send-message",
    summary="Send a text, interactive or media message",
    tag="messages",
    access=Access.SEND,
    body_model=send_commands.SendMessageRequest,
    responses={202: send_commands.SendAccepted},
    problems=(404, 409, 422),
    headers={IDEMPOTENCY_HEADER: _IDEMPOTENCY_TEXT},
)
async def send_message(call: Call[Any, Any, send_commands.SendMessageRequest]) -> Reply:
    """Only inside the contact's 24-hour customer-service window (422 outside it: send a
    template); 409 when the contact opted out; 404 for an unknown contact."""
    accepted = await send_commands.send_message(
        send_commands.SendServices.from_services(call.services),
        call.body,
        caller=call.caller.actor,
        idempotency_key=_idempotency_key(call),
    )
    return Reply(202, accepted)


@registry.operation(
    method="POST",
    route=f"{PREFIX}/send-proactive-message",
    summary="Send an approved template (the seed's send_template_message)",
    tag="messages",
    access=Access.SEND,
    body_model=send_commands.SendProactiveMessageRequest,
    responses={202: send_commands.SendAccepted},
    problems=(409, 422, 429),
    headers={IDEMPOTENCY_HEADER: _IDEMPOTENCY_TEXT},
)
async def send_proactive_message(
    call: Call[Any, Any, send_commands.SendProactiveMessageRequest],
) -> Reply:
    """The template is checked against the cached catalogue before anything reaches Meta (422:
    unknown, not approved, wrong parameter count); 409 when the contact opted out; 429 with
    Retry-After when the business-initiated daily limit is reached."""
    accepted = await send_commands.send_proactive_message(
        send_commands.SendServices.from_services(call.services),
        call.body,
        caller=call.caller.actor,
        idempotency_key=_idempotency_key(call),
    )
    return Reply(202, accepted)


class TemplatesQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    status: (
        Literal["APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED", "DELETED", "IN_APPEAL"]
        | None
    ) = None
    name: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=r"^[^\x00]+$")] | None
    ) = None


@registry.operation(
    method="GET",
    route=f"{PREFIX}/templates",
    summary="List the business account's message templates",
    tag="messages",
    access=Access.READ,
    query_model=TemplatesQuery,
    responses={200: send_commands.TemplateList},
)
async def list_templates(call: Call[Any, TemplatesQuery, None]) -> send_commands.TemplateList:
    """From the cache kept by a timer and by Meta's template status webhooks; a cache older than
    TEMPLATE_REFRESH_MINUTES (or never filled: a fresh start) is read from Meta first."""
    await _refresh_if_due(call)
    return await send_commands.list_templates(
        call.services.templates, status=call.query.status, name=call.query.name
    )


# A catalogue Meta cannot serve is not asked again on every call: the cached list is answered
# meanwhile, its refreshed_at saying how old it is.
_REFRESH_TIMEOUT_SECONDS = 5.0
_RETRY_AFTER_FAILURE_SECONDS = 60.0
_last_failed_refresh = float("-inf")


async def _refresh_if_due(call: Call[Any, Any, Any]) -> None:
    global _last_failed_refresh
    if time.monotonic() - _last_failed_refresh < _RETRY_AFTER_FAILURE_SECONDS:
        return
    every = timedelta(minutes=call.services.settings.template_refresh_minutes)
    try:
        async with asyncio.timeout(_REFRESH_TIMEOUT_SECONDS):
            await call.services.templates.refresh_if_due(every)
    except (TemplateCatalogueUnavailable, TimeoutError) as error:
        _last_failed_refresh = time.monotonic()
        logger.warning("template catalogue not refreshed: %s", type(error).__name__)
