"""The dev host as a real subprocess (`python -m local`) on a fresh database and a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT

APP_SECRET = "e2e-app-secret"
VERIFY_TOKEN = "e2e-verify-token"


@dataclass(frozen=True)
class RunningHost:
    base_url: str
    database_url: str
    log_path: Path

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/api/v1/whatsapp/webhook"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dev_host(database_url: str, tmp_path: Path) -> Iterator[RunningHost]:
    port = free_port()
    log_path = tmp_path / "host.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_WEBHOOK_VERIFY_TOKEN": VERIFY_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "local", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    host = RunningHost(f"http://127.0.0.1:{port}", database_url, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"dev host exited with {process.returncode}:\n{host.log()}")
            try:
                httpx.get(host.webhook_url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"dev host did not start:\n{host.log()}")
                time.sleep(0.2)
        yield host
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"dev host did not stop cleanly:\n{host.log()}"
