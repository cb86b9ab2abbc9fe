"""Typed views of Meta's webhook payloads, and the bus envelope that carries them.

Modelled on pywa's types: one frozen struct per payload family, message types as an enum, the
original dict kept on ``raw`` (it is what gets stored, so nothing Meta adds is ever lost).

Only what the bridge routes on is required (a message's ``from``, ``id``, ``timestamp`` and
``type``; a status's ``id``, ``status``, ``timestamp`` and ``recipient_id``). Everything nested
is optional and unknown fields are ignored: a new or missing detail in Meta's payload must not
cost a user's message. For the same reason a malformed optional part (say a ``context`` that is
not an object) is left out of the typed view with a warning naming the field, while ``raw``
keeps it. Timestamps arrive as unix seconds in strings and come out as aware UTC
datetimes. An unknown message type maps to :attr:`MessageType.UNKNOWN`; the real name stays in
``raw["type"]`` (see :attr:`InboundMessage.type_name`).

Error tree::

    ValueError
    └── PayloadError   (messages name fields and types only: never message text or numbers)
"""

from __future__ import annotations

import enum
import logging
import re
from datetime import datetime
from typing import Any, Final, TypeVar

import msgspec

from shared_code.log_privacy import pseudonym
from shared_code.whatsapp.json_body import UnreadableBody, decode_json_body

logger = logging.getLogger(__name__)

__all__ = [
    "Button",
    "Contact",
    "Context",
    "Conversation",
    "ConversationOrigin",
    "Error",
    "ErrorData",
    "InboundMessage",
    "Interactive",
    "InteractiveReply",
    "Location",
    "Media",
    "MessageEvent",
    "MessageStatus",
    "MessageType",
    "NfmReply",
    "Order",
    "PayloadError",
    "PreferenceEvent",
    "Pricing",
    "ProductItem",
    "Profile",
    "Reaction",
    "Referral",
    "ReferredProduct",
    "StatusEvent",
    "StatusKind",
    "System",
    "TemplateStatusEvent",
    "TemplateStatusUpdate",
    "Text",
    "UserPreference",
    "decode_event",
    "encode_event",
    "event_from_envelope",
    "parse_contact",
    "parse_inbound_message",
    "parse_status",
]


class PayloadError(ValueError):
    """A payload does not have the shape we need; the message names fields and types only."""


class MessageType(enum.StrEnum):
    """The ``type`` of an inbound message.

    ``referral`` is not a type: it is a field on messages sent from a click-to-WhatsApp ad.
    ``request_welcome`` is sent when a user opens a chat with the business for the first time.
    """

    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    INTERACTIVE = "interactive"
    BUTTON = "button"
    REACTION = "reaction"
    ORDER = "order"
    SYSTEM = "system"
    REQUEST_WELCOME = "request_welcome"
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> MessageType:
        # Meta adds types without notice; the message is still stored, with its real type in raw.
        return cls.UNKNOWN


class StatusKind(enum.StrEnum):
    """Known values of a status's ``status``; :class:`MessageStatus` keeps the string itself."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    FAILED = "failed"
    DELETED = "deleted"
    WARNING = "warning"
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> StatusKind:
        return cls.UNKNOWN


# Meta's own keys never start with an underscore, so the wire name of ``raw`` cannot collide
# with a field Meta adds later. ``raw`` is filled after validation, from the input dict itself.
_RAW: Any = msgspec.field(default_factory=dict, name="_raw")


# --- errors ---------------------------------------------------------------------------------


class ErrorData(msgspec.Struct, frozen=True, kw_only=True):
    details: str | None = None


class Error(msgspec.Struct, frozen=True, kw_only=True):
    """An error Meta reports inside a webhook (on a message, a status or a whole change)."""

    code: int
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None
    href: str | None = None

    @property
    def details(self) -> str | None:
        return self.error_data.details if self.error_data else None


# --- contacts -------------------------------------------------------------------------------


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None = None


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    """The sender's profile from ``value.contacts``.

    ``wa_id`` is optional because Meta's business-scoped user ids (``user_id``) let a user write
    without exposing a phone number; the message's ``from`` is what identifies the sender.
    """

    wa_id: str | None = None
    profile: Profile | None = None
    user_id: str | None = None
    raw: dict[str, Any] = _RAW

    def __repr__(self) -> str:
        return "Contact(<redacted>)"

    @property
    def name(self) -> str | None:
        return self.profile.name if self.profile else None


# --- inbound message parts ------------------------------------------------------------------


class Text(msgspec.Struct, frozen=True, kw_only=True):
    body: str


class Media(msgspec.Struct, frozen=True, kw_only=True):
    """image, video, audio, document or sticker: download it with ``id`` before it expires."""

    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool | None = None
    animated: bool | None = None


class Location(msgspec.Struct, frozen=True, kw_only=True):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None
    url: str | None = None


class InteractiveReply(msgspec.Struct, frozen=True, kw_only=True):
    """A tapped reply button (``button_reply``) or list row (``list_reply``)."""

    id: str | None = None
    title: str | None = None
    description: str | None = None


class NfmReply(msgspec.Struct, frozen=True, kw_only=True):
    """A completed WhatsApp Flow; ``response_json`` is a JSON document in a string."""

    name: str | None = None
    body: str | None = None
    response_json: str | None = None


class Interactive(msgspec.Struct, frozen=True, kw_only=True):
    type: str | None = None
    button_reply: InteractiveReply | None = None
    list_reply: InteractiveReply | None = None
    nfm_reply: NfmReply | None = None

    @property
    def reply(self) -> InteractiveReply | None:
        return self.button_reply or self.list_reply


class Button(msgspec.Struct, frozen=True, kw_only=True):
    """A template's quick-reply button: ``payload`` is what the business set when sending."""

    text: str | None = None
    payload: str | None = None


class Reaction(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str | None = None
    emoji: str | None = None

    @property
    def is_removed(self) -> bool:
        # Removal arrives without an emoji, or (seen in the wild) with an empty one.
        return not self.emoji


class ProductItem(msgspec.Struct, frozen=True, kw_only=True):
    product_retailer_id: str | None = None
    quantity: int | None = None
    item_price: float | None = None
    currency: str | None = None


class Order(msgspec.Struct, frozen=True, kw_only=True):
    catalog_id: str | None = None
    text: str | None = None
    product_items: tuple[ProductItem, ...] = ()


class System(msgspec.Struct, frozen=True, kw_only=True):
    """A system notice, e.g. ``user_changed_number`` with the new ``wa_id``."""

    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    new_wa_id: str | None = None
    customer: str | None = None


class Referral(msgspec.Struct, frozen=True, kw_only=True):
    """Set when the user wrote from a click-to-WhatsApp ad or post."""

    source_url: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    body: str | None = None
    headline: str | None = None
    media_type: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None
    ctwa_clid: str | None = None


class ReferredProduct(msgspec.Struct, frozen=True, kw_only=True):
    catalog_id: str | None = None
    product_retailer_id: str | None = None


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What the message answers: a quoted message, a tapped button's message, or a product."""

    from_: str | None = msgspec.field(default=None, name="from")
    id: str | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: ReferredProduct | None = None


# --- inbound message ------------------------------------------------------------------------


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of ``value.messages``."""

    from_: str = msgspec.field(name="from")
    id: str
    timestamp: datetime
    type: MessageType
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    audio: Media | None = None
    document: Media | None = None
    sticker: Media | None = None
    location: Location | None = None
    contacts: tuple[dict[str, Any], ...] | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    reaction: Reaction | None = None
    order: Order | None = None
    system: System | None = None
    referral: Referral | None = None
    context: Context | None = None
    errors: tuple[Error, ...] = ()
    raw: dict[str, Any] = _RAW

    def __repr__(self) -> str:
        # Reprs end up in logs and tracebacks: ids and type only, never text or numbers.
        return (
            f"InboundMessage(id={pseudonym(self.id)}, type={self.type_name!r}, at={self.timestamp})"
        )

    @property
    def type_name(self) -> str:
        """Meta's type string, also for types this module does not know yet."""
        name = self.raw.get("type")
        return name if isinstance(name, str) else self.type.value

    @property
    def media(self) -> Media | None:
        return self.image or self.video or self.audio or self.document or self.sticker

    @property
    def text_preview(self) -> str | None:
        """The human-readable text of the message, for storage and routing; None if it has none."""
        match self.type:
            case MessageType.TEXT:
                return self.text.body if self.text else None
            case MessageType.IMAGE | MessageType.VIDEO | MessageType.DOCUMENT:
                media = self.media
                return (media.caption or media.filename) if media else None
            case MessageType.INTERACTIVE:
                return _interactive_text(self.interactive)
            case MessageType.BUTTON:
                return self.button.text if self.button else None
            case MessageType.REACTION:
                return (self.reaction.emoji or None) if self.reaction else None
            case MessageType.LOCATION:
                loc = self.location
                return (loc.name or loc.address) if loc else None
            case MessageType.CONTACTS:
                return _shared_contact_names(self.contacts)
            case MessageType.ORDER:
                return (self.order.text or None) if self.order else None
            case MessageType.SYSTEM:
                return self.system.body if self.system else None
        return None

    @property
    def reply_id(self) -> str | None:
        """The id the business chose for the tapped button or row (or the template payload)."""
        if self.interactive is not None:
            reply = self.interactive.reply
            if reply is not None:
                return reply.id
        if self.button is not None:
            return self.button.payload
        return None

    @property
    def content(self) -> dict[str, Any]:
        """The raw object of the message's type, e.g. ``raw["text"]``; lists come wrapped."""
        name = self.type_name
        part = self.raw.get(name)
        if isinstance(part, dict):
            return part
        if part is not None:
            return {name: part}
        if name in ("unsupported", "unknown") and "errors" in self.raw:
            return {"errors": self.raw["errors"]}
        return {}


def _interactive_text(interactive: Interactive | None) -> str | None:
    if interactive is None:
        return None
    reply = interactive.reply
    if reply is not None:
        return reply.title
    if interactive.nfm_reply is not None:
        return interactive.nfm_reply.body
    return None


def _shared_contact_names(contacts: tuple[dict[str, Any], ...] | None) -> str | None:
    names = []
    for contact in contacts or ():
        name = contact.get("name")
        formatted = name.get("formatted_name") if isinstance(name, dict) else None
        if isinstance(formatted, str) and formatted:
            names.append(formatted)
    return ", ".join(names) or None


# --- statuses -------------------------------------------------------------------------------


class ConversationOrigin(msgspec.Struct, frozen=True, kw_only=True):
    type: str | None = None


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    id: str | None = None
    origin: ConversationOrigin | None = None
    expiration_timestamp: datetime | None = None


class Pricing(msgspec.Struct, frozen=True, kw_only=True):
    billable: bool | None = None
    pricing_model: str | None = None
    category: str | None = None
    type: str | None = None


class MessageStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of ``value.statuses``: what happened to a message the business sent.

    ``status`` stays a string so a value Meta adds is stored as is; :attr:`kind` is the enum.
    """

    id: str
    status: str
    timestamp: datetime
    recipient_id: str
    recipient_type: str | None = None
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    biz_opaque_callback_data: str | None = None
    errors: tuple[Error, ...] = ()
    raw: dict[str, Any] = _RAW

    def __repr__(self) -> str:
        codes = [error.code for error in self.errors]
        return (
            f"MessageStatus(id={pseudonym(self.id)}, status={self.status!r}, "
            f"at={self.timestamp}, error_codes={codes})"
        )

    @property
    def kind(self) -> StatusKind:
        return StatusKind(self.status)

    @property
    def error(self) -> Error | None:
        return self.errors[0] if self.errors else None


# --- bus envelope ---------------------------------------------------------------------------


class MessageEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="message"):
    """One inbound message with where it arrived: the JSON body of one queued bus message."""

    waba_id: str | None = None
    phone_number_id: str
    display_phone_number: str | None = None
    contact: Contact | None = None
    message: InboundMessage
    webhook_event_id: int | None = None


class StatusEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="status"):
    """One status of an outbound message: the JSON body of one queued bus message."""

    waba_id: str | None = None
    phone_number_id: str
    display_phone_number: str | None = None
    status: MessageStatus
    webhook_event_id: int | None = None


class TemplateStatusUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """The ``value`` of a ``message_template_status_update`` webhook change."""

    event: str
    message_template_id: int | str | None = None
    message_template_name: str | None = None
    message_template_language: str | None = None
    message_template_category: str | None = None
    reason: str | None = None


class TemplateStatusEvent(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="template"
):
    """A template's status changed (approved, rejected, paused...): one queued bus message.

    ``entry_time`` is the webhook entry's ``time``: what orders two changes of one template.
    """

    waba_id: str | None = None
    entry_time: datetime | None = None
    update: TemplateStatusUpdate
    webhook_event_id: int | None = None


class UserPreference(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a ``user_preferences`` webhook: the user stopped or resumed a category of
    messages (today only ``marketing_messages``) in WhatsApp itself."""

    wa_id: str
    category: str
    value: str  # "stop" or "resume"
    timestamp: datetime
    detail: str | None = None

    def __repr__(self) -> str:
        return f"UserPreference(category={self.category!r}, value={self.value!r})"


class PreferenceEvent(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="preference"
):
    """A user's marketing preference changed: one queued bus message, in the user's session."""

    waba_id: str | None = None
    phone_number_id: str
    display_phone_number: str | None = None
    preference: UserPreference
    webhook_event_id: int | None = None


class _MessageEnvelope(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="message"):
    # Meta's parts stay dicts here so each is parsed on its own, leniently, with its raw kept.
    waba_id: str | None = None
    phone_number_id: str
    display_phone_number: str | None = None
    contact: Any = None
    message: dict[str, Any]
    webhook_event_id: int | None = None


class _StatusEnvelope(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="status"):
    waba_id: str | None = None
    phone_number_id: str
    display_phone_number: str | None = None
    status: dict[str, Any]
    webhook_event_id: int | None = None


_json_encoder: Final = msgspec.json.Encoder()
_T = TypeVar("_T", bound=msgspec.Struct)
# How many malformed optional fields one payload may lose before it is refused as a whole.
_MAX_DROPPED_FIELDS = 8


def decode_event(
    body: bytes,
) -> MessageEvent | StatusEvent | TemplateStatusEvent | PreferenceEvent:
    """Decode a queued event; the ``raw`` dicts are the envelope's own, ready for storage."""
    # The intake queues repaired envelopes; anything else on the queue (an older envelope, a
    # hand-published message) is read as leniently, so NUL or a lone surrogate cannot reach a
    # text column and fail every delivery.
    try:
        data = decode_json_body(body).payload
    except UnreadableBody as error:
        raise PayloadError(f"event {error}") from None
    return event_from_envelope(data)


def event_from_envelope(
    data: object,
) -> MessageEvent | StatusEvent | TemplateStatusEvent | PreferenceEvent:
    """Decode an envelope already parsed from JSON (the intake's own, before it is queued)."""
    if not isinstance(data, dict):
        raise PayloadError(f"event body is a JSON {_json_type(data)}, not an object")
    if data.get("kind") == "template":
        try:
            return msgspec.convert(data, type=TemplateStatusEvent, strict=False)
        except msgspec.ValidationError as error:
            raise PayloadError(f"event: {_safe_reason(str(error))}") from None
    if data.get("kind") == "preference":
        try:
            return msgspec.convert(data, type=PreferenceEvent, strict=False)
        except msgspec.ValidationError as error:
            raise PayloadError(f"event: {_safe_reason(str(error))}") from None
    try:
        envelope = msgspec.convert(data, type=_MessageEnvelope | _StatusEnvelope, strict=False)
    except msgspec.ValidationError as error:
        raise PayloadError(f"event: {_safe_reason(str(error))}") from None
    if isinstance(envelope, _StatusEnvelope):
        return StatusEvent(
            waba_id=envelope.waba_id,
            phone_number_id=envelope.phone_number_id,
            display_phone_number=envelope.display_phone_number,
            status=_parse(envelope.status, MessageStatus, "status"),
            webhook_event_id=envelope.webhook_event_id,
        )
    # The profile is a nicety: a malformed one must not cost the user's message.
    contact = envelope.contact
    return MessageEvent(
        waba_id=envelope.waba_id,
        phone_number_id=envelope.phone_number_id,
        display_phone_number=envelope.display_phone_number,
        contact=_parse(contact, Contact, "contact") if isinstance(contact, dict) else None,
        message=_parse(envelope.message, InboundMessage, "message"),
        webhook_event_id=envelope.webhook_event_id,
    )


def encode_event(event: MessageEvent | StatusEvent) -> bytes:
    """The inverse of :func:`decode_event`: the envelope with Meta's dicts as they arrived."""
    envelope: dict[str, object] = {
        "kind": "message" if isinstance(event, MessageEvent) else "status",
        "waba_id": event.waba_id,
        "phone_number_id": event.phone_number_id,
        "display_phone_number": event.display_phone_number,
    }
    if isinstance(event, MessageEvent):
        envelope["contact"] = event.contact.raw if event.contact is not None else None
        envelope["message"] = event.message.raw
    else:
        envelope["status"] = event.status.raw
    envelope["webhook_event_id"] = event.webhook_event_id
    return _json_encoder.encode(envelope)


def parse_inbound_message(raw: object) -> InboundMessage:
    """One dict of ``value.messages`` as an :class:`InboundMessage` (``raw`` is that dict)."""
    return _parse(raw, InboundMessage, "message")


def parse_status(raw: object) -> MessageStatus:
    """One dict of ``value.statuses`` as a :class:`MessageStatus` (``raw`` is that dict)."""
    return _parse(raw, MessageStatus, "status")


def parse_contact(raw: object) -> Contact:
    """One dict of ``value.contacts`` as a :class:`Contact` (``raw`` is that dict)."""
    return _parse(raw, Contact, "contact")


def _parse(raw: object, model: type[_T], what: str) -> _T:
    if not isinstance(raw, dict):
        raise PayloadError(f"{what} is a JSON {_json_type(raw)}, not an object")
    # "_raw" is the wire name of the ``raw`` field (filled below from the input itself): a key
    # of that name in Meta's payload must not be read as it, let alone fail the whole message.
    data: dict[str, Any] = (
        {key: value for key, value in raw.items() if key != "_raw"} if "_raw" in raw else raw
    )
    for _ in range(_MAX_DROPPED_FIELDS + 1):
        # strict=False is what turns Meta's "1749416383" strings into datetimes (and "131047"
        # into an int code); strings that are neither numbers nor RFC 3339 still fail.
        try:
            parsed = msgspec.convert(data, type=model, strict=False)
        except msgspec.ValidationError as error:
            reason = str(error)
            field = _optional_field_at_fault(model, reason)
            if field is None:
                raise PayloadError(f"{what}: {_safe_reason(reason)}") from None
            # A malformed optional part (a context, a profile...) must not cost the whole
            # message: the typed view goes without it, ``raw`` keeps it for storage.
            logger.warning("%s: malformed optional field %r ignored", what, field)
            data = {key: value for key, value in data.items() if key != field}
            continue
        # The struct was built a moment ago from this dict and nobody else holds it yet.
        msgspec.structs.force_setattr(parsed, "raw", raw)
        return parsed
    raise PayloadError(f"{what}: too many malformed fields")


_FIRST_PATH_SEGMENT = re.compile(r" - at `\$\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_optional_names: dict[type[msgspec.Struct], frozenset[str]] = {}


def _optional_field_at_fault(model: type[msgspec.Struct], reason: str) -> str | None:
    """The top-level optional field a validation error points into, if it points into one."""
    match = _FIRST_PATH_SEGMENT.search(reason)
    if match is None:
        return None
    names = _optional_names.get(model)
    if names is None:
        names = frozenset(
            field.encode_name
            for field in msgspec.structs.fields(model)
            if not field.required and field.name != "raw"
        )
        _optional_names[model] = names
    return match["name"] if match["name"] in names else None


_VALIDATION_MESSAGE = re.compile(r"(?P<message>.*?)(?: - at `(?P<path>[^`]*)`)?", re.DOTALL)
# msgspec quotes offending *values* in some messages ("Invalid value 'x'"); only these shapes
# name nothing but our own field and type names.
_SAFE_PREFIXES = ("Expected `", "Object missing required field `", "Invalid RFC3339")


def _safe_reason(message: str) -> str:
    match = _VALIDATION_MESSAGE.fullmatch(message)
    text, path = (match["message"], match["path"]) if match else ("", None)
    if not text.startswith(_SAFE_PREFIXES) or len(text) > 120:
        text = "invalid value"
    return f"{text} at `{path}`" if path else text


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
