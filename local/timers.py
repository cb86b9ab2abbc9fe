"""Timer triggers: NCRONTAB (or TimeSpan) schedules run with croniter.

NCRONTAB has six fields, ``second minute hour day month day-of-week``; croniter wants the seconds
last, so :func:`ncrontab_to_croniter` moves them. A five-field expression (no seconds) is
accepted too. Like NCrontab, day-of-month and day-of-week must *both* match when both are
restricted. Times are UTC unless ``WEBSITE_TIME_ZONE`` names an IANA zone.

Each timer is a singleton, as in Azure: the next run starts only after the previous one ended;
occurrences missed meanwhile are not made up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from azure.functions.timer import TimerRequest
from croniter import croniter

from local.functions import FunctionSpec, Invoker, resolve_setting
from local.host_json import parse_timespan

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "ScheduleError",
    "TimerTrigger",
    "ncrontab_to_croniter",
    "parse_schedule",
    "timer_trigger_for",
]

logger = logging.getLogger(__name__)

# Woken later than this after the due time, the run is reported as past due.
_PAST_DUE_AFTER: Final = timedelta(seconds=1)


class ScheduleError(ValueError):
    """A schedule the dev host cannot read; the message names the expression."""


class Schedule(Protocol):
    def next_after(self, moment: datetime) -> datetime: ...

    def describe(self) -> str: ...


def ncrontab_to_croniter(expression: str) -> str:
    """``"sec min hour day month dow"`` -> croniter's ``"min hour day month dow sec"``."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(fields)
    if len(fields) != 6:
        raise ScheduleError(
            f"NCRONTAB needs 6 fields (second minute hour day month day-of-week): {expression!r}"
        )
    return " ".join([*fields[1:], fields[0]])


@dataclass(frozen=True, slots=True)
class CronSchedule:
    expression: str
    zone: tzinfo = UTC

    def __post_init__(self) -> None:
        converted = ncrontab_to_croniter(self.expression)
        if not croniter.is_valid(converted):
            raise ScheduleError(f"not a valid NCRONTAB expression: {self.expression!r}")

    def next_after(self, moment: datetime) -> datetime:
        start = moment.astimezone(self.zone)
        # day_or=False: NCrontab requires day-of-month and day-of-week to both match.
        cron = croniter(ncrontab_to_croniter(self.expression), start, day_or=False)
        following: datetime = cron.get_next(datetime)
        return following.astimezone(UTC)

    def describe(self) -> str:
        return self.expression


@dataclass(frozen=True, slots=True)
class IntervalSchedule:
    interval: timedelta

    def next_after(self, moment: datetime) -> datetime:
        return moment + self.interval

    def describe(self) -> str:
        return f"every {self.interval}"


def parse_schedule(text: str, zone: tzinfo = UTC) -> Schedule:
    """NCRONTAB (5 or 6 fields) or a TimeSpan interval such as ``"00:05:00"``."""
    if ":" in text and len(text.split()) == 1:
        try:
            interval = parse_timespan(text)
        except ValueError as error:
            raise ScheduleError(str(error)) from None
        if interval <= timedelta(0):
            raise ScheduleError(f"a TimeSpan schedule must be positive: {text!r}")
        return IntervalSchedule(interval)
    return CronSchedule(text.strip(), zone)


def schedule_zone() -> tzinfo:
    name = os.environ.get("WEBSITE_TIME_ZONE", "").strip()
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        logger.warning("WEBSITE_TIME_ZONE %r is not an IANA time zone; timers use UTC", name)
        return UTC


def timer_trigger_for(spec: FunctionSpec, invoker: Invoker) -> TimerTrigger:
    binding = spec.binding
    try:
        text = resolve_setting(str(binding.get("schedule", "")))
        schedule = parse_schedule(text, schedule_zone())
    except (LookupError, ScheduleError) as error:
        raise ScheduleError(f"function {spec.name}: {error}") from None
    return TimerTrigger(
        spec, schedule, invoker=invoker, run_on_startup=bool(binding.get("runOnStartup", False))
    )


class TimerTrigger:
    def __init__(
        self, spec: FunctionSpec, schedule: Schedule, *, invoker: Invoker, run_on_startup: bool
    ) -> None:
        self.spec = spec
        self.schedule = schedule
        self.run_on_startup = run_on_startup
        self._invoker = invoker
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._stopping = False
        self._lock = asyncio.Lock()
        self._manual_runs: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"timer-{self.spec.name}")

    async def stop(self, deadline: float) -> None:
        """Cancel the wait; a run in progress may finish until ``deadline`` (loop time)."""
        self._stopping = True
        for manual in self._manual_runs:
            manual.cancel()
        task = self._task
        if task is None or task.done():
            return
        if not self._running:
            task.cancel()
        _, pending = await asyncio.wait(
            [task], timeout=max(0.0, deadline - asyncio.get_running_loop().time())
        )
        if pending:
            logger.warning("timer function %s cut off at shutdown", self.spec.name)
            task.cancel()
            await asyncio.wait(pending)

    def run_now(self) -> None:
        """Run once now, as the Functions host's ``POST /admin/functions/{name}`` does; queued
        behind a run in progress (a timer function never runs twice at once)."""
        self._manual_runs.append(asyncio.create_task(self._run_manually()))

    async def _run_manually(self) -> None:
        async with self._lock:
            await self._run(datetime.now(UTC), None, past_due=False)

    async def _loop(self) -> None:
        last: datetime | None = None
        if self.run_on_startup:
            last = await self._run(datetime.now(UTC), last, past_due=False)
        while not self._stopping:
            due = self.schedule.next_after(datetime.now(UTC))
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            late = datetime.now(UTC) - due
            async with self._lock:
                last = await self._run(due, last, past_due=late > _PAST_DUE_AFTER)

    async def _run(self, due: datetime, last: datetime | None, *, past_due: bool) -> datetime:
        request = TimerRequest(
            past_due=past_due,
            schedule_status={
                "Last": (last or due).isoformat(),
                "Next": self.schedule.next_after(due).isoformat(),
                "LastUpdated": due.isoformat(),
            },
            schedule={"AdjustForDST": True},
        )
        self._running = True
        try:
            await self._invoker.invoke(self.spec, request)
        except Exception as error:
            # The schedule goes on, as the Functions host's does.
            logger.exception("timer function %s failed: %s", self.spec.name, type(error).__name__)
        finally:
            self._running = False
        return due
