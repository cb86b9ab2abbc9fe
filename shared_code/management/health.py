"""``GET status``: is the bridge able to work right now, and if not, what is broken.

Every check runs concurrently under its own deadline (:data:`CHECK_TIMEOUT_SECONDS`), so a dead
database, broker or Graph API makes its check fail in seconds instead of hanging the call. The
report is healthy when every check passes; ``failing`` names the ones that did not (the endpoint
answers 503 then). ``warnings`` are worth a look but do not make the bridge unhealthy (messages
in a dead-letter queue, a high failure rate).

Nothing here shows a setting's value, a token, a phone number of a user or a message text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, Literal, TypeVar

import msgspec

from shared_code.bus.port import QueueDepthsForbidden, QueueInspector
from shared_code.db.migrations import APP_MIGRATIONS, read_migrations
from shared_code.ratelimit import LimitUsage
from shared_code.runtime import Services
from shared_code.whatsapp.errors import AuthError, GraphApiError

logger = logging.getLogger(__name__)

__all__ = [
    "CHECK_TIMEOUT_SECONDS",
    "TOKEN_CHECK_CACHE_SECONDS",
    "AccessTokenStatus",
    "BusStatus",
    "CheckName",
    "DatabaseStatus",
    "ErrorRates",
    "QueueStatus",
    "RateLimitStatus",
    "SettingPresence",
    "StatusReport",
    "WebhookActivity",
    "integration_status",
]

CHECK_TIMEOUT_SECONDS: Final = 3.0
TOKEN_CHECK_CACHE_SECONDS: Final = 60.0
ERROR_WINDOW_SECONDS: Final = 3600
# A failure rate above this (with at least _MIN_SAMPLE attempts) is a warning.
_HIGH_FAILURE_RATE: Final = 0.2
_MIN_SAMPLE: Final = 20

CheckName = Literal[
    "settings", "database", "bus", "access_token", "rate_limits", "webhooks", "error_rates"
]
T = TypeVar("T")


class SettingPresence(msgspec.Struct, kw_only=True):
    name: str
    set: bool
    required: bool


class MigrationSet(msgspec.Struct, kw_only=True):
    set_name: str
    applied: Annotated[
        str | None, msgspec.Meta(description="Latest applied migration, e.g. 0010_analytics.")
    ]
    expected: Annotated[str | None, msgspec.Meta(description="Latest migration of this code.")]


class DatabaseStatus(msgspec.Struct, kw_only=True):
    reachable: bool
    schema: list[MigrationSet] = msgspec.field(default_factory=list)


class QueueStatus(msgspec.Struct, kw_only=True):
    queue: str
    active: int
    scheduled: int
    dead_lettered: int


class BusStatus(msgspec.Struct, kw_only=True):
    backend: str
    reachable: bool
    # False when the identity may not read queue properties (Service Bus: no Manage right).
    depths_readable: bool = True
    queues: list[QueueStatus] = msgspec.field(default_factory=list)


class AccessTokenStatus(msgspec.Struct, kw_only=True):
    valid: Annotated[
        bool | None, msgspec.Meta(description="None when Graph could not be asked in time.")
    ]
    checked_at: datetime | None = None
    error_code: Annotated[int | None, msgspec.Meta(description="Meta's code, e.g. 190.")] = None


class LimitStatus(msgspec.Struct, kw_only=True):
    configured: float
    capacity: int
    used: float
    seconds_until_full: float


class RateLimitStatus(msgspec.Struct, kw_only=True):
    phone_number_id: str
    second: LimitStatus
    minute: LimitStatus
    day: LimitStatus
    pair_limited_recipients: int


class WebhookActivity(msgspec.Struct, kw_only=True):
    last_received_at: datetime | None
    seconds_since_last: float | None


class ErrorRates(msgspec.Struct, kw_only=True):
    """The last hour: outbound messages created in it, webhooks received in it."""

    window_seconds: int = ERROR_WINDOW_SECONDS
    outbound_attempted: Annotated[int, msgspec.Meta(description="Sent or failed.")]
    outbound_failed: int
    outbound_failure_rate: float | None
    event_failures: Annotated[int, msgspec.Meta(description="Events given up on.")]
    webhooks_received: int
    webhooks_invalid: int
    invalid_webhook_rate: float | None


class CheckResult(msgspec.Struct, kw_only=True):
    name: CheckName
    ok: bool
    detail: Annotated[str | None, msgspec.Meta(description="Why it failed; never a value.")]
    duration_ms: float


class StatusReport(msgspec.Struct, kw_only=True):
    healthy: bool
    failing: Annotated[list[CheckName], msgspec.Meta(description="Checks that failed.")]
    warnings: list[str]
    checked_at: datetime
    checks: list[CheckResult]
    settings: list[SettingPresence]
    database: DatabaseStatus
    bus: BusStatus | None
    access_token: AccessTokenStatus | None
    rate_limits: list[RateLimitStatus]
    webhooks: WebhookActivity | None
    error_rates: ErrorRates | None


class _CheckFailed(Exception):
    """A check's answer says "broken"; the message says why (no values)."""


# --- the checks ------------------------------------------------------------------------------


def _settings_presence(services: Services) -> list[SettingPresence]:
    s = services.settings
    management = s.management
    agents = s.agents
    entries: list[tuple[str, bool, bool]] = [
        ("WHATSAPP_ACCESS_TOKEN", bool(s.whatsapp_access_token.reveal()), True),
        ("WHATSAPP_PHONE_NUMBER_ID", bool(s.whatsapp_phone_number_id), True),
        ("WHATSAPP_WEBHOOK_VERIFY_TOKEN", bool(s.whatsapp_webhook_verify_token.reveal()), True),
        ("WHATSAPP_APP_SECRET", bool(s.whatsapp_app_secret.reveal()), True),
        ("WHATSAPP_BUSINESS_ACCOUNT_ID", s.whatsapp_business_account_id is not None, False),
        ("DATABASE_URL", bool(s.database_url.reveal()), True),
        ("KEY_VAULT_URL", s.key_vault_url is not None, False),
        ("MANAGEMENT_API_KEYS", bool(management.api_keys), False),
        ("MANAGEMENT_API_READ_KEYS", bool(management.read_keys), False),
        ("MANAGEMENT_ENTRA_TENANT_ID", management.entra_tenant_id is not None, False),
        ("OPENAI_API_KEY", agents.openai_api_key is not None, False),
        ("AGENT_HTTP_URL", agents.http_agent_url is not None, False),
        ("AGENT_HTTP_SECRET", agents.http_agent_secret is not None, False),
    ]
    if s.bus_backend == "azure":
        bus = s.service_bus
        entries.append(
            (
                "ServiceBusConnection__fullyQualifiedNamespace",
                bus.fully_qualified_namespace is not None,
                bus.connection_string is None,
            )
        )
        entries.append(
            ("ServiceBusConnection", bus.connection_string is not None, False),
        )
    return [SettingPresence(name=n, set=present, required=r) for n, present, r in entries]


async def _database(services: Services) -> DatabaseStatus:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT DISTINCT ON (set_name) set_name, version, name FROM schema_migrations "
            "ORDER BY set_name, version DESC"
        )
        rows = await cursor.fetchall()
    applied = {set_name: f"{version:04d}_{name}" for set_name, version, name in rows}
    expected = {"app": _latest(APP_MIGRATIONS)}
    if services.settings.bus_backend == "local":
        from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS

        expected["local_bus"] = _latest(LOCAL_BUS_MIGRATIONS)
    sets = [
        MigrationSet(set_name=name, applied=applied.get(name), expected=expected.get(name))
        for name in sorted(applied.keys() | expected.keys())
    ]
    status = DatabaseStatus(reachable=True, schema=sets)
    behind = [m.set_name for m in sets if m.expected is not None and m.applied != m.expected]
    if behind:
        raise _PartialFailure(status, f"schema not at this code's version: {', '.join(behind)}")
    return status


def _latest(folder: Path) -> str | None:
    migrations = read_migrations(folder)
    return f"{migrations[-1].version:04d}_{migrations[-1].name}" if migrations else None


async def _bus(services: Services) -> BusStatus:
    settings = services.settings
    bus = services.bus
    if not isinstance(bus, QueueInspector):
        return BusStatus(backend=settings.bus_backend, reachable=True)
    try:
        depths = await bus.queue_depths([settings.inbound_queue_name, settings.outbound_queue_name])
    except QueueDepthsForbidden:
        # Reachable (it answered) but not ours to count: a warning, not an outage.
        return BusStatus(backend=settings.bus_backend, reachable=True, depths_readable=False)
    return BusStatus(
        backend=settings.bus_backend,
        reachable=True,
        queues=[
            QueueStatus(
                queue=d.queue, active=d.active, scheduled=d.scheduled, dead_lettered=d.dead_lettered
            )
            for d in depths
        ],
    )


class _TokenCache:
    """Meta's verdict on the token, per Graph API, number and token, for a minute: dashboards poll
    ``GET status`` and each call would otherwise be a Graph request."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], tuple[float, AccessTokenStatus]] = {}

    def get(self, key: tuple[str, str, str]) -> AccessTokenStatus | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > TOKEN_CHECK_CACHE_SECONDS:
            return None
        return entry[1]

    def put(self, key: tuple[str, str, str], status: AccessTokenStatus) -> None:
        if len(self._entries) > 64:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), status)

    def clear(self) -> None:
        self._entries.clear()


token_cache: Final = _TokenCache()


async def _access_token(services: Services) -> AccessTokenStatus:
    settings = services.settings
    number = settings.whatsapp_phone_number_id
    # The token's digest (kept in memory only) in the key: a rotated token is checked at once.
    key = (
        settings.whatsapp_graph_base_url,
        number,
        hashlib.sha256(settings.whatsapp_access_token.reveal().encode()).hexdigest(),
    )
    cached = token_cache.get(key)
    if cached is None:
        try:
            await services.graph.phone_number_info(number)
            cached = AccessTokenStatus(valid=True, checked_at=datetime.now(UTC))
        except AuthError as error:
            cached = AccessTokenStatus(
                valid=False, checked_at=datetime.now(UTC), error_code=error.code
            )
        # Anything else (transport, 5xx) says nothing about the token: not cached, raised.
        token_cache.put(key, cached)
    if not cached.valid:
        raise _PartialFailure(cached, f"Meta refused the access token (code {cached.error_code})")
    return cached


async def _rate_limits(services: Services) -> list[RateLimitStatus]:
    settings = services.settings
    numbers = [settings.whatsapp_phone_number_id, *settings.rate_limits.per_number]
    usages = [await services.limiter.usage(number) for number in dict.fromkeys(numbers)]
    return [
        RateLimitStatus(
            phone_number_id=u.phone_number_id,
            second=_limit(u.second),
            minute=_limit(u.minute),
            day=_limit(u.day),
            pair_limited_recipients=u.pair_limited_recipients,
        )
        for u in usages
    ]


def _limit(usage: LimitUsage) -> LimitStatus:
    return LimitStatus(
        configured=usage.configured,
        capacity=usage.capacity,
        used=usage.used,
        seconds_until_full=usage.seconds_until_full,
    )


async def _webhooks(services: Services) -> WebhookActivity:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT max(received_at), extract(epoch FROM now() - max(received_at))::float8 "
            "FROM whatsapp_webhook_events"
        )
        row = await cursor.fetchone()
    last, since = row if row else (None, None)
    return WebhookActivity(last_received_at=last, seconds_since_last=since)


# Each count is a range scan of an index on its time column (the webhook statuses through
# whatsapp_webhook_events_status_received_idx).
_ERROR_RATES = """
SELECT
    (SELECT count(*) FILTER (WHERE sent_at IS NOT NULL OR status = 'failed')
     FROM whatsapp_messages
     WHERE created_at >= now() - make_interval(secs => %(window)s) AND direction = 'outbound'),
    (SELECT count(*) FILTER (WHERE status = 'failed')
     FROM whatsapp_messages
     WHERE created_at >= now() - make_interval(secs => %(window)s) AND direction = 'outbound'),
    (SELECT count(*) FROM whatsapp_event_failures
     WHERE last_failed_at >= now() - make_interval(secs => %(window)s)),
    (SELECT count(*) FROM whatsapp_webhook_events
     WHERE received_at >= now() - make_interval(secs => %(window)s)),
    (SELECT count(*) FROM whatsapp_webhook_events
     WHERE status = 'invalid' AND received_at >= now() - make_interval(secs => %(window)s))
"""


async def _error_rates(services: Services) -> ErrorRates:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(_ERROR_RATES, {"window": ERROR_WINDOW_SECONDS})
        row = await cursor.fetchone()
    attempted, failed, event_failures, received, invalid = (int(v) for v in (row or (0,) * 5))
    return ErrorRates(
        outbound_attempted=attempted,
        outbound_failed=failed,
        outbound_failure_rate=round(failed / attempted, 4) if attempted else None,
        event_failures=event_failures,
        webhooks_received=received,
        webhooks_invalid=invalid,
        invalid_webhook_rate=round(invalid / received, 4) if received else None,
    )


# --- running them --------------------------------------------------------------------------


class _PartialFailure(Exception):
    """A check that failed but still has a result worth showing."""

    def __init__(self, result: object, reason: str) -> None:
        super().__init__(reason)
        self.result = result


async def _run(
    name: CheckName, check: Callable[[], Awaitable[T]], check_seconds: float
) -> tuple[CheckResult, T | None]:
    started = time.perf_counter()
    result: T | None = None
    detail: str | None = None
    try:
        async with asyncio.timeout(check_seconds):
            result = await check()
    except _PartialFailure as failure:
        result = failure.result  # type: ignore[assignment]
        detail = str(failure)
    except TimeoutError:
        detail = f"no answer within {check_seconds:g} s"
    except GraphApiError as error:
        detail = f"Graph API: {type(error).__name__}"
    except Exception as error:
        # The class only: driver messages may quote a connection string's host or a query.
        detail = type(error).__name__
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    if detail is not None:
        logger.warning("status check %s failed: %s", name, detail)
    return CheckResult(name=name, ok=detail is None, detail=detail, duration_ms=elapsed), result


async def integration_status(
    services: Services, *, check_seconds: float = CHECK_TIMEOUT_SECONDS
) -> StatusReport:
    """Run every check concurrently, each bounded by ``check_seconds``."""
    settings = _settings_presence(services)

    async def settings_check() -> list[SettingPresence]:
        missing = [s.name for s in settings if s.required and not s.set]
        if missing:
            raise _PartialFailure(settings, "required settings not set: " + ", ".join(missing))
        return settings

    async with asyncio.TaskGroup() as group:
        settings_task = group.create_task(_run("settings", settings_check, check_seconds))
        database_task = group.create_task(
            _run("database", lambda: _database(services), check_seconds)
        )
        bus_task = group.create_task(_run("bus", lambda: _bus(services), check_seconds))
        token_task = group.create_task(
            _run("access_token", lambda: _access_token(services), check_seconds)
        )
        limits_task = group.create_task(
            _run("rate_limits", lambda: _rate_limits(services), check_seconds)
        )
        webhooks_task = group.create_task(
            _run("webhooks", lambda: _webhooks(services), check_seconds)
        )
        rates_task = group.create_task(
            _run("error_rates", lambda: _error_rates(services), check_seconds)
        )
    settings_result, _ = settings_task.result()
    database_result, database = database_task.result()
    bus_result, bus = bus_task.result()
    token_result, token = token_task.result()
    limits_result, limits = limits_task.result()
    webhooks_result, webhooks = webhooks_task.result()
    rates_result, rates = rates_task.result()
    checks = [
        settings_result,
        database_result,
        bus_result,
        token_result,
        limits_result,
        webhooks_result,
        rates_result,
    ]
    failing = [check.name for check in checks if not check.ok]
    if bus is None and not bus_result.ok:
        bus = BusStatus(backend=services.settings.bus_backend, reachable=False)
    return StatusReport(
        healthy=not failing,
        failing=failing,
        warnings=_warnings(bus, rates),
        checked_at=datetime.now(UTC),
        checks=checks,
        settings=settings,
        database=database or DatabaseStatus(reachable=False),
        bus=bus,
        access_token=token,
        rate_limits=limits or [],
        webhooks=webhooks,
        error_rates=rates,
    )


def _warnings(bus: BusStatus | None, rates: ErrorRates | None) -> list[str]:
    warnings = []
    if bus is not None and not bus.depths_readable:
        warnings.append("queue depths unknown: the identity may not read queue properties")
    for queue in bus.queues if bus else []:
        if queue.dead_lettered:
            warnings.append(f"queue {queue.queue}: {queue.dead_lettered} dead-lettered message(s)")
    if rates is not None:
        if (
            rates.outbound_failure_rate is not None
            and rates.outbound_attempted >= _MIN_SAMPLE
            and rates.outbound_failure_rate > _HIGH_FAILURE_RATE
        ):
            warnings.append(f"{rates.outbound_failure_rate:.0%} of outbound messages failed")
        if rates.event_failures:
            warnings.append(f"{rates.event_failures} event(s) given up on in the last hour")
        if (
            rates.invalid_webhook_rate is not None
            and rates.webhooks_received >= _MIN_SAMPLE
            and rates.invalid_webhook_rate > _HIGH_FAILURE_RATE
        ):
            warnings.append(f"{rates.invalid_webhook_rate:.0%} of webhooks were invalid")
    return warnings
