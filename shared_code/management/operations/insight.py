"""How the integration is doing: its health now, and its traffic over a period."""

from __future__ import annotations

from typing import Any

from shared_code.management import analytics, health
from shared_code.management.api import Call, Reply
from shared_code.management.auth import Access
from shared_code.management.registry import MANAGEMENT_ROUTE_PREFIX, registry

PREFIX = MANAGEMENT_ROUTE_PREFIX


@registry.operation(
    method="GET",
    route=f"{PREFIX}/status",
    summary="Integration status",
    tag="status",
    access=Access.READ,
    responses={200: health.StatusReport, 503: health.StatusReport},
)
async def get_status(call: Call[Any, Any, None]) -> Reply:
    """Settings present (names only), database and schema version, bus and queue depths, access
    token validity, rate-limit usage, last webhook, error rates of the last hour. 503 with the
    same report when a check fails (its name is in `failing`)."""
    report = await health.integration_status(call.services)
    return Reply(200 if report.healthy else 503, report)


@registry.operation(
    method="GET",
    route=f"{PREFIX}/analytics",
    summary="Traffic and delivery figures over a period",
    tag="status",
    access=Access.READ,
    query_model=analytics.AnalyticsQuery,
    responses={200: analytics.AnalyticsReport},
)
async def get_analytics(
    call: Call[Any, analytics.AnalyticsQuery, None],
) -> analytics.AnalyticsReport:
    """Volumes per day and direction, median and p90 first-response time, the sent → delivered
    → read → failed funnel, top error codes, active conversations and opt-outs."""
    query = call.query
    return await analytics.analytics(
        call.services.pool, query.from_, query.to, query.phone_number_id
    )
