"""Signed bodies a hostile or sloppy sender produces: each is stored and answered 200 (issue 12).

Every test here failed before the intake decoded leniently and made values storable: deep
nesting and bytes that are not UTF-8 raised (500), NUL reached text columns (503, neighbours
included), a lone surrogate cost every message of its body, and repeats inside one insert
batch were not counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.db import webhook_events
from shared_code.db.pool import Pool
from shared_code.webhook_intake import WebhookIntake
from shared_code.whatsapp.signature import sign
from tests.integration.test_intake import QUEUE, SECRET, event_rows, intake, sample_text

pytestmark = pytest.mark.integration


async def post(service: WebhookIntake, body: bytes) -> int:
    return (await service.receive(body, sign(body, SECRET))).status_code


async def queued_bodies(local_queue: LocalQueue) -> list[dict[str, object]]:
    bodies = []
    while (session := await local_queue.accept_next_session(QUEUE)) is not None:
        message = await session.receive()
        while message is not None:
            bodies.append(json.loads(message.body))
            message = await session.complete_and_receive(message)
        await session.close()
    return bodies


def text_of(envelope: dict[str, object]) -> str:
    message = envelope["message"]
    assert isinstance(message, dict)
    return str(message["text"]["body"])


async def test_json_nested_a_thousand_levels_deep_is_stored_as_invalid(
    pool: Pool, local_queue: LocalQueue
) -> None:
    body = b'{"object":"whatsapp_business_account","entry":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert await post(intake(pool, local_queue), body) == 200
    [(status, _, _, reason)] = await event_rows(pool)
    assert status == "invalid"
    assert reason is not None and "nested deeper" in reason


async def test_bytes_that_are_not_utf8_inside_a_text_are_replaced_and_the_message_kept(
    pool: Pool, local_queue: LocalQueue
) -> None:
    body = json.dumps(sample_text(text="caf-MARK")).encode().replace(b"-MARK", b"\xe9\xff")
    service = intake(pool, local_queue)
    assert await post(service, body) == 200
    await service.drain()
    [(status, count, _, reason)] = await event_rows(pool)
    assert (status, count) == ("published", 1)
    assert reason is not None and "invalid UTF-8 replaced" in reason
    [envelope] = await queued_bodies(local_queue)
    assert text_of(envelope) == "caf\ufffd\ufffd"


@pytest.mark.parametrize(
    "where",
    ["object", "field", "phone_number_id", "wa_id", "from", "wamid", "text", "unknown key"],
)
async def test_nul_anywhere_is_stored_and_answered_200(
    pool: Pool, local_queue: LocalQueue, where: str
) -> None:
    payload = sample_text()
    change = payload["entry"][0]["changes"][0]  # type: ignore[index]
    value = change["value"]
    message = value["messages"][0]
    if where == "object":
        payload["object"] = "whatsapp_business_account\x00"
    elif where == "field":
        change["field"] = "mess\x00ages"
    elif where == "phone_number_id":
        value["metadata"]["phone_number_id"] += "\x00"
    elif where == "wa_id":
        value["contacts"][0]["wa_id"] += "\x00"
    elif where == "from":
        message["from"] += "\x00"
    elif where == "wamid":
        message["id"] += "\x00"
    elif where == "text":
        message["text"]["body"] = "a\x00b"
    else:
        message["\x00"] = "\x00"
    service = intake(pool, local_queue)
    assert await post(service, json.dumps(payload).encode()) == 200
    await service.drain()
    [(status, _, _, reason)] = await event_rows(pool)
    assert status in ("published", "ignored", "invalid")
    assert reason is not None and "NUL characters replaced" in reason
    for envelope in await queued_bodies(local_queue):
        assert "\x00" not in json.dumps(envelope)


async def test_a_body_with_nul_does_not_fail_its_neighbours_in_the_same_batch(
    pool: Pool, local_queue: LocalQueue
) -> None:
    service = intake(pool, local_queue)
    bodies = [json.dumps(sample_text(sender=f"1555123{i:04d}")).encode() for i in range(20)]
    poisoned = sample_text(sender="15551239999")
    poisoned["entry"][0]["changes"][0]["field"] = "messages\x00"  # type: ignore[index]
    bodies[7] = json.dumps(poisoned).encode()
    answers = await asyncio.gather(*(post(service, body) for body in bodies))
    await service.drain()
    assert answers == [200] * 20
    assert sorted(row[0] for row in await event_rows(pool)) == ["ignored"] + ["published"] * 19


async def test_a_lone_surrogate_costs_no_message_of_its_body(
    pool: Pool, local_queue: LocalQueue
) -> None:
    payload = sample_text(text="first")
    value = payload["entry"][0]["changes"][0]["value"]  # type: ignore[index]
    second = json.loads(json.dumps(value["messages"][0]))
    second["id"] = "wamid.SECOND"
    second["text"]["body"] = "SURROGATE"
    value["messages"].append(second)
    body = json.dumps(payload).encode().replace(b"SURROGATE", b"broken \\ud800 text")
    service = intake(pool, local_queue)
    assert await post(service, body) == 200
    await service.drain()
    [(status, count, _, reason)] = await event_rows(pool)
    assert (status, count) == ("published", 2)
    assert reason is not None and "lone surrogates replaced" in reason
    texts = sorted(text_of(envelope) for envelope in await queued_bodies(local_queue))
    assert texts == ["broken \ufffd text", "first"]


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        (b'{"object":"whatsapp_business_account","entry":[],"n":NaN}', "NaN"),
        (b'{"object":"whatsapp_business_account","entry":[],"n":1e400}', "out of range"),
        (b'{"object":"whatsapp_business_account","entry":[\xff]}', "not valid JSON"),
    ],
)
async def test_what_is_really_unreadable_is_stored_as_invalid_with_its_reason(
    pool: Pool, local_queue: LocalQueue, body: bytes, reason_part: str
) -> None:
    assert await post(intake(pool, local_queue), body) == 200
    [(status, _, _, reason)] = await event_rows(pool)
    assert status == "invalid"
    assert reason is not None and reason_part in reason


async def test_copies_of_a_body_in_one_insert_batch_are_all_counted(
    pool: Pool, local_queue: LocalQueue
) -> None:
    service = intake(pool, local_queue)
    body = json.dumps(sample_text()).encode()
    answers = await asyncio.gather(*(post(service, body) for _ in range(50)))
    assert answers == [200] * 50
    assert await post(service, body) == 200
    await service.drain()
    [(status, _, duplicates, _)] = await event_rows(pool)
    assert (status, duplicates) == ("published", 50)


async def test_a_row_postgresql_refuses_is_stored_bare_without_failing_its_batch(
    pool: Pool,
) -> None:
    def event(body: bytes, reason: str | None) -> webhook_events.NewWebhookEvent:
        return webhook_events.NewWebhookEvent(
            body=body,
            body_sha256=hashlib.sha256(body).digest(),
            object="whatsapp_business_account",
            fields=("messages",),
            status="pending",
            reason=reason,
            event_count=1,
        )

    # Only a bug could hand the repository such a value now; it must still not cost the batch.
    good, refused = event(b"good", None), event(b"refused", "a\x00b")
    async with pool.connection() as conn:
        stored = await webhook_events.insert_events(conn, [good, refused])
    assert stored[good.body_sha256].status == "pending"
    assert stored[refused.body_sha256].status == "invalid"
    rows = await event_rows(pool)
    assert sorted(row[0] for row in rows) == ["invalid", "pending"]
    [reason] = [row[3] for row in rows if row[0] == "invalid"]
    assert reason is not None and "could not be stored" in reason
