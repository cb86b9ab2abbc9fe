"""The OpenAPI document itself, and Meta's webhook (served by webhook_function) described in it."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from shared_code.management.api import Call, Operation, Reply
from shared_code.management.registry import MANAGEMENT_ROUTE_PREFIX, registry

PREFIX = MANAGEMENT_ROUTE_PREFIX
API_TITLE = "WhatsApp bridge"
API_VERSION = "1.0.0"


class OpenApiDocument(msgspec.Struct):
    """An OpenAPI 3.1 document (https://spec.openapis.org/oas/v3.1.0)."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


@registry.operation(
    method="GET",
    route=f"{PREFIX}/openapi.json",
    summary="This API's OpenAPI 3.1 document",
    tag="documentation",
    access=None,
    responses={200: OpenApiDocument},
)
async def get_openapi_document(call: Call[Any, Any, None]) -> Reply:
    """Every route of the app, generated from the models the handlers use. No authentication."""
    return Reply(200, msgspec.convert(document(), OpenApiDocument))


def document() -> dict[str, Any]:
    from shared_code.management.openapi import openapi_document

    return openapi_document(registry.all(), title=API_TITLE, version=API_VERSION)


class WebhookVerification(msgspec.Struct, kw_only=True):
    mode: Annotated[str, msgspec.Meta(description="Always 'subscribe'.")] | None = msgspec.field(
        default=None, name="hub.mode"
    )
    verify_token: str | None = msgspec.field(default=None, name="hub.verify_token")
    challenge: Annotated[str, msgspec.Meta(description="Echoed back on success.")] | None = (
        msgspec.field(default=None, name="hub.challenge")
    )


class WebhookNotification(msgspec.Struct, kw_only=True):
    """Meta's webhook envelope (whatsapp-facts.md); the bridge stores any signed body, even one
    of another shape, so only the outline is described."""

    object: str | None = None
    entry: list[dict[str, Any]] | None = None


_WEBHOOK = f"{PREFIX}/webhook"
registry.add(
    Operation(
        operation_id="verify_webhook",
        method="GET",
        route=_WEBHOOK,
        summary="Meta's webhook subscription handshake",
        description="Answers hub.challenge when hub.mode is subscribe and hub.verify_token "
        "matches WHATSAPP_WEBHOOK_VERIFY_TOKEN; 403 otherwise.",
        tag="webhook",
        access=None,
        query_model=WebhookVerification,
        responses={200: None},
        problems=(403,),
        media_types={200: "text/plain", 403: "text/plain"},
        handler=None,
    )
)
registry.add(
    Operation(
        operation_id="receive_webhook",
        method="POST",
        route=_WEBHOOK,
        summary="Meta's webhook notifications",
        description="Signed with X-Hub-Signature-256 (HMAC-SHA256 of the raw body with the app "
        "secret). 200 once the body is stored; 401 for a missing or wrong signature; 503 while "
        "the database is unreachable (Meta retries).",
        tag="webhook",
        access=None,
        body_model=WebhookNotification,
        responses={200: None},
        problems=(401, 413, 503),
        headers={"X-Hub-Signature-256": "sha256=<hex HMAC-SHA256 of the body>"},
        media_types={200: "text/plain", 401: "text/plain", 413: "text/plain", 503: "text/plain"},
        handler=None,
    )
)
