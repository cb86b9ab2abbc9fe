"""The simulator driven by pywa, the most used Python WhatsApp client: what Meta's live API
accepts, the simulator accepts (and records); what Meta refuses, it refuses with Meta's code.

pywa has no setting for the Graph base URL (``GraphAPI.__init__`` sets
``https://graph.facebook.com/v{api_version}`` on its httpx client), so the client it is given
sends every request to the simulator through a transport that swaps scheme, host and port and
keeps pywa's path. ``pywa_async.WhatsApp`` is pywa's asyncio client from the same package: it
subclasses ``pywa.WhatsApp`` and builds the same bodies. Where pywa refuses a body itself, the
request goes out with raw httpx instead.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pywa.types.templates import (
    BodyText,
    CopyCodeButton,
    HeaderText,
    QuickReplyButton,
    TemplateLanguage,
)
from pywa.types.templates import URLButton as TemplateURLButton
from pywa_async import WhatsApp
from pywa_async.errors import WhatsAppError
from pywa_async.types import Button, Contact, Section, SectionList, SectionRow, URLButton

from local.simulator import CloudApiSimulator, SimulatorConfig

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_client_logs")]


TOKEN = "pywa-test-token"
USER = "15550002222"
INBOUND = "wamid.HBgLMTU1NTAwMDIyMjIVAgASGBQzQUFBQUFBQUFBQUFBQUFBQUFBQQA="


class ToSimulator(httpx.AsyncBaseTransport):
    """Sends each request to the simulator instead of graph.facebook.com; keeps the path."""

    def __init__(self, base_url: str) -> None:
        self._target = httpx.URL(base_url)
        self._inner = httpx.AsyncHTTPTransport()
        self.requested: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requested.append(request.url)
        request.url = request.url.copy_with(
            scheme=self._target.scheme, host=self._target.host, port=self._target.port
        )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Pywa:
    wa: WhatsApp
    simulator: CloudApiSimulator
    transport: ToSimulator
    raw: httpx.AsyncClient

    async def post_raw(self, body: dict[str, Any]) -> httpx.Response:
        phone_number_id = self.simulator.config.phone_number_ids[0]
        return await self.raw.post(
            f"/v23.0/{phone_number_id}/messages",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )


@pytest.fixture
async def pywa() -> AsyncIterator[Pywa]:
    simulator = CloudApiSimulator(
        SimulatorConfig(app_secret="pywa-app-secret", access_token=TOKEN, status_webhooks=False)
    )
    base_url = await simulator.start()
    simulator.open_window(USER)
    transport = ToSimulator(base_url)
    session = httpx.AsyncClient(transport=transport, timeout=10)
    wa = WhatsApp(phone_id=simulator.config.phone_number_ids[0], token=TOKEN, session=session)
    raw = httpx.AsyncClient(base_url=base_url, timeout=10)
    try:
        yield Pywa(wa, simulator, transport, raw)
    finally:
        await raw.aclose()
        await session.aclose()
        await simulator.stop()


def contact_card() -> Contact:
    # Every optional part pywa knows, some left unset: pywa sends those as null.
    return Contact(
        name=Contact.Name(formatted_name="Ana Bell", first_name="Ana"),
        birthday="1990-05-17",
        phones=[Contact.Phone(phone="+1 555 010 0123", type="MOBILE")],
        emails=[Contact.Email(email="ana@example.com", type="WORK")],
        urls=[Contact.Url(url="https://example.com", type="WORK")],
        addresses=[Contact.Address(street="1 Main St", city="Springfield", country="US")],
        org=Contact.Org(company="Acme"),
    )


Send = Callable[[WhatsApp], Awaitable[Any]]

# (what pywa sends, the `type` of the recorded body)
ACCEPTED: dict[str, tuple[Send, str]] = {
    "text": (lambda wa: wa.send_message(USER, "hello"), "text"),
    "text with preview, reply context and tracker": (
        lambda wa: wa.send_message(
            USER,
            "see https://example.com",
            preview_url=True,
            reply_to_message_id=INBOUND,
            tracker="outbound:42",
        ),
        "text",
    ),
    "reply buttons with header and footer": (
        lambda wa: wa.send_message(
            USER,
            "Which one?",
            header="Choose",
            footer="Thanks",
            buttons=[Button("Yes", "yes"), Button("No", "no"), Button("Later", "later")],
        ),
        "interactive",
    ),
    "reply buttons under an image": (
        lambda wa: wa.send_image(
            USER, "https://example.com/a.jpg", caption="Pick", buttons=[Button("Yes", "yes")]
        ),
        "interactive",
    ),
    "list": (
        lambda wa: wa.send_message(
            USER,
            "Pick one",
            buttons=SectionList(
                "Menu",
                sections=[
                    Section("Drinks", rows=[SectionRow("Tea", "tea", description="Hot")]),
                    Section("Food", rows=[SectionRow("Cake", "cake")]),
                ],
            ),
        ),
        "interactive",
    ),
    "cta_url": (
        lambda wa: wa.send_message(
            USER, "See the offer", buttons=URLButton("Open", "https://example.com/offer")
        ),
        "interactive",
    ),
    "location request": (lambda wa: wa.request_location(USER, "Where are you?"), "interactive"),
    "image by id": (lambda wa: wa.send_image(USER, "1234567890", caption="Look"), "image"),
    "image by link": (lambda wa: wa.send_image(USER, "https://example.com/a.jpg"), "image"),
    "video by id": (lambda wa: wa.send_video(USER, "1234567890"), "video"),
    "video by link": (
        lambda wa: wa.send_video(USER, "https://example.com/a.mp4", caption="Watch"),
        "video",
    ),
    "audio by id": (lambda wa: wa.send_audio(USER, "1234567890"), "audio"),
    "audio by link": (lambda wa: wa.send_audio(USER, "https://example.com/a.ogg"), "audio"),
    "voice note": (lambda wa: wa.send_voice(USER, "1234567890"), "audio"),
    # pywa 4.5.0 cannot send a document id without a filename (it serialises a sentinel).
    "document by id": (
        lambda wa: wa.send_document(USER, "1234567890", filename="invoice.pdf"),
        "document",
    ),
    "document by link": (
        lambda wa: wa.send_document(
            USER, "https://example.com/a.pdf", filename="a.pdf", caption="Invoice"
        ),
        "document",
    ),
    "sticker by id": (lambda wa: wa.send_sticker(USER, "1234567890"), "sticker"),
    "sticker by link": (lambda wa: wa.send_sticker(USER, "https://example.com/s.webp"), "sticker"),
    # pywa sends the coordinates as JSON numbers and the missing name and address as null.
    "location": (lambda wa: wa.send_location(USER, 48.8584, 2.2945), "location"),
    "location with name and address": (
        lambda wa: wa.send_location(USER, -33.8568, 151.2153, name="Opera", address="Sydney"),
        "location",
    ),
    "contacts": (lambda wa: wa.send_contact(USER, contact_card()), "contacts"),
    "template": (
        lambda wa: wa.send_template(USER, name="hello_world", language=TemplateLanguage.ENGLISH_US),
        "template",
    ),
    # pywa writes component types in capitals and button indexes as numbers.
    "template with parameters": (
        lambda wa: wa.send_template(
            USER,
            name="order_update",
            language=TemplateLanguage.ENGLISH_US,
            params=[
                HeaderText.params("Summer"),
                BodyText.params("42"),
                QuickReplyButton.params(callback_data="yes", index=0),
                TemplateURLButton.params(url_variable="orders/42", index=1),
                CopyCodeButton.params(coupon_code="SAVE25", index=2),
            ],
        ),
        "template",
    ),
    "template with named parameters": (
        lambda wa: wa.send_template(
            USER,
            name="welcome",
            language=TemplateLanguage.ENGLISH_US,
            params=[BodyText.params(first_name="John")],
        ),
        "template",
    ),
    "reaction": (lambda wa: wa.send_reaction(USER, "\U0001f44d", INBOUND), "reaction"),
    "reaction removed": (lambda wa: wa.remove_reaction(USER, INBOUND), "reaction"),
}


@pytest.mark.parametrize("case", ACCEPTED, ids=list(ACCEPTED))
async def test_what_meta_accepts_from_pywa_is_accepted_and_recorded(pywa: Pywa, case: str) -> None:
    send, recorded_type = ACCEPTED[case]

    sent = await send(pywa.wa)

    (recorded,) = pywa.simulator.messages(to=USER)
    assert sent.id == recorded.wamid
    assert recorded.type == recorded_type
    # pywa asked for graph.facebook.com; only the transport moved it.
    (url,) = pywa.transport.requested
    assert url.host == "graph.facebook.com"
    assert re.fullmatch(
        rf"/v[0-9.]+/{pywa.simulator.config.phone_number_ids[0]}/messages", url.path
    )


async def test_mark_as_read_and_typing_indicator_from_pywa(pywa: Pywa) -> None:
    read = await pywa.wa.mark_message_as_read(INBOUND)
    typing = await pywa.wa.indicate_typing(INBOUND)

    assert read.success and typing.success
    assert [(r.message_id, r.typing_indicator) for r in pywa.simulator.read_receipts()] == [
        (INBOUND, None),
        (INBOUND, "text"),
    ]


# (what pywa sends, Meta's code, message, details)
REFUSED: dict[str, tuple[Send, int, str, str | None]] = {
    "empty text body": (
        lambda wa: wa.send_message(USER, ""),
        100,
        "(#100) The parameter text.body is required.",
        "The parameter text.body is required.",
    ),
    "four reply buttons": (
        lambda wa: wa.send_message(USER, "?", buttons=[Button(f"B{i}", f"b{i}") for i in range(4)]),
        131009,
        "(#131009) Parameter value is not valid",
        "Invalid buttons count. Min allowed buttons: 1, Max allowed buttons: 3",
    ),
    "button title over 20 characters": (
        lambda wa: wa.send_message(USER, "?", buttons=[Button("x" * 21, "b")]),
        131009,
        "(#131009) Parameter value is not valid",
        "Button title length invalid. Min length: 1, Max length: 20",
    ),
    "empty button title": (
        lambda wa: wa.send_message(USER, "?", buttons=[Button("", "b")]),
        131009,
        "(#131009) Parameter value is not valid",
        "Button title length invalid. Min length: 1, Max length: 20",
    ),
    "cta_url display text over 20 characters": (
        lambda wa: wa.send_message(USER, "?", buttons=URLButton("x" * 21, "https://e.example")),
        131009,
        "(#131009) Parameter value is not valid",
        None,
    ),
    # Meta's words for the two below are not on record: its code is, and the details are ours.
    "text body over 4,096 characters": (
        lambda wa: wa.send_message(USER, "x" * 4097),
        100,
        "(#100) Invalid parameter",
        "text.body: must be at most 4096 characters (got 4097)",
    ),
    "eleven list rows": (
        lambda wa: wa.send_message(
            USER,
            "?",
            buttons=SectionList(
                "Menu",
                sections=[Section("S", rows=[SectionRow(f"R{i}", f"r{i}") for i in range(11)])],
            ),
        ),
        100,
        "(#100) Invalid parameter",
        "interactive.action.sections[0].rows: must have at most 10 items (got 11)",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
async def test_what_meta_refuses_from_pywa_is_refused_with_metas_code(
    pywa: Pywa, case: str
) -> None:
    send, code, message, details = REFUSED[case]

    with pytest.raises(WhatsAppError) as raised:
        await send(pywa.wa)

    error = raised.value
    assert (error.code, error.message, error.details) == (code, message, details)
    assert error.raw_response is not None and error.raw_response.status_code == 400
    assert pywa.simulator.messages() == []
    assert pywa.simulator.stats()["errors"] == {str(code): 1}


def text_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": USER,
        "type": "text",
        "text": {"body": "hello"},
    }
    return {key: value for key, value in (body | changes).items() if value is not ...}


# Bodies pywa never builds: raw httpx. (body, HTTP status, code or None when accepted)
RAW: dict[str, tuple[dict[str, Any], int, int | None]] = {
    "without recipient_type (Meta's default: individual)": (
        text_body(recipient_type=...),
        200,
        None,
    ),
    "without type (Meta's default: text)": (text_body(type=...), 200, None),
    "coordinates as strings": (
        text_body(type="location", text=..., location={"latitude": "1.5", "longitude": "-2"}),
        200,
        None,
    ),
    "text without body": (text_body(text={"preview_url": False}), 400, 100),
    "text body null": (text_body(text={"body": None}), 400, 100),
    "location without longitude": (
        text_body(type="location", text=..., location={"latitude": 1.5}),
        400,
        100,
    ),
    "coordinates not numbers": (
        text_body(type="location", text=..., location={"latitude": "north", "longitude": 2}),
        400,
        100,
    ),
    "contact without formatted_name": (
        text_body(type="contacts", text=..., contacts=[{"name": {"first_name": "Ana"}}]),
        400,
        100,
    ),
}


@pytest.mark.parametrize("case", RAW, ids=list(RAW))
async def test_bodies_pywa_never_builds(pywa: Pywa, case: str) -> None:
    body, status, code = RAW[case]

    response = await pywa.post_raw(body)

    assert response.status_code == status, response.text
    if code is None:
        assert len(pywa.simulator.messages()) == 1
    else:
        assert response.json()["error"]["code"] == code
        assert pywa.simulator.messages() == []


async def test_missing_text_body_gets_metas_own_words(pywa: Pywa) -> None:
    response = await pywa.post_raw(text_body(text={}))

    error = response.json()["error"]
    assert error["message"] == "(#100) The parameter text.body is required."
    assert error["error_data"] == {
        "messaging_product": "whatsapp",
        "details": "The parameter text.body is required.",
    }
