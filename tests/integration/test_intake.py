"""Webhook intake on real PostgreSQL and the real local queue: status codes, storage, outbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from psycopg import OperationalError

from scripts.send_sample_webhook import status_webhook, text_message_webhook
from shared_code.bus.local_queue import LocalQueue
from shared_code.bus.port import OutgoingMessage, PublishError
from shared_code.db.pool import Pool
from shared_code.outbox import sweep_outbox
from shared_code.processing import EventProcessor, Outcome, StatusRecorder
from shared_code.webhook_intake import WebhookIntake, answer_verification
from shared_code.whatsapp.payloads import StatusEvent
from shared_code.whatsapp.signature import sign

pytestmark = pytest.mark.integration

SECRET = "test-app-secret"
QUEUE = "inbound-events"


def signed(payload: object) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    return body, sign(body, SECRET)


def sample_text(sender: str = "15551230001", text: str = "hi") -> dict[str, object]:
    return text_message_webhook(
        phone_number_id="100000000000001",
        waba_id="200000000000001",
        sender=sender,
        name="Ana",
        text=text,
    )


class HeldBus:
    """A broker that accepts only when the test lets it: shows what waits for publishing."""

    def __init__(self, inner: LocalQueue) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.started = 0

    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        self.started += 1
        await self.release.wait()
        await self.inner.publish(queue, messages)

    async def close(self) -> None:
        pass


class RefusingBus:
    """A broker that is down: every publish is refused."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        self.attempts += 1
        raise PublishError("broker unavailable")

    async def close(self) -> None:
        pass


async def event_rows(pool: Pool) -> list[tuple[str, int, int, str | None]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status, event_count, duplicate_count, reason "
            "FROM whatsapp_webhook_events ORDER BY id"
        )
        return await cursor.fetchall()


def intake(pool: Pool, bus: object) -> WebhookIntake:
    return WebhookIntake(pool=pool, bus=bus, queue=QUEUE, app_secret=SECRET)  # type: ignore[arg-type]


async def test_a_signed_webhook_is_stored_and_published(
    pool: Pool, local_queue: LocalQueue
) -> None:
    body, signature = signed(sample_text())
    service = intake(pool, local_queue)
    answer = await service.receive(body, signature)
    assert answer.status_code == 200
    await service.drain()
    assert await event_rows(pool) == [("published", 1, 0, None)]
    assert await local_queue.count_active(QUEUE) == 1
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    assert session.session_id == "100000000000001:15551230001"
    message = await session.receive()
    assert message is not None
    envelope = json.loads(message.body)
    assert envelope["kind"] == "message"
    assert envelope["webhook_event_id"] >= 1
    assert message.message_id == envelope["message"]["id"]


async def test_the_answer_does_not_wait_for_the_broker(pool: Pool, local_queue: LocalQueue) -> None:
    held = HeldBus(local_queue)
    service = intake(pool, held)
    body, signature = signed(sample_text())
    answer = await asyncio.wait_for(service.receive(body, signature), timeout=5)
    assert answer.status_code == 200
    # Stored (Meta may stop retrying) but not yet published: the sweeper's case if we stop now.
    assert await event_rows(pool) == [("pending", 1, 0, None)]
    held.release.set()
    await service.drain()
    assert await event_rows(pool) == [("published", 1, 0, None)]
    assert await local_queue.count_active(QUEUE) == 1


async def test_a_stuck_broker_holds_answers_only_briefly_and_never_turns_webhooks_away(
    pool: Pool, local_queue: LocalQueue
) -> None:
    # Before: a batch waited for a publish slot without limit, inside the 5-s store timeout, so
    # while the slots were busy (a stuck broker, bodies with thousands of statuses) every webhook
    # got 503 and opened the storage circuit: 12,887 503s in the full fuzz run, PostgreSQL fine.
    held = HeldBus(local_queue)
    service = WebhookIntake(
        pool=pool,
        bus=held,
        queue=QUEUE,
        app_secret=SECRET,
        max_publishes_in_flight=1,
        store_timeout_seconds=1.0,
        publish_slot_wait_seconds=0.3,
    )
    first = signed(sample_text(sender="15551230001"))
    assert (await asyncio.wait_for(service.receive(*first), timeout=5)).status_code == 200
    waiting = asyncio.create_task(service.receive(*signed(sample_text(sender="15551230002"))))
    await asyncio.sleep(0.1)
    # Stored, and its answer waits a little for the one publish slot, which the first holds.
    assert not waiting.done()
    assert (await asyncio.wait_for(waiting, timeout=5)).status_code == 200
    # Past the store timeout several times over: still answered 200, the circuit stays closed.
    for n in range(3, 8):
        body, signature = signed(sample_text(sender=f"155512300{n:02d}"))
        answer = await asyncio.wait_for(service.receive(body, signature), timeout=5)
        assert answer.status_code == 200
    assert [row[0] for row in await event_rows(pool)] == ["pending"] * 7
    held.release.set()
    await service.drain()
    assert held.started == 1
    statuses = [row[0] for row in await event_rows(pool)]
    assert statuses == ["published"] + ["pending"] * 6
    # The ones that found no slot are the sweeper's, as after a crash: none is lost.
    report = await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=0)
    assert report.published == 6
    assert [row[0] for row in await event_rows(pool)] == ["published"] * 7
    assert await local_queue.count_active(QUEUE) == 7


async def test_rows_published_close_together_are_marked_by_one_statement_after_the_answer(
    pool: Pool, local_queue: LocalQueue
) -> None:
    service = WebhookIntake(
        pool=pool, bus=local_queue, queue=QUEUE, app_secret=SECRET, mark_linger_seconds=30
    )
    for n in range(3):
        body, signature = signed(sample_text(sender=f"1555123000{n}"))
        assert (await service.receive(body, signature)).status_code == 200
    while await local_queue.count_active(QUEUE) < 3:
        await asyncio.sleep(0.01)
    # On the bus already, marked not yet: the mark waits for its linger (or a drain).
    assert [row[0] for row in await event_rows(pool)] == ["pending"] * 3
    await service.drain()
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*), count(DISTINCT published_at) FROM whatsapp_webhook_events"
            " WHERE status = 'published'"
        )
        assert await cursor.fetchone() == (3, 1)  # one UPDATE: one now() for all three


async def test_a_redelivered_webhook_is_stored_once_and_published_once(
    pool: Pool, local_queue: LocalQueue
) -> None:
    body, signature = signed(sample_text())
    service = intake(pool, local_queue)
    for _ in range(3):
        assert (await service.receive(body, signature)).status_code == 200
    await service.drain()
    assert await event_rows(pool) == [("published", 1, 2, None)]
    assert await local_queue.count_active(QUEUE) == 1


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, "sha1=abc", "garbage"],
)
async def test_missing_or_wrong_signature_is_401_and_nothing_is_stored(
    pool: Pool, local_queue: LocalQueue, signature: str | None
) -> None:
    body, _ = signed(sample_text())
    answer = await intake(pool, local_queue).receive(body, signature)
    assert answer.status_code == 401
    assert await event_rows(pool) == []


async def test_signature_with_another_secret_is_401(pool: Pool, local_queue: LocalQueue) -> None:
    body = json.dumps(sample_text()).encode()
    answer = await intake(pool, local_queue).receive(body, sign(body, "other-secret"))
    assert answer.status_code == 401


async def test_a_body_over_one_mebibyte_is_413(pool: Pool, local_queue: LocalQueue) -> None:
    body = b'{"object":"whatsapp_business_account","pad":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    answer = await intake(pool, local_queue).receive(body, sign(body, SECRET))
    assert answer.status_code == 413
    assert await event_rows(pool) == []


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        (b"", "empty"),
        (b"not json at all", "JSON"),
        (b'{"object":"page","entry":[]}', "page"),
        (b"[1, 2, 3]", ""),
    ],
)
async def test_signed_but_unreadable_bodies_are_stored_as_invalid_and_answered_200(
    pool: Pool, local_queue: LocalQueue, body: bytes, reason_part: str
) -> None:
    answer = await intake(pool, local_queue).receive(body, sign(body, SECRET))
    assert answer.status_code == 200
    [(status, count, _, reason)] = await event_rows(pool)
    assert (status, count) == ("invalid", 0)
    assert reason is not None and reason_part in reason
    assert await local_queue.count_active(QUEUE) == 0


async def test_unknown_fields_are_carried_not_rejected(pool: Pool, local_queue: LocalQueue) -> None:
    payload = sample_text()
    payload["brand_new_top_level"] = {"x": 1}
    entry = payload["entry"][0]  # type: ignore[index]
    entry["changes"][0]["value"]["messages"][0]["new_field"] = [1, 2]
    body, signature = signed(payload)
    service = intake(pool, local_queue)
    assert (await service.receive(body, signature)).status_code == 200
    await service.drain()
    assert (await event_rows(pool))[0][:2] == ("published", 1)


async def test_other_webhook_fields_are_stored_as_ignored(
    pool: Pool, local_queue: LocalQueue
) -> None:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "200000000000001",
                "changes": [
                    {
                        "field": "account_update",
                        "value": {"event": "VERIFIED_ACCOUNT", "phone_number": "15550783881"},
                    }
                ],
            }
        ],
    }
    body, signature = signed(payload)
    assert (await intake(pool, local_queue).receive(body, signature)).status_code == 200
    assert (await event_rows(pool))[0][:2] == ("ignored", 0)


async def test_storage_failure_answers_503_so_meta_retries(
    pool: Pool, local_queue: LocalQueue
) -> None:
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE whatsapp_webhook_events RENAME TO unavailable")
    body, signature = signed(sample_text())
    answer = await intake(pool, local_queue).receive(body, signature)
    assert answer.status_code == 503
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE unavailable RENAME TO whatsapp_webhook_events")
    # Meta's retry of the same body then goes through.
    assert (await intake(pool, local_queue).receive(body, signature)).status_code == 200


def sample_status(wamid: str = "wamid.OUT1", status: str = "delivered") -> dict[str, object]:
    return status_webhook(
        phone_number_id="100000000000001",
        waba_id="200000000000001",
        recipient="15551230002",
        wamid=wamid,
        status=status,
    )


class FailingStatusRecorder(StatusRecorder):
    """The database refuses status writes (the webhook rows still go in)."""

    async def apply(self, event: StatusEvent) -> Outcome:
        raise OperationalError("statuses table unavailable")


async def status_history(pool: Pool) -> list[tuple[str, str]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT wamid, status FROM whatsapp_message_statuses ORDER BY received_at"
        )
        return await cursor.fetchall()


async def test_a_status_is_applied_by_the_intake_itself_and_never_queued(
    pool: Pool, local_queue: LocalQueue
) -> None:
    service = intake(pool, local_queue)
    for status, timestamp in (
        ("sent", "1700000000"),
        ("delivered", "1700000001"),
        ("delivered", "1700000002"),
    ):
        payload = sample_status(status=status)
        payload["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"] = timestamp  # type: ignore[index]
        body, signature = signed(payload)
        assert (await service.receive(body, signature)).status_code == 200
    await service.drain()
    assert [row[0] for row in await event_rows(pool)] == ["published", "published", "published"]
    # Two distinct bodies of the same (wamid, status) are one history row.
    assert await status_history(pool) == [("wamid.OUT1", "sent"), ("wamid.OUT1", "delivered")]
    assert await local_queue.count_active(QUEUE) == 0


async def test_publish_failure_keeps_the_event_pending_for_the_sweeper(
    pool: Pool, local_queue: LocalQueue
) -> None:
    refusing = RefusingBus()
    first, first_signature = signed(sample_text(sender="15551230001"))
    second, second_signature = signed(sample_status())
    service = intake(pool, refusing)
    assert (await service.receive(first, first_signature)).status_code == 200
    assert (await service.receive(second, second_signature)).status_code == 200
    await service.drain()
    # The status needed no broker; the message waits for the sweeper.
    assert [row[0] for row in await event_rows(pool)] == ["pending", "published"]
    assert await status_history(pool) == [("wamid.OUT1", "delivered")]

    report = await sweep_outbox(pool, refusing, QUEUE, min_age_seconds=0)
    assert report.failed == 1 and report.published == 0

    report = await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=0)
    assert report.published == 1
    assert [row[0] for row in await event_rows(pool)] == ["published", "published"]
    assert await local_queue.count_active(QUEUE) == 1
    # Sweeping again finds nothing, and a republish of the same ids is deduplicated.
    assert (await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=0)).published == 0


async def test_a_status_the_intake_could_not_apply_is_queued_by_the_sweeper(
    pool: Pool, local_queue: LocalQueue
) -> None:
    service = WebhookIntake(
        pool=pool,
        bus=local_queue,
        queue=QUEUE,
        app_secret=SECRET,
        statuses=FailingStatusRecorder(pool),
    )
    body, signature = signed(sample_status())
    assert (await service.receive(body, signature)).status_code == 200
    await service.drain()
    assert [row[:1] for row in await event_rows(pool)] == [("pending",)]
    assert await status_history(pool) == []

    assert (await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=0)).published == 1
    session = await local_queue.accept_next_session(QUEUE)
    assert session is not None
    message = await session.receive()
    assert message is not None and message.subject == "status"
    # The processor applies it as the intake would have: no message has that wamid yet.
    outcome = await EventProcessor(pool, NoRouting()).handle(message.body)
    assert outcome is Outcome.STATUS_PENDING
    assert await status_history(pool) == [("wamid.OUT1", "delivered")]


class NoRouting:
    async def route(self, message: object) -> None:
        raise AssertionError("a status is never routed")


async def test_the_sweeper_leaves_young_pending_events_to_their_own_request(
    pool: Pool, local_queue: LocalQueue
) -> None:
    body, signature = signed(sample_text())
    service = intake(pool, RefusingBus())
    await service.receive(body, signature)
    await service.drain()
    report = await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=3600)
    assert report.published == 0


def test_verification_echoes_the_challenge_only_for_the_right_token() -> None:
    good = {"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "1158201444"}
    assert answer_verification(good, "tok").status_code == 200
    assert answer_verification(good, "tok").body == "1158201444"
    assert answer_verification({**good, "hub.verify_token": "nope"}, "tok").status_code == 403
    assert answer_verification({**good, "hub.mode": "unsubscribe"}, "tok").status_code == 403
    assert answer_verification({"hub.mode": "subscribe"}, "tok").status_code == 403
