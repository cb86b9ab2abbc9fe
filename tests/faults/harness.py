"""The fault suite's harness: the bridge as real processes, Meta played by the test, and counts.

Every process (dev hosts, the standalone Cloud API simulator) writes its output to a file that
is registered in :data:`SESSION`, so the privacy scenario can read every line the suite caused.
Every phone number, text and wamid a scenario sends is registered there too.

Sizes: ``FAULT_SCALE=short`` (the default, part of the normal test run) or ``full``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psycopg

from local.simulator.records import new_wamid
from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign
from tests.conftest import REPO_ROOT

_T = TypeVar("_T")

SCALE = os.environ.get("FAULT_SCALE", "short").strip().lower() or "short"
if SCALE not in ("short", "full"):
    raise ValueError(f"FAULT_SCALE must be short or full, not {SCALE!r}")
FULL = SCALE == "full"


def sized(short: _T, full: _T) -> _T:
    return full if FULL else short


# Random per session: a secret found in a log cannot be a coincidence.
APP_SECRET = "fault-app-secret-" + secrets.token_hex(8)
ACCESS_TOKEN = "EAAFault" + secrets.token_hex(20)
VERIFY_TOKEN = "fault-verify-" + secrets.token_hex(8)
PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
DISPLAY_PHONE_NUMBER = "15550783881"
WEBHOOK_PATH = "/api/v1/whatsapp/webhook"
# The dev host's SIGTERM grace (local/host.py SHUTDOWN_GRACE_SECONDS).
HOST_SHUTDOWN_GRACE_SECONDS = 10.0


# --- what the session saw --------------------------------------------------------------------


@dataclass
class Sensitive:
    """Values that must never appear in a log."""

    wa_ids: set[str] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)
    wamids: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=lambda: {APP_SECRET, ACCESS_TOKEN, VERIFY_TOKEN})


@dataclass
class FaultSession:
    log_dir: Path | None = None
    logs: list[Path] = field(default_factory=list)
    sensitive: Sensitive = field(default_factory=Sensitive)
    # Scenario name -> counts; filled as a scenario goes, so a failing one still reports.
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, scenario: str, **counts: Any) -> dict[str, Any]:
        entry = self.results.setdefault(scenario, {})
        entry.update(counts)
        return entry


SESSION = FaultSession()

Recorder = Callable[..., dict[str, Any]]
# A scenario run in the background: given a cluster factory and its recorder, returns the
# problems found (empty when the promise held).
BackgroundScenario = Callable[
    [Callable[[str], Awaitable["Cluster"]], Recorder], Coroutine[Any, Any, list[str]]
]
# Test name -> its scenario. Scenarios that mostly wait (a lock to expire after a kill, the
# sweeper's next minute) run as tasks their tests await; the EARLY ones start with the first
# scenario after the answer-time one, so their waits overlap the scenarios that follow (at the
# short size; at the full size each runs alone).
BACKGROUND: dict[str, BackgroundScenario] = {}
EARLY: set[str] = set()


def runs_in_background(
    test_name: str, *, early: bool = False
) -> Callable[[BackgroundScenario], BackgroundScenario]:
    def register(scenario: BackgroundScenario) -> BackgroundScenario:
        BACKGROUND[test_name] = scenario
        if early:
            EARLY.add(test_name)
        return scenario

    return register


def nonzero(counts: Mapping[str, Any], *keys: str) -> list[str]:
    """The problems among counts that must be 0."""
    return [f"{key} = {counts.get(key)}" for key in keys if counts.get(key)]


def log_dir() -> Path:
    if SESSION.log_dir is None:
        SESSION.log_dir = Path(tempfile.mkdtemp(prefix="fault-logs-"))
    return SESSION.log_dir


# --- users, texts and Meta's webhook bodies ---------------------------------------------------


def new_users(count: int, rng: random.Random) -> list[str]:
    """Distinct wa_ids shaped like real ones (country code + number, digits only)."""
    users: set[str] = set()
    while len(users) < count:
        users.add("1" + rng.choice(("555", "646", "917", "415")) + f"{rng.randrange(10**7):07d}")
    ordered = sorted(users)
    rng.shuffle(ordered)
    SESSION.sensitive.wa_ids.update(ordered)
    return ordered


def new_text(rng: random.Random, label: str = "hello") -> str:
    """A unique text; the ``tx`` token lets the log check find any of them quickly."""
    text = f"{label} tx{rng.getrandbits(48):012x}"
    SESSION.sensitive.texts.add(text)
    return text


def _envelope(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": DISPLAY_PHONE_NUMBER,
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            **value,
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def inbound_message(
    wa_id: str,
    *,
    text: str | None = None,
    wamid: str | None = None,
    message: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Meta's webhook for one user message: a text, or ``message`` fields of another type.
    Wamids are Meta's shape (base64 holding the user's number), so logs leaking them show."""
    wamid = wamid or new_wamid(wa_id, inbound=True)
    SESSION.sensitive.wamids.add(wamid)
    item: dict[str, Any] = {"from": wa_id, "id": wamid, "timestamp": str(int(time.time()))}
    if message is not None:
        item.update(message)
    else:
        item.update({"type": "text", "text": {"body": text if text is not None else ""}})
    payload = _envelope(
        {"contacts": [{"profile": {"name": "Fault Suite"}, "wa_id": wa_id}], "messages": [item]}
    )
    return wamid, payload


def status_update(
    wamid: str,
    status: str,
    recipient: str,
    *,
    callback_data: str | None = None,
    error_code: int | None = None,
    at: int | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(at if at is not None else int(time.time())),
        "recipient_id": recipient,
    }
    if callback_data is not None:
        item["biz_opaque_callback_data"] = callback_data
    if error_code is not None:
        item["errors"] = [
            {"code": error_code, "title": "Message undeliverable", "message": "undeliverable"}
        ]
    return _envelope({"statuses": [item]})


def encode(payload: Mapping[str, Any], variant: int = 0) -> bytes:
    """The body bytes; another ``variant`` is the same JSON spelled differently (another sha256),
    as when Meta re-serialises a retried delivery."""
    if variant == 0:
        return json.dumps(payload, separators=(",", ":")).encode()
    return json.dumps(payload, indent=variant).encode()


def signed_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, APP_SECRET)}


# --- Meta's side of the webhook: posts, answers, retries ---------------------------------------


@dataclass
class Attempt:
    sent_at: float
    seconds: float | None
    status: int | None
    error: str | None
    phase: str


@dataclass(eq=False)
class Delivery:
    """One webhook body and every attempt to deliver it."""

    body: bytes
    wamids: tuple[str, ...]
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return any(a.status == 200 for a in self.attempts)

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.body).digest()


class Meta:
    """Posts signed webhooks the way Meta does: concurrently, retrying anything but a 2xx."""

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 32,
        timeout: float = 30.0,
        phase: Callable[[], str] = lambda: "",
    ) -> None:
        self.url = url
        self._limit = asyncio.Semaphore(concurrency)
        self._timeout = timeout
        self._phase = phase
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Meta:
        self._session = aiohttp.ClientSession(
            # A connection per post, as Meta's deliveries come: no keep-alive race to count.
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, delivery: Delivery) -> Attempt:
        assert self._session is not None
        async with self._limit:
            phase = self._phase()
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            try:
                async with self._session.post(
                    self.url, data=delivery.body, headers=signed_headers(delivery.body)
                ) as response:
                    await response.read()
                    status = response.status
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientConnectorError:
                error = "refused"
            except (aiohttp.ClientError, OSError) as caught:
                error = type(caught).__name__
            attempt = Attempt(
                started, time.monotonic() - started if error is None else None, status, error, phase
            )
            if error == "timeout":
                attempt.seconds = self._timeout
            delivery.attempts.append(attempt)
            return attempt

    async def deliver(
        self,
        delivery: Delivery,
        *,
        deadline: float,
        first_pause: float = 0.5,
        max_pause: float = 8.0,
    ) -> bool:
        """Post until a 200 (Meta retries for days; here until ``deadline``, monotonic)."""
        pause = first_pause
        while True:
            attempt = await self.post(delivery)
            if attempt.status == 200:
                return True
            if time.monotonic() + pause > deadline:
                return False
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, max_pause)


def answer_counts(deliveries: Iterable[Delivery]) -> dict[str, int]:
    attempts = [a for d in deliveries for a in d.attempts]
    codes = Counter(
        str(a.status) if a.status is not None else (a.error or "error") for a in attempts
    )
    return {
        "webhook_posts": len(attempts),
        "answered_200": codes.pop("200", 0),
        "answered_503": codes.pop("503", 0),
        "answered_500": codes.pop("500", 0),
        **{f"answered_{k}": v for k, v in sorted(codes.items())},
    }


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A subprocess with its output in a registered log file; restartable (a new file each
    time, so a killed run's output is kept)."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], ready_marker: str
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.ready_marker = ready_marker
        self.popen: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.starts = 0
        self.exit_codes: list[int] = []

    async def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        self.log_path = log_dir() / f"{self.name}-{self.starts}-{secrets.token_hex(3)}.log"
        SESSION.logs.append(self.log_path)
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, *self.argv],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while self.ready_marker not in self.log():
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log()}")
            await asyncio.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> float | None:
        """Seconds until the process exited, or None if it still runs after ``timeout``."""
        assert self.popen is not None
        started = time.monotonic()
        while self.popen.poll() is None:
            if time.monotonic() - started > timeout:
                return None
            await asyncio.sleep(0.05)
        self.exit_codes.append(self.popen.returncode)
        return time.monotonic() - started

    async def stop(self, timeout: float = 25.0) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.terminate()
        if await self.wait_exit(timeout) is None:
            self.kill()
            await self.wait_exit(10)
        return self.popen.returncode


def _base_env(database_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WHATSAPP_", "SENDER_", "AGENT_", "OUTBOX_", "FAULT_"))
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
            "WHATSAPP_WEBHOOK_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "WHATSAPP_BUSINESS_ACCOUNT_ID": WABA_ID,
            "BUS_BACKEND": "local",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Simulator:
    """The Cloud API simulator run on its own (``python -m local.simulator``), so it outlives
    the hosts a scenario kills; with its control endpoints."""

    def __init__(self, name: str, webhook_url: str, database_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process(
            name,
            [
                "-m",
                "local.simulator",
                "--port",
                str(self.port),
                "--webhook-url",
                webhook_url,
                "--phone-number-id",
                f"{PHONE_NUMBER_ID}:{DISPLAY_PHONE_NUMBER}",
                "--waba-id",
                WABA_ID,
                "--seed",
                "7",
            ],
            _base_env(database_url),
            "WhatsApp Cloud API simulator on",
        )
        self.missing_settings: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: object = None) -> Any:
        """One control request; (status, JSON). aiohttp, not httpx: httpx logs every URL at
        INFO, and these URLs hold the users' phone numbers."""
        if self._http is None:
            # No keep-alive: a request on a connection the server is closing fails with
            # ServerDisconnectedError, and a user's message must not be posted twice to retry.
            self._http = aiohttp.ClientSession(
                base_url=self.url,
                timeout=aiohttp.ClientTimeout(total=60),
                connector=aiohttp.TCPConnector(force_close=True),
            )
        async with self._http.request(method, path, json=body) as answer:
            return answer.status, await answer.json(content_type=None)

    async def _ok(self, method: str, path: str, body: object = None) -> Any:
        status, data = await self._call(method, path, body)
        if status != 200:
            raise AssertionError(f"simulator {method} {path.split('/')[2]}: {status} {data}")
        return data

    async def start(self) -> None:
        await self.process.start()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self.process.stop()

    async def configure(self, **changes: Any) -> set[str]:
        """Apply settings (``faults`` merged); returns the names this simulator does not know
        yet (dropped, and remembered in :attr:`missing_settings`) instead of failing."""
        missing: set[str] = set()
        while True:
            status, data = await self._call("PUT", "/simulator/config", changes)
            if status == 200:
                self.missing_settings |= missing
                return missing
            error = str(data.get("error", ""))
            names: set[str] = set()
            for prefix in ("unknown fault settings: ", "unknown settings: "):
                if error.startswith(prefix):
                    names = {n.strip() for n in error[len(prefix) :].split(",")}
            if not names:
                raise AssertionError(f"simulator refused {changes}: {data}")
            missing |= names
            if "faults" in changes and error.startswith("unknown fault settings"):
                changes = {
                    **changes,
                    "faults": {k: v for k, v in changes["faults"].items() if k not in names},
                }
            else:
                changes = {k: v for k, v in changes.items() if k not in names}

    async def open_windows(self, wa_ids: Iterable[str]) -> None:
        users = list(wa_ids)
        for start in range(0, len(users), 50):
            await asyncio.gather(
                *(
                    self._ok("POST", f"/simulator/users/{u}/window", {})
                    for u in users[start : start + 50]
                )
            )

    async def user_writes(self, wa_id: str, text: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok(
            "POST", f"/simulator/users/{wa_id}/messages", {"text": text}
        )
        SESSION.sensitive.wamids.add(str(result["wamid"]))
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok("GET", "/simulator/stats")
        return result

    async def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        path = f"/simulator/messages?to={to}" if to else "/simulator/messages"
        sent: list[dict[str, Any]] = (await self._ok("GET", path))["messages"]
        SESSION.sensitive.wamids.update(str(m["wamid"]) for m in sent)
        return sent

    async def webhooks_settled(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until no status webhook is pending; returns the stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            if stats.get("webhook_queue", 0) == 0 or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.3)


class Host:
    """One ``python -m local`` process (all functions, or ``--functions`` a subset) on a fixed
    port, so a restart is reachable at the same webhook URL."""

    def __init__(
        self,
        name: str,
        database_url: str,
        graph_url: str,
        *,
        port: int | None = None,
        functions: Sequence[str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["-m", "local", "--port", str(self.port), "--log-level", "INFO"]
        if functions:
            argv += ["--functions", *functions]
        env = _base_env(database_url)
        env["WHATSAPP_GRAPH_BASE_URL"] = graph_url
        if not FULL:
            # The short run overlaps scenarios (up to seven hosts, each holding its own receive
            # pool of 10): the app's pools at their smallest keep them within PostgreSQL's
            # default 100 connections.
            env["DATABASE_POOL_MAX_SIZE"] = "2"
        else:
            # The default budget (1,000 sends a minute, 10,000 a day) would make the full size
            # measure the daily cap instead of the promise: a number on a higher tier.
            env["RATE_LIMITS"] = json.dumps(
                {"default": {"per_second": 80, "per_minute": 4800, "per_day": 1_000_000}}
            )
        env.update(settings or {})
        self.process = Process(name, argv, env, "Listening on")

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    async def start(self) -> None:
        await self.process.start()

    async def restart(self) -> None:
        await self.process.start()


WEBHOOK_FUNCTIONS = ("webhook_receive",)
WORKER_FUNCTIONS = ("processor_handle_event", "sender_send_message", "maintenance_outbox_sweep")


class Cluster:
    """A simulator and the hosts of one scenario, all on one fresh database."""

    def __init__(self, name: str, database_url: str) -> None:
        self.name = name
        self.database_url = database_url
        self.webhook_port = free_port()
        self.webhook_url = f"http://127.0.0.1:{self.webhook_port}{WEBHOOK_PATH}"
        self.simulator = Simulator(f"{name}-simulator", self.webhook_url, database_url)
        self.hosts: list[Host] = []

    async def start_simulator(self, **config: Any) -> Simulator:
        await self.simulator.start()
        # Meta retries for hours with pauses growing to many minutes; capped at seconds here so
        # that a delivery refused during a fault arrives soon after it ends (less tightly at the
        # full size, where thousands of statuses retrying every 4 s are a storm Meta never sends).
        await self.simulator.configure(
            webhook_retry_max_interval_seconds=sized(4.0, 20.0), **config
        )
        return self.simulator

    async def start_host(
        self,
        role: str,
        *,
        functions: Sequence[str] | None = None,
        database_url: str | None = None,
        serves_webhook: bool = True,
        settings: Mapping[str, str] | None = None,
    ) -> Host:
        host = Host(
            f"{self.name}-{role}",
            database_url or self.database_url,
            self.simulator.url,
            port=self.webhook_port if serves_webhook else None,
            functions=functions,
            settings=settings,
        )
        self.hosts.append(host)
        await host.start()
        return host

    async def close(self) -> dict[str, list[int]]:
        codes: dict[str, list[int]] = {}
        for host in self.hosts:
            await host.process.stop()
            codes[host.process.name] = host.process.exit_codes
        await self.simulator.close()
        return codes


# --- the database and the counts -------------------------------------------------------------


async def query(database_url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall()


async def reply_counts(
    database_url: str, simulator: Simulator
) -> tuple[Counter[str], list[dict[str, Any]], int]:
    """Accepted sends at the simulator per inbound wamid (via the callback data
    ``outbound:<row id>`` and the row's idempotency key ``reply:<wamid>``); also the sends and
    how many of them match no reply row."""
    sent = await simulator.messages()
    rows = await query(
        database_url,
        "SELECT id, idempotency_key FROM whatsapp_messages WHERE direction = 'outbound'",
    )
    key_by_row = {f"outbound:{row_id}": key for row_id, key in rows}
    per_inbound: Counter[str] = Counter()
    unmatched = 0
    for message in sent:
        key = key_by_row.get(str(message["body"].get("biz_opaque_callback_data")))
        if key and key.startswith("reply:"):
            per_inbound[key.removeprefix("reply:")] += 1
        else:
            unmatched += 1
    return per_inbound, sent, unmatched


async def delivery_counts(
    database_url: str,
    simulator: Simulator,
    expected: Iterable[str],
    deliveries: Sequence[Delivery] = (),
) -> dict[str, Any]:
    """The promise in numbers for the inbound wamids ``expected``."""
    expected = set(expected)
    inbound = await query(
        database_url,
        "SELECT wamid, count(*) FROM whatsapp_messages WHERE direction = 'inbound' GROUP BY wamid",
    )
    stored = {wamid for wamid, _ in inbound}
    events = await query(
        database_url,
        "SELECT status, count(*), sum(duplicate_count) FROM whatsapp_webhook_events "
        "GROUP BY status",
    )
    per_inbound, sent, unmatched = await reply_counts(database_url, simulator)
    # Events the bridge gave up on (whatsapp_event_failures, where the schema has it): a
    # message among them answered 200 and never processed is a loss, whatever the reason says.
    gave_up: list[tuple[Any, ...]] = []
    if (await query(database_url, "SELECT to_regclass('whatsapp_event_failures')"))[0][0]:
        gave_up = await query(
            database_url,
            "SELECT stage, kind, left(reason, 120), count(*) FROM whatsapp_event_failures "
            "GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10",
        )
    histogram = Counter(per_inbound.get(w, 0) for w in expected)
    counts: dict[str, Any] = {
        "inbound_expected": len(expected),
        "inbound_rows": sum(n for _, n in inbound),
        "inbound_stored": len(expected & stored),
        "inbound_lost": len(expected - stored),
        "webhook_events": {status: int(n) for status, n, _ in events},
        "webhook_duplicates_counted": int(sum(d or 0 for _, _, d in events)),
        "replies_at_simulator": len(sent),
        "replied_exactly_once": histogram.get(1, 0),
        "replies_lost": histogram.get(0, 0),
        "replied_more_than_once": sum(n for k, n in histogram.items() if k > 1),
        "duplicate_replies": sum((k - 1) * n for k, n in histogram.items() if k > 1),
        "sends_without_reply_row": unmatched,
        "events_given_up": [
            {"stage": stage, "kind": kind, "reason": reason, "count": n}
            for stage, kind, reason, n in gave_up
        ],
    }
    if deliveries:
        ok = [d for d in deliveries if d.ok]
        hashes = {d.sha256 for d in ok}
        stored_hashes = {
            bytes(h)
            for (h,) in await query(
                database_url,
                "SELECT body_sha256 FROM whatsapp_webhook_events WHERE body_sha256 = ANY(%s)",
                ([*hashes],),
            )
        }
        ok_wamids = {w for d in ok for w in d.wamids}
        counts.update(answer_counts(deliveries))
        counts.update(
            {
                "bodies": len(deliveries),
                "bodies_answered_200": len(ok),
                "bodies_never_200": len(deliveries) - len(ok),
                "bodies_200_not_stored": len(hashes - stored_hashes),
                "messages_answered_200_lost": len(ok_wamids - stored),
                "messages_answered_200_unreplied": sum(
                    1 for w in ok_wamids if per_inbound.get(w, 0) == 0
                ),
            }
        )
    return counts


async def wait_for(
    what: str,
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    interval: float = 0.5,
) -> float:
    """Seconds until ``check`` held; raises TimeoutError naming ``what`` otherwise."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def wait_for_replies(
    database_url: str,
    simulator: Simulator,
    expected: Iterable[str],
    *,
    timeout: float,
    quiet: float = 3.0,
) -> float:
    """Wait until every expected wamid has a reply at the simulator (or ``timeout``), then for
    ``quiet`` more seconds in which a late duplicate would show up. Returns the seconds it took
    for the replies (``timeout`` if they never all came)."""
    expected = set(expected)
    started = time.monotonic()
    took = timeout
    while time.monotonic() - started < timeout:
        per_inbound, _, _ = await reply_counts(database_url, simulator)
        if all(per_inbound.get(w, 0) for w in expected):
            took = time.monotonic() - started
            break
        # Each look reads every send and reply row: rarer at the full size.
        await asyncio.sleep(sized(1.0, 5.0))
    await asyncio.sleep(quiet)
    return round(took, 1)
