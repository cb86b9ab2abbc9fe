"""`python -m local` as a process: banner, settings precedence, signals, exit status; and the
embedded PostgreSQL it starts when DATABASE_URL is not set."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from local.postgres import start_embedded_postgres
from local.settings import DEV_DEFAULTS
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

TEST_APP = "tests.integration.test_local_host_http:app"
ENV_SECRET = "value-from-the-environment-never-printed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cli(database_url: str, log: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in DEV_DEFAULTS}
    env.update(DATABASE_URL=database_url, WHATSAPP_APP_SECRET=ENV_SECRET, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "local", "--port", str(port), "--app", TEST_APP, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "Listening on" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"dev host did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return process, port


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_and_stops_cleanly_on_signal(
    database_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    log = tmp_path / "host.log"
    process, port = start_cli(database_url, log, "--no-timers")
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/items/5", timeout=5)
        assert response.json()["route"] == {"id": "5"}
        process.send_signal(signum)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert f"http://127.0.0.1:{port}/api/items/{{id:int}}/{{name?}}" in output
    assert "WHATSAPP_APP_SECRET  (from environment)" in output
    assert ENV_SECRET not in output
    assert "GET /api/items/5 200" in output
    assert "stopped" in output


def test_unusable_app_reference_fails_with_status_1(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "local", "--port", str(free_port()), "--app", "json:dumps"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"json:dumps is not an azure.functions FunctionApp" in result.stderr


def test_embedded_postgres_creates_reuses_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    first = start_embedded_postgres(data_dir, database="bridge_dev")
    try:
        assert "/bridge_dev?" in first.database_url
        with psycopg.connect(first.database_url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("bridge_dev",)
            conn.execute("CREATE TABLE kept (x int)")
    finally:
        first.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(first.database_url, connect_timeout=2)

    # A holder that died without letting go (kill -9) must not keep the server up forever.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data_dir / ".handle_pids.json").write_text(json.dumps([dead.pid]))

    second = start_embedded_postgres(data_dir, database="bridge_dev")
    try:
        with psycopg.connect(second.database_url) as conn:
            # Same data directory: the table from the first run is still there.
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        second.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(second.database_url, connect_timeout=2)


@pytest.mark.parametrize("grace", ["-1", "nan", "soon"])
def test_shutdown_grace_must_be_seconds(grace: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "local", "--shutdown-grace", grace],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"--shutdown-grace" in result.stderr
