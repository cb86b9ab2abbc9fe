"""host.json holds values for Azure; the dev host keeps its own session idle timeout (issue 14).

Azure reads host.json as it is; the dev host reads it through :meth:`HostConfig.for_dev_host`,
which honours the Functions host's ``AzureFunctionsJobHost__`` app-setting overrides.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from local.host_json import DEV_HOST_SESSION_IDLE_TIMEOUT, HostConfig, parse_timespan

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_JSON = REPO_ROOT / "host.json"

# What the Service Bus extension 5.x binds from extensions.serviceBus (ServiceBusOptions); a key
# outside it (a 4.x "messageHandlerOptions", a typo) is ignored by the host without a word.
SERVICE_BUS_OPTIONS = {
    "autocompletemessages",
    "clientretryoptions",
    "enablecrossentitytransactions",
    "maxautolockrenewalduration",
    "maxbatchwaittime",
    "maxconcurrentcalls",
    "maxconcurrentcallspersession",
    "maxconcurrentsessions",
    "maxmessagebatchsize",
    "minmessagebatchsize",
    "prefetchcount",
    "sessionidletimeout",
    "transporttype",
    "webproxy",
}
LEVELS = ["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]


def host_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(HOST_JSON.read_text())
    return data


def test_service_bus_keys_are_ones_the_extension_reads() -> None:
    service_bus = host_json()["extensions"]["serviceBus"]
    assert {key.lower() for key in service_bus} <= SERVICE_BUS_OPTIONS


def test_the_session_idle_timeout_is_seconds_on_azure() -> None:
    # 100 ms suits the local queue; on Azure every receive is a network round trip.
    idle = parse_timespan(host_json()["extensions"]["serviceBus"]["sessionIdleTimeout"])
    assert timedelta(seconds=1) <= idle <= timedelta(seconds=30)


def test_locks_are_renewed_for_as_long_as_a_function_may_run() -> None:
    data = host_json()
    renewal = parse_timespan(data["extensions"]["serviceBus"]["maxAutoLockRenewalDuration"])
    assert renewal >= parse_timespan(data["functionTimeout"])
    assert data["extensions"]["serviceBus"]["maxConcurrentSessions"] >= 1


def test_invocation_results_reach_application_insights() -> None:
    levels = host_json()["logging"]["logLevel"]
    # Host.Results carries the invocations ("requests" in Application Insights).
    assert LEVELS.index(levels["Host.Results"]) <= LEVELS.index("Information")
    excluded = host_json()["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"]
    assert "Request" in excluded.split(";")


def test_the_dev_host_keeps_its_short_idle_timeout() -> None:
    azure = HostConfig.from_file(HOST_JSON)
    dev = HostConfig.for_dev_host(HOST_JSON, {})
    assert azure.session_idle_timeout >= timedelta(seconds=1)
    assert dev.session_idle_timeout == DEV_HOST_SESSION_IDLE_TIMEOUT == timedelta(milliseconds=100)
    # Everything else as in host.json.
    assert dev.max_concurrent_sessions == azure.max_concurrent_sessions
    assert dev.max_auto_lock_renewal_duration == azure.max_auto_lock_renewal_duration


def test_app_setting_overrides_apply_as_in_azure() -> None:
    environ = {
        "AzureFunctionsJobHost__extensions__serviceBus__sessionIdleTimeout": "00:00:03",
        # Case-insensitive, and strings converted to the type the key needs.
        "azurefunctionsjobhost__Extensions__ServiceBus__MaxConcurrentSessions": "8",
        "AzureFunctionsJobHost__extensions__serviceBus__autoCompleteMessages": "false",
        "AzureFunctionsJobHost__functionTimeout": "00:10:00",
        "UNRELATED": "x",
    }
    for config in (
        HostConfig.from_file(HOST_JSON, environ),
        HostConfig.for_dev_host(HOST_JSON, environ),
    ):
        assert config.session_idle_timeout == timedelta(seconds=3)
        assert config.max_concurrent_sessions == 8
        assert config.auto_complete_messages is False
        assert config.function_timeout == timedelta(minutes=10)


def test_an_override_creates_missing_sections(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text('{"version": "2.0"}')
    environ = {"AzureFunctionsJobHost__extensions__http__routePrefix": "v1"}
    assert HostConfig.from_file(path, environ).route_prefix == "v1"
    assert HostConfig.from_file(path).route_prefix == "api"
