"""Telemetry on real PostgreSQL and the local queue: one trace from the webhook to Graph's send,
carried over the bus in application properties; the metrics; no personal data in any span.

OpenTelemetry's global providers can be set once per process: the first test here installs
in-memory ones for the rest of the session (other tests then record into them, unread). The
"telemetry off" check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from scripts.send_sample_webhook import status_webhook, text_message_webhook
from shared_code.bus.local_queue import LocalQueue, ReceivedMessage
from shared_code.db.pool import Pool
from shared_code.orchestrator.agent_routing import parse_routing_rules
from shared_code.orchestrator.agents import AgentRegistry, EchoAgent, TextReply
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.processing import EventProcessor
from shared_code.ratelimit import RateLimiter, RateLimitPolicy
from shared_code.retry_policy import RetryPolicy
from shared_code.secrets import Secret
from shared_code.sending import OutboundSender
from shared_code.telemetry import consuming
from shared_code.webhook_intake import WebhookIntake
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.signature import sign
from tests.conftest import personal_data_in

pytestmark = pytest.mark.integration

SECRET = "test-app-secret"
INBOUND = "inbound-events"
OUTBOUND = "outbound-messages"
PHONE_NUMBER_ID = "100000000000001"
USER = "15551234321"
TEXT = "my private question"
FAILING_USER = "15557770000"


class _RecordingExporter(InMemorySpanExporter):
    """Keeps spans only while a test of this module runs: OpenTelemetry's providers can be set
    once per process, so the rest of the session's tests would otherwise pile up spans here."""

    recording = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return super().export(spans) if self.recording else SpanExportResult.SUCCESS


_SPANS = _RecordingExporter()
_METRICS = InMemoryMetricReader()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_SPANS))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_METRICS]))
    _SPANS.clear()
    _SPANS.recording = True
    yield _SPANS
    _SPANS.recording = False
    _SPANS.clear()


def metric_points() -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
    """Cumulative sums (counters) and counts (histograms) by name and attributes."""
    points: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    data = _METRICS.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted((point.attributes or {}).items())))
                    points[key] = float(getattr(point, "value", None) or point.count)  # type: ignore[union-attr]
    return points


def increase(
    before: Mapping[tuple[str, tuple[tuple[str, Any], ...]], float],
    after: Mapping[tuple[str, tuple[tuple[str, Any], ...]], float],
    name: str,
    **attributes: str,
) -> float:
    key = (name, tuple(sorted(attributes.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
async def graph() -> AsyncIterator[tuple[list[dict[str, Any]], GraphApiClient]]:
    requests: list[dict[str, Any]] = []

    def meta(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        if body.get("status") == "read":
            return httpx.Response(200, json={"success": True})
        if body.get("to") == FAILING_USER:
            error = {"message": "bad", "type": "OAuthException", "code": 131026, "fbtrace_id": "x"}
            return httpx.Response(400, json={"error": error})
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": USER, "wa_id": USER}],
                "messages": [{"id": f"wamid.sent{len(requests)}"}],
            },
        )

    client = GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=PHONE_NUMBER_ID,
        http=httpx.AsyncClient(transport=httpx.MockTransport(meta)),
    )
    yield requests, client
    await client.aclose()


async def receive_one(bus: LocalQueue, queue: str) -> ReceivedMessage:
    session = await bus.accept_next_session(queue, wait=5)
    assert session is not None, f"nothing on {queue}"
    message = await session.receive(wait=5)
    assert message is not None
    await bus.complete(message)
    await session.close()
    return message


async def test_one_trace_follows_a_message_from_the_webhook_to_graph(
    spans: InMemorySpanExporter,
    pool: Pool,
    local_queue: LocalQueue,
    graph: tuple[list[dict[str, Any]], GraphApiClient],
) -> None:
    graph_requests, client = graph
    intake = WebhookIntake(pool=pool, bus=local_queue, queue=INBOUND, app_secret=SECRET)
    processor = EventProcessor(
        pool,
        Orchestrator(
            pool=pool,
            bus=local_queue,
            outbound_queue=OUTBOUND,
            graph=client,
            agents=AgentRegistry({"echo": EchoAgent()}, "echo"),
            routing_rules=parse_routing_rules(""),
            timeout_seconds=5,
            fallback=TextReply(body="fallback"),
            history_limit=10,
        ),
    )
    sender = OutboundSender(
        pool=pool,
        bus=local_queue,
        queue=OUTBOUND,
        graph=client,
        limiter=RateLimiter(pool, RateLimitPolicy()),
        policy=RetryPolicy(),
    )
    before = metric_points()

    body = json.dumps(
        text_message_webhook(
            phone_number_id=PHONE_NUMBER_ID,
            waba_id="200000000000001",
            sender=USER,
            name="Ana",
            text=TEXT,
        )
    ).encode()
    assert (await intake.receive(body, sign(body, SECRET))).status_code == 200
    assert (await intake.receive(body, "sha256=" + "0" * 64)).status_code == 401
    await intake.drain()

    # What the queue triggers do (processor_function, sender_function).
    inbound = await receive_one(local_queue, INBOUND)
    assert "traceparent" in inbound.application_properties
    with consuming(
        "process event",
        inbound.application_properties,
        queue=INBOUND,
        enqueued_time=inbound.enqueued_time,
    ):
        await processor.handle(inbound.body)
    outbound = await receive_one(local_queue, OUTBOUND)
    with consuming(
        "send message",
        outbound.application_properties,
        queue=OUTBOUND,
        enqueued_time=outbound.enqueued_time,
    ):
        await sender.handle(outbound.body)
    assert any(r.get("text", {}).get("body") == TEXT for r in graph_requests)
    # Meta's status webhooks for the reply come back without our context: the status joins the
    # trace through the context stored on the outbound row.
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT wamid FROM whatsapp_messages WHERE direction = 'outbound' AND wamid IS NOT NULL"
        )
        (reply_wamid,) = await cursor.fetchone()  # type: ignore[misc]
    delivered = json.dumps(
        status_webhook(
            phone_number_id=PHONE_NUMBER_ID,
            waba_id="200000000000001",
            recipient=USER,
            wamid=reply_wamid,
            status="delivered",
        )
    ).encode()
    assert (await intake.receive(delivered, sign(delivered, SECRET))).status_code == 200
    await intake.drain()

    finished: tuple[ReadableSpan, ...] = spans.get_finished_spans()
    by_name = {span.name: span for span in finished}
    hops = [
        "webhook receive",
        "process event",
        "agent call",
        "send message",
        "graph send",
        "message status",
    ]
    assert set(hops) <= set(by_name), sorted(by_name)
    # The first webhook span is the accepted one's (the bad signature came second).
    accepted_webhook = next(s for s in finished if s.name == "webhook receive")
    by_name["webhook receive"] = accepted_webhook
    trace_ids = {by_name[name].context.trace_id for name in hops}
    assert trace_ids == {accepted_webhook.context.trace_id}
    # Each hop is the child of the one before (the agent call and Graph send inside their hop).
    assert by_name["process event"].parent.span_id == accepted_webhook.context.span_id  # type: ignore[union-attr]
    assert by_name["agent call"].parent.span_id == by_name["process event"].context.span_id  # type: ignore[union-attr]
    assert by_name["send message"].parent.span_id == by_name["process event"].context.span_id  # type: ignore[union-attr]
    assert by_name["graph send"].parent.span_id == by_name["send message"].context.span_id  # type: ignore[union-attr]
    assert by_name["message status"].attributes["bridge.status"] == "delivered"  # type: ignore[index]
    # The rejected webhook is a trace of its own, and says why with its status code only.
    others = [s for s in finished if s.name == "webhook receive" and s is not accepted_webhook]
    assert [s.attributes["http.response.status_code"] for s in others] == [401, 200]  # type: ignore[index]
    assert all(s.context.trace_id != accepted_webhook.context.trace_id for s in others)

    for span in finished:
        shown = json.dumps({k: str(v) for k, v in (span.attributes or {}).items()})
        assert not personal_data_in(shown), (span.name, shown)
        assert TEXT not in shown and USER not in shown

    after = metric_points()
    assert increase(before, after, "bridge.webhooks.received") == 3  # message, forged, status
    assert increase(before, after, "bridge.webhooks.rejected", reason="bad_signature") == 1
    assert increase(before, after, "bridge.messages.sent") == 1
    assert increase(before, after, "bridge.queue.latency", queue=INBOUND) == 1
    assert increase(before, after, "bridge.queue.latency", queue=OUTBOUND) == 1
    assert increase(before, after, "bridge.agent.latency", agent="echo") == 1


async def test_a_failed_send_is_counted_by_error_code_and_the_span_keeps_only_the_code(
    spans: InMemorySpanExporter,
    pool: Pool,
    local_queue: LocalQueue,
    graph: tuple[list[dict[str, Any]], GraphApiClient],
) -> None:
    from tests.integration.test_sender import new_reply, request_for

    _, client = graph
    sender = OutboundSender(
        pool=pool,
        bus=local_queue,
        queue=OUTBOUND,
        graph=client,
        limiter=RateLimiter(pool, RateLimitPolicy()),
        policy=RetryPolicy(),
    )
    row_id = await new_reply(pool, TEXT, user=FAILING_USER)
    before = metric_points()
    await sender.handle(request_for(row_id))
    after = metric_points()
    assert increase(before, after, "bridge.messages.failed", **{"error.code": "131026"}) == 1
    [send] = [s for s in spans.get_finished_spans() if s.name == "graph send"]
    assert dict(send.attributes or {}) == {
        "bridge.outbound_message_id": row_id,
        "bridge.error_code": "131026",
        "error.type": "PermanentError",
    }


def test_without_settings_telemetry_installs_nothing_and_adds_no_property() -> None:
    # A fresh interpreter: this process's providers were set by the tests above.
    script = textwrap.dedent(
        """
        import timeit
        from opentelemetry import trace
        from shared_code.config import Settings
        from shared_code.telemetry import configure_telemetry, consuming, trace_properties

        settings = Settings.from_environment({
            "WHATSAPP_ACCESS_TOKEN": "t", "WHATSAPP_PHONE_NUMBER_ID": "1",
            "WHATSAPP_WEBHOOK_VERIFY_TOKEN": "v", "WHATSAPP_APP_SECRET": "s",
            "DATABASE_URL": "postgresql://x@h/d", "BUS_BACKEND": "local",
        })
        assert not settings.telemetry.enabled
        assert configure_telemetry(settings.telemetry) is False
        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
        with consuming("process event", {}, queue="q"):
            assert trace_properties() == {}

        def hop():
            with consuming("process event", {"kind": "message"}, queue="q"):
                trace_properties()

        per_hop = min(timeit.repeat(hop, number=2000, repeat=3)) / 2000
        print(per_hop)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # A few microseconds per hop: nothing next to a database round trip.
    assert float(result.stdout.strip()) < 100e-6
