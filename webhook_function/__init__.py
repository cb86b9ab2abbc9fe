"""HTTP trigger for Meta's webhook: GET is the subscription handshake, POST carries events."""

from __future__ import annotations

import logging

import azure.functions as func

from shared_code.runtime import get_services
from shared_code.webhook_intake import answer_verification
from shared_code.whatsapp.signature import SIGNATURE_HEADER

logger = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.route(
    route="v1/whatsapp/webhook",
    methods=[func.HttpMethod.GET, func.HttpMethod.POST],
    auth_level=func.AuthLevel.ANONYMOUS,
)
async def webhook_receive(req: func.HttpRequest) -> func.HttpResponse:
    try:
        services = await get_services()
    except Exception:
        # Meta retries a 503 later; a 500 would say the same but reads as our bug.
        logger.exception("webhook unavailable: services could not start")
        return func.HttpResponse(
            "service starting, retry later",
            status_code=503,
            mimetype="text/plain",
            headers={"X-Content-Type-Options": "nosniff"},
        )
    if req.method == "GET":
        answer = answer_verification(
            req.params, services.settings.whatsapp_webhook_verify_token.reveal()
        )
    else:
        answer = await services.intake.receive(req.get_body(), req.headers.get(SIGNATURE_HEADER))
    return func.HttpResponse(
        answer.body,
        status_code=answer.status_code,
        mimetype="text/plain",
        # The GET echoes a caller's string: no browser may read it as anything but text.
        headers={"X-Content-Type-Options": "nosniff"},
    )
