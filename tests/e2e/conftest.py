"""The dev host as a real subprocess (`python -m local`) on a fresh database and a free port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, personal_data_in

APP_SECRET = "e2e-app-secret"
VERIFY_TOKEN = "e2e-verify-token"


@dataclass(frozen=True)
class RunningHost:
    base_url: str
    database_url: str
    log_path: Path
    # The Cloud API simulator the host started (None when WHATSAPP_GRAPH_BASE_URL was given).
    simulator_url: str | None = None

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/api/v1/whatsapp/webhook"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


HostFactory = Callable[..., RunningHost]
_SIMULATOR_LINE = re.compile(r"WhatsApp Cloud API simulator: (http://\S+)")


def launch_dev_host(
    database_url: str, log_path: Path, **settings: str
) -> tuple[subprocess.Popen[bytes], RunningHost]:
    """``python -m local`` with its simulator on a free port, once it listens; raises
    :class:`DevHostFailed` (with its log) if it exits or does not start within 60 s."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_WEBHOOK_VERIFY_TOKEN": VERIFY_TOKEN,
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "local", "--port", str(port), "--simulator-port", "0"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    host = RunningHost(f"http://127.0.0.1:{port}", database_url, log_path)
    deadline = time.monotonic() + 60
    while "Listening on" not in host.log():
        if process.poll() is not None:
            raise DevHostFailed(f"dev host exited with {process.returncode}:\n{host.log()}")
        if time.monotonic() > deadline:
            stop_dev_host(process, host, check=False)
            raise DevHostFailed(f"dev host did not start:\n{host.log()}")
        time.sleep(0.1)
    httpx.get(host.webhook_url, timeout=5)
    found = _SIMULATOR_LINE.search(host.log())
    return process, RunningHost(
        host.base_url, database_url, log_path, found.group(1) if found else None
    )


def stop_dev_host(
    process: subprocess.Popen[bytes], host: RunningHost, *, check: bool = True
) -> None:
    """SIGTERM, then (with ``check``) a clean exit and no personal data in its log."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if check:
        assert process.returncode == 0, f"dev host did not stop cleanly:\n{host.log()}"
        leaks = host_log_leaks(host.log())
        assert not leaks, f"the dev host's log holds personal data: {leaks[:5]}"


class DevHostFailed(RuntimeError):
    """The dev host exited or did not start; the message holds its log."""


@pytest.fixture
def start_dev_host(database_url: str, tmp_path: Path) -> Iterator[HostFactory]:
    """Starts ``python -m local`` subprocesses with extra settings; all stopped (and checked for
    a clean exit) at the end of the test."""
    running: list[tuple[subprocess.Popen[bytes], RunningHost]] = []

    def start(**settings: str) -> RunningHost:
        log_path = tmp_path / f"host-{len(running)}.log"
        try:
            process, host = launch_dev_host(database_url, log_path, **settings)
        except DevHostFailed as error:
            pytest.fail(str(error))
        running.append((process, host))
        return host

    try:
        yield start
    finally:
        for process, _ in running:
            process.terminate()
        for process, host in running:
            stop_dev_host(process, host)


def host_log_leaks(log: str) -> list[str]:
    """Personal data in a host's output, except its start-up banner (dev defaults and an example
    user's number, printed on purpose so a developer can sign and send a test webhook)."""
    leaks: list[str] = []
    in_banner = False
    for line in log.splitlines():
        if line.startswith("Functions in "):
            in_banner = True
        elif line.startswith("Listening on "):
            in_banner = False
        elif not in_banner:
            leaks += personal_data_in(line)
    return leaks


@pytest.fixture
def dev_host(start_dev_host: HostFactory) -> RunningHost:
    return start_dev_host()
