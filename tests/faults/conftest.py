"""Fixtures and reporting of the fault suite.

Each scenario records its counts in ``harness.SESSION``; at the end of the run they are printed
in the terminal summary and written as JSON (``FAULT_RESULTS``, default
``.local/faults/results-<scale>.json``) for docs/RELIABILITY.md and ``scripts/fault_suite.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS
from shared_code.db.migrations import apply_migrations
from tests.conftest import REPO_ROOT
from tests.databases import create_database, database_url_for, drop_databases
from tests.faults import harness
from tests.faults.harness import SESSION, Cluster

ClusterFactory = Callable[[str], Awaitable[Cluster]]


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers it; this keeps the folder runnable on a checkout that does not.
    if not any(str(line).startswith("faults:") for line in config.getini("markers")):
        config.addinivalue_line("markers", "faults: fault-injection scenarios (tests/faults)")


# The names of the tests selected to run (after -k / -m): only their background scenarios start.
_SELECTED: set[str] = set()
# Measures answer times: it runs first, on a machine the other scenarios do not load yet.
_FIRST = "test_postgres_outages_answer_503_fast_and_lose_nothing"


def _phase(item: pytest.Item) -> int:
    """Run order: the answer-time scenario alone; then the foreground scenarios while the early
    background ones (started with the first of them) run alongside; then the tests awaiting the
    background ones; then the modules that must come after them (``AFTER_BACKGROUND``: timing
    that a loaded machine would blur, or the log scan that must see every process's output)."""
    if item.name == _FIRST:
        return 0
    if item.name in harness.BACKGROUND:
        return 2
    if getattr(getattr(item, "module", None), "AFTER_BACKGROUND", False):
        return 3
    return 1


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if here in item.path.parents]
    ours = sorted((items[i] for i in slots), key=_phase)
    for slot, item in zip(slots, ours, strict=True):
        items[slot] = item
    for item in ours:
        if item.name in harness.BACKGROUND:
            _SELECTED.add(item.name)
            SESSION.record(item.name, nodeid=item.nodeid, scale=harness.SCALE)


@pytest.fixture(scope="session", autouse=True)
def _fault_logs(tmp_path_factory: pytest.TempPathFactory) -> None:
    SESSION.log_dir = tmp_path_factory.mktemp("fault-logs")


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """``record(**counts)`` into this scenario's entry (named after the test)."""
    name = request.node.name
    SESSION.record(name, nodeid=request.node.nodeid, scale=harness.SCALE)

    def record(**counts: Any) -> dict[str, Any]:
        return SESSION.record(name, **counts)

    return record


@contextlib.asynccontextmanager
async def _clusters(server_url: str) -> AsyncIterator[ClusterFactory]:
    """Clusters on fresh databases of their own (several may run side by side)."""
    clusters: list[Cluster] = []
    databases: list[str] = []

    async def make(name: str) -> Cluster:
        database = create_database(server_url, "faults")
        databases.append(database)
        url = database_url_for(server_url, database)
        await apply_migrations(url)
        await apply_migrations(url, LOCAL_BUS_MIGRATIONS, set_name="local_bus")
        cluster = Cluster(name, url)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            try:
                await cluster.close()
            except Exception as error:  # a teardown problem must not hide the scenario's
                print(f"closing {cluster.name} failed: {error!r}")
        drop_databases(server_url, *databases)


@pytest.fixture
async def make_cluster(server_url: str) -> AsyncIterator[ClusterFactory]:
    async with _clusters(server_url) as make:
        yield make


@pytest.fixture(autouse=True)
def _background_started(request: pytest.FixtureRequest) -> None:
    """Every scenario but the first starts the background ones (a no-op once started)."""
    if request.node.name != _FIRST and _SELECTED:
        request.getfixturevalue("background")


class BackgroundRuns:
    """The background scenarios' tasks by test name. At the short size the early ones start at
    once (their waits overlap the scenarios that follow); the others, and at the full size all
    of them, start when their test asks: several busy clusters at once would exhaust
    PostgreSQL's connections (100 by default; a dev host may hold ~20) and the machine."""

    def __init__(self, make: ClusterFactory) -> None:
        self._make = make
        self.tasks: dict[str, asyncio.Task[list[str]]] = {}
        if not harness.FULL:
            for name in harness.BACKGROUND:
                if name in _SELECTED and name in harness.EARLY:
                    self._start(name)

    def _start(self, name: str) -> asyncio.Task[list[str]]:
        scenario = harness.BACKGROUND[name]
        task = asyncio.create_task(
            scenario(self._make, functools.partial(SESSION.record, name)), name=name
        )
        self.tasks[name] = task
        return task

    def __getitem__(self, name: str) -> asyncio.Task[list[str]]:
        return self.tasks.get(name) or self._start(name)


@pytest.fixture(scope="session")
async def background(server_url: str) -> AsyncIterator[BackgroundRuns]:
    """The selected background scenarios (see :class:`BackgroundRuns`)."""
    async with _clusters(server_url) as make:
        runs = BackgroundRuns(make)
        try:
            yield runs
        finally:
            for task in runs.tasks.values():
                task.cancel()
            await asyncio.gather(*runs.tasks.values(), return_exceptions=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    entry = SESSION.results.get(item.name)
    if entry is None:
        return report
    message = None
    if call.excinfo is not None:
        message = (str(call.excinfo.value).splitlines() or [""])[0][:400]
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            entry["outcome"] = "xfailed"
            entry["xfail_reason"] = str(report.wasxfail)[:400]
        else:
            entry["outcome"] = report.outcome
            if report.failed:
                entry["failure"] = message
    elif report.failed:
        entry[f"{report.when}_error"] = message
        entry.setdefault("outcome", "error")
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not SESSION.results:
        return
    terminalreporter.section(f"fault scenarios ({harness.SCALE})")
    for name, entry in sorted(SESSION.results.items(), key=lambda e: str(e[1].get("nodeid"))):
        counts = {k: v for k, v in entry.items() if k not in ("nodeid", "outcome", "scale")}
        terminalreporter.write_line(f"{name}: {entry.get('outcome', '?')}")
        terminalreporter.write_line(f"    {json.dumps(counts, sort_keys=True, default=str)}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not SESSION.results:
        return
    target = Path(
        os.environ.get("FAULT_RESULTS")
        or REPO_ROOT / ".local" / "faults" / f"results-{harness.SCALE}.json"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "scale": harness.SCALE,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log_dir": str(SESSION.log_dir),
        "scenarios": SESSION.results,
    }
    target.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
