"""The parts of ``host.json`` the dev host honours, with the Functions host's defaults.

Keys are matched case-insensitively, as the Functions host does. Durations are .NET ``TimeSpan``
strings (``"00:00:05"``, ``"00:00:00.80"``, ``"1.02:00:00"``). App settings named
``AzureFunctionsJobHost__<path>`` (``__`` between keys) override host.json values, as they do in
Azure and under ``func start`` (environment or local.settings.json ``Values``).

host.json holds Azure's values. The dev host differs in one: the session idle timeout. Its local
queue wakes a session's holder within milliseconds of a publish (LISTEN/NOTIFY), so waiting seconds
for a session's next message buys nothing there and holds one of ``maxConcurrentSessions`` slots
the whole time; on Azure a receive is a network round trip and accepting a session several, so
the wait is worth seconds. :meth:`HostConfig.for_dev_host` uses
:data:`DEV_HOST_SESSION_IDLE_TIMEOUT` unless an ``AzureFunctionsJobHost__`` setting names one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEV_HOST_SESSION_IDLE_TIMEOUT",
    "JOB_HOST_OVERRIDE_PREFIX",
    "HostConfig",
    "HostConfigError",
    "parse_timespan",
]

JOB_HOST_OVERRIDE_PREFIX: Final = "AzureFunctionsJobHost__"
DEV_HOST_SESSION_IDLE_TIMEOUT: Final = timedelta(milliseconds=100)
_SESSION_IDLE_TIMEOUT_PATH: Final = ("extensions", "serviceBus", "sessionIdleTimeout")

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
    def from_file(cls, path: Path, environ: Mapping[str, str] | None = None) -> HostConfig:
        """Read ``host.json`` with the ``AzureFunctionsJobHost__`` overrides found in
        ``environ``; a missing file means every default."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = "{}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise HostConfigError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise HostConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(_with_overrides(data, _overrides_in(environ or {})))

    @classmethod
    def for_dev_host(cls, path: Path, environ: Mapping[str, str]) -> HostConfig:
        """What the dev host runs with: :meth:`from_file`, and the dev host's own session idle
        timeout unless an override names one (see the module's docstring)."""
        config = cls.from_file(path, environ)
        overridden = {tuple(k.lower() for k in key) for key in _overrides_in(environ)}
        if tuple(k.lower() for k in _SESSION_IDLE_TIMEOUT_PATH) in overridden:
            return config
        return dataclasses.replace(config, session_idle_timeout=DEV_HOST_SESSION_IDLE_TIMEOUT)

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


def _overrides_in(environ: Mapping[str, str]) -> dict[tuple[str, ...], Any]:
    prefix = JOB_HOST_OVERRIDE_PREFIX.lower()
    overrides: dict[tuple[str, ...], Any] = {}
    for name, raw in environ.items():
        if not name.lower().startswith(prefix):
            continue
        path = tuple(part for part in name[len(prefix) :].split("__") if part)
        if path:
            overrides[path] = _setting_value(raw)
    return overrides


def _setting_value(raw: str) -> Any:
    # App settings are strings; the host converts "8" and "true" to the type the key needs.
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return value if isinstance(value, bool | int | float) else raw


def _with_overrides(
    data: dict[str, Any], overrides: Mapping[tuple[str, ...], Any]
) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(data))  # a deep copy of plain JSON
    for path, value in overrides.items():
        section = result
        for key in path[:-1]:
            existing = next((k for k in section if k.lower() == key.lower()), key)
            child = section.get(existing)
            if not isinstance(child, dict):
                child = section[existing] = {}
            section = child
        existing = next((k for k in section if k.lower() == path[-1].lower()), path[-1])
        section[existing] = value
    return result


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
