"""Business hours: open or closed at an instant, and the closed period around it, in local time
across daylight-saving changes, holidays and overnight shifts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from shared_code.business_hours import (
    BusinessHours,
    ClosedPeriod,
    away_message_key,
    closed_period,
    is_open,
    schedule_problems,
)

PARIS = ZoneInfo("Europe/Paris")


def hours(weekly: dict[str, list[dict[str, str]]], **extra: object) -> BusinessHours:
    return msgspec.convert({"time_zone": "Europe/Paris", "weekly": weekly, **extra}, BusinessHours)


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


WEEKDAYS_NINE_TO_HALF_FIVE = {
    day: [{"open": "09:00", "close": "17:30"}]
    for day in ("monday", "tuesday", "wednesday", "thursday", "friday")
}
EVERY_DAY_NINE_TO_FIVE = {
    day: [{"open": "09:00", "close": "17:00"}]
    for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
}


def test_open_and_closed_on_an_ordinary_week() -> None:
    office = hours(WEEKDAYS_NINE_TO_HALF_FIVE)
    assert is_open(office, paris(2026, 6, 10, 9, 0))  # Wednesday, the opening minute
    assert is_open(office, paris(2026, 6, 10, 17, 29))
    assert not is_open(office, paris(2026, 6, 10, 17, 30))  # closing is exclusive
    assert not is_open(office, paris(2026, 6, 10, 8, 59))
    assert not is_open(office, paris(2026, 6, 13, 12, 0))  # Saturday


def test_the_weekend_is_one_closed_period_from_friday_closing_to_monday_opening() -> None:
    office = hours(WEEKDAYS_NINE_TO_HALF_FIVE)
    saturday = closed_period(office, paris(2026, 6, 13, 12, 0))
    sunday_night = closed_period(office, paris(2026, 6, 14, 23, 0))
    assert (
        saturday
        == sunday_night
        == ClosedPeriod(
            start=paris(2026, 6, 12, 17, 30).astimezone(UTC),
            end=paris(2026, 6, 15, 9, 0).astimezone(UTC),
        )
    )
    assert closed_period(office, paris(2026, 6, 15, 9, 0)) is None


def test_summer_time_begins_between_saturday_closing_and_sunday_opening() -> None:
    # Europe/Paris goes from UTC+1 to UTC+2 at 02:00 on Sunday 29 March 2026.
    shop = hours(EVERY_DAY_NINE_TO_FIVE)
    period = closed_period(shop, utc(2026, 3, 29, 3, 0))
    assert period == ClosedPeriod(start=utc(2026, 3, 28, 16, 0), end=utc(2026, 3, 29, 7, 0))
    # The same wall-clock hours, one hour earlier in UTC after the change.
    assert is_open(shop, utc(2026, 3, 28, 8, 0)) and not is_open(shop, utc(2026, 3, 28, 7, 59))
    assert is_open(shop, utc(2026, 3, 29, 7, 0)) and not is_open(shop, utc(2026, 3, 29, 6, 59))
    assert is_open(shop, utc(2026, 3, 29, 14, 59)) and not is_open(shop, utc(2026, 3, 29, 15, 0))


def test_summer_time_ends_on_the_last_sunday_of_october() -> None:
    # Back to UTC+1 at 03:00 local (01:00 UTC) on Sunday 25 October 2026: a 25-hour night.
    shop = hours(EVERY_DAY_NINE_TO_FIVE)
    period = closed_period(shop, paris(2026, 10, 25, 2, 30))
    assert period == ClosedPeriod(start=utc(2026, 10, 24, 15, 0), end=utc(2026, 10, 25, 8, 0))
    assert period.end is not None and period.start is not None
    assert period.end - period.start == timedelta(hours=17)  # 16 on the clock, plus the hour


def test_an_overnight_shift_runs_into_the_next_day_across_the_march_change() -> None:
    night = hours({"saturday": [{"open": "22:00", "close": "06:00"}]})
    # Saturday 22:00 UTC+1 to Sunday 06:00 UTC+2: seven real hours.
    assert not is_open(night, utc(2026, 3, 28, 20, 59))
    assert is_open(night, utc(2026, 3, 28, 21, 0))
    assert is_open(night, utc(2026, 3, 29, 3, 59))
    assert not is_open(night, utc(2026, 3, 29, 4, 0))
    period = closed_period(night, utc(2026, 3, 29, 12, 0))
    assert period == ClosedPeriod(start=utc(2026, 3, 29, 4, 0), end=utc(2026, 4, 4, 20, 0))


def test_a_holiday_closes_its_day_and_joins_the_periods_around_it() -> None:
    office = hours(WEEKDAYS_NINE_TO_HALF_FIVE, holidays=["2026-12-25"])  # a Friday
    christmas_noon = paris(2026, 12, 25, 12, 0)
    assert not is_open(office, christmas_noon)
    assert closed_period(office, christmas_noon) == ClosedPeriod(
        start=paris(2026, 12, 24, 17, 30).astimezone(UTC),
        end=paris(2026, 12, 28, 9, 0).astimezone(UTC),
    )
    assert is_open(office, paris(2026, 12, 24, 12, 0))


def test_an_overnight_shift_started_before_a_holiday_still_runs_into_it() -> None:
    night = hours({"thursday": [{"open": "22:00", "close": "02:00"}]}, holidays=["2026-12-25"])
    assert is_open(night, paris(2026, 12, 25, 1, 0))
    assert not is_open(night, paris(2026, 12, 25, 22, 30))


def test_midnight_closing_and_a_whole_day() -> None:
    late = hours(
        {
            "friday": [{"open": "18:00", "close": "24:00"}],
            "saturday": [{"open": "00:00", "close": "24:00"}],
        }
    )
    assert is_open(late, paris(2026, 6, 12, 23, 59))
    assert is_open(late, paris(2026, 6, 13, 0, 0))  # the intervals touch: no gap at midnight
    assert is_open(late, paris(2026, 6, 13, 23, 59))
    assert closed_period(late, paris(2026, 6, 14, 1, 0)) == ClosedPeriod(
        start=paris(2026, 6, 14, 0, 0).astimezone(UTC),
        end=paris(2026, 6, 19, 18, 0).astimezone(UTC),
    )


def test_overlapping_intervals_merge() -> None:
    split = hours(
        {"monday": [{"open": "09:00", "close": "12:00"}, {"open": "11:00", "close": "14:00"}]}
    )
    assert is_open(split, paris(2026, 6, 8, 12, 30))
    assert closed_period(split, paris(2026, 6, 8, 15, 0)) == ClosedPeriod(
        start=paris(2026, 6, 8, 14, 0).astimezone(UTC),
        end=paris(2026, 6, 15, 9, 0).astimezone(UTC),
    )


def test_a_schedule_without_opening_hours_is_one_endless_closed_period() -> None:
    never = hours({})
    period = closed_period(never, utc(2026, 6, 8, 12, 0))
    assert period == ClosedPeriod(start=None, end=None)
    assert away_message_key(7, period) == "away:7:always"


def test_the_away_message_key_names_the_conversation_and_the_period_start() -> None:
    office = hours(WEEKDAYS_NINE_TO_HALF_FIVE)
    first = closed_period(office, paris(2026, 6, 13, 10, 0))
    second = closed_period(office, paris(2026, 6, 14, 20, 0))
    next_night = closed_period(office, paris(2026, 6, 15, 20, 0))
    assert first is not None and second is not None and next_night is not None
    assert (
        away_message_key(42, first)
        == away_message_key(42, second)
        == "away:42:2026-06-12T15:30:00Z"
    )
    assert away_message_key(42, next_night) != away_message_key(42, first)
    assert away_message_key(43, first) != away_message_key(42, first)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(hours(WEEKDAYS_NINE_TO_HALF_FIVE), datetime(2026, 6, 8, 12, 0))


def test_schedule_problems_name_the_field() -> None:
    bad = msgspec.convert(
        {
            "time_zone": "Mars/Olympus_Mons",
            "weekly": {"monday": [{"open": "09:00", "close": "09:00"}]},
            "holidays": ["2026-12-25", "2026-12-25"],
        },
        BusinessHours,
    )
    assert schedule_problems(bad) == [
        "business_hours.time_zone: not an IANA time zone name",
        "business_hours.weekly.monday[0]: open and close are equal; use 00:00-24:00 for a whole day",
        "business_hours.holidays: a date is listed twice",
    ]
    assert schedule_problems(hours(WEEKDAYS_NINE_TO_HALF_FIVE)) == []


@pytest.mark.parametrize(
    "interval",
    [
        {"open": "9:00", "close": "17:00"},
        {"open": "24:00", "close": "17:00"},
        {"open": "09:00", "close": "24:01"},
        {"open": "09:00"},
    ],
)
def test_the_schema_refuses_malformed_times(interval: dict[str, str]) -> None:
    with pytest.raises(msgspec.ValidationError):
        hours({"monday": [interval]})


def test_holidays_are_dates() -> None:
    assert hours({}, holidays=["2026-01-01"]).holidays == [date(2026, 1, 1)]
    with pytest.raises(msgspec.ValidationError):
        hours({}, holidays=["tomorrow"])
