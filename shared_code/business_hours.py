"""Business hours, part of the messaging policy: when an agent configuration is "open".

A schedule is a time zone (IANA name), opening intervals per weekday in local wall-clock time, and
holidays (local dates). Outside the intervals the business is closed: the orchestrator sends the
configuration's away message once per *closed period* and the agent answers or stays silent as
``outside_hours`` says.

Rules, decided here once:

- An interval belongs to the local date it opens on. ``close`` earlier than ``open``
  means it ends on the next day (an overnight shift ``22:00``-``06:00``); ``24:00`` closes at
  midnight. ``00:00``-``24:00`` is the whole day. Intervals may overlap or touch: they merge.
- A holiday cancels the intervals that open on it. An overnight interval opened the evening before
  still runs into the holiday's morning.
- Local times become instants with :mod:`zoneinfo`. A time skipped by a daylight-saving change
  (02:30 on Europe/Paris' March night) means the instant the clock would show it if it had not
  jumped (03:30 summer time); a time that happens twice (02:30 in October) means its first
  occurrence. So intervals are as long on the clock as they look, except across the change itself.
- A *closed period* runs from the end of the last interval before an instant to the start of the
  next one; a bound is ``None`` when no interval exists that way within :data:`SEARCH_DAYS` (a
  schedule without any interval is one endless closed period).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

__all__ = [
    "SEARCH_DAYS",
    "WEEKDAYS",
    "BusinessHours",
    "ClosedPeriod",
    "OpeningInterval",
    "WeeklySchedule",
    "away_message_key",
    "closed_period",
    "is_open",
    "schedule_problems",
]

SEARCH_DAYS: Final = 400
"""How far before and after an instant the opening intervals are looked for: a year of holidays
and then some. Farther than this the business counts as closed without a bound."""

WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_OPEN_TIME = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="Local opening time, HH:MM (24-hour clock).",
        examples=["09:00"],
    ),
]
_CLOSE_TIME = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
        description=(
            "Local closing time, HH:MM; 24:00 is midnight at the end of the day. Earlier than "
            "`open` means the next day: 22:00-06:00 is an overnight shift."
        ),
        examples=["17:30"],
    ),
]


class OpeningInterval(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Open from ``open`` until ``close`` (exclusive), in the schedule's time zone."""

    open: _OPEN_TIME
    close: _CLOSE_TIME


_Intervals = Annotated[
    list[OpeningInterval],
    msgspec.Meta(max_length=8, description="Opening intervals that start on this weekday."),
]


class WeeklySchedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Opening intervals per weekday; a day left out or empty is closed."""

    monday: _Intervals = []
    tuesday: _Intervals = []
    wednesday: _Intervals = []
    thursday: _Intervals = []
    friday: _Intervals = []
    saturday: _Intervals = []
    sunday: _Intervals = []

    def on(self, day: date) -> list[OpeningInterval]:
        intervals: list[OpeningInterval] = getattr(self, WEEKDAYS[day.weekday()])
        return intervals


class BusinessHours(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """When an agent configuration is open, and what happens outside those hours."""

    time_zone: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=64,
            description="IANA time zone name the schedule and holidays are in.",
            examples=["Europe/Paris"],
        ),
    ]
    weekly: WeeklySchedule = msgspec.field(default_factory=WeeklySchedule)
    holidays: Annotated[
        list[date],
        msgspec.Meta(max_length=366, description="Local dates closed all day (YYYY-MM-DD)."),
    ] = []
    away_message: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=4096,
                description=(
                    "Sent once per closed period when a user writes outside business hours; "
                    "none when absent."
                ),
                examples=["We are closed now and will answer from 9:00."],
            ),
        ]
        | None
    ) = None
    outside_hours: Annotated[
        Literal["answer", "silent"],
        msgspec.Meta(
            description=(
                "What the agent does outside business hours (after the away message): "
                "answer as usual, or stay silent."
            )
        ),
    ] = "silent"


@dataclass(frozen=True, slots=True)
class ClosedPeriod:
    """From the last closing before an instant to the next opening after it (UTC; ``None``: no
    such time within :data:`SEARCH_DAYS`)."""

    start: datetime | None
    end: datetime | None


def schedule_problems(hours: BusinessHours, *, path: str = "business_hours") -> list[str]:
    """What the schema cannot say: an unknown time zone, an interval of no length."""
    problems: list[str] = []
    try:
        ZoneInfo(hours.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"{path}.time_zone: not an IANA time zone name")
    for weekday in WEEKDAYS:
        for index, interval in enumerate(getattr(hours.weekly, weekday)):
            if interval.open == interval.close:
                problems.append(
                    f"{path}.weekly.{weekday}[{index}]: open and close are equal; use "
                    "00:00-24:00 for a whole day"
                )
    if len(set(hours.holidays)) != len(hours.holidays):
        problems.append(f"{path}.holidays: a date is listed twice")
    return problems


def is_open(hours: BusinessHours, at: datetime) -> bool:
    """True when ``at`` (timezone-aware) falls in an opening interval."""
    instant = _utc(at)
    zone = ZoneInfo(hours.time_zone)
    today = instant.astimezone(zone).date()
    # An interval is at most 24 hours long, so only yesterday's and today's can hold the instant.
    return any(
        start <= instant < end
        for day in (today - timedelta(days=1), today)
        for start, end in _intervals_opening_on(hours, zone, day)
    )


def closed_period(hours: BusinessHours, at: datetime) -> ClosedPeriod | None:
    """The closed period holding ``at`` (timezone-aware), or ``None`` while open."""
    if is_open(hours, at):
        return None
    instant = _utc(at)
    zone = ZoneInfo(hours.time_zone)
    today = instant.astimezone(zone).date()
    return ClosedPeriod(
        _last_closing(hours, zone, today, instant), _next_opening(hours, zone, today, instant)
    )


def away_message_key(conversation_id: int, period: ClosedPeriod) -> str:
    """The away message's idempotency key: one per conversation and closed period."""
    start = "always" if period.start is None else period.start.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"away:{conversation_id}:{start}"


def _last_closing(
    hours: BusinessHours, zone: ZoneInfo, today: date, instant: datetime
) -> datetime | None:
    latest: datetime | None = None
    found_on: int | None = None
    for back in range(SEARCH_DAYS + 1):
        ends = [
            end
            for _, end in _intervals_opening_on(hours, zone, today - timedelta(days=back))
            if end <= instant
        ]
        if ends:
            latest = max(ends) if latest is None else max(latest, *ends)
            found_on = back if found_on is None else found_on
        # An interval opening two days before the latest one found ends before that one opens.
        if found_on is not None and back >= found_on + 2:
            break
    return latest


def _next_opening(
    hours: BusinessHours, zone: ZoneInfo, today: date, instant: datetime
) -> datetime | None:
    for ahead in range(SEARCH_DAYS + 1):
        starts = [
            start
            for start, _ in _intervals_opening_on(hours, zone, today + timedelta(days=ahead))
            if start > instant
        ]
        if starts:
            # Intervals open within their own date, so the first date with one holds the earliest.
            return min(starts)
    return None


def _intervals_opening_on(
    hours: BusinessHours, zone: ZoneInfo, day: date
) -> list[tuple[datetime, datetime]]:
    """The day's opening intervals as UTC instants (none on a holiday)."""
    if day in hours.holidays:
        return []
    intervals = []
    for interval in hours.weekly.on(day):
        opens = _parse(interval.open)
        # 24:00 is the next day's 00:00, like any close not later than the opening.
        closes = time(0, 0) if interval.close == "24:00" else _parse(interval.close)
        close_day = day if opens < closes else day + timedelta(days=1)
        intervals.append((_instant(day, opens, zone), _instant(close_day, closes, zone)))
    return intervals


def _parse(value: str) -> time:
    hour, minute = value.split(":")
    return time(int(hour), int(minute))


def _instant(day: date, clock: time, zone: ZoneInfo) -> datetime:
    # Comparing aware datetimes of one zone compares wall clocks (and ignores folds): in UTC,
    # comparisons and differences are the real ones.
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("business hours need a timezone-aware datetime")
    return at.astimezone(UTC)
