"""``GET analytics``: what happened between two instants, computed from the messages themselves.

Definitions (every time is the bridge's own: ``created_at``, when it stored the row; days are UTC
days, whatever the database's or the caller's time zone):

- **volumes**: messages stored in ``[from, to)`` per UTC day and direction.
- **funnel**: the outbound messages stored in ``[from, to)``, by the furthest state each reached
  (statuses arrive in any order, the row keeps the furthest): ``sent`` = accepted by Meta (it
  got ``sent_at``, or a delivered/read status proves it), ``delivered`` = delivered or read,
  ``read`` = read, ``failed`` = failed (refused at send time or reported failed later, never
  delivered), ``pending`` = not sent yet. So sent ≥ delivered ≥ read; failed is apart.
- **top_errors**: error codes of the failed outbound messages of the funnel, most frequent first.
- **first_response**: per *conversation opened in the range*. A conversation is one exchange: it
  is opened by a message and closed after an idle time, and the next message opens a new one. For
  each conversation created in ``[from, to)`` with an inbound message, the time from its first
  inbound message to the first outbound message after it (a reply stored after ``to`` counts).
  ``median`` and ``p90`` are over the answered ones (linear interpolation between the two
  nearest values); ``unanswered`` have no outbound message after their first inbound one.
- **active_conversations**: conversations with messages during the range: created before ``to``
  and with their last message at or after ``from``.
- **opt_outs**: contacts whose ``opted_out_at`` is in the range (contacts belong to no business
  number, so this one ignores ``phone_number_id``).

Speed (bench/management, 10 M messages over 60 days): the live queries over 30 days took 1.0 to
2.1 s (an index-only scan of 4.9 M index entries alone takes 0.7 s here), so whole UTC days that
ended at least :data:`SEAL_AFTER` ago come from ``whatsapp_analytics_days``: one row per day and
business number with that day's message groups and response times, written by the first call
that needs the day and rewritten by :func:`refresh_rollup` (a daily timer) for the statuses and
replies that arrive later. The rest of the range (its partial first and last days, the recent
days) is computed live: an index-only range scan of ``whatsapp_messages_analytics_idx``, and two
index probes per conversation opened. A sealed day can lag reality by what changed since it was
written (a read receipt two days late) until the next refresh.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection, Pool
from shared_code.management.problems import InvalidRequest

__all__ = [
    "MAX_RANGE_DAYS",
    "AnalyticsQuery",
    "AnalyticsReport",
    "DailyVolume",
    "ErrorCount",
    "FirstResponse",
    "Funnel",
    "analytics",
    "check_range",
    "refresh_rollup",
]

MAX_RANGE_DAYS = 366
TOP_ERRORS = 10


class AnalyticsQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The query string of ``GET analytics``."""

    from_: Annotated[
        datetime,
        msgspec.Meta(description="Start of the range, inclusive (RFC 3339; UTC when no offset)."),
    ] = msgspec.field(name="from")
    to: Annotated[
        datetime,
        msgspec.Meta(
            description=f"End of the range, exclusive; at most {MAX_RANGE_DAYS} days after from."
        ),
    ]
    phone_number_id: (
        Annotated[
            str,
            msgspec.Meta(
                description="Only this business number's messages and conversations.",
                min_length=1,
                max_length=64,
                pattern=r"^[0-9]+$",
            ),
        ]
        | None
    ) = None


class DailyVolume(msgspec.Struct, kw_only=True):
    day: Annotated[date, msgspec.Meta(description="UTC day.")]
    inbound: int
    outbound: int


class Funnel(msgspec.Struct, kw_only=True):
    """Outbound messages stored in the range by the furthest state they reached."""

    outbound: Annotated[int, msgspec.Meta(description="All outbound messages.")]
    sent: Annotated[int, msgspec.Meta(description="Accepted by Meta.")]
    delivered: Annotated[int, msgspec.Meta(description="Delivered or read.")]
    read: int
    failed: int
    pending: Annotated[int, msgspec.Meta(description="Not sent yet.")]


class ErrorCount(msgspec.Struct, kw_only=True):
    code: Annotated[int, msgspec.Meta(description="Meta's error code.")]
    count: int


class FirstResponse(msgspec.Struct, kw_only=True):
    """From a conversation's first inbound message to the first outbound one after it."""

    conversations: Annotated[
        int, msgspec.Meta(description="Conversations opened in the range by an inbound message.")
    ]
    answered: int
    unanswered: int
    median_seconds: float | None
    p90_seconds: float | None


class AnalyticsReport(msgspec.Struct, kw_only=True):
    from_: datetime = msgspec.field(name="from")
    to: datetime
    phone_number_id: str | None
    inbound: Annotated[int, msgspec.Meta(description="Inbound messages in the range.")]
    outbound: Annotated[int, msgspec.Meta(description="Outbound messages in the range.")]
    volumes: Annotated[
        list[DailyVolume], msgspec.Meta(description="Per UTC day with messages, oldest first.")
    ]
    funnel: Funnel
    top_errors: Annotated[
        list[ErrorCount], msgspec.Meta(description=f"Up to {TOP_ERRORS}, most frequent first.")
    ]
    first_response: FirstResponse
    active_conversations: int
    opt_outs: int


# One pass over a range: a few hundred groups at most (days x numbers x directions x states x
# codes). "AT TIME ZONE 'UTC'" makes the day a UTC day whatever the session's TimeZone.
_MESSAGE_GROUPS = """
SELECT (created_at AT TIME ZONE 'UTC')::date, phone_number_id, direction, status, error_code,
       sent_at IS NOT NULL, count(*)
FROM whatsapp_messages
WHERE created_at >= %(from)s AND created_at < %(to)s
  AND (%(number)s::text IS NULL OR phone_number_id = %(number)s::text)
GROUP BY 1, 2, 3, 4, 5, 6
"""

# Two probes of whatsapp_messages_conversation_id_idx per conversation opened in the range.
_FIRST_RESPONSES = """
SELECT (c.created_at AT TIME ZONE 'UTC')::date, c.phone_number_id, count(*),
       coalesce(array_agg(extract(epoch FROM reply.created_at - first_inbound.created_at)::real)
                FILTER (WHERE reply.created_at IS NOT NULL), '{}')
FROM whatsapp_conversations c
CROSS JOIN LATERAL (
    SELECT m.id, m.created_at FROM whatsapp_messages m
    WHERE m.conversation_id = c.id AND m.direction = 'inbound'
    ORDER BY m.id LIMIT 1
) first_inbound
LEFT JOIN LATERAL (
    SELECT r.created_at FROM whatsapp_messages r
    WHERE r.conversation_id = c.id AND r.id > first_inbound.id AND r.direction = 'outbound'
    ORDER BY r.id LIMIT 1
) reply ON true
WHERE c.created_at >= %(from)s AND c.created_at < %(to)s
  AND (%(number)s::text IS NULL OR c.phone_number_id = %(number)s::text)
GROUP BY 1, 2
"""

_ACTIVE_CONVERSATIONS = """
SELECT count(*) FROM whatsapp_conversations
WHERE last_message_at >= %(from)s AND created_at < %(to)s
  AND (%(number)s::text IS NULL OR phone_number_id = %(number)s::text)
"""

_OPT_OUTS = """
SELECT count(*) FROM whatsapp_contacts WHERE opted_out_at >= %(from)s AND opted_out_at < %(to)s
"""

_STORED_DAYS = """
SELECT day, phone_number_id, message_groups, conversations_opened, response_seconds
FROM whatsapp_analytics_days
WHERE day = ANY(%(days)s) AND phone_number_id IN ('*', %(key)s)
"""

_STORE_DAY = """
INSERT INTO whatsapp_analytics_days
    (day, phone_number_id, message_groups, conversations_opened, response_seconds)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (day, phone_number_id) DO {action}
"""
_STORE_IF_NEW = _STORE_DAY.format(action="NOTHING")
_STORE_OR_REPLACE = _STORE_DAY.format(
    action="UPDATE SET message_groups = excluded.message_groups, "
    "conversations_opened = excluded.conversations_opened, "
    "response_seconds = excluded.response_seconds, computed_at = now()"
)

_DELIVERED = frozenset({"delivered", "read", "played"})
_READ = frozenset({"read", "played"})
_ACCEPTED = frozenset({"sent", "delivered", "read", "played", "deleted"})
_NOT_SENT = frozenset({"pending", "accepted"})
# The rollup row of a day for all business numbers together.
_ALL_NUMBERS = "*"
ONE_DAY = timedelta(days=1)
# A whole UTC day is stored once it ended this long ago: most statuses and first replies of its
# messages have arrived by then (the customer-service window is 24 h).
SEAL_AFTER = timedelta(days=1)
# How far back refresh_rollup() rewrites days, for statuses that came later still.
REFRESH_DAYS = 7

# (direction, status, error_code, accepted, count)
_Group = tuple[str, str, int | None, bool, int]


@dataclass(slots=True)
class _Figures:
    """What the report is made of, for one day and number, or for a live part of the range."""

    groups: list[tuple[date, _Group]] = field(default_factory=list)
    opened: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, other: _Figures) -> None:
        self.groups.extend(other.groups)
        self.opened += other.opened
        self.seconds.extend(other.seconds)


def check_range(from_: datetime, to: datetime) -> tuple[datetime, datetime]:
    """Both instants as aware UTC datetimes, or :class:`InvalidRequest`. Naive means UTC."""
    start, end = _aware(from_), _aware(to)
    if start >= end:
        raise InvalidRequest("from must be before to", code="invalid_range")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise InvalidRequest(
            f"the range may span at most {MAX_RANGE_DAYS} days", code="range_too_long"
        )
    return start, end


async def analytics(
    pool: Pool,
    from_: datetime,
    to: datetime,
    phone_number_id: str | None = None,
    *,
    now: datetime | None = None,
) -> AnalyticsReport:
    """The report for ``[from_, to)``; ``now`` (for tests) decides which days may be stored."""
    start, end = check_range(from_, to)
    sealable = _whole_days(start, end, (now or datetime.now(UTC)) - SEAL_AFTER)
    live_parts = _live_parts(start, end, sealable)
    params: dict[str, object] = {"from": start, "to": end, "number": phone_number_id}
    sealed, live, active, opt_outs = await asyncio.gather(
        _sealed_figures(pool, sealable, phone_number_id),
        _live_figures(pool, live_parts, phone_number_id),
        _rows(pool, _ACTIVE_CONVERSATIONS, params),
        _rows(pool, _OPT_OUTS, params),
    )
    figures = _Figures()
    figures.add(sealed)
    figures.add(live)
    report = _summarize(figures.groups)
    seconds = sorted(figures.seconds)
    return AnalyticsReport(
        from_=start,
        to=end,
        phone_number_id=phone_number_id,
        inbound=report.inbound,
        outbound=report.outbound,
        volumes=report.volumes,
        funnel=report.funnel,
        top_errors=report.top_errors,
        first_response=FirstResponse(
            conversations=figures.opened,
            answered=len(seconds),
            unanswered=figures.opened - len(seconds),
            median_seconds=_percentile(seconds, 0.5),
            p90_seconds=_percentile(seconds, 0.9),
        ),
        active_conversations=int(active[0][0]),
        opt_outs=int(opt_outs[0][0]),
    )


async def refresh_rollup(
    pool: Pool, *, days: int = REFRESH_DAYS, now: datetime | None = None
) -> int:
    """Rewrite the stored days of the last ``days`` days (a daily timer calls this, so statuses
    and replies that arrived after a day was stored count too); returns the days written."""
    latest_end = (now or datetime.now(UTC)) - SEAL_AFTER
    first = _day_start(latest_end.date() - timedelta(days=days))
    sealable = _whole_days(first, latest_end, latest_end)
    async with pool.connection() as conn:
        await _compute_and_store(conn, sealable, replace=True)
    return len(sealable)


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _whole_days(start: datetime, end: datetime, latest_end: datetime) -> list[date]:
    """UTC days entirely inside [start, end) that ended by ``latest_end``."""
    first = start.date() if start == _day_start(start.date()) else start.date() + ONE_DAY
    days = []
    day = first
    while _day_start(day) + ONE_DAY <= min(end, latest_end):
        days.append(day)
        day += ONE_DAY
    return days


def _live_parts(
    start: datetime, end: datetime, sealable: list[date]
) -> list[tuple[datetime, datetime]]:
    if not sealable:
        return [(start, end)]
    parts = [(start, _day_start(sealable[0])), (_day_start(sealable[-1]) + ONE_DAY, end)]
    return [(a, b) for a, b in parts if a < b]


async def _live_figures(
    pool: Pool, parts: list[tuple[datetime, datetime]], number: str | None
) -> _Figures:
    figures = _Figures()
    for part_start, part_end in parts:
        computed = await _compute(pool, part_start, part_end, number)
        for per_number in computed.values():
            figures.add(per_number)
    return figures


async def _compute(
    pool: Pool, start: datetime, end: datetime, number: str | None
) -> dict[tuple[date, str], _Figures]:
    """The figures of [start, end) per (UTC day, business number)."""
    params: dict[str, object] = {"from": start, "to": end, "number": number}
    groups, responses = await asyncio.gather(
        _rows(pool, _MESSAGE_GROUPS, params), _rows(pool, _FIRST_RESPONSES, params)
    )
    figures: dict[tuple[date, str], _Figures] = {}
    for day, phone, direction, status, code, accepted, count in groups:
        entry = figures.setdefault((day, phone), _Figures())
        entry.groups.append((day, (direction, status, code, bool(accepted), int(count))))
    for day, phone, opened, seconds in responses:
        entry = figures.setdefault((day, phone), _Figures())
        entry.opened += int(opened)
        entry.seconds.extend(float(value) for value in seconds)
    return figures


async def _sealed_figures(pool: Pool, days: list[date], number: str | None) -> _Figures:
    figures = _Figures()
    if not days:
        return figures
    key = number if number is not None else _ALL_NUMBERS
    async with pool.connection() as conn:
        stored = await _read_days(conn, days, key)
        missing = [day for day in days if (day, _ALL_NUMBERS) not in stored]
        if missing:
            await _compute_and_store(conn, missing, replace=False)
            stored = await _read_days(conn, days, key)
    for (_, row_key), day_figures in stored.items():
        if row_key == key:
            figures.add(day_figures)
    return figures


async def _read_days(
    conn: Connection, days: list[date], key: str
) -> dict[tuple[date, str], _Figures]:
    cursor = await conn.execute(_STORED_DAYS, {"days": days, "key": key})
    stored: dict[tuple[date, str], _Figures] = {}
    for day, phone, groups, opened, seconds in await cursor.fetchall():
        stored[(day, phone)] = _Figures(
            groups=[(day, (g[0], g[1], g[2], bool(g[3]), int(g[4]))) for g in groups],
            opened=int(opened),
            seconds=[float(value) for value in seconds],
        )
    return stored


async def _compute_and_store(conn: Connection, days: list[date], *, replace: bool) -> None:
    """Compute whole days (contiguous runs in one pass each) and store a row per day and number
    plus the day's all-numbers row."""
    statement = _STORE_OR_REPLACE if replace else _STORE_IF_NEW
    for run in _runs(days):
        start, end = _day_start(run[0]), _day_start(run[-1]) + ONE_DAY
        params: dict[str, object] = {"from": start, "to": end, "number": None}
        figures: dict[tuple[date, str], _Figures] = {}
        for query in (_MESSAGE_GROUPS, _FIRST_RESPONSES):
            for row in await _fetch(conn, query, params):
                entry = figures.setdefault((row[0], row[1]), _Figures())
                if query is _MESSAGE_GROUPS:
                    _, _, direction, status, code, accepted, count = row
                    entry.groups.append((row[0], (direction, status, code, accepted, count)))
                else:
                    entry.opened += int(row[2])
                    entry.seconds.extend(float(value) for value in row[3])
        totals = {day: _Figures() for day in run}
        for (day, _), entry in figures.items():
            totals[day].add(entry)
        rows_to_store = [*figures.items(), *(((d, _ALL_NUMBERS), t) for d, t in totals.items())]
        async with conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(
                statement,
                [
                    (
                        day,
                        phone,
                        Jsonb([list(group) for _, group in entry.groups]),
                        entry.opened,
                        entry.seconds,
                    )
                    for (day, phone), entry in rows_to_store
                ],
            )


def _runs(days: list[date]) -> list[list[date]]:
    runs: list[list[date]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] + ONE_DAY == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _percentile(ordered: list[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks (PostgreSQL's percentile_cont)."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    value = ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
    return round(value, 3)


async def _rows(pool: Pool, query: str, params: dict[str, object]) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        return await _fetch(conn, query, params)


async def _fetch(conn: Connection, query: str, params: dict[str, object]) -> list[tuple[Any, ...]]:
    async with conn.transaction():
        # Compiling these scans (JIT) cost 80-250 ms, more than running them.
        await conn.execute("SET LOCAL jit = off")
        cursor = await conn.execute(query, params)
        return list(await cursor.fetchall())


class _MessageSummary(msgspec.Struct, kw_only=True):
    inbound: int
    outbound: int
    volumes: list[DailyVolume]
    funnel: Funnel
    top_errors: list[ErrorCount]


def _summarize(groups: list[tuple[date, _Group]]) -> _MessageSummary:
    days: dict[date, list[int]] = {}
    outbound = sent = delivered = read = failed = pending = 0
    errors: dict[int, int] = {}
    for day, (direction, status, error_code, accepted, count) in groups:
        per_day = days.setdefault(day, [0, 0])
        if direction == "inbound":
            per_day[0] += count
            continue
        per_day[1] += count
        outbound += count
        if status in _DELIVERED:
            delivered += count
        if status in _ACCEPTED or (accepted and status == "failed"):
            sent += count
        if status in _READ:
            read += count
        if status == "failed":
            failed += count
            if isinstance(error_code, int):
                errors[error_code] = errors.get(error_code, 0) + count
        if status in _NOT_SENT:
            pending += count
    top = sorted(errors.items(), key=lambda item: (-item[1], item[0]))[:TOP_ERRORS]
    return _MessageSummary(
        inbound=sum(counts[0] for counts in days.values()),
        outbound=outbound,
        volumes=[
            DailyVolume(day=day, inbound=counts[0], outbound=counts[1])
            for day, counts in sorted(days.items())
        ],
        funnel=Funnel(
            outbound=outbound,
            sent=sent,
            delivered=delivered,
            read=read,
            failed=failed,
            pending=pending,
        ),
        top_errors=[ErrorCount(code=code, count=count) for code, count in top],
    )


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
