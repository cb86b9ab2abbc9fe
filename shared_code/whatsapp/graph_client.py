"""The Graph API client: send messages, mark them read, fetch media, list message templates.

One long-lived :class:`httpx.AsyncClient` per worker, its connections aiohttp's
(:mod:`shared_code.http_transport`). Every failure surfaces as a
:mod:`shared_code.whatsapp.errors` class, so callers switch on the class and never on httpx.

Sends are never retried here: the sender re-queues a failed send itself, and a blind retry after
an ambiguous failure could message the user twice. Mark-as-read and media GETs are idempotent, so
they retry a few times on :class:`~shared_code.whatsapp.errors.RetryableError` with short
exponential back-off and jitter.

The access token, recipients and message text never appear in a log line, a ``repr`` or an
error message.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

from shared_code.http_transport import async_client
from shared_code.secrets import Secret
from shared_code.whatsapp import outbound
from shared_code.whatsapp.errors import (
    MediaTooLargeError,
    RetryableError,
    UnexpectedResponseError,
    error_from_response,
    error_from_transport,
)

if TYPE_CHECKING:
    # Only for the annotation: the client needs four settings, not config's import chain.
    from shared_code.config import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_MEDIA_BYTES",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_RETRY_WAIT",
    "DEFAULT_TIMEOUT",
    "TEMPLATE_FIELDS",
    "GraphApiClient",
    "MediaInfo",
    "PhoneNumberInfo",
    "SentMessage",
]

# Meta answers a send in well under a second; 15 s covers its slow moments without holding a
# sender's slot for minutes. The pool wait is short: a full pool means we are over capacity.
DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=5.0)
# 80 messages/s at ~300 ms each needs ~25 connections; headroom for 1,000/s numbers' bursts.
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=100, max_keepalive_connections=40, keepalive_expiry=30.0
)
# WhatsApp's own ceiling is 100 MB (documents); the bridge accepts less by default.
DEFAULT_MAX_MEDIA_BYTES: Final = 16 * 1024 * 1024
DEFAULT_RETRY_ATTEMPTS: Final = 3
DEFAULT_RETRY_WAIT: Final[wait_base] = wait_random_exponential(multiplier=0.25, max=2.0)

# What the template catalogue needs of each template (Meta returns only ``id`` without them).
TEMPLATE_FIELDS: Final = ("name", "language", "status", "category", "id", "components")

_ERROR_BODY_LIMIT = 64 * 1024
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Meta's acknowledgement of a send: the new message's wamid and the recipient's wa_id.

    ``message_status`` is Meta's optional pacing state for template sends (``accepted``,
    ``held_for_quality_assessment``, ...).
    """

    wamid: str
    wa_id: str | None
    message_status: str | None = None


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """Where to download a media object; ``url`` expires a few minutes after it is issued."""

    id: str
    url: str
    mime_type: str
    sha256: str | None
    file_size: int | None

    def __repr__(self) -> str:
        # The URL is a short-lived credential of its own (valid without the token for some CDNs).
        return (
            f"MediaInfo(id={self.id!r}, mime_type={self.mime_type!r}, file_size={self.file_size!r})"
        )


class PhoneNumberInfo(msgspec.Struct, frozen=True):
    """What Graph says of a business number (``GET /{phone-number-id}``): an answer at all proves
    the access token valid for it."""

    id: str
    display_phone_number: str | None = None
    verified_name: str | None = None
    quality_rating: str | None = None


class _SentMessageEntry(msgspec.Struct):
    id: str
    message_status: str | None = None


class _SentContactEntry(msgspec.Struct):
    wa_id: str | None = None


class _SendResponse(msgspec.Struct):
    messages: list[_SentMessageEntry]
    contacts: list[_SentContactEntry] = msgspec.field(default_factory=list)


class _MediaResponse(msgspec.Struct):
    url: str
    mime_type: str
    id: str | None = None
    sha256: str | None = None
    file_size: int | None = None


class _Cursors(msgspec.Struct):
    after: str | None = None


class _Paging(msgspec.Struct):
    cursors: _Cursors | None = None
    next: str | None = None


class _TemplatesPage(msgspec.Struct):
    data: list[dict[str, Any]]
    paging: _Paging | None = None


_decode_send_response = msgspec.json.Decoder(_SendResponse).decode
_decode_templates_page = msgspec.json.Decoder(_TemplatesPage).decode
_decode_media_response = msgspec.json.Decoder(_MediaResponse, strict=False).decode
_decode_phone_number = msgspec.json.Decoder(PhoneNumberInfo, strict=False).decode
_encode_json = msgspec.json.Encoder().encode
# Business numbers a client keeps a parsed messages URL for (one app has a handful).
_MAX_CACHED_URLS = 64


class GraphApiClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_version: str,
        access_token: Secret,
        phone_number_id: str,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
        retry_wait: wait_base = DEFAULT_RETRY_WAIT,
    ) -> None:
        """``http`` is used as given (its timeouts and limits apply) and left open by
        :meth:`aclose`; without it the client creates and owns one with ``timeout`` and
        ``limits``. ``retry_*`` apply to the idempotent calls only."""
        if retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._api_version = api_version.strip("/")
        self._access_token = access_token
        self._phone_number_id = phone_number_id
        self._owns_http = http is None
        self._http = http if http is not None else async_client(timeout=timeout, limits=limits)
        self._retry_attempts = retry_attempts
        self._retry_wait = retry_wait
        self._messages_urls: dict[str, httpx.URL] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, http: httpx.AsyncClient | None = None
    ) -> GraphApiClient:
        return cls(
            base_url=settings.whatsapp_graph_base_url,
            api_version=settings.whatsapp_api_version,
            access_token=settings.whatsapp_access_token,
            phone_number_id=settings.whatsapp_phone_number_id,
            http=http,
            timeout=httpx.Timeout(
                connect=DEFAULT_TIMEOUT.connect,
                read=settings.whatsapp_graph_timeout_seconds,
                write=DEFAULT_TIMEOUT.write,
                pool=DEFAULT_TIMEOUT.pool,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"GraphApiClient(base_url={self._base_url!r}, api_version={self._api_version!r}, "
            f"phone_number_id={self._phone_number_id!r})"
        )

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- sending ----------------------------------------------------------------------------------

    async def send_message(
        self, body: Mapping[str, Any], *, phone_number_id: str | None = None
    ) -> SentMessage:
        """POST one message body (see :mod:`.outbound`); sent exactly once, never retried.

        Raises a :class:`~.errors.GraphApiError` subclass. For an ambiguous failure
        (:class:`~.errors.TransportError` with ``request_may_have_been_sent``, including a 2xx we
        cannot read) the message may have been delivered: do not resend before checking.
        """
        response = await self._request(
            "POST", self._messages_url(phone_number_id), json_body=body, operation="send"
        )
        try:
            decoded = _decode_send_response(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            decoded = None
        if decoded is None or not decoded.messages or not decoded.messages[0].id:
            raise UnexpectedResponseError(
                "the Graph API accepted a message but its answer has no message id",
                http_status=response.status_code,
            )
        entry = decoded.messages[0]
        wa_id = decoded.contacts[0].wa_id if decoded.contacts else None
        return SentMessage(wamid=entry.id, wa_id=wa_id, message_status=entry.message_status)

    async def send_text(
        self,
        to: str,
        body: str,
        *,
        preview_url: bool = False,
        reply_to: str | None = None,
        callback_data: str | None = None,
    ) -> SentMessage:
        return await self.send_message(
            outbound.text_message(
                to, body, preview_url=preview_url, reply_to=reply_to, callback_data=callback_data
            )
        )

    async def send_template_message(
        self,
        phone_number: str,
        template_name: str,
        language_code: str,
        parameters: Sequence[str] = (),
    ) -> SentMessage:
        """The seed's call: ``parameters`` fill the template body's ``{{1}}``, ``{{2}}``..."""
        return await self.send_message(
            outbound.template_message(
                phone_number, template_name, language_code, parameters=parameters
            )
        )

    async def send_template(
        self,
        to: str,
        template_name: str,
        language_code: str,
        components: Sequence[Mapping[str, Any]] = (),
        *,
        reply_to: str | None = None,
        callback_data: str | None = None,
    ) -> SentMessage:
        return await self.send_message(
            outbound.template_message(
                to,
                template_name,
                language_code,
                components=components,
                reply_to=reply_to,
                callback_data=callback_data,
            )
        )

    async def send_interactive(
        self,
        to: str,
        interactive: Mapping[str, Any],
        *,
        reply_to: str | None = None,
        callback_data: str | None = None,
    ) -> SentMessage:
        """``interactive`` from :func:`.outbound.reply_buttons_interactive` and its siblings."""
        return await self.send_message(
            outbound.interactive_message(
                to, interactive, reply_to=reply_to, callback_data=callback_data
            )
        )

    async def send_media(
        self,
        to: str,
        kind: outbound.MediaKind,
        *,
        media_id: str | None = None,
        link: str | None = None,
        caption: str | None = None,
        filename: str | None = None,
        reply_to: str | None = None,
        callback_data: str | None = None,
    ) -> SentMessage:
        return await self.send_message(
            outbound.media_message(
                to,
                kind,
                media_id=media_id,
                link=link,
                caption=caption,
                filename=filename,
                reply_to=reply_to,
                callback_data=callback_data,
            )
        )

    async def send_reaction(self, to: str, message_id: str, emoji: str) -> SentMessage:
        return await self.send_message(outbound.reaction_message(to, message_id, emoji))

    async def mark_as_read(
        self, wamid: str, *, typing_indicator: bool = False, phone_number_id: str | None = None
    ) -> None:
        """Blue ticks on an inbound message, and optionally "typing…" until our reply (≤25 s)."""
        body = outbound.mark_read_body(wamid, typing_indicator=typing_indicator)
        url = self._messages_url(phone_number_id)

        async def mark() -> None:
            await self._request("POST", url, json_body=body, operation="mark_as_read")

        await self._retrying(mark, "mark_as_read")

    # --- the business number ----------------------------------------------------------------------

    async def phone_number_info(self, phone_number_id: str | None = None) -> PhoneNumberInfo:
        """The number's facts, once (no retries: ``GET status`` calls it under its own deadline).

        Raises :class:`~.errors.AuthError` for a token Meta refuses (190, HTTP 401).
        """
        number = phone_number_id or self._phone_number_id
        url = f"{self._base_url}/{self._api_version}/{_path_segment(number)}"
        response = await self._request("GET", url, operation="phone_number_info")
        try:
            return _decode_phone_number(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise UnexpectedResponseError(
                "the Graph API's phone number answer has no id", http_status=response.status_code
            ) from error

    # --- media ------------------------------------------------------------------------------------

    async def get_media(self, media_id: str) -> MediaInfo:
        """The download URL and facts of a media object (from an inbound message's ``id``)."""

        async def get() -> MediaInfo:
            return await self._get_media_once(media_id)

        return await self._retrying(get, "get_media")

    async def download_media(
        self, media_id: str, *, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES
    ) -> tuple[MediaInfo, bytes]:
        """The media object's bytes, streamed and abandoned as soon as they exceed ``max_bytes``.

        Raises :class:`~.errors.MediaTooLargeError` past the cap, and a
        :class:`~.errors.RetryableError` when the bytes do not match Meta's sha256.
        """

        async def download() -> tuple[MediaInfo, bytes]:
            # The URL expires within minutes, so each attempt asks for a fresh one.
            info = await self._get_media_once(media_id)
            if info.file_size is not None and info.file_size > max_bytes:
                raise MediaTooLargeError(max_bytes)
            content = await self._download(info.url, max_bytes)
            expected_sha256 = (
                info.sha256 if info.sha256 and _HEX_SHA256.match(info.sha256) else None
            )
            if expected_sha256 and hashlib.sha256(content).hexdigest() != expected_sha256.lower():
                raise RetryableError("downloaded media does not match its sha256")
            return info, content

        return await self._retrying(download, "download_media")

    async def _get_media_once(self, media_id: str) -> MediaInfo:
        url = f"{self._base_url}/{self._api_version}/{_path_segment(media_id)}"
        response = await self._request("GET", url, operation="get_media")
        try:
            decoded = _decode_media_response(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise UnexpectedResponseError(
                "the Graph API's media answer has no url or mime_type",
                http_status=response.status_code,
            ) from error
        return MediaInfo(
            id=decoded.id or media_id,
            url=decoded.url,
            mime_type=decoded.mime_type,
            sha256=decoded.sha256,
            file_size=decoded.file_size,
        )

    async def _download(self, url: str, max_bytes: int) -> bytes:
        # Meta's media URLs require the same bearer token; redirects are not followed, so the
        # token only ever goes to the URL Meta itself returned.
        try:
            async with self._http.stream("GET", url, headers=self._auth_headers()) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response.status_code, response.content)
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise MediaTooLargeError(max_bytes)
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    if received > max_bytes:
                        raise MediaTooLargeError(max_bytes)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.RequestError as error:
            raise error_from_transport(error) from error

    # --- message templates ------------------------------------------------------------------------

    async def list_message_templates(
        self,
        waba_id: str,
        *,
        fields: Sequence[str] = TEMPLATE_FIELDS,
        page_size: int = 100,
        max_pages: int = 100,
    ) -> list[dict[str, Any]]:
        """Every template of the business account, page after page (each page retried like any
        idempotent GET). Pages are followed by their ``after`` cursor on our own base URL, not by
        Meta's absolute ``next`` link, which names graph.facebook.com whatever the base URL is."""
        base = f"{self._base_url}/{self._api_version}/{_path_segment(waba_id)}/message_templates"
        params: dict[str, str] = {"fields": ",".join(fields), "limit": str(page_size)}
        templates: list[dict[str, Any]] = []
        for _ in range(max_pages):
            url = httpx.URL(base, params=params)

            async def get(url: httpx.URL = url) -> _TemplatesPage:
                response = await self._request("GET", url, operation="list_message_templates")
                try:
                    return _decode_templates_page(response.content)
                except (msgspec.DecodeError, msgspec.ValidationError) as error:
                    raise UnexpectedResponseError(
                        "the Graph API's template list has no data array",
                        http_status=response.status_code,
                    ) from error

            page = await self._retrying(get, "list_message_templates")
            templates.extend(page.data)
            after = page.paging.cursors.after if page.paging and page.paging.cursors else None
            if not page.data or page.paging is None or page.paging.next is None or not after:
                return templates
            params["after"] = after
        raise UnexpectedResponseError(
            f"the template list did not end within {max_pages} pages", http_status=200
        )

    # --- plumbing ---------------------------------------------------------------------------------

    def _messages_url(self, phone_number_id: str | None) -> httpx.URL:
        # Parsed once per number: httpx checks every character of a URL given as a string.
        sender = phone_number_id or self._phone_number_id
        url = self._messages_urls.get(sender)
        if url is None:
            url = httpx.URL(
                f"{self._base_url}/{self._api_version}/{_path_segment(sender)}/messages"
            )
            if len(self._messages_urls) < _MAX_CACHED_URLS:
                self._messages_urls[sender] = url
        return url

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._access_token.reveal()}"}

    async def _request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        operation: str,
        json_body: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        headers = self._auth_headers()
        content = None
        if json_body is not None:
            content = _encode_json(json_body)
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(method, url, content=content, headers=headers)
        except httpx.RequestError as error:
            transport_error = error_from_transport(error)
            logger.warning("Graph API %s failed: %s", operation, transport_error)
            raise transport_error from error
        if not response.is_success:
            api_error = error_from_response(
                response.status_code, response.content[:_ERROR_BODY_LIMIT]
            )
            logger.warning("Graph API %s failed: %s", operation, api_error)
            raise api_error
        return response

    async def _retrying(self, call: Callable[[], Coroutine[Any, Any, T]], operation: str) -> T:
        """``call`` (a coroutine function: tenacity treats other callables as synchronous)
        retried on :class:`RetryableError`."""

        def log_retry(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            logger.info(
                "retrying Graph API %s (attempt %d failed: %s)",
                operation,
                state.attempt_number,
                type(failure).__name__,
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry_attempts),
            wait=self._retry_wait,
            retry=retry_if_exception_type(RetryableError),
            before_sleep=log_retry,
            reraise=True,
        )
        return await retrying(call)


def _path_segment(value: str) -> str:
    """``value`` as one URL path segment: ids come from webhooks, so never trust them as paths."""
    if not value:
        raise ValueError("an id in a Graph API path must not be empty")
    return quote(value, safe="")
