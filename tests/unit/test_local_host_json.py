"""host.json as the dev host reads it: TimeSpans, Service Bus settings, defaults."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from local.host_json import HostConfig, HostConfigError, parse_timespan
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:05", timedelta(seconds=5)),
        ("00:05:00", timedelta(minutes=5)),
        ("01:02:03", timedelta(hours=1, minutes=2, seconds=3)),
        ("00:00:00.80", timedelta(milliseconds=800)),
        ("00:00:00.5", timedelta(milliseconds=500)),
        ("00:00:01.0000001", timedelta(seconds=1)),  # 100 ns ticks round to microseconds
        ("00:00:00.123", timedelta(milliseconds=123)),
        ("1.02:00:00", timedelta(days=1, hours=2)),
        ("00:10", timedelta(minutes=10)),
        ("3", timedelta(days=3)),
        ("-00:00:05", timedelta(seconds=-5)),
        (" 00:00:05 ", timedelta(seconds=5)),
    ],
)
def test_parse_timespan(text: str, expected: timedelta) -> None:
    assert parse_timespan(text) == expected


@pytest.mark.parametrize("text", ["", "5s", "00:60:00", "24:00:00", "1:2:3:4", "00:00:00.12345678"])
def test_malformed_timespan(text: str) -> None:
    with pytest.raises(ValueError, match="TimeSpan"):
        parse_timespan(text)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = HostConfig.from_file(tmp_path / "host.json")
    assert config == HostConfig()
    assert config.route_prefix == "api"
    assert config.max_concurrent_sessions == 8
    assert config.max_concurrent_calls == 16
    assert config.max_auto_lock_renewal_duration == timedelta(minutes=5)
    assert config.auto_complete_messages is True
    assert config.function_timeout is None


def test_the_repository_host_json() -> None:
    config = HostConfig.from_file(REPO_ROOT / "host.json")
    assert config.route_prefix == "api"
    assert config.session_idle_timeout > timedelta(0)
    assert config.max_concurrent_sessions >= 1


def test_service_bus_settings_case_insensitive() -> None:
    config = HostConfig.from_dict(
        {
            "functionTimeout": "00:10:00",
            "Extensions": {
                "HTTP": {"routePrefix": "/v1/"},
                "servicebus": {
                    "MaxConcurrentSessions": 2,
                    "maxConcurrentCalls": 3,
                    "sessionIdleTimeout": "00:00:00.250",
                    "maxAutoLockRenewalDuration": "00:01:00",
                    "autoCompleteMessages": False,
                },
            },
        }
    )
    assert config == HostConfig(
        route_prefix="v1",
        max_concurrent_sessions=2,
        max_concurrent_calls=3,
        session_idle_timeout=timedelta(milliseconds=250),
        max_auto_lock_renewal_duration=timedelta(minutes=1),
        auto_complete_messages=False,
        function_timeout=timedelta(minutes=10),
    )


def test_session_idle_timeout_falls_back_to_the_try_timeout() -> None:
    config = HostConfig.from_dict(
        {"extensions": {"serviceBus": {"clientRetryOptions": {"tryTimeout": "00:00:30"}}}}
    )
    assert config.session_idle_timeout == timedelta(seconds=30)


def test_empty_route_prefix_and_unlimited_timeout() -> None:
    config = HostConfig.from_dict(
        {"functionTimeout": "-1", "extensions": {"http": {"routePrefix": ""}}}
    )
    assert config.route_prefix == ""
    assert config.function_timeout is None


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"extensions": {"serviceBus": {"maxConcurrentSessions": 0}}}, "maxConcurrentSessions"),
        ({"extensions": {"serviceBus": {"sessionIdleTimeout": "soon"}}}, "sessionIdleTimeout"),
        ({"extensions": {"serviceBus": {"sessionIdleTimeout": 5}}}, "sessionIdleTimeout"),
        ({"extensions": {"serviceBus": {"autoCompleteMessages": "yes"}}}, "autoCompleteMessages"),
        ({"extensions": {"http": []}}, "extensions.http"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], names: str) -> None:
    with pytest.raises(HostConfigError, match=names):
        HostConfig.from_dict(data)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text("{nope")
    with pytest.raises(HostConfigError, match="not valid JSON"):
        HostConfig.from_file(path)
    path.write_text(json.dumps([1]))
    with pytest.raises(HostConfigError, match="object"):
        HostConfig.from_file(path)
