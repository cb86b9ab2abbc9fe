"""The real intake and processor on a real PostgreSQL, and the promises checked after each batch.

A batch of bodies is posted concurrently (so the intake's group commit puts several in one
INSERT, as under load), then :meth:`IntakeHarness.post` checks:

- every answer is 200 for a signed body up to 1 MiB, 413 over it, 401 unsigned; never >= 500;
- every body answered 200 is in ``whatsapp_webhook_events`` byte for byte (by sha256), an
  ``invalid`` one with a reason, and ``duplicate_count`` counts every repeat exactly;
- a body not accepted is not stored;
- the body's valid messages (:attr:`FuzzBody.must_publish`) reached the bus, and no row is left
  ``pending`` for the sweeper once the intake has drained (with a working bus, a pending row
  means some content broke the publish or a status write);
- every queued event goes through the real processor (orchestrator, echo agent, a Graph API
  that answers 200) without an exception: a poison event must be stored or rejected, never
  raised on every delivery.

Problems come back as text, so a failure lists all of them with the body that caused each.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from psycopg import sql

from scripts.send_sample_webhook import text_message_webhook
from shared_code.bus.local_queue import LocalQueue
from shared_code.db.pool import Pool, open_pool
from shared_code.orchestrator.agent_routing import parse_routing_rules
from shared_code.orchestrator.agents import AgentRegistry, EchoAgent, TextReply
from shared_code.orchestrator.orchestrator import Orchestrator
from shared_code.processing import EventProcessor, Outcome
from shared_code.secrets import Secret
from shared_code.webhook_intake import WebhookIntake
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.signature import sign
from tests.fuzz.bodies import MAX_BODY_BYTES, FuzzBody

SECRET = "fuzz-app-secret"
QUEUE = "inbound-events"
OUTBOUND_QUEUE = "outbound-messages"
PHONE_NUMBER_ID = "100000000000001"
BAD_SIGNATURES = (None, "", "sha256=" + "0" * 64, "sha1=abc", "sha256=zz")


@dataclass(frozen=True, slots=True)
class Post:
    body: FuzzBody
    signed: bool = True
    # Which wrong signature an unsigned post carries (an index into BAD_SIGNATURES).
    bad_signature: int = 0

    @property
    def signature(self) -> str | None:
        if self.signed:
            return sign(self.body.body, SECRET)
        return BAD_SIGNATURES[self.bad_signature % len(BAD_SIGNATURES)]

    @property
    def expected_status(self) -> int:
        if len(self.body.body) > MAX_BODY_BYTES:
            return 413
        return 200 if self.signed else 401


def _graph_that_answers_ok() -> GraphApiClient:
    def meta(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"success": True})

    return GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=PHONE_NUMBER_ID,
        http=httpx.AsyncClient(transport=httpx.MockTransport(meta)),
    )


class IntakeHarness:
    def __init__(self, pool: Pool, bus: LocalQueue, graph: GraphApiClient) -> None:
        self.pool = pool
        self.bus = bus
        self.intake = WebhookIntake(pool=pool, bus=bus, queue=QUEUE, app_secret=SECRET)
        orchestrator = Orchestrator(
            pool=pool,
            bus=bus,
            outbound_queue=OUTBOUND_QUEUE,
            graph=graph,
            agents=AgentRegistry({"echo": EchoAgent()}, "echo"),
            routing_rules=parse_routing_rules(""),
            timeout_seconds=5,
            fallback=TextReply(body="fallback"),
            history_limit=5,
        )
        self.processor = EventProcessor(pool, orchestrator)
        # Answers 200 per body hash since the last reset: what duplicate_count must say.
        self.accepted: Counter[bytes] = Counter()
        self.answers: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        # Valid messages whose publication was checked.
        self.promised = 0
        # The processor's outcome per bus message id (a wamid) since the last reset.
        self.outcome_of: dict[str, Outcome] = {}

    @classmethod
    @asynccontextmanager
    async def open(cls, database_url: str) -> AsyncIterator[IntakeHarness]:
        pool = await open_pool(database_url, max_size=4, name="fuzz")
        bus = LocalQueue(pool)
        graph = _graph_that_answers_ok()
        harness = cls(pool, bus, graph)
        try:
            yield harness
        finally:
            await harness.intake.drain()
            await graph.aclose()
            await bus.close()
            await pool.close()

    def summary(self) -> str:
        answers = ", ".join(f"{code}: {n}" for code, n in sorted(self.answers.items()))
        outcomes = ", ".join(f"{name}: {n}" for name, n in sorted(self.outcomes.items()))
        return (
            f"answers {{{answers}}}; valid messages checked {self.promised}; "
            f"processor outcomes {{{outcomes}}}"
        )

    async def reset(self) -> None:
        """Forget every row, so the next batch is checked (and replayed) on its own."""
        await self.intake.drain()
        async with self.pool.connection() as conn:
            # Every table but the migrations' own: tables added later are emptied too.
            cursor = await conn.execute(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'"
            )
            tables = [sql.Identifier(row[0]) for row in await cursor.fetchall()]
            await conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))
        self.accepted.clear()
        self.outcome_of.clear()

    async def post(self, posts: Sequence[Post]) -> list[str]:
        """Post concurrently, let the intake finish, process the queue; the broken promises."""
        already = {post.body.sha256 for post in posts if self.accepted[post.body.sha256]}
        answers = await asyncio.gather(*(self._receive(post) for post in posts))
        problems = []
        for post, status in zip(posts, answers, strict=True):
            self.answers[status] += 1
            if status == 200:
                self.accepted[post.body.sha256] += 1
            if status != post.expected_status:
                problems.append(
                    f"answered {status}, expected {post.expected_status}: {post.body.describe()}"
                )
        await self.intake.drain()
        stored = await self._stored({post.body.sha256 for post in posts})
        problems += self._check_storage(posts, stored)
        problems += await self._check_published(posts, already)
        problems += await self._check_nothing_pending(posts, stored)
        problems += await self._process_queued(posts, stored)
        return problems

    async def _receive(self, post: Post) -> int:
        try:
            answer = await self.intake.receive(post.body.body, post.signature)
        except Exception:
            # receive() must answer, whatever it is given: an exception is a 500 in Azure.
            return 500
        return answer.status_code

    async def _stored(self, hashes: set[bytes]) -> dict[bytes, tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT body_sha256, id, body, status, reason, duplicate_count"
                " FROM whatsapp_webhook_events WHERE body_sha256 = ANY(%s)",
                (list(hashes),),
            )
            return {bytes(row[0]): row[1:] for row in await cursor.fetchall()}

    def _check_storage(
        self, posts: Sequence[Post], stored: dict[bytes, tuple[Any, ...]]
    ) -> list[str]:
        problems = []
        for sha, post in {post.body.sha256: post for post in posts}.items():
            row = stored.get(sha)
            accepted = self.accepted[sha]
            if not accepted:
                if row is not None:
                    problems.append(f"stored without a 200 answer: {post.body.describe()}")
                continue
            if row is None:
                problems.append(f"answered 200 but not stored: {post.body.describe()}")
                continue
            _, body, status, reason, duplicates = row
            if bytes(body) != post.body.body:
                problems.append(f"stored bytes differ from the body: {post.body.describe()}")
            if status == "invalid" and not reason:
                problems.append(f"stored as invalid without a reason: {post.body.describe()}")
            if duplicates != accepted - 1:
                problems.append(
                    f"duplicate_count {duplicates} after {accepted} deliveries, expected "
                    f"{accepted - 1}: {post.body.describe()}"
                )
        return problems

    async def _check_published(self, posts: Sequence[Post], already: set[bytes]) -> list[str]:
        # A body accepted before this batch was published then (or is a duplicate now).
        expected = {
            wamid: post.body
            for post in posts
            if self.accepted[post.body.sha256] and post.body.sha256 not in already
            for wamid in post.body.must_publish
        }
        self.promised += len(expected)
        if not expected:
            return []
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT message_id FROM local_bus_duplicates"
                " WHERE queue = %s AND message_id = ANY(%s)",
                (QUEUE, list(expected)),
            )
            published = {row[0] for row in await cursor.fetchall()}
            # Over Service Bus's 256 KB (a very long text, escaped): refused as Azure would, and
            # recorded as failed with the reason instead of being lost.
            cursor = await conn.execute(
                "SELECT event_key FROM whatsapp_event_failures WHERE stage = 'publish'"
                " AND reason LIKE 'refused for good:%%exceed%%' AND event_key = ANY(%s)",
                (list(expected),),
            )
            published |= {row[0] for row in await cursor.fetchall()}
        return [
            f"valid message {wamid!r} never published: {body.describe()}"
            for wamid, body in expected.items()
            if wamid not in published
        ]

    async def _check_nothing_pending(
        self, posts: Sequence[Post], stored: dict[bytes, tuple[Any, ...]]
    ) -> list[str]:
        ids = {row[0]: sha for sha, row in stored.items()}
        if not ids:
            return []
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id, last_publish_error FROM whatsapp_webhook_events"
                " WHERE status = 'pending' AND id = ANY(%s)",
                (list(ids),),
            )
            pending = await cursor.fetchall()
        bodies = {post.body.sha256: post.body for post in posts}
        return [
            f"left pending after the intake drained ({error}): {bodies[ids[event_id]].describe()}"
            for event_id, error in pending
        ]

    async def _process_queued(
        self, posts: Sequence[Post], stored: dict[bytes, tuple[Any, ...]]
    ) -> list[str]:
        """Every queued inbound event through the processor, as the Functions host would."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM local_bus_messages WHERE queue = %s"
                " RETURNING sequence_number, message_id, body, application_properties",
                (QUEUE,),
            )
            queued = sorted(await cursor.fetchall())
            # The replies the echo agent queued: their sending is not under test here.
            await conn.execute("DELETE FROM local_bus_messages WHERE queue = %s", (OUTBOUND_QUEUE,))
        by_event_id = {row[0]: sha for sha, row in stored.items()}
        bodies = {post.body.sha256: post.body for post in posts}
        problems = []
        for _, message_id, body, properties in queued:
            try:
                outcome = await self.processor.handle(bytes(body))
            except Exception as error:
                source = bodies.get(by_event_id.get(properties.get("webhook_event_id"), b""))
                where = source.describe() if source else "an earlier body"
                problems.append(
                    f"processor raised {type(error).__name__} ({str(error)[:200]}) on "
                    f"{message_id!r}: {where}"
                )
                continue
            self.outcomes[outcome.value] += 1
            self.outcome_of[message_id] = outcome
        return problems

    async def normal_message_works(self) -> list[str]:
        """After whatever came before: a plain text message is accepted, queued, stored, answered."""
        payload = text_message_webhook(
            phone_number_id=PHONE_NUMBER_ID,
            waba_id="200000000000001",
            sender="15551239999",
            name="After The Fuzz",
            text="still there?",
        )
        wamid = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]  # type: ignore[index]
        body = FuzzBody(json.dumps(payload).encode(), "normal", frozenset({wamid}))
        problems = await self.post([Post(body)])
        if self.outcome_of.get(wamid) is not Outcome.STORED:
            problems.append(f"the normal message was not stored: {self.outcome_of.get(wamid)}")
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM whatsapp_messages WHERE idempotency_key = %s",
                (f"reply:{wamid}",),
            )
            row = await cursor.fetchone()
        if not row or row[0] != 1:
            problems.append("the normal message got no reply row")
        return problems
