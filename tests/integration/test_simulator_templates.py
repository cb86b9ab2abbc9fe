"""The simulator's message templates over HTTP: Meta's paged list behind the bearer token, template
sends checked against it (132001, 132000, 132015), and the control endpoint that changes a status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from local.simulator import CloudApiSimulator, SimulatorConfig

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("quiet_client_logs")]

TOKEN = "test-access-token"
WABA = "200000000000001"
USER = "15550001111"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    simulator = CloudApiSimulator(
        SimulatorConfig(app_secret="s", access_token=TOKEN, status_webhooks=False)
    )
    base_url = await simulator.start()
    async with httpx.AsyncClient(base_url=base_url) as http:
        yield http
    await simulator.stop()


def template(name: str, code: str, components: list[dict[str, Any]] | None = None) -> Any:
    body: dict[str, Any] = {"name": name, "language": {"code": code}}
    if components is not None:
        body["components"] = components
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": USER,
        "type": "template",
        "template": body,
    }


def body_parameters(*values: str) -> list[dict[str, Any]]:
    return [{"type": "body", "parameters": [{"type": "text", "text": v} for v in values]}]


async def test_the_list_is_paged_by_cursor_and_needs_the_token(client: httpx.AsyncClient) -> None:
    path = f"/v23.0/{WABA}/message_templates"
    assert (await client.get(path)).json()["error"]["code"] == 190
    assert (await client.get("/v23.0/999/message_templates", headers=AUTH)).json()["error"][
        "code"
    ] == 100

    names: list[tuple[str, str]] = []
    answer = (await client.get(path, params={"limit": 3}, headers=AUTH)).json()
    pages = 1
    while True:
        names += [(t["name"], t["language"]) for t in answer["data"]]
        if "next" not in answer["paging"]:
            break
        assert answer["paging"]["next"].startswith(str(client.base_url))
        answer = (await client.get(answer["paging"]["next"], headers=AUTH)).json()
        pages += 1
    assert pages == 3 and len(names) == len(set(names)) == 7
    assert ("welcome_message", "fr") in names and ("welcome_message", "en_US") in names

    only = await client.get(
        path, params={"fields": "name,status", "status": "PENDING"}, headers=AUTH
    )
    assert only.json()["data"] == [
        {"id": "900000000000006", "name": "appointment_reminder", "status": "PENDING"}
    ]
    assert (await client.get(path, params={"after": "junk"}, headers=AUTH)).status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (template("welcome_message", "fr", body_parameters("John", "Doe")), 200, None),
        (template("welcome_message", "fr", body_parameters("John")), 400, 132000),
        (template("welcome_message", "de", body_parameters("John", "Doe")), 404, 132001),
        (template("no_such", "en_US"), 404, 132001),
        (template("appointment_reminder", "en_US", body_parameters("x")), 404, 132001),
        (template("black_friday_promo", "en_US", body_parameters("x")), 404, 132001),
        (template("order_update", "en_US", body_parameters("42")), 400, 132000),
        (template("hello_world", "en_US"), 200, None),
    ],
    ids=[
        "approved",
        "one parameter short",
        "unknown language",
        "unknown name",
        "pending",
        "rejected",
        "header and buttons missing",
        "no parameters",
    ],
)
async def test_template_sends_are_checked_against_the_catalogue(
    client: httpx.AsyncClient, body: Any, status: int, code: int | None
) -> None:
    answer = await client.post("/v23.0/100000000000001/messages", json=body, headers=AUTH)

    assert answer.status_code == status, answer.text
    if code is not None:
        assert answer.json()["error"]["code"] == code


async def test_the_control_endpoint_changes_a_status(client: httpx.AsyncClient) -> None:
    changed = await client.post(
        "/simulator/templates/welcome_message/fr/status", json={"status": "PAUSED"}
    )
    assert changed.status_code == 200
    assert changed.json()["template"]["status"] == "PAUSED"
    # No webhook URL here: nothing to post.
    assert changed.json()["webhook_scheduled"] is False

    paused = await client.post(
        "/v23.0/100000000000001/messages",
        json=template("welcome_message", "fr", body_parameters("John", "Doe")),
        headers=AUTH,
    )
    assert paused.json()["error"]["code"] == 132015
    unknown = await client.post("/simulator/templates/nope/fr/status", json={"status": "PAUSED"})
    bad = await client.post(
        "/simulator/templates/welcome_message/fr/status", json={"status": "GREAT"}
    )
    assert (unknown.status_code, bad.status_code) == (404, 400)
    await client.post("/simulator/reset")
    listed = (await client.get("/simulator/templates")).json()["templates"]
    assert {t["status"] for t in listed if t["name"] == "welcome_message"} == {"APPROVED"}
