"""`python -m local.simulator` as a process: settings from flags and environment, clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

ENV_TOKEN = "token-from-the-environment"


def start_cli(log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "WHATSAPP_ACCESS_TOKEN": ENV_TOKEN, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.simulator", "--port", "0", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while (found := re.search(r"simulator on (http://\S+) ", log.read_text())) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"simulator did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return process, found.group(1)


def test_serves_with_the_given_settings_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "simulator.log"
    process, base_url = start_cli(
        log,
        "--phone-number-id",
        "123456:15550009999",
        "--throughput",
        "2",
        "--no-window",
        "--server-error-probability",
        "1",
        "--server-error-code",
        "2",
    )
    try:
        config = httpx.get(f"{base_url}/simulator/config").json()
        send = httpx.post(
            f"{base_url}/v23.0/123456/messages",
            headers={"Authorization": f"Bearer {ENV_TOKEN}"},
            json={
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "1555",
                "type": "text",
                "text": {"body": "hi"},
            },
        )
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30)

    assert config["business_numbers"] == [
        {"phone_number_id": "123456", "display_phone_number": "15550009999"}
    ]
    assert config["throughput_per_second"] == 2
    assert config["enforce_window"] is False
    assert (send.status_code, send.json()["error"]["code"]) == (500, 2)
    assert exit_code == 0
    assert ENV_TOKEN not in log.read_text()


def test_refuses_invalid_settings_with_exit_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "local.simulator", "--throughput", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert b"throughput_per_second" in result.stderr


def test_new_faults_from_flags_under_the_cli_event_loop(tmp_path: Path) -> None:
    # The CLI serves on uvloop when installed: the connection must close there too, quietly.
    log = tmp_path / "simulator.log"
    process, base_url = start_cli(log, "--no-window", "--drop-before-probability", "1")
    headers = {"Authorization": f"Bearer {ENV_TOKEN}"}
    body = {
        "messaging_product": "whatsapp",
        "to": "1555",
        "type": "text",
        "text": {"body": "hi"},
    }
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{base_url}/v23.0/100000000000001/messages", headers=headers, json=body)
        httpx.put(
            f"{base_url}/simulator/config",
            json={"faults": {"drop_before_probability": 0, "pair_limit_probability": 1}},
        ).raise_for_status()
        pair_limited = httpx.post(
            f"{base_url}/v23.0/100000000000001/messages", headers=headers, json=body
        )
        stats = httpx.get(f"{base_url}/simulator/stats").json()
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30)

    assert pair_limited.json()["error"]["code"] == 131056
    assert stats["faults"] == {"drop_before": 1, "pair_limit": 1}
    assert stats["accepted"] == 0
    assert exit_code == 0
    output = log.read_text()
    assert "Traceback" not in output and "ASGI" not in output, output
