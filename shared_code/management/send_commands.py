"""The send commands behind ``POST send-message`` and ``POST send-proactive-message``, and the
template catalogue behind ``GET templates``.

A send becomes an outbound row published to the outbound queue, exactly as an agent's reply
does, so the sender applies the same rate control, retries, order and statuses. What Meta would
refuse is refused here first, with the problem a dashboard can act on:

- 400 :class:`InvalidRequest`: not exactly one recipient or one content, a body Meta's limits
  refuse (``outbound`` builders), a phone number ``phonenumbers`` does not accept;
- 404 :class:`NotFound` (``contact_not_found``): ``send-message`` to someone who never wrote;
- 409 :class:`Conflict`: ``contact_opted_out``; ``marketing_opted_out`` (a MARKETING template to
  someone who stopped marketing messages in WhatsApp);
- 422 :class:`Unprocessable`: ``template_required`` (free-form text outside the 24-hour
  window), ``template_not_found``, ``template_not_approved``, ``template_parameter_mismatch``,
  ``idempotency_key_reused``;
- 429 :class:`TooManyRequests` (``business_initiated_limit``): the number reached
  ``BUSINESS_INITIATED_DAILY_LIMIT`` unique users outside their window in a moving 24 h;
  ``Retry-After`` says when the first of them leaves it;
- 503 :class:`Unavailable` (``template_catalogue_unavailable``): the template is not cached and
  Meta's catalogue could not be read.

Idempotency: with an ``Idempotency-Key`` the row's idempotency key is
``api:<caller>:<key>`` and the row keeps the sha256 of the request, so the same key from the same
caller answers the first message (sent once, even for concurrent requests: the unique key decides)
and the same key with another request is refused.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import phonenumbers

from shared_code.bus.port import MessageBus
from shared_code.config import BusinessInitiatedLimit
from shared_code.db import api_sends, audit, conversation_states, outbound
from shared_code.db.pool import Connection, Pool
from shared_code.db.templates import StoredTemplate
from shared_code.management.problems import (
    InvalidRequest,
    NotFound,
    TooManyRequests,
    Unavailable,
    Unprocessable,
)
from shared_code.policy import (
    customer_service_window_open,
    ensure_free_form_allowed,
    ensure_template_allowed,
)
from shared_code.sending import outbound_bus_message
from shared_code.templates import APPROVED, TemplateCatalogue, TemplateCatalogueUnavailable
from shared_code.whatsapp import outbound as bodies
from shared_code.whatsapp.json_body import storable, text_for_postgres

logger = logging.getLogger(__name__)

__all__ = [
    "MediaContent",
    "SendAccepted",
    "SendMessageRequest",
    "SendProactiveMessageRequest",
    "SendServices",
    "TemplateItem",
    "TemplateList",
    "list_templates",
    "send_message",
    "send_proactive_message",
]

MAX_IDEMPOTENCY_KEY_LENGTH = 255
_TARGET = "message"

PhoneNumber = Annotated[
    str,
    msgspec.Meta(
        min_length=2,
        max_length=32,
        description="The user's number in international format (E.164), e.g. +33612345678.",
        examples=["+33612345678"],
    ),
]
ContactId = Annotated[int, msgspec.Meta(ge=1, description="A contact's id (GET contacts).")]


class MediaContent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A media message, by uploaded media ``id`` or by public ``link`` (exactly one)."""

    type: Literal["image", "video", "audio", "document", "sticker"]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    link: Annotated[str, msgspec.Meta(min_length=8, max_length=2048)] | None = None
    caption: Annotated[str, msgspec.Meta(max_length=bodies.MAX_CAPTION)] | None = None
    filename: Annotated[str, msgspec.Meta(max_length=240)] | None = None


class SendMessageRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A free-form message to a contact inside their 24-hour customer-service window.

    Exactly one of ``phone_number`` and ``contact_id``; exactly one of ``text``, ``interactive``
    and ``media``.
    """

    phone_number: PhoneNumber | None = None
    contact_id: ContactId | None = None
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=bodies.MAX_TEXT_BODY)] | None = None
    interactive: (
        Annotated[
            dict[str, Any],
            msgspec.Meta(
                description=(
                    "Meta's interactive object: type button (at most 3 reply buttons, titles of "
                    "at most 20 characters), list (at most 10 rows) or cta_url."
                )
            ),
        ]
        | None
    ) = None
    media: MediaContent | None = None
    preview_url: bool = False


class SendProactiveMessageRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An approved template, to anyone (the seed's ``send_template_message`` as a body)."""

    phone_number: PhoneNumber
    template_name: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    language_code: Annotated[
        str, msgspec.Meta(min_length=2, max_length=16, examples=["fr", "en_US"])
    ]
    parameters: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]],
        msgspec.Meta(max_length=100, description="The template body's {{1}}, {{2}}... in order."),
    ] = msgspec.field(default_factory=list)
    components: (
        Annotated[
            list[dict[str, Any]],
            msgspec.Meta(
                max_length=20,
                description=(
                    "Header and button components with their parameters, as Meta's template "
                    "message takes them (a body component instead of parameters works too)."
                ),
            ),
        ]
        | None
    ) = None


class SendAccepted(msgspec.Struct, kw_only=True):
    """The message is queued; its ``status`` follows in GET conversations/{id}/messages."""

    message_id: int
    status: str
    contact_id: int
    conversation_id: int


class TemplateItem(msgspec.Struct, kw_only=True):
    name: str
    language: str
    status: str
    category: str | None
    # Meta's id of the template.
    id: str | None
    components: list[dict[str, Any]]
    body_parameter_count: int
    header_format: str | None
    header_parameter_count: int
    buttons: list[dict[str, Any]]
    status_reason: str | None
    refreshed_at: datetime
    updated_at: datetime


class TemplateList(msgspec.Struct, kw_only=True):
    items: list[TemplateItem]
    # When the catalogue was last read from Meta (None: never).
    refreshed_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendServices:
    """What the send commands need; ``from_services`` takes it from the worker's services."""

    pool: Pool
    bus: MessageBus
    outbound_queue: str
    phone_number_id: str
    templates: TemplateCatalogue
    business_initiated_limit: BusinessInitiatedLimit

    @classmethod
    def from_services(cls, services: Any) -> SendServices:
        """From :class:`shared_code.runtime.Services` (not imported: it imports everything)."""
        settings = services.settings
        return cls(
            pool=services.pool,
            bus=services.bus,
            outbound_queue=settings.outbound_queue_name,
            phone_number_id=settings.whatsapp_phone_number_id,
            templates=services.templates,
            business_initiated_limit=settings.business_initiated_limit,
        )


# --- send-message --------------------------------------------------------------------------------


async def send_message(
    services: SendServices,
    request: SendMessageRequest,
    *,
    caller: str,
    idempotency_key: str | None = None,
) -> SendAccepted:
    if (request.phone_number is None) == (request.contact_id is None):
        raise InvalidRequest("give exactly one of phone_number and contact_id", code="recipient")
    given = [request.text, request.interactive, request.media]
    if sum(part is not None for part in given) != 1:
        raise InvalidRequest("give exactly one of text, interactive and media", code="content")
    wa_id = None if request.phone_number is None else _wa_id_of(request.phone_number, strict=False)
    # Checked before anything is looked up: a malformed body is a 400 whoever it is for.
    _message_body(request, "0")
    key = _row_key(caller, idempotency_key)
    digest = _digest("send_message", request)
    number = services.phone_number_id
    async with services.pool.connection() as conn:
        replay = await _replay(conn, key, digest)
        if replay is None:
            if request.contact_id is not None:
                contact_id = request.contact_id
                wa_id = await api_sends.contact_wa_id(conn, contact_id)
            else:
                assert wa_id is not None
                found = await api_sends.contact_id_by_wa_id(conn, wa_id)
                contact_id = found or 0
            if wa_id is None:
                raise NotFound("no such contact", code="contact_not_found")
            await ensure_free_form_allowed(conn, contact_id=contact_id, phone_number_id=number)
            body = storable(_message_body(request, wa_id))
            replay = await _insert(
                conn,
                number=number,
                contact_id=contact_id,
                wa_id=wa_id,
                body=body,
                text=request.text,
                key=key,
                digest=digest,
                purpose="operator",
                business_initiated=False,
                caller=caller,
                action="send_message",
                details={"message_type": str(body["type"])},
            )
        wa_id = await api_sends.contact_wa_id(conn, replay.contact_id)
    if replay.status == "pending" and wa_id is not None:
        await _publish(services, replay.message_id, wa_id)
    return replay


def _message_body(request: SendMessageRequest, to: str) -> dict[str, Any]:
    try:
        if request.text is not None:
            return bodies.text_message(to, request.text, preview_url=request.preview_url)
        if request.interactive is not None:
            return bodies.interactive_message(to, request.interactive)
        media = request.media
        assert media is not None
        return bodies.media_message(
            to,
            media.type,
            media_id=media.id,
            link=media.link,
            caption=media.caption,
            filename=media.filename,
        )
    except ValueError as error:
        # The builders' messages name fields and limits, never values.
        raise InvalidRequest(str(error), code="invalid_message") from None


# --- send-proactive-message ----------------------------------------------------------------------


async def send_proactive_message(
    services: SendServices,
    request: SendProactiveMessageRequest,
    *,
    caller: str,
    idempotency_key: str | None = None,
) -> SendAccepted:
    wa_id = _wa_id_of(request.phone_number, strict=True)
    try:
        body = bodies.template_message(
            wa_id,
            request.template_name,
            request.language_code,
            parameters=request.parameters,
            components=request.components or (),
        )
    except ValueError as error:
        raise InvalidRequest(str(error), code="invalid_message") from None
    key = _row_key(caller, idempotency_key)
    digest = _digest("send_proactive_message", request)
    number = services.phone_number_id
    async with services.pool.connection() as conn:
        replay = await _replay(conn, key, digest)
    if replay is None:
        template = await _approved_template(services.templates, request)
        _check_parameters(template, body["template"].get("components", []))
        marketing = template.category == "MARKETING"
        async with services.pool.connection() as conn:
            contact_id = await api_sends.contact_id_by_wa_id(conn, wa_id)
            state = (
                None
                if contact_id is None
                else await ensure_template_allowed(
                    conn, contact_id=contact_id, phone_number_id=number, marketing=marketing
                )
            )
            window_open = state is not None and customer_service_window_open(
                state.last_inbound_at, state.now
            )
            replay = await _insert(
                conn,
                number=number,
                contact_id=contact_id,
                wa_id=wa_id,
                body=storable(body),
                text=None,
                key=key,
                digest=digest,
                purpose="marketing" if marketing else "template",
                business_initiated=not window_open,
                caller=caller,
                action="send_proactive_message",
                details={
                    "message_type": "template",
                    "template": request.template_name,
                    "language": request.language_code,
                    "business_initiated": not window_open,
                },
                daily_limit=services.business_initiated_limit.for_number(number),
            )
    if replay.status == "pending":
        await _publish(services, replay.message_id, wa_id)
    return replay


async def _approved_template(
    catalogue: TemplateCatalogue, request: SendProactiveMessageRequest
) -> StoredTemplate:
    try:
        template = await catalogue.find(request.template_name, request.language_code)
    except TemplateCatalogueUnavailable:
        raise Unavailable(
            "the template is not in the cached catalogue and Meta's catalogue could not be read",
            code="template_catalogue_unavailable",
            headers={"Retry-After": "60"},
        ) from None
    if template is None:
        raise Unprocessable(
            "no template with this name and language in the business account's catalogue",
            code="template_not_found",
        )
    if template.status != APPROVED:
        raise Unprocessable(
            f"the template is {template.status}, not APPROVED", code="template_not_approved"
        )
    return template


def _check_parameters(template: StoredTemplate, components: Sequence[Mapping[str, Any]]) -> None:
    """The parameters given against what the template takes, as Meta checks them (132000)."""
    given: dict[str, int] = {"body": 0, "header": 0}
    buttons: dict[int, int] = {}
    for component in components:
        kind = str(component.get("type", "")).lower()
        parameters = component.get("parameters")
        count = len(parameters) if isinstance(parameters, list) else 0
        if kind in given:
            given[kind] += count
        elif kind == "button":
            index = component.get("index")
            if not isinstance(index, int | str) or not str(index).isdigit():
                raise InvalidRequest("a button component needs its index", code="invalid_message")
            buttons[int(index)] = count
        else:
            raise InvalidRequest(
                "components: each must be of type header, body or button", code="invalid_message"
            )
    problems = []
    if given["body"] != template.body_parameter_count:
        problems.append(
            f"the body takes {template.body_parameter_count} parameters, {given['body']} given"
        )
    if given["header"] != template.header_parameter_count:
        problems.append(
            f"the header takes {template.header_parameter_count} parameters, "
            f"{given['header']} given"
        )
    template_buttons = {int(b["index"]): b for b in template.buttons}
    for index, count in sorted(buttons.items()):
        button = template_buttons.get(index)
        if button is None:
            problems.append(f"the template has no button {index}")
        elif button["type"] != "QUICK_REPLY" and count != button["parameter_count"]:
            problems.append(
                f"button {index} takes {button['parameter_count']} parameters, {count} given"
            )
    for index, button in sorted(template_buttons.items()):
        if button["parameter_count"] and index not in buttons:
            problems.append(
                f"button {index} takes {button['parameter_count']} parameters, none given"
            )
    if problems:
        raise Unprocessable("; ".join(problems), code="template_parameter_mismatch")


# --- shared --------------------------------------------------------------------------------------


def _wa_id_of(phone_number: str, *, strict: bool) -> str:
    """E.164 digits without '+' (a WhatsApp id); ``strict`` asks for a number in service,
    otherwise one of a possible length is enough (a contact's number is looked up, not dialled)."""
    try:
        parsed = phonenumbers.parse(phone_number, None)
    except phonenumbers.NumberParseException:
        parsed = None
    valid = parsed is not None and (
        phonenumbers.is_valid_number(parsed) if strict else phonenumbers.is_possible_number(parsed)
    )
    if parsed is None or not valid:
        raise InvalidRequest(
            "phone_number: not a valid number in international format (+ and country code)",
            code="invalid_phone_number",
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def _row_key(caller: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return f"api:{len(caller)}:{caller}:auto:{uuid.uuid4().hex}"
    if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not (
        idempotency_key.isascii() and idempotency_key.isprintable()
    ):
        raise InvalidRequest(
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
            code="invalid_idempotency_key",
        )
    # The caller's length first, so no caller's key can be read as another caller's.
    return f"api:{len(caller)}:{caller}:{idempotency_key}"


def _digest(operation: str, request: msgspec.Struct) -> bytes:
    return hashlib.sha256(
        operation.encode()
        + b"\n"
        + msgspec.json.encode(msgspec.to_builtins(request), order="sorted")
    ).digest()


async def _replay(conn: Connection, key: str, digest: bytes) -> SendAccepted | None:
    """The message an earlier request with this key made; refused if it asked for another."""
    row = await api_sends.load_sent_row(conn, key)
    if row is None:
        return None
    if row.request_sha256 != digest:
        raise Unprocessable(
            "this Idempotency-Key was used for another request", code="idempotency_key_reused"
        )
    return SendAccepted(
        message_id=row.id,
        status=row.status,
        contact_id=row.contact_id,
        conversation_id=row.conversation_id,
    )


async def _insert(
    conn: Connection,
    *,
    number: str,
    contact_id: int | None,
    wa_id: str,
    body: dict[str, Any],
    text: str | None,
    key: str,
    digest: bytes,
    purpose: str,
    business_initiated: bool,
    caller: str,
    action: str,
    details: dict[str, object],
    daily_limit: int | None = None,
) -> SendAccepted:
    async with conn.transaction():
        if business_initiated and daily_limit is not None:
            usage = await api_sends.business_initiated_usage(conn, number, wa_id)
            if not usage.includes_recipient and usage.users >= daily_limit:
                assert usage.next_release_at is not None
                wait = (usage.next_release_at - usage.now).total_seconds()
                raise TooManyRequests(
                    f"this number reached its {daily_limit} business-initiated users in 24 "
                    "hours; retry when the first of them leaves the moving window",
                    code="business_initiated_limit",
                    retry_after_seconds=max(1, int(wait) + 1),
                )
        if contact_id is None:
            contact_id = await api_sends.ensure_contact(conn, wa_id)
        conversation_id = await conversation_states.current_conversation_id(
            conn, number, contact_id, create=True
        )
        assert conversation_id is not None
        row_id, created = await outbound.insert_outbound(
            conn,
            outbound.NewOutbound(
                conversation_id=conversation_id,
                phone_number_id=number,
                contact_wa_id=wa_id,
                message_type=str(body["type"]),
                text_body=None if text is None else text_for_postgres(text),
                content=body,
                idempotency_key=key,
                purpose=purpose,
            ),
        )
        if created:
            await api_sends.mark_api_send(
                conn, row_id, request_sha256=digest, business_initiated=business_initiated
            )
            await audit.record(
                conn,
                actor=caller,
                action=action,
                target_type=_TARGET,
                target_id=row_id,
                details={"contact_id": contact_id, "conversation_id": conversation_id, **details},
            )
    if not created:
        # A concurrent request with the same key won the insert: answer with its message.
        replay = await _replay(conn, key, digest)
        assert replay is not None
        return replay
    logger.info("%s: message %d queued by %s", action, row_id, caller)
    return SendAccepted(
        message_id=row_id, status="pending", contact_id=contact_id, conversation_id=conversation_id
    )


async def _publish(services: SendServices, message_id: int, wa_id: str) -> None:
    # A repeat (an idempotent replay) has the same bus message id: the bus drops it, unless the
    # first publish never happened, and then this one sends the message.
    await services.bus.publish(
        services.outbound_queue,
        [
            outbound_bus_message(
                message_id, phone_number_id=services.phone_number_id, contact_wa_id=wa_id
            )
        ],
    )


# --- templates -----------------------------------------------------------------------------------


async def list_templates(
    catalogue: TemplateCatalogue, *, status: str | None = None, name: str | None = None
) -> TemplateList:
    """The cached catalogue (GET templates), optionally of one status or name."""
    rows, refreshed_at = await catalogue.list(status=status.upper() if status else None, name=name)
    return TemplateList(
        items=[
            TemplateItem(
                name=row.name,
                language=row.language,
                status=row.status,
                category=row.category,
                id=row.meta_id,
                components=row.components,
                body_parameter_count=row.body_parameter_count,
                header_format=row.header_format,
                header_parameter_count=row.header_parameter_count,
                buttons=row.buttons,
                status_reason=row.status_reason,
                refreshed_at=row.refreshed_at,
                updated_at=row.updated_at,
            )
            for row in rows
        ],
        refreshed_at=refreshed_at,
    )
