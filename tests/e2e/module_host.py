"""A dev host shared by all the tests of a module (``python -m local`` on its own database).

``start_dev_host`` (conftest.py) gives each test a fresh host; tests that only read, or that
each leave the host as they found it, share one instead: starting a host costs seconds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT
from tests.databases import throwaway_database
from tests.e2e.conftest import (
    _SIMULATOR_LINE,
    APP_SECRET,
    VERIFY_TOKEN,
    RunningHost,
    free_port,
    host_log_leaks,
)

FULL_KEY = "dev-management-key"
READ_KEY = "dev-read-key"


@contextlib.contextmanager
def running_host(server_url: str, directory: Path, **settings: str) -> Iterator[RunningHost]:
    """A dev host with its simulator on a new database (migrated by the host at start); stopped,
    checked for a clean exit and for personal data in its log at the end."""
    with throwaway_database(server_url, "e2e") as database_url:
        port = free_port()
        log_path = directory / f"host-{port}.log"
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
        try:
            deadline = time.monotonic() + 60
            while "Listening on" not in host.log():
                if process.poll() is not None:
                    raise RuntimeError(f"dev host exited with {process.returncode}:\n{host.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dev host did not start:\n{host.log()}")
                time.sleep(0.1)
            httpx.get(host.webhook_url, timeout=5)
            found = _SIMULATOR_LINE.search(host.log())
            yield RunningHost(
                host.base_url, database_url, log_path, found.group(1) if found else None
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.returncode == 0, f"dev host did not stop cleanly:\n{host.log()}"
        leaks = host_log_leaks(host.log())
        assert not leaks, f"the dev host's log holds personal data: {leaks[:5]}"
