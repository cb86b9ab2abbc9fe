"""The parts of ``host.json`` the dev host honours, with the Functions host's defaults.

Keys are matched case-insensitively, as the Functions host does. Durations are .NET ``TimeSpan``
strings (``"00:00:05"``, ``"00:00:00.80"``, ``"1.02:00:00"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

__all__ = ["HostConfig", "HostConfigError", "parse_timespan"]

# [-][d.]hh:mm[:ss[.fffffff]]; a bare integer is a number of days, as TimeSpan.Parse reads it.
_TIMESPAN: Final = re.compile(
    r"^(?P<sign>-)?(?:(?P<days>\d+)\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{1,2})"
    r"(?::(?P<seconds>\d{1,2})(?:\.(?P<fraction>\d{1,7}))?)?$"
)
_DAYS_ONLY: Final = re.compile(r"^(?P<sign>-)?(?P<days>\d+)$")

# The Service Bus extension's session processor falls back to the client's try timeout (60 s).
_DEFAULT_SESSION_IDLE_TIMEOUT: Final = timedelta(seconds=60)


class HostConfigError(ValueError):
    """host.json holds a value the dev host cannot read; the message names the key."""


def parse_timespan(text: str) -> timedelta:
    """Read a .NET TimeSpan string; raises ValueError naming the text when malformed."""
    value = text.strip()
    match = _TIMESPAN.match(value)
    if match is not None:
        hours, minutes = int(match["hours"]), int(match["minutes"])
        seconds = int(match["seconds"] or 0)
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueError(f"not a TimeSpan (a field is out of range): {text!r}")
        fraction = match["fraction"]
        span = timedelta(
            days=int(match["days"] or 0),
            hours=hours,
            minutes=minutes,
            seconds=seconds,
            # Digits after the dot are a decimal fraction of a second: ".80" is 800 ms.
            microseconds=round(int(fraction) * 10 ** (6 - len(fraction))) if fraction else 0,
        )
        return -span if match["sign"] else span
    match = _DAYS_ONLY.match(value)
    if match is not None:
        span = timedelta(days=int(match["days"]))
        return -span if match["sign"] else span
    raise ValueError(f"not a TimeSpan ([d.]hh:mm[:ss[.fffffff]]): {text!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    route_prefix: str = "api"
    max_concurrent_sessions: int = 8
    max_concurrent_calls: int = 16
    session_idle_timeout: timedelta = _DEFAULT_SESSION_IDLE_TIMEOUT
    max_auto_lock_renewal_duration: timedelta = timedelta(minutes=5)
    auto_complete_messages: bool = True
    # None: no limit (functionTimeout "-1" or absent).
    function_timeout: timedelta | None = None

    @classmethod
    def from_file(cls, path: Path) -> HostConfig:
        """Read ``host.json``; a missing file means every default."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise HostConfigError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise HostConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostConfig:
        extensions = _section(data, "extensions")
        http = _section(extensions, "http", "extensions.")
        bus = _section(extensions, "serviceBus", "extensions.")
        defaults = cls()
        retry = _section(bus, "clientRetryOptions", "extensions.serviceBus.")
        try_timeout = _timespan(retry, "tryTimeout", "extensions.serviceBus.clientRetryOptions.")
        session_idle = _timespan(bus, "sessionIdleTimeout", "extensions.serviceBus.")
        lock_renewal = _timespan(bus, "maxAutoLockRenewalDuration", "extensions.serviceBus.")
        prefix = _get(http, "routePrefix")
        if prefix is not None and not isinstance(prefix, str):
            raise HostConfigError("extensions.http.routePrefix must be a string")
        return cls(
            route_prefix=(defaults.route_prefix if prefix is None else prefix).strip("/"),
            max_concurrent_sessions=_positive_int(
                bus, "maxConcurrentSessions", defaults.max_concurrent_sessions
            ),
            max_concurrent_calls=_positive_int(
                bus, "maxConcurrentCalls", defaults.max_concurrent_calls
            ),
            # Unset, the session processor waits as long as one client operation may take.
            session_idle_timeout=session_idle or try_timeout or defaults.session_idle_timeout,
            max_auto_lock_renewal_duration=lock_renewal or defaults.max_auto_lock_renewal_duration,
            auto_complete_messages=_boolean(
                bus, "autoCompleteMessages", defaults.auto_complete_messages
            ),
            function_timeout=_function_timeout(data),
        )


def _get(section: Mapping[str, Any], key: str) -> Any:
    wanted = key.lower()
    for name, value in section.items():
        if name.lower() == wanted:
            return value
    return None


def _section(parent: Mapping[str, Any], key: str, path: str = "") -> Mapping[str, Any]:
    value = _get(parent, key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HostConfigError(f"{path}{key} must be an object")
    return value


def _positive_int(section: Mapping[str, Any], key: str, default: int) -> int:
    value = _get(section, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HostConfigError(f"extensions.serviceBus.{key} must be a positive integer")
    return value


def _boolean(section: Mapping[str, Any], key: str, default: bool) -> bool:
    value = _get(section, key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HostConfigError(f"extensions.serviceBus.{key} must be true or false")
    return value


def _timespan(section: Mapping[str, Any], key: str, path: str) -> timedelta | None:
    value = _get(section, key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HostConfigError(f'{path}{key} must be a TimeSpan string such as "00:00:05"')
    try:
        span = parse_timespan(value)
    except ValueError as error:
        raise HostConfigError(f"{path}{key}: {error}") from error
    if span <= timedelta(0):
        raise HostConfigError(f"{path}{key} must be positive")
    return span


def _function_timeout(data: Mapping[str, Any]) -> timedelta | None:
    value = _get(data, "functionTimeout")
    if value is None or (isinstance(value, str) and value.strip() == "-1"):
        return None
    return _timespan(data, "functionTimeout", "")
