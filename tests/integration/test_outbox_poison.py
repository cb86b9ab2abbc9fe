"""The outbox sweeper isolates poison (issue 12): one event the bus refuses must not hold the rest.

Before, the sweeper published the oldest 200 pending events in one call; one refusal failed the
call, so every sweep published nothing while valid messages answered 200 waited forever.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.bus.port import OutgoingMessage, PublishError
from shared_code.db.pool import Pool
from shared_code.outbox import sweep_outbox
from tests.integration.test_intake import (
    QUEUE,
    RefusingBus,
    event_rows,
    intake,
    sample_text,
    signed,
)

pytestmark = pytest.mark.integration


class PoisonAwareBus:
    """The real local queue, except that it refuses any publish holding a poison message id,
    the way a broker refuses a message it cannot take (too large, an id it rejects)."""

    def __init__(self, inner: LocalQueue, poison_ids: set[str], *, permanent: bool) -> None:
        self.inner = inner
        self.poison_ids = poison_ids
        self.permanent = permanent
        self.calls = 0

    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        self.calls += 1
        if any(m.message_id in self.poison_ids for m in messages):
            if self.permanent:
                raise PublishError("a message is too large", permanent=True)
            raise RuntimeError("refused")
        await self.inner.publish(queue, messages)

    async def close(self) -> None:
        pass


async def store_pending(pool: Pool, payloads: Sequence[dict[str, object]]) -> None:
    """Rows the intake stored but could not publish (the broker was down)."""
    service = intake(pool, RefusingBus())
    for payload in payloads:
        body, signature = signed(payload)
        assert (await service.receive(body, signature)).status_code == 200
    await service.drain()


def with_wamid(payload: dict[str, object], wamid: str) -> dict[str, object]:
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = wamid  # type: ignore[index]
    return payload


async def failures(pool: Pool) -> list[tuple[str, str | None, str, int]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT stage, event_key, reason, attempts FROM whatsapp_event_failures ORDER BY id"
        )
        return await cursor.fetchall()


async def test_a_poison_event_at_the_head_does_not_hold_the_others(
    pool: Pool, local_queue: LocalQueue
) -> None:
    payloads = [with_wamid(sample_text(sender="15551230000"), "wamid.POISON")]
    payloads += [sample_text(sender=f"1555123000{i}", text=f"good {i}") for i in range(1, 6)]
    await store_pending(pool, payloads)
    bus = PoisonAwareBus(local_queue, {"wamid.POISON"}, permanent=True)

    report = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0)

    assert (report.published, report.poisoned, report.failed) == (5, 1, 0)
    assert [row[0] for row in await event_rows(pool)] == ["failed"] + ["published"] * 5
    assert await local_queue.count_active(QUEUE) == 5
    [(stage, key, reason, attempts)] = await failures(pool)
    assert (stage, key, attempts) == ("publish", "wamid.POISON", 1)
    assert "for good" in reason
    # Failed is final: the next sweep neither retries it nor counts it again.
    again = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0)
    assert (again.published, again.poisoned, again.failed) == (0, 0, 0)


async def test_an_event_refused_without_reason_is_poison_only_after_three_attempts(
    pool: Pool, local_queue: LocalQueue
) -> None:
    # A refusal the bus does not call permanent may be a reset connection in an outage (the
    # next publish succeeds): one such refusal must not cost a message answered 200.
    await store_pending(pool, [with_wamid(sample_text(sender="15551230000"), "wamid.POISON")])
    bus = PoisonAwareBus(local_queue, {"wamid.POISON"}, permanent=False)
    reports = []
    for sweep in range(3):
        # Others keep arriving, and the bus takes them: evidence that it works.
        await store_pending(pool, [sample_text(sender=f"155512301{sweep}0", text=f"s{sweep}")])
        reports.append(await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0))
    # Its third refused attempt (the intake's own was the first) is the one that isolates it.
    assert [(r.published, r.poisoned, r.failed) for r in reports] == [
        (1, 0, 1),
        (1, 1, 0),
        (1, 0, 0),
    ]
    assert (await event_rows(pool))[0][0] == "failed"
    [(stage, key, reason, _)] = await failures(pool)
    assert (stage, key) == ("publish", "wamid.POISON")
    assert "refused" in reason and "for good" not in reason


async def test_an_event_refused_once_while_others_pass_stays_pending(
    pool: Pool, local_queue: LocalQueue
) -> None:
    class FlakyOnce(PoisonAwareBus):
        """Refuses the flaky event's batch and its first lone publish (reset connections),
        then takes everything."""

        refusals = 2

        async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
            if self.refusals and any(m.message_id in self.poison_ids for m in messages):
                self.refusals -= 1
                raise RuntimeError("connection reset")
            await self.inner.publish(queue, messages)

    await store_pending(pool, [with_wamid(sample_text(sender="15551230000"), "wamid.FLAKY")])
    await store_pending(pool, [sample_text(sender="15551230001")])
    bus = FlakyOnce(local_queue, {"wamid.FLAKY"}, permanent=False)
    first = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0)
    assert (first.published, first.poisoned, first.failed) == (1, 0, 1)
    second = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0)
    assert (second.published, second.poisoned) == (1, 0)
    assert [row[0] for row in await event_rows(pool)] == ["published", "published"]
    assert await failures(pool) == []


async def test_a_lone_event_refused_for_good_is_marked_failed(
    pool: Pool, local_queue: LocalQueue
) -> None:
    await store_pending(pool, [with_wamid(sample_text(), "wamid.POISON")])
    bus = PoisonAwareBus(local_queue, {"wamid.POISON"}, permanent=True)
    report = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0)
    assert (report.published, report.poisoned) == (0, 1)
    assert [row[0] for row in await event_rows(pool)] == ["failed"]


async def test_the_good_messages_of_a_body_with_one_poison_message_are_published(
    pool: Pool, local_queue: LocalQueue
) -> None:
    payload = sample_text(text="good")
    value = payload["entry"][0]["changes"][0]["value"]  # type: ignore[index]
    poison = json.loads(json.dumps(value["messages"][0]))
    poison["id"] = "wamid.POISON"
    value["messages"].append(poison)
    await store_pending(pool, [payload])
    bus = PoisonAwareBus(local_queue, {"wamid.POISON"}, permanent=True)

    report = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0)

    assert report.poisoned == 1
    assert [row[0] for row in await event_rows(pool)] == ["failed"]
    assert await local_queue.count_active(QUEUE) == 1
    assert [row[1] for row in await failures(pool)] == ["wamid.POISON"]


async def test_a_broker_that_is_down_leaves_everything_pending_and_is_not_hammered(
    pool: Pool, local_queue: LocalQueue
) -> None:
    await store_pending(pool, [sample_text(sender=f"155512300{i:02d}") for i in range(20)])
    refusing = RefusingBus()
    report = await sweep_outbox(pool, refusing, QUEUE, min_age_seconds=0)
    assert (report.published, report.poisoned, report.failed) == (0, 0, 20)
    # The batch, then three events alone: then the sweep stops until the next run.
    assert refusing.attempts == 4
    assert {row[0] for row in await event_rows(pool)} == {"pending"}
    assert await failures(pool) == []
    # Once it is back, everything goes.
    assert (await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=0)).published == 20


async def test_one_sweep_walks_past_rows_it_left_pending(
    pool: Pool, local_queue: LocalQueue
) -> None:
    # More pending rows than one claim takes: the sweep goes on after the first batch even
    # though a row of it stayed pending, and takes no row twice.
    payloads = [with_wamid(sample_text(sender="15551230000"), "wamid.POISON")]
    payloads += [sample_text(sender=f"155512300{i:02d}") for i in range(1, 12)]
    await store_pending(pool, payloads)
    bus = PoisonAwareBus(local_queue, {"wamid.POISON"}, permanent=True)
    report = await sweep_outbox(pool, bus, QUEUE, min_age_seconds=0, batch_size=5)
    assert (report.published, report.poisoned) == (11, 1)
    assert await local_queue.count_active(QUEUE) == 11


async def test_a_pending_row_with_nothing_to_publish_takes_the_status_its_body_deserves(
    pool: Pool, local_queue: LocalQueue
) -> None:
    # Written by hand or by an older version: the sweeper must not call them "published".
    too_long = with_wamid(sample_text(), "wamid." + "x" * 200)
    async with pool.connection() as conn:
        for body in (b"{not json", json.dumps(too_long).encode()):
            await conn.execute(
                "INSERT INTO whatsapp_webhook_events (body, body_sha256, status) "
                "VALUES (%s, sha256(%s), 'pending')",
                (body, body),
            )
    report = await sweep_outbox(pool, local_queue, QUEUE, min_age_seconds=0)
    assert (report.published, report.poisoned) == (0, 2)
    rows = await event_rows(pool)
    assert [row[0] for row in rows] == ["invalid", "invalid"]
    assert "not valid JSON" in str(rows[0][3])
    assert "too long for the bus" in str(rows[1][3])
    assert await local_queue.count_active(QUEUE) == 0
