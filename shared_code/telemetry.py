"""OpenTelemetry for the bridge: one trace per user message, and the counters that matter.

A message's trace starts at the webhook and follows it over the bus: the W3C trace context
(``traceparent``, ``tracestate``) travels in each bus message's application properties, and the
queue triggers continue it (:func:`consuming`). Hops: webhook receive → process event → agent
call → send message → Graph send; a re-queued send stays in the same trace.

Exporters (:func:`configure_telemetry`, once per worker, at the first :func:`get_services`):
- ``APPLICATIONINSIGHTS_CONNECTION_STRING``: Azure Monitor (traces, logs, metrics), ingesting
  with the user-assigned identity when ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` says
  ``Authorization=AAD`` (local auth is off on the deployed resource);
- ``OTEL_EXPORTER_OTLP_ENDPOINT``: an OTLP/HTTP collector (traces and metrics);
- ``OTEL_TRACES_CONSOLE=true``: spans printed to stdout.
With none of them the API's no-op providers stay in place: a span costs a few attribute lookups
and no bus message gains a property.

Privacy: span attributes hold row ids, queue names, message kinds and error codes, never a
phone number, wamid or text. Exceptions are not recorded on spans (their messages may quote a
user's text): a failed span carries the exception's class only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = [
    "TRACE_PROPERTY_NAMES",
    "TelemetrySettings",
    "agent_call",
    "configure_telemetry",
    "consuming",
    "graph_send",
    "record_rate_limit_wait",
    "record_webhook",
    "trace_properties",
    "tracer",
    "webhook_receive",
]

logger = logging.getLogger(__name__)

INSTRUMENTATION_NAME: Final = "whatsapp_bridge"
TRACE_PROPERTY_NAMES: Final = ("traceparent", "tracestate")


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    connection_string: str | None = None
    authentication_string: str | None = None
    # The user-assigned identity's client id (AZURE_CLIENT_ID), when the authentication string
    # names none.
    client_id: str | None = None
    otlp_endpoint: str | None = None
    console: bool = False
    service_name: str = "whatsapp-bridge"

    @property
    def enabled(self) -> bool:
        return bool(self.connection_string or self.otlp_endpoint or self.console)


# Taken from the global providers lazily (the API's proxies): instruments and the tracer made at
# import start recording once configure_telemetry installs real providers, and are no-ops before.
tracer = trace.get_tracer(INSTRUMENTATION_NAME)
_meter = metrics.get_meter(INSTRUMENTATION_NAME)

webhooks_received = _meter.create_counter(
    "bridge.webhooks.received", unit="{webhook}", description="Webhook POSTs from Meta"
)
webhooks_rejected = _meter.create_counter(
    "bridge.webhooks.rejected", unit="{webhook}", description="Webhook POSTs refused, by reason"
)
messages_sent = _meter.create_counter(
    "bridge.messages.sent", unit="{message}", description="Messages Graph accepted"
)
messages_failed = _meter.create_counter(
    "bridge.messages.failed",
    unit="{message}",
    description="Graph send attempts that failed, by error code",
)
rate_limit_waits = _meter.create_counter(
    "bridge.rate_limit.waits",
    unit="{wait}",
    description="Sends held back by a rate limit (paced in the worker or re-queued)",
)
queue_latency = _meter.create_histogram(
    "bridge.queue.latency", unit="s", description="From enqueue (or schedule) to processing"
)
agent_latency = _meter.create_histogram(
    "bridge.agent.latency", unit="s", description="How long an agent took to answer"
)

_configured = False


def configure_telemetry(settings: TelemetrySettings) -> bool:
    """Install the exporters the settings name; True when telemetry is on. Idempotent: the
    global providers can be set once per process, later calls change nothing."""
    global _configured
    if _configured or not settings.enabled:
        return _configured
    if settings.connection_string:
        _configure_azure_monitor(settings)
    else:
        _configure_local(settings)
    _configured = True
    logger.info(
        "telemetry on: %s",
        "Azure Monitor"
        if settings.connection_string
        else ", ".join(
            name
            for name, on in (("OTLP", settings.otlp_endpoint), ("console", settings.console))
            if on
        ),
    )
    return True


def _configure_azure_monitor(settings: TelemetrySettings) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    configure_azure_monitor(
        connection_string=settings.connection_string,
        credential=_ingestion_credential(settings),
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
        # Only what the app uses; the web frameworks' instrumentations would import for nothing.
        instrumentation_options={
            name: {"enabled": False} for name in ("django", "fastapi", "flask", "psycopg2")
        },
    )


def _ingestion_credential(settings: TelemetrySettings) -> Any:
    """The identity's credential when ingestion is Entra-authenticated (sync: the exporter's
    thread asks for tokens), else None (a connection string with a usable key)."""
    parts = dict(
        part.split("=", 1)
        for part in (settings.authentication_string or "").split(";")
        if "=" in part
    )
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    client_id = parts.get("ClientId") or settings.client_id
    if client_id:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _configure_local(settings: TelemetrySettings) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create({SERVICE_NAME: settings.service_name})
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    if settings.console:
        tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = settings.otlp_endpoint.rstrip("/")
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
        )
        readers.append(
            PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{base}/v1/metrics"))
        )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))


# --- propagation over the bus ---------------------------------------------------------------


def current_traceparent() -> str | None:
    """The current span's W3C traceparent, stored with an outbound row (None outside a trace)."""
    return trace_properties().get("traceparent")


@contextlib.contextmanager
def status_applied(traceparent: str | None, status: str, error_code: int | None) -> Iterator[None]:
    """A delivery status applied to an outbound message, in the trace that sent the message."""
    if traceparent is None:
        yield
        return
    parent = propagate.extract({"traceparent": traceparent})
    attributes: dict[str, str | int] = {"bridge.status": status}
    if error_code is not None:
        attributes["bridge.error_code"] = error_code
    with _span("message status", context=parent, kind=SpanKind.CONSUMER, attributes=attributes):
        yield


def trace_properties() -> dict[str, str]:
    """The current trace context as bus application properties (empty when nothing records)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def consuming(
    name: str,
    application_properties: Mapping[str, object] | None,
    *,
    queue: str,
    enqueued_time: datetime | None = None,
    scheduled_enqueue_time: datetime | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Span]:
    """A span for handling one bus message, continuing the trace its properties carry; records
    the queue latency (from when the message became due)."""
    properties = application_properties or {}
    carrier = {key: str(properties[key]) for key in TRACE_PROPERTY_NAMES if key in properties}
    parent = propagate.extract(carrier) if carrier else None
    due = max((_aware(t) for t in (enqueued_time, scheduled_enqueue_time) if t), default=None)
    if due is not None:
        waited = (datetime.now(UTC) - due).total_seconds()
        queue_latency.record(max(waited, 0.0), {"queue": queue})
    with _span(
        name,
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.destination.name": queue, **(attributes or {})},
    ) as span:
        yield span


# --- the hops ---------------------------------------------------------------------------------


@contextlib.contextmanager
def webhook_receive() -> Iterator[Span]:
    with _span("webhook receive", kind=SpanKind.SERVER, attributes={}) as span:
        yield span


def record_webhook(rejected_because: str | None = None) -> None:
    webhooks_received.add(1)
    if rejected_because is not None:
        webhooks_rejected.add(1, {"reason": rejected_because})


@contextlib.contextmanager
def agent_call(agent_name: str, conversation_id: int) -> Iterator[Span]:
    started = time.perf_counter()
    try:
        with _span(
            "agent call",
            kind=SpanKind.CLIENT,
            attributes={"bridge.agent": agent_name, "bridge.conversation_id": conversation_id},
        ) as span:
            yield span
    finally:
        agent_latency.record(time.perf_counter() - started, {"agent": agent_name})


@contextlib.contextmanager
def graph_send(outbound_message_id: int) -> Iterator[Span]:
    """The Graph send of one outbound row: counts it sent, or failed with Meta's error code
    (``transport`` when no answer came)."""
    with _span(
        "graph send",
        kind=SpanKind.CLIENT,
        attributes={"bridge.outbound_message_id": outbound_message_id},
    ) as span:
        try:
            yield span
        except Exception as error:
            code = getattr(error, "code", None)
            error_code = str(code) if code is not None else "transport"
            span.set_attribute("bridge.error_code", error_code)
            messages_failed.add(1, {"error.code": error_code})
            raise
        messages_sent.add(1)


def record_rate_limit_wait(limit: str | None, action: str) -> None:
    """``action``: ``paced`` (waited in the worker) or ``requeued`` (scheduled for later)."""
    rate_limit_waits.add(1, {"limit": limit or "unknown", "action": action})


@contextlib.contextmanager
def _span(
    name: str,
    *,
    kind: SpanKind,
    attributes: Mapping[str, str | int],
    context: Any = None,
) -> Iterator[Span]:
    # record_exception off: an exception's message may quote the user's text; its class is safe.
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.set_attribute("error.type", type(error).__name__)
            raise


def _aware(value: datetime) -> datetime:
    # The Functions worker hands out naive UTC datetimes.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
