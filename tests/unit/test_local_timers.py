"""NCRONTAB schedules: field order for croniter and the next occurrences they give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from local.timers import (
    CronSchedule,
    IntervalSchedule,
    ScheduleError,
    ncrontab_to_croniter,
    parse_schedule,
)

START = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("ncrontab", "croniter"),
    [
        ("0 */5 * * * *", "*/5 * * * * 0"),
        ("*/10 * * * * *", "* * * * * */10"),
        ("0 30 9 * * 1-5", "30 9 * * 1-5 0"),
        ("  0  0  *  * * Sun ", "0 * * * Sun 0"),
        ("*/5 * * * *", "*/5 * * * *"),  # five fields: no seconds
    ],
)
def test_seconds_move_last(ncrontab: str, croniter: str) -> None:
    assert ncrontab_to_croniter(ncrontab) == croniter


@pytest.mark.parametrize("expression", ["* * * *", "0 1 2 3 4 5 6", ""])
def test_wrong_field_count(expression: str) -> None:
    with pytest.raises(ScheduleError):
        ncrontab_to_croniter(expression)


def test_every_five_minutes() -> None:
    schedule = CronSchedule("0 */5 * * * *")
    first = schedule.next_after(START)
    assert first == START + timedelta(minutes=5)
    assert schedule.next_after(first) == START + timedelta(minutes=10)


def test_every_ten_seconds() -> None:
    assert CronSchedule("*/10 * * * * *").next_after(START) == START + timedelta(seconds=10)


def test_weekdays_at_half_past_nine() -> None:
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    assert CronSchedule("0 30 9 * * 1-5").next_after(saturday) == datetime(
        2026, 3, 9, 9, 30, tzinfo=UTC
    )


def test_day_and_weekday_must_both_match_like_ncrontab() -> None:
    # The 13th that is a Friday (2026-03-13), not every 13th or every Friday.
    following = CronSchedule("0 0 0 13 * 5").next_after(START)
    assert following == datetime(2026, 3, 13, tzinfo=UTC)
    assert CronSchedule("0 0 0 13 * 5").next_after(following) == datetime(2026, 11, 13, tzinfo=UTC)


def test_time_zone() -> None:
    schedule = CronSchedule("0 0 9 * * *", ZoneInfo("Europe/Lisbon"))
    summer = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert schedule.next_after(summer) == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def test_invalid_expression() -> None:
    with pytest.raises(ScheduleError):
        CronSchedule("0 99 * * * *")


def test_timespan_schedule_is_an_interval() -> None:
    schedule = parse_schedule("00:05:00")
    assert schedule == IntervalSchedule(timedelta(minutes=5))
    assert schedule.next_after(START) == START + timedelta(minutes=5)
    with pytest.raises(ScheduleError):
        parse_schedule("00:00:00")


def test_parse_schedule_reads_ncrontab() -> None:
    assert isinstance(parse_schedule("0 */5 * * * *"), CronSchedule)
