"""Send commands end to end: the commands queue their rows on the dev host's database and bus, the
host's sender sends them through its simulator once each; a template reviewed in the simulator
reaches the host's catalogue through Meta's signed webhook, the intake and the processor."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import psycopg
import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.config import BusinessInitiatedLimit
from shared_code.db.pool import open_pool
from shared_code.management.send_commands import (
    SendMessageRequest,
    SendProactiveMessageRequest,
    SendServices,
    send_message,
    send_proactive_message,
)
from shared_code.secrets import Secret
from shared_code.templates import TemplateCatalogue
from shared_code.whatsapp.graph_client import GraphApiClient
from tests.e2e.conftest import HostFactory

pytestmark = pytest.mark.e2e

NUMBER = "100000000000001"
WABA = "200000000000001"
USER = "15551230099"
FRENCH = "+33612345670"


async def wait_for(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_proactive_template_and_a_message_reach_the_simulator_once_each(
    start_dev_host: HostFactory,
) -> None:
    host = start_dev_host(WHATSAPP_DEFAULT_AGENT="echo")
    simulator_url = host.simulator_url
    assert simulator_url is not None
    sim = httpx.AsyncClient(base_url=simulator_url, timeout=10)
    pool = await open_pool(host.database_url, max_size=2, name="e2e-sends")
    bus = LocalQueue(pool)
    graph = GraphApiClient(
        base_url=simulator_url,
        api_version="v18.0",
        access_token=Secret("dev-access-token"),
        phone_number_id=NUMBER,
    )
    catalogue = TemplateCatalogue(pool=pool, graph=graph, waba_id=WABA)
    services = SendServices(
        pool=pool,
        bus=bus,
        outbound_queue="outbound-messages",
        phone_number_id=NUMBER,
        templates=catalogue,
        business_initiated_limit=BusinessInitiatedLimit(),
    )
    try:
        # A user writes; the echo agent answers: the window is open for send-message.
        written = await sim.post(f"/simulator/users/{USER}/messages", json={"text": "hello"})
        assert written.json()["webhook_status"] == 200

        async def echoed() -> bool:
            answer = await sim.get("/simulator/messages", params={"to": USER})
            return len(answer.json()["messages"]) == 1

        await wait_for("the echo reply", echoed)

        sent = await send_message(
            services,
            SendMessageRequest(phone_number=f"+{USER}", text="An operator writes"),
            caller="key:e2e",
            idempotency_key="e2e-1",
        )
        proactive = await send_proactive_message(
            services,
            SendProactiveMessageRequest(
                phone_number=FRENCH,
                template_name="welcome_message",
                language_code="fr",
                parameters=["John", "Doe"],
            ),
            caller="key:e2e",
            idempotency_key="e2e-2",
        )
        # Retried by a dashboard: the same message (its status may have moved on), not resent.
        again = await send_message(
            services,
            SendMessageRequest(phone_number=f"+{USER}", text="An operator writes"),
            caller="key:e2e",
            idempotency_key="e2e-1",
        )
        assert again.message_id == sent.message_id

        async def both_read() -> bool:
            with psycopg.connect(host.database_url) as conn:
                rows = conn.execute(
                    "SELECT status FROM whatsapp_messages WHERE id IN (%s, %s)",
                    (sent.message_id, proactive.message_id),
                ).fetchall()
            return sorted(rows) == [("read",), ("read",)]

        await wait_for("both messages read", both_read)
        to_user = (await sim.get("/simulator/messages", params={"to": USER})).json()["messages"]
        to_french = (await sim.get("/simulator/messages", params={"to": FRENCH})).json()["messages"]
        assert [m["body"]["text"]["body"] for m in to_user[1:]] == ["An operator writes"]
        assert len(to_french) == 1
        assert to_french[0]["body"]["template"]["name"] == "welcome_message"

        # Meta pauses the template: its webhook reaches the host, whose processor updates the
        # catalogue the next send reads.
        changed = await sim.post(
            "/simulator/templates/welcome_message/fr/status",
            json={"status": "PAUSED", "reason": "LOW_QUALITY"},
        )
        assert changed.status_code == 200 and changed.json()["webhook_scheduled"]

        async def paused() -> bool:
            template = await catalogue.find("welcome_message", "fr")
            return template is not None and template.status == "PAUSED"

        await wait_for("the paused status in the catalogue", paused)
    finally:
        await sim.aclose()
        await graph.aclose()
        await bus.close()
        await pool.close()
