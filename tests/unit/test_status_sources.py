"""What GET status reads from the outside: Service Bus queue depths and Graph's phone number."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from azure.core.exceptions import HttpResponseError

from shared_code.bus.azure_service_bus import AzureServiceBus
from shared_code.bus.port import QueueDepth, QueueDepthsForbidden, QueueInspector
from shared_code.secrets import Secret
from shared_code.whatsapp.errors import AuthError
from shared_code.whatsapp.graph_client import GraphApiClient, PhoneNumberInfo


@dataclass
class RuntimeProperties:
    active_message_count: int | None
    scheduled_message_count: int | None
    dead_letter_message_count: int | None


class FakeAdministration:
    def __init__(self) -> None:
        self.closed = False
        self.asked: list[str] = []

    async def get_queue_runtime_properties(self, queue_name: str) -> RuntimeProperties:
        self.asked.append(queue_name)
        if queue_name == "inbound-events":
            return RuntimeProperties(3, 1, 2)
        return RuntimeProperties(0, None, 0)

    async def close(self) -> None:
        self.closed = True


class FakeClient:
    def get_queue_sender(self, queue_name: str) -> object:
        raise AssertionError("nothing is published here")

    async def close(self) -> None:
        pass


async def test_service_bus_depths_come_from_the_runtime_properties() -> None:
    administration = FakeAdministration()
    bus = AzureServiceBus(FakeClient(), administration=administration)  # type: ignore[arg-type]

    depths = await bus.queue_depths(["inbound-events", "outbound-messages"])
    await bus.close()

    assert isinstance(bus, QueueInspector)
    assert depths == [
        QueueDepth(queue="inbound-events", active=3, scheduled=1, dead_lettered=2),
        QueueDepth(queue="outbound-messages", active=0, scheduled=0, dead_lettered=0),
    ]
    assert administration.closed


async def test_service_bus_depths_need_the_management_client() -> None:
    bus = AzureServiceBus(FakeClient())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await bus.queue_depths(["inbound-events"])
    await bus.close()


class ForbiddenAdministration(FakeAdministration):
    async def get_queue_runtime_properties(self, queue_name: str) -> RuntimeProperties:
        error = HttpResponseError(message="Unauthorized")
        error.status_code = 401
        raise error


async def test_service_bus_depths_without_the_manage_right_say_so() -> None:
    bus = AzureServiceBus(FakeClient(), administration=ForbiddenAdministration())  # type: ignore[arg-type]
    with pytest.raises(QueueDepthsForbidden):
        await bus.queue_depths(["inbound-events"])
    await bus.close()


def graph(handler: httpx.MockTransport) -> GraphApiClient:
    return GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("the-token"),
        phone_number_id="100000000000001",
        http=httpx.AsyncClient(transport=handler),
    )


async def test_phone_number_info_asks_graph_for_the_number_with_the_token() -> None:
    seen: list[httpx.Request] = []

    def meta(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "100000000000001",
                "display_phone_number": "15550783881",
                "verified_name": "Business",
                "quality_rating": "GREEN",
                "platform_type": "CLOUD_API",
            },
        )

    info = await graph(httpx.MockTransport(meta)).phone_number_info()

    assert info == PhoneNumberInfo(
        id="100000000000001",
        display_phone_number="15550783881",
        verified_name="Business",
        quality_rating="GREEN",
    )
    assert [(r.method, str(r.url)) for r in seen] == [
        ("GET", "https://graph.test/v23.0/100000000000001")
    ]
    assert seen[0].headers["Authorization"] == "Bearer the-token"


async def test_a_refused_token_is_an_auth_error() -> None:
    def meta(request: httpx.Request) -> httpx.Response:
        body = {
            "error": {
                "message": "Invalid OAuth access token",
                "type": "OAuthException",
                "code": 190,
                "fbtrace_id": "x",
            }
        }
        return httpx.Response(401, json=body)

    with pytest.raises(AuthError) as refused:
        await graph(httpx.MockTransport(meta)).phone_number_info()
    assert refused.value.code == 190
