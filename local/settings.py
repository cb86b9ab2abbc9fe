"""App settings for the dev host: ``local.settings.json`` like ``func start``, then dev defaults.

Precedence, highest first: the process environment, ``local.settings.json`` ``Values``, then
:data:`DEV_DEFAULTS`. A blank value counts as unset everywhere, because the example file ships
blank placeholders and the app's settings loader treats blank as missing too.

The dev defaults are not secrets: they exist so a newcomer can run the bridge and sign a test
webhook without any set-up, which is why the host prints the ones it applied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "DEV_DEFAULTS",
    "LOCAL_SETTINGS_FILE",
    "LocalSettings",
    "LocalSettingsError",
    "SettingSource",
    "load_local_settings",
]

LOCAL_SETTINGS_FILE: Final = "local.settings.json"

DEV_DEFAULTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "WHATSAPP_ACCESS_TOKEN": "dev-access-token",
        "WHATSAPP_APP_SECRET": "dev-app-secret",
        "WHATSAPP_WEBHOOK_VERIFY_TOKEN": "dev-verify-token",
        "WHATSAPP_PHONE_NUMBER_ID": "100000000000001",
        "WHATSAPP_BUSINESS_ACCOUNT_ID": "200000000000001",
        "BUS_BACKEND": "local",
        "INBOUND_QUEUE_NAME": "inbound-events",
        "OUTBOUND_QUEUE_NAME": "outbound-messages",
        # The management API's keys: full access, and read-only.
        "MANAGEMENT_API_KEYS": "dev-management-key",
        "MANAGEMENT_API_READ_KEYS": "dev-read-key",
    }
)

SettingSource = Literal["environment", "local.settings.json", "dev default"]


class LocalSettingsError(ValueError):
    """local.settings.json cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """What :func:`load_local_settings` did, for the start-up banner (never holds file values)."""

    settings_file: Path | None
    # Dev default name -> the value applied, only for defaults that were applied.
    applied_defaults: Mapping[str, str] = field(default_factory=dict)
    # Every dev default name -> where its value came from.
    sources: Mapping[str, SettingSource] = field(default_factory=dict)
    # local.settings.json "Host": {"LocalHttpPort": ...}, which `func start` listens on.
    local_http_port: int | None = None


def load_local_settings(
    root: Path, environ: MutableMapping[str, str] | None = None
) -> LocalSettings:
    """Fill ``environ`` (default ``os.environ``) from ``root/local.settings.json`` and defaults.

    Keys already set (non-blank) in ``environ`` are never overwritten.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    path = root / LOCAL_SETTINGS_FILE
    values, port = _read_file(path)
    from_environment = {name for name, value in env.items() if value.strip()}
    for name, value in values.items():
        if name not in from_environment and value.strip():
            env[name] = value
    applied: dict[str, str] = {}
    sources: dict[str, SettingSource] = {}
    for name, default in DEV_DEFAULTS.items():
        if name in from_environment:
            sources[name] = "environment"
        elif values.get(name, "").strip():
            sources[name] = "local.settings.json"
        else:
            env[name] = default
            applied[name] = default
            sources[name] = "dev default"
    return LocalSettings(
        settings_file=path if path.exists() else None,
        applied_defaults=applied,
        sources=sources,
        local_http_port=port,
    )


def _read_file(path: Path) -> tuple[dict[str, str], int | None]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return {}, None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise LocalSettingsError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise LocalSettingsError(f"{path} must hold a JSON object")
    if data.get("IsEncrypted") is True:
        raise LocalSettingsError(
            f"{path} is encrypted (IsEncrypted: true); the dev host reads plain values only — "
            "run `func settings decrypt` where Core Tools are installed, or recreate it from "
            "local.settings.json.example"
        )
    raw_values = data.get("Values") or {}
    if not isinstance(raw_values, dict):
        raise LocalSettingsError(f"{path}: Values must be an object")
    values: dict[str, str] = {}
    for name, value in raw_values.items():
        if isinstance(value, bool):
            values[str(name)] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            values[str(name)] = str(value)
        elif value is not None:
            raise LocalSettingsError(f"{path}: Values.{name} must be a string")
    return values, _local_http_port(path, data.get("Host"))


def _local_http_port(path: Path, host: object) -> int | None:
    if not isinstance(host, dict) or host.get("LocalHttpPort") in (None, ""):
        return None
    raw = host["LocalHttpPort"]
    try:
        port = int(raw)
    except (TypeError, ValueError):
        raise LocalSettingsError(f"{path}: Host.LocalHttpPort must be a port number") from None
    if not 0 < port < 65536:
        raise LocalSettingsError(f"{path}: Host.LocalHttpPort must be a port number")
    return port
