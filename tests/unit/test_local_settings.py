"""local.settings.json and dev defaults: the environment wins, then the file, then defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local.settings import DEV_DEFAULTS, LocalSettingsError, load_local_settings
from tests.conftest import REPO_ROOT


def write_settings(root: Path, values: dict[str, object], **extra: object) -> None:
    data = {"IsEncrypted": False, "Values": values, **extra}
    (root / "local.settings.json").write_text(json.dumps(data))


def test_without_a_file_every_default_applies(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    loaded = load_local_settings(tmp_path, env)
    assert env == dict(DEV_DEFAULTS)
    assert loaded.applied_defaults == dict(DEV_DEFAULTS)
    assert loaded.settings_file is None
    assert set(loaded.sources.values()) == {"dev default"}


def test_environment_beats_file_beats_default(tmp_path: Path) -> None:
    write_settings(
        tmp_path,
        {
            "WHATSAPP_APP_SECRET": "from-file",
            "WHATSAPP_ACCESS_TOKEN": "file-token",
            "CUSTOM": "file-only",
        },
    )
    env = {"WHATSAPP_APP_SECRET": "from-env", "OTHER": "x"}
    loaded = load_local_settings(tmp_path, env)
    assert env["WHATSAPP_APP_SECRET"] == "from-env"
    assert env["WHATSAPP_ACCESS_TOKEN"] == "file-token"
    assert env["CUSTOM"] == "file-only"
    assert env["OTHER"] == "x"
    assert env["WHATSAPP_WEBHOOK_VERIFY_TOKEN"] == "dev-verify-token"
    assert loaded.sources["WHATSAPP_APP_SECRET"] == "environment"
    assert loaded.sources["WHATSAPP_ACCESS_TOKEN"] == "local.settings.json"
    assert loaded.sources["WHATSAPP_WEBHOOK_VERIFY_TOKEN"] == "dev default"
    # Only defaults that were applied are reported (and printed): never a file or env value.
    assert "WHATSAPP_APP_SECRET" not in loaded.applied_defaults
    assert "WHATSAPP_ACCESS_TOKEN" not in loaded.applied_defaults
    assert "from-env" not in loaded.applied_defaults.values()
    assert "file-token" not in loaded.applied_defaults.values()


def test_blank_values_count_as_unset(tmp_path: Path) -> None:
    write_settings(tmp_path, {"WHATSAPP_APP_SECRET": "", "BUS_BACKEND": "  "})
    env = {"WHATSAPP_ACCESS_TOKEN": ""}
    loaded = load_local_settings(tmp_path, env)
    assert env["WHATSAPP_APP_SECRET"] == "dev-app-secret"
    assert env["BUS_BACKEND"] == "local"
    assert env["WHATSAPP_ACCESS_TOKEN"] == "dev-access-token"
    assert loaded.applied_defaults["WHATSAPP_APP_SECRET"] == "dev-app-secret"


def test_non_string_values_are_read_as_text(tmp_path: Path) -> None:
    write_settings(tmp_path, {"DATABASE_POOL_MAX_SIZE": 5, "FLAG": True})
    env: dict[str, str] = {}
    load_local_settings(tmp_path, env)
    assert env["DATABASE_POOL_MAX_SIZE"] == "5"
    assert env["FLAG"] == "true"


def test_local_http_port(tmp_path: Path) -> None:
    write_settings(tmp_path, {}, Host={"LocalHttpPort": 7072})
    assert load_local_settings(tmp_path, {}).local_http_port == 7072
    write_settings(tmp_path, {}, Host={"LocalHttpPort": "http"})
    with pytest.raises(LocalSettingsError, match="LocalHttpPort"):
        load_local_settings(tmp_path, {})


def test_encrypted_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": True, "Values": {}}))
    with pytest.raises(LocalSettingsError, match="encrypted"):
        load_local_settings(tmp_path, {})


def test_invalid_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text("{")
    with pytest.raises(LocalSettingsError, match="not valid JSON"):
        load_local_settings(tmp_path, {})


def test_the_example_file_loads(tmp_path: Path) -> None:
    example = REPO_ROOT / "local.settings.json.example"
    if not example.exists():
        pytest.skip("no local.settings.json.example")
    (tmp_path / "local.settings.json").write_text(example.read_text())
    env: dict[str, str] = {}
    load_local_settings(tmp_path, env)
    assert env["WHATSAPP_APP_SECRET"]  # a blank placeholder gets the dev default
