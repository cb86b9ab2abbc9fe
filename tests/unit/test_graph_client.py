"""The Graph API client against httpx.MockTransport: requests, answers, errors, retries, media."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from tenacity import wait_none

from local.meta_schema import validate_mark_read_request, validate_message_request
from shared_code.secrets import Secret
from shared_code.whatsapp.errors import (
    AuthError,
    MediaTooLargeError,
    PermanentError,
    RetryableError,
    ThrottledError,
    TransportError,
    UnexpectedResponseError,
    WindowClosedError,
)
from shared_code.whatsapp.graph_client import GraphApiClient, MediaInfo, SentMessage
from shared_code.whatsapp.outbound import ReplyButton, reply_buttons_interactive

TOKEN = "EAAG-very-secret-token"
BASE_URL = "https://graph.example"
PHONE_NUMBER_ID = "106540352242922"
TO = "16505551234"
SECRET_TEXT = "my card number is 4111"
WAMID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a script and keeps every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def json_bodies(self) -> list[Any]:
        return [json.loads(request.content) for request in self.requests]


def sent_answer(wamid: str = WAMID, **extra: Any) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": TO, "wa_id": TO}],
            "messages": [{"id": wamid, **extra}],
        },
    )


def meta_error(status: int, code: int, message: str = "(#0) Error") -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "error": {
                "message": message,
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": f"about {TO}"},
                "fbtrace_id": "AbCdEf",
            }
        },
    )


@pytest.fixture
def make_client() -> Callable[..., GraphApiClient]:
    def make(handler: Handler, **options: Any) -> GraphApiClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        options.setdefault("retry_wait", wait_none())
        return GraphApiClient(
            base_url=BASE_URL + "/",
            api_version="v23.0",
            access_token=Secret(TOKEN),
            phone_number_id=PHONE_NUMBER_ID,
            http=http,
            **options,
        )

    return make


async def test_send_text_posts_a_valid_body_with_the_bearer_token(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(sent_answer())
    client = make_client(recorder)

    sent = await client.send_text(TO, "Hello", reply_to="wamid.IN", callback_data="outbound:3")

    assert sent == SentMessage(wamid=WAMID, wa_id=TO)
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}/v23.0/{PHONE_NUMBER_ID}/messages"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.content)
    assert validate_message_request(body) == []
    assert body["text"] == {"body": "Hello", "preview_url": False}
    assert body["context"] == {"message_id": "wamid.IN"}
    assert body["biz_opaque_callback_data"] == "outbound:3"


async def test_send_message_uses_another_sender_number_when_asked(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(sent_answer(message_status="accepted"))
    client = make_client(recorder)
    body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": TO}
    body |= {"type": "text", "text": {"body": "Hi"}}

    sent = await client.send_message(body, phone_number_id="999/../x")

    assert sent.message_status == "accepted"
    assert recorder.requests[0].url.raw_path == b"/v23.0/999%2F..%2Fx/messages"


async def test_seed_template_signature(make_client: Callable[..., GraphApiClient]) -> None:
    recorder = Recorder(sent_answer())
    client = make_client(recorder)

    await client.send_template_message(
        phone_number=TO, template_name="welcome_message", language_code="fr", parameters=["Jo"]
    )

    (body,) = recorder.json_bodies()
    assert validate_message_request(body) == []
    assert body["template"]["components"] == [
        {"type": "body", "parameters": [{"type": "text", "text": "Jo"}]}
    ]


async def test_thin_wrappers_send_valid_bodies(make_client: Callable[..., GraphApiClient]) -> None:
    recorder = Recorder(sent_answer())
    client = make_client(recorder)

    await client.send_template(TO, "hello_world", "en_US", callback_data="outbound:1")
    await client.send_interactive(
        TO, reply_buttons_interactive("Which?", [ReplyButton("a", "A")]), reply_to="wamid.IN"
    )
    await client.send_media(TO, "document", media_id="77", filename="a.pdf", caption="Invoice")
    await client.send_reaction(TO, "wamid.IN", "\u2764\ufe0f")

    bodies = recorder.json_bodies()
    assert [body["type"] for body in bodies] == ["template", "interactive", "document", "reaction"]
    assert [validate_message_request(body) for body in bodies] == [[], [], [], []]


async def test_invalid_input_is_refused_before_any_request(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(sent_answer())
    client = make_client(recorder)

    with pytest.raises(ValueError, match="at most 4096"):
        await client.send_text(TO, "x" * 5000)

    assert recorder.requests == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (meta_error(400, 131047), WindowClosedError),
        (meta_error(400, 130429), ThrottledError),
        (meta_error(401, 190), AuthError),
        (meta_error(400, 100), PermanentError),
        (httpx.Response(500), RetryableError),
        (httpx.Response(502, text="<html><h1>502 Bad Gateway</h1></html>"), RetryableError),
    ],
)
async def test_error_answers_raise_their_class(
    make_client: Callable[..., GraphApiClient],
    answer: httpx.Response,
    expected: type[Exception],
) -> None:
    client = make_client(Recorder(answer))
    with pytest.raises(expected) as raised:
        await client.send_text(TO, "Hello")
    assert type(raised.value) is expected


@pytest.mark.parametrize(
    "answer",
    [meta_error(500, 131000), httpx.Response(503), httpx.ReadTimeout("no answer")],
)
async def test_sends_are_never_retried(
    make_client: Callable[..., GraphApiClient], answer: httpx.Response | Exception
) -> None:
    recorder = Recorder(answer, sent_answer())
    client = make_client(recorder)

    with pytest.raises(RetryableError):
        await client.send_text(TO, "Hello")

    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("exception", "may_have_been_sent"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow"), False),
        (httpx.PoolTimeout("busy"), False),
        (httpx.WriteTimeout("stalled"), False),
        (httpx.ReadTimeout("slow answer"), True),
        (httpx.ReadError("reset"), True),
        (httpx.RemoteProtocolError("server disconnected"), True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
async def test_transport_failures_become_transport_errors(
    make_client: Callable[..., GraphApiClient],
    exception: Exception,
    may_have_been_sent: bool,
) -> None:
    client = make_client(Recorder(exception))
    with pytest.raises(TransportError) as raised:
        await client.send_text(TO, "Hello")
    assert raised.value.request_may_have_been_sent is may_have_been_sent
    assert raised.value.__cause__ is exception


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>ok</html>"),
        httpx.Response(200, json={"messaging_product": "whatsapp", "messages": []}),
        httpx.Response(200, json={"success": True}),
        httpx.Response(200, json={"messages": [{"id": ""}]}),
    ],
)
async def test_unreadable_success_is_an_ambiguous_send(
    make_client: Callable[..., GraphApiClient], answer: httpx.Response
) -> None:
    recorder = Recorder(answer)
    client = make_client(recorder)
    with pytest.raises(UnexpectedResponseError) as raised:
        await client.send_text(TO, "Hello")
    assert raised.value.request_may_have_been_sent is True
    assert len(recorder.requests) == 1


async def test_mark_as_read_retries_a_service_error_then_succeeds(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(meta_error(500, 131000), httpx.Response(200, json={"success": True}))
    client = make_client(recorder)

    await client.mark_as_read("wamid.IN", typing_indicator=True, phone_number_id="555")

    assert len(recorder.requests) == 2
    assert str(recorder.requests[0].url) == f"{BASE_URL}/v23.0/555/messages"
    for body in recorder.json_bodies():
        assert validate_mark_read_request(body) == []
        assert body["typing_indicator"] == {"type": "text"}


async def test_mark_as_read_gives_up_after_its_attempts(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(httpx.ConnectError("refused"))
    client = make_client(recorder, retry_attempts=3)

    with pytest.raises(TransportError):
        await client.mark_as_read("wamid.IN")

    assert len(recorder.requests) == 3


async def test_mark_as_read_does_not_retry_permanent_errors(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(meta_error(400, 100))
    client = make_client(recorder)

    with pytest.raises(PermanentError):
        await client.mark_as_read("wamid.IN")

    assert len(recorder.requests) == 1


# --- media ----------------------------------------------------------------------------------------

MEDIA_URL = "https://lookaside.example/whatsapp_business/attachments/?mid=1"
MEDIA = b"\x89PNG fake image bytes" * 100


def media_info_answer(content: bytes = MEDIA, **overrides: Any) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "url": MEDIA_URL,
            "mime_type": "image/png",
            "sha256": hashlib.sha256(content).hexdigest(),
            "file_size": str(len(content)),  # Meta sends it as a string at times
            "id": "4321",
            **overrides,
        },
    )


async def test_get_media(make_client: Callable[..., GraphApiClient]) -> None:
    recorder = Recorder(media_info_answer())
    client = make_client(recorder)

    info = await client.get_media("4321")

    assert info == MediaInfo(
        id="4321",
        url=MEDIA_URL,
        mime_type="image/png",
        sha256=hashlib.sha256(MEDIA).hexdigest(),
        file_size=len(MEDIA),
    )
    (request,) = recorder.requests
    assert request.method == "GET"
    assert str(request.url) == f"{BASE_URL}/v23.0/4321"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert MEDIA_URL not in repr(info)


async def test_get_media_retries_a_server_error(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(httpx.Response(502), media_info_answer())
    client = make_client(recorder)

    info = await client.get_media("4321")

    assert info.mime_type == "image/png"
    assert len(recorder.requests) == 2


async def test_download_media_fetches_the_url_with_the_token(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(media_info_answer(), httpx.Response(200, content=MEDIA))
    client = make_client(recorder)

    info, content = await client.download_media("4321")

    assert content == MEDIA
    assert info.file_size == len(MEDIA)
    download = recorder.requests[1]
    assert str(download.url) == MEDIA_URL
    assert download.headers["Authorization"] == f"Bearer {TOKEN}"


async def chunks(content: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


@pytest.mark.parametrize(
    "answers",
    [
        # Meta announces the size.
        lambda: [media_info_answer(), httpx.Response(200, content=MEDIA)],
        # The CDN announces it (Content-Length) though Meta did not.
        lambda: [media_info_answer(file_size=None), httpx.Response(200, content=MEDIA)],
        # Nobody announces it: the stream is cut off at the cap.
        lambda: [media_info_answer(file_size=None), httpx.Response(200, content=chunks(MEDIA))],
    ],
    ids=["file_size", "content_length", "streamed"],
)
async def test_download_media_enforces_the_size_cap(
    make_client: Callable[..., GraphApiClient], answers: Callable[[], list[httpx.Response]]
) -> None:
    recorder = Recorder(*answers())
    client = make_client(recorder)

    with pytest.raises(MediaTooLargeError) as raised:
        await client.download_media("4321", max_bytes=len(MEDIA) - 1)

    assert raised.value.limit_bytes == len(MEDIA) - 1
    assert not raised.value.retryable


async def test_download_media_at_the_cap_is_accepted(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(
        media_info_answer(file_size=None), httpx.Response(200, content=chunks(MEDIA))
    )
    client = make_client(recorder)

    _, content = await client.download_media("4321", max_bytes=len(MEDIA))

    assert content == MEDIA


async def test_download_media_rejects_corrupted_bytes_after_retrying(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(
        media_info_answer(),
        httpx.Response(200, content=MEDIA[:-1] + b"!"),
        media_info_answer(),
        httpx.Response(200, content=MEDIA),
    )
    client = make_client(recorder)

    _, content = await client.download_media("4321")

    assert content == MEDIA
    assert len(recorder.requests) == 4


async def test_download_error_answer_raises_its_class(
    make_client: Callable[..., GraphApiClient],
) -> None:
    recorder = Recorder(media_info_answer(), meta_error(404, 100))
    client = make_client(recorder)
    with pytest.raises(PermanentError):
        await client.download_media("4321")


# --- lifecycle and secrecy ------------------------------------------------------------------------


async def test_token_never_shows_in_reprs_errors_or_logs(
    make_client: Callable[..., GraphApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shared_code.whatsapp")
    client = make_client(Recorder(meta_error(401, 190), httpx.ReadTimeout("slow"), sent_answer()))
    failures: list[Exception] = []
    for _ in range(2):
        with pytest.raises((AuthError, TransportError)) as raised:
            await client.send_text(TO, SECRET_TEXT)
        failures.append(raised.value)
    await client.send_text(TO, SECRET_TEXT)

    texts = [repr(client), str(client)]
    texts += [text for error in failures for text in (str(error), repr(error))]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records, "failures are logged"
    for text in texts:
        assert TOKEN not in text
        assert SECRET_TEXT not in text
        assert TO not in text


async def test_from_settings(make_client: Callable[..., GraphApiClient]) -> None:
    recorder = Recorder(sent_answer())
    # The four settings the client reads; the full Settings object needs the whole environment.
    settings = SimpleNamespace(
        whatsapp_graph_base_url="https://simulator.example",
        whatsapp_api_version="v21.0",
        whatsapp_access_token=Secret(TOKEN),
        whatsapp_phone_number_id="42",
        whatsapp_graph_timeout_seconds=15.0,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    client = GraphApiClient.from_settings(settings, http=http)  # type: ignore[arg-type]

    await client.send_text(TO, "Hi")

    assert str(recorder.requests[0].url) == "https://simulator.example/v21.0/42/messages"
    assert recorder.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_aclose_closes_only_an_owned_http_client() -> None:
    shared = httpx.AsyncClient(transport=httpx.MockTransport(Recorder(sent_answer())))
    borrowing = GraphApiClient(
        base_url=BASE_URL,
        api_version="v23.0",
        access_token=Secret(TOKEN),
        phone_number_id=PHONE_NUMBER_ID,
        http=shared,
    )
    owning = GraphApiClient(
        base_url=BASE_URL,
        api_version="v23.0",
        access_token=Secret(TOKEN),
        phone_number_id=PHONE_NUMBER_ID,
    )

    await borrowing.aclose()
    await owning.aclose()

    assert not shared.is_closed
    assert owning._http.is_closed
    await shared.aclose()
