"""The Cloud API's behaviour, without HTTP: sends, mark-as-read, media, simulated users.

Checks on ``POST /{phone-number-id}/messages``, in order: the injected failure before Meta's
logic (the connection is closed, no answer), token (190), phone number id (100/33), JSON, then
the body as Meta's live API checks it (``local.meta_schema``: 100, or 131009 and Meta's own
words where the live API answers so), injected server error, rate limit and pair limit, 24-hour
window (131047), throughput and pair limits (130429, 131056); then the message is accepted,
recorded, its status webhooks scheduled, and an injected timeout may hold the answer back.
Mark-as-read requests (same endpoint) are checked for token, number and schema only: no limits,
no faults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from local.meta_schema import message_request_refusal, validate_mark_read_request
from local.simulator.config import BusinessNumber, ConfigError, SimulatorConfig, apply_changes
from local.simulator.errors import (
    FAILED_STATUS_ERROR,
    INVALID_TOKEN,
    PAIR_RATE_LIMIT_HIT,
    RATE_LIMIT_HIT,
    REENGAGEMENT_MESSAGE,
    GraphError,
    invalid_parameter,
    refused,
    unknown_object,
)
from local.simulator.faults import FaultInjector
from local.simulator.limits import Clock, SendLimits, ServiceWindows
from local.simulator.records import (
    InboundResult,
    MediaItem,
    ReadReceipt,
    SentMessage,
    Stats,
    digits_of,
    new_conversation_id,
    new_media_id,
    new_wamid,
)
from local.simulator.templates import TemplateStore, template_status_webhook
from local.simulator.webhooks import WebhookDispatcher, envelope

__all__ = ["Answer", "CloudApi", "UserMessage"]

_encoder = msgspec.json.Encoder()
_LIMIT_ERRORS = {130429: RATE_LIMIT_HIT, 131056: PAIR_RATE_LIMIT_HIT}
# Graph's answer to a token it cannot parse also says so in this header.
_INVALID_TOKEN_HEADERS = {
    "WWW-Authenticate": (
        'OAuth "Facebook Platform" "invalid_token" "Invalid OAuth access token - Cannot parse '
        'access token"'
    )
}
_DUPLICATE_OFFSET_SECONDS = 0.01
_NOT_JSON = object()
_MEDIA_SIZE = 2048
_DEFAULT_MEDIA_TYPE = "image/jpeg"


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer; ``hold_seconds`` delays it (the injected timeout); ``drop`` closes the
    connection instead of answering (the injected failure before Meta's logic)."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None
    hold_seconds: float | None = None
    error_code: int | None = None
    drop: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UserMessage:
    """What a simulated user sends: exactly one of text, interactive reply or image."""

    text: str | None = None
    # {"id", "title"} is a button reply; with "description" it is a list reply.
    interactive_reply: Mapping[str, str] | None = None
    # {"caption"?, "mime_type"?}
    image: Mapping[str, str] | None = None
    profile_name: str | None = None
    phone_number_id: str | None = None
    # The business message replied to; interactive replies default to the last one sent.
    context_message_id: str | None = None

    def __post_init__(self) -> None:
        given = sum(part is not None for part in (self.text, self.interactive_reply, self.image))
        if given != 1:
            raise ValueError("give exactly one of text, interactive_reply, image")
        reply = self.interactive_reply
        if reply is not None and not (
            isinstance(reply.get("id"), str) and isinstance(reply.get("title"), str)
        ):
            raise ValueError("interactive_reply needs string id and title")


def _error(error: GraphError, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(error.http_status, error.body(), headers, error_code=error.code)


_DROPPED = Answer(503, b"", drop=True)


class CloudApi:
    def __init__(self, config: SimulatorConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self.stats = Stats()
        self._faults = FaultInjector(config.faults, config.seed)
        self._limits = SendLimits(
            clock,
            throughput_per_second=config.throughput_per_second,
            pair_burst=config.pair_burst,
            pair_interval_seconds=config.pair_interval_seconds,
        )
        self._windows = ServiceWindows(clock, window_seconds=config.window_seconds)
        self._sent: deque[SentMessage] = deque(maxlen=config.max_recorded)
        self._receipts: deque[ReadReceipt] = deque(maxlen=config.max_recorded)
        self._media: dict[str, MediaItem] = {}
        self._conversations: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._last_sent: dict[tuple[str, str], str] = {}
        self._token = config.access_token.encode()
        self.webhooks = WebhookDispatcher(lambda: self._config, self.stats)
        self.templates = TemplateStore()

    # --- settings -------------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """The settings in force, with the fault counts still to come."""
        return dataclasses.replace(self._config, faults=self._faults.current)

    def reconfigure(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Apply ``changes`` (raises ConfigError); limits keep the tokens already earned."""
        config = apply_changes(self.config, changes)
        self._config = config
        self._token = config.access_token.encode()
        self._faults.configure(config.faults)
        if "seed" in changes:
            self._faults.reseed(config.seed)
        self._limits.reconfigure(
            throughput_per_second=config.throughput_per_second,
            pair_burst=config.pair_burst,
            pair_interval_seconds=config.pair_interval_seconds,
        )
        self._windows.window_seconds = config.window_seconds
        if config.max_recorded != self._sent.maxlen:
            self._sent = deque(self._sent, maxlen=config.max_recorded)
            self._receipts = deque(self._receipts, maxlen=config.max_recorded)
        return self.config

    def reset(self) -> None:
        """Forget everything recorded and every limit's state, and restart the seeded fault
        sequence; the settings (fault counts included) stay."""
        self.webhooks.clear()
        self._sent.clear()
        self._receipts.clear()
        self._media.clear()
        self._conversations.clear()
        self._last_sent.clear()
        self._limits.reset()
        self._windows.reset()
        self._faults.reseed(self._config.seed)
        self.templates.reset()
        self.stats.reset()

    # --- Graph API ------------------------------------------------------------------------

    def check_token(self, authorization: str | None) -> Answer | None:
        """None for ``Bearer <the access token>``, else Graph's 190 answer."""
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), self._token
            ):
                return None
        return _error(INVALID_TOKEN, _INVALID_TOKEN_HEADERS)

    def post_messages(
        self, phone_number_id: str, authorization: str | None, raw_body: bytes
    ) -> Answer:
        self.stats.requests += 1
        answer = self._post_messages(phone_number_id, authorization, raw_body)
        if answer.error_code is not None:
            self.stats.errors[answer.error_code] += 1
        return answer

    def _post_messages(
        self, phone_number_id: str, authorization: str | None, raw_body: bytes
    ) -> Answer:
        try:
            payload = msgspec.json.decode(raw_body)
        except msgspec.DecodeError:
            payload = _NOT_JSON
        is_mark_read = isinstance(payload, dict) and payload.get("status") == "read"
        if not is_mark_read and self._faults.drop_before():
            self.stats.faults["drop_before"] += 1
            return _DROPPED
        refusal = self.check_token(authorization)
        if refusal is not None:
            return refusal
        config = self._config
        number = config.business_number(phone_number_id)
        if number is None:
            return _error(unknown_object(phone_number_id))
        if payload is _NOT_JSON:
            return _error(invalid_parameter(["The request body is not valid JSON"]))
        if not isinstance(payload, dict):
            return _error(invalid_parameter(["The request body must be a JSON object"]))
        if payload.get("status") == "read":
            return self._mark_read(number, payload)
        return self._send(config, number, payload)

    def _mark_read(self, number: BusinessNumber, payload: dict[str, Any]) -> Answer:
        problems = validate_mark_read_request(payload)
        if problems:
            return _error(invalid_parameter(problems))
        indicator = payload.get("typing_indicator")
        self._receipts.append(
            ReadReceipt(
                message_id=payload["message_id"],
                phone_number_id=number.phone_number_id,
                typing_indicator=indicator.get("type") if isinstance(indicator, dict) else None,
                received_at=self._clock.time(),
            )
        )
        self.stats.read_receipts += 1
        return Answer(200, b'{"success":true}')

    def _send(
        self, config: SimulatorConfig, number: BusinessNumber, payload: dict[str, Any]
    ) -> Answer:
        refusal = message_request_refusal(payload)
        if refusal is not None:
            return _error(refused(refusal))
        if payload.get("type") == "template":
            template_refusal = self.templates.check_send(payload.get("template"))
            if template_refusal is not None:
                return _error(template_refusal)
        server_error = self._faults.server_error()
        if server_error is not None:
            self.stats.faults["server_error"] += 1
            return _error(server_error)
        if self._faults.rate_limit():
            self.stats.faults["rate_limit"] += 1
            return _error(RATE_LIMIT_HIT)
        if self._faults.pair_limit():
            self.stats.faults["pair_limit"] += 1
            return _error(PAIR_RATE_LIMIT_HIT)
        to = payload.get("to")
        if not isinstance(to, str):
            return _error(invalid_parameter(["to: is required"]))
        wa_id = digits_of(to)
        message_type: str = payload.get("type", "text")
        is_template = message_type == "template"
        if (
            config.enforce_window
            and not is_template
            and not self._windows.is_open(number.phone_number_id, wa_id)
        ):
            return _error(REENGAGEMENT_MESSAGE)
        over_limit = self._limits.admit(number.phone_number_id, wa_id)
        if over_limit is not None:
            return _error(_LIMIT_ERRORS[over_limit])

        message = SentMessage(
            wamid=new_wamid(wa_id, inbound=False),
            phone_number_id=number.phone_number_id,
            to=to,
            wa_id=wa_id,
            type=message_type,
            body=payload,
            accepted_at=self._clock.time(),
        )
        self._sent.append(message)
        self._last_sent[(number.phone_number_id, wa_id)] = message.wamid
        self.stats.record_accepted(self._clock.monotonic())
        callback = payload.get("biz_opaque_callback_data")
        self._schedule_statuses(
            config,
            number,
            message,
            callback if isinstance(callback, str) else None,
            "utility" if is_template else "service",
        )
        hold = self._faults.timeout()
        if hold is not None:
            self.stats.faults["timeout"] += 1
        sent: dict[str, Any] = {"id": message.wamid}
        if is_template:
            sent["message_status"] = "accepted"
        body = _encoder.encode(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": wa_id}],
                "messages": [sent],
            }
        )
        return Answer(200, body, hold_seconds=hold)

    def _schedule_statuses(
        self,
        config: SimulatorConfig,
        number: BusinessNumber,
        message: SentMessage,
        callback_data: str | None,
        category: str,
    ) -> None:
        if not config.status_webhooks or config.webhook_url is None:
            return
        delays = {
            "sent": config.sent_delay_seconds,
            "delivered": max(config.delivered_delay_seconds, config.sent_delay_seconds),
            "read": max(config.read_delay_seconds, config.delivered_delay_seconds),
        }
        statuses = ("sent", "delivered", "read") if config.read_enabled else ("sent", "delivered")
        faults = self._faults.status_faults(statuses)
        if faults.failed:
            plan = [("failed", delays["sent"], delays["sent"])]
        else:
            # (status, event time for the timestamp, posting delay)
            plan = [(status, delays[status], delays[status]) for status in statuses]
            if faults.out_of_order and config.read_enabled:
                plan = [
                    ("sent", delays["sent"], delays["sent"]),
                    ("delivered", delays["delivered"], delays["read"]),
                    ("read", delays["read"], delays["delivered"]),
                ]
            plan += [
                (status, at, post_delay + _DUPLICATE_OFFSET_SECONDS)
                for status, at, post_delay in list(plan)
                if status in faults.duplicated
            ]
        for status, at, post_delay in plan:
            status_object = self._status_object(
                number, message, status, message.accepted_at + at, callback_data, category
            )
            body = envelope(config.waba_id, number, {"statuses": [status_object]})
            if self.webhooks.schedule(body, post_delay, is_status=True):
                self.stats.statuses_scheduled += 1

    def _status_object(
        self,
        number: BusinessNumber,
        message: SentMessage,
        status: str,
        at: float,
        callback_data: str | None,
        category: str,
    ) -> dict[str, Any]:
        status_object: dict[str, Any] = {
            "id": message.wamid,
            "status": status,
            "timestamp": str(int(at)),
            "recipient_id": message.wa_id,
        }
        # Meta prices sent and delivered; read and failed statuses carry no conversation.
        if status in ("sent", "delivered"):
            conversation_id, expires_at = self._conversation(
                number.phone_number_id, message.wa_id, category, at
            )
            conversation: dict[str, Any] = {"id": conversation_id}
            if status == "sent":
                conversation["expiration_timestamp"] = str(int(expires_at))
            conversation["origin"] = {"type": category}
            status_object["conversation"] = conversation
            status_object["pricing"] = {
                "billable": True,
                "pricing_model": "CBP",
                "category": category,
            }
        if status == "failed":
            status_object["errors"] = [FAILED_STATUS_ERROR]
        if callback_data is not None:
            status_object["biz_opaque_callback_data"] = callback_data
        return status_object

    def _conversation(
        self, phone_number_id: str, wa_id: str, category: str, at: float
    ) -> tuple[str, float]:
        key = (phone_number_id, wa_id, category)
        current = self._conversations.get(key)
        if current is None or current[1] <= at:
            current = (new_conversation_id(), at + 24 * 3600)
            self._conversations[key] = current
        return current

    # --- business numbers -----------------------------------------------------------------

    def phone_number_info(self, phone_number_id: str, authorization: str | None) -> Answer | None:
        """``GET /{phone-number-id}`` (what a status check calls): the number's fields, Graph's
        190 answer for a wrong token, or None when the id is no business number (a media id)."""
        number = self._config.business_number(phone_number_id)
        if number is None:
            return None
        refusal = self.check_token(authorization)
        if refusal is not None:
            return refusal
        body = _encoder.encode(
            {
                "verified_name": "Simulated Business",
                "display_phone_number": number.display_phone_number,
                "quality_rating": "GREEN",
                "code_verification_status": "VERIFIED",
                "platform_type": "CLOUD_API",
                "id": number.phone_number_id,
            }
        )
        return Answer(200, body)

    # --- message templates ----------------------------------------------------------------

    def list_templates(
        self, waba_id: str, authorization: str | None, query: Mapping[str, str], url: str
    ) -> Answer:
        """``GET /{version}/{waba-id}/message_templates``; ``url`` is the request's, without
        its query (the base of the ``next`` link)."""
        refusal = self.check_token(authorization)
        if refusal is not None:
            return refusal
        if waba_id != self._config.waba_id:
            return _error(unknown_object(waba_id))
        page, problem = self.templates.page(query, url)
        if problem is not None:
            return _error(invalid_parameter([problem]))
        return Answer(200, _encoder.encode(page))

    def set_template_status(
        self, name: str, language: str, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Change a template's status and post Meta's signed status webhook about it; raises
        KeyError for an unknown template, ValueError for an unknown status."""
        template = self.templates.set_status(name, language, status, reason)
        config = self._config
        scheduled = False
        if config.webhook_url is not None:
            body = template_status_webhook(
                config.waba_id, template, status, reason, self._clock.time()
            )
            scheduled = self.webhooks.schedule(body, 0.0, is_status=False)
        return {"template": template, "webhook_scheduled": scheduled}

    # --- media ----------------------------------------------------------------------------

    def media(self, media_id: str) -> MediaItem:
        """The media with this id; an id never seen gets deterministic bytes of its own."""
        item = self._media.get(media_id)
        if item is None:
            item = _make_media(media_id, _DEFAULT_MEDIA_TYPE)
        return item

    def media_info(self, media_id: str, authorization: str | None, base_url: str) -> Answer:
        refusal = self.check_token(authorization)
        if refusal is not None:
            return refusal
        item = self.media(media_id)
        extension = item.mime_type.rpartition("/")[2]
        body = _encoder.encode(
            {
                "url": f"{base_url.rstrip('/')}/media-download/{media_id}?ext={extension}",
                "mime_type": item.mime_type,
                "sha256": item.sha256,
                # A string in Meta's OpenAPI description ("file_size": "303833").
                "file_size": str(len(item.content)),
                "id": media_id,
                "messaging_product": "whatsapp",
            }
        )
        return Answer(200, body)

    # --- simulated users ------------------------------------------------------------------

    def open_window(self, wa_id: str, phone_number_id: str | None = None) -> None:
        number = self._number_or_first(phone_number_id)
        digits = digits_of(wa_id)
        if not digits:
            raise ValueError("wa_id must hold digits")
        self._windows.open(number.phone_number_id, digits)

    async def send_user_message(self, wa_id: str, message: UserMessage) -> InboundResult:
        """Post Meta's inbound-message webhook for ``message`` and open the window."""
        config = self._config
        number = self._number_or_first(message.phone_number_id)
        wa_id = digits_of(wa_id)
        if not wa_id:
            raise ValueError("wa_id must hold digits")
        now = self._clock.time()
        wamid = new_wamid(wa_id, inbound=True)
        inbound: dict[str, Any] = {"from": wa_id, "id": wamid, "timestamp": str(int(now))}
        context_id = message.context_message_id
        if message.text is not None:
            inbound["type"] = "text"
            inbound["text"] = {"body": message.text}
        elif message.interactive_reply is not None:
            reply = dict(message.interactive_reply)
            kind = "list_reply" if "description" in reply else "button_reply"
            inbound["type"] = "interactive"
            inbound["interactive"] = {"type": kind, kind: reply}
            if context_id is None:
                context_id = self._last_sent.get((number.phone_number_id, wa_id))
        elif message.image is not None:
            inbound["type"] = "image"
            inbound["image"] = self._new_user_image(message.image)
        if context_id is not None:
            inbound["context"] = {"from": number.display_phone_number, "id": context_id}
        contact = {"profile": {"name": message.profile_name or "Simulated User"}, "wa_id": wa_id}
        body = envelope(config.waba_id, number, {"contacts": [contact], "messages": [inbound]})
        self._windows.open(number.phone_number_id, wa_id, now)
        self.stats.inbound_messages += 1
        if config.webhook_url is None:
            return InboundResult(wamid=wamid, webhook_status=None, error="no webhook URL set")
        first = await self.webhooks.post_user_message(body)
        return InboundResult(
            wamid=wamid, webhook_status=first.status, error=first.error, retrying=first.retrying
        )

    def _new_user_image(self, image: Mapping[str, str]) -> dict[str, Any]:
        media_id = new_media_id()
        mime_type = image.get("mime_type") or _DEFAULT_MEDIA_TYPE
        item = _make_media(media_id, mime_type)
        self._media[media_id] = item
        part: dict[str, Any] = {"mime_type": mime_type, "sha256": item.sha256, "id": media_id}
        caption = image.get("caption")
        if caption is not None:
            part["caption"] = caption
        return part

    def _number_or_first(self, phone_number_id: str | None) -> BusinessNumber:
        if phone_number_id is None:
            return self._config.business_numbers[0]
        number = self._config.business_number(phone_number_id)
        if number is None:
            raise ConfigError(f"unknown phone_number_id {phone_number_id[:64]!r}")
        return number

    # --- inspection -----------------------------------------------------------------------

    def messages(self, to: str | None = None) -> list[SentMessage]:
        if to is None:
            return list(self._sent)
        wa_id = digits_of(to)
        return [message for message in self._sent if message.wa_id == wa_id]

    def read_receipts(self) -> list[ReadReceipt]:
        return list(self._receipts)

    def stats_json(self) -> dict[str, Any]:
        return self.stats.as_json(
            webhook_queue=self.webhooks.pending,
            webhooks_retrying=self.webhooks.retrying,
            oldest_pending_webhook_seconds=self.webhooks.oldest_pending_seconds(),
        )


def _make_media(media_id: str, mime_type: str) -> MediaItem:
    """Bytes derived from the id alone, so every download of one id is identical."""
    seed = hashlib.sha256(f"simulated-media:{media_id}".encode()).digest()
    blocks = [seed]
    while sum(map(len, blocks)) < _MEDIA_SIZE:
        blocks.append(hashlib.sha256(blocks[-1]).digest())
    content = b"".join(blocks)[:_MEDIA_SIZE]
    return MediaItem(
        media_id=media_id,
        mime_type=mime_type,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
    )
