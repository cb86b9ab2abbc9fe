"""A dev host shared by all the tests of a module (``python -m local`` on its own database).

``start_dev_host`` (conftest.py) gives each test a fresh host; tests that only read, or that
each leave the host as they found it, share one instead: starting a host costs seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.databases import throwaway_database
from tests.e2e.conftest import RunningHost, launch_dev_host, stop_dev_host

FULL_KEY = "dev-management-key"
READ_KEY = "dev-read-key"


@contextlib.contextmanager
def running_host(server_url: str, directory: Path, **settings: str) -> Iterator[RunningHost]:
    """A dev host with its simulator on a new database (migrated by the host at start); stopped,
    checked for a clean exit and for personal data in its log at the end."""
    with throwaway_database(server_url, "e2e") as database_url:
        log_path = directory / f"host-{len(list(directory.glob('host-*.log')))}.log"
        process, host = launch_dev_host(database_url, log_path, **settings)
        try:
            yield host
        except BaseException:
            stop_dev_host(process, host, check=False)
            raise
        stop_dev_host(process, host)
