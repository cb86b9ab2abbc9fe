"""The processor on real PostgreSQL: rows, idempotency, monotonic statuses, routing hand-over."""

from __future__ import annotations

import itertools
import json

import pytest

from scripts.send_sample_webhook import status_webhook, text_message_webhook
from shared_code.db.pool import Pool
from shared_code.processing import EventProcessor, Outcome
from shared_code.routing import InboundForRouting
from shared_code.webhook_intake import bus_messages_for, split_body

pytestmark = pytest.mark.integration

PHONE_NUMBER_ID = "100000000000001"
USER = "15551230001"


class RecordingRouter:
    def __init__(self, fail_times: int = 0) -> None:
        self.routed: list[InboundForRouting] = []
        self.fail_times = fail_times

    async def route(self, message: InboundForRouting) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("agent platform down")
        self.routed.append(message)


def bodies(payload: object) -> list[bytes]:
    split = split_body(json.dumps(payload).encode())
    return [message.body for message in bus_messages_for(1, split)]


def text_event(text: str = "hello", name: str = "Ana", sender: str = USER) -> bytes:
    [body] = bodies(
        text_message_webhook(
            phone_number_id=PHONE_NUMBER_ID, waba_id="2", sender=sender, name=name, text=text
        )
    )
    return body


def status_event(wamid: str, status: str, payload_extra: dict[str, object] | None = None) -> bytes:
    payload = status_webhook(
        phone_number_id=PHONE_NUMBER_ID, waba_id="2", recipient=USER, wamid=wamid, status=status
    )
    if payload_extra:
        value = payload["entry"][0]["changes"][0]["value"]  # type: ignore[index]
        value["statuses"][0].update(payload_extra)
    [body] = bodies(payload)
    return body


async def fetch(pool: Pool, sql: str, *args: object) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, args)
        return await cursor.fetchall()


async def insert_outbound(pool: Pool, wamid: str | None, key: str) -> int:
    """An outbound row as the sender (next issue) will write it, on the user's conversation."""
    await EventProcessor(pool, RecordingRouter()).handle(text_event())
    [(conversation_id,)] = await fetch(pool, "SELECT id FROM whatsapp_conversations")
    [(message_id,)] = await fetch(
        pool,
        """
        INSERT INTO whatsapp_messages (conversation_id, direction, wamid, phone_number_id,
            contact_wa_id, message_type, content, status, idempotency_key)
        VALUES (%s, 'outbound', %s, %s, %s, 'text', '{}', 'pending', %s) RETURNING id
        """,
        conversation_id,
        wamid,
        PHONE_NUMBER_ID,
        USER,
        key,
    )
    return int(message_id)  # type: ignore[call-overload]


async def test_an_inbound_message_fills_contact_conversation_and_message(pool: Pool) -> None:
    router = RecordingRouter()
    outcome = await EventProcessor(pool, router).handle(text_event("Bonjour"))
    assert outcome is Outcome.STORED
    [(wa_id, name, last_inbound)] = await fetch(
        pool, "SELECT wa_id, profile_name, last_inbound_at FROM whatsapp_contacts"
    )
    assert (wa_id, name) == (USER, "Ana") and last_inbound is not None
    [(phone, status)] = await fetch(
        pool, "SELECT phone_number_id, status FROM whatsapp_conversations"
    )
    assert (phone, status) == (PHONE_NUMBER_ID, "open")
    [(direction, mtype, text, mstatus, routed_at)] = await fetch(
        pool,
        "SELECT direction, message_type, text_body, status, routed_at FROM whatsapp_messages",
    )
    assert (direction, mtype, text, mstatus) == ("inbound", "text", "Bonjour", "received")
    assert routed_at is not None
    assert len(router.routed) == 1 and router.routed[0].text == "Bonjour"


async def test_a_redelivered_message_changes_nothing(pool: Pool) -> None:
    router = RecordingRouter()
    processor = EventProcessor(pool, router)
    body = text_event("first", name="Ana")
    assert await processor.handle(body) is Outcome.STORED
    before = await fetch(pool, "SELECT * FROM whatsapp_contacts")
    conversations_before = await fetch(pool, "SELECT * FROM whatsapp_conversations")
    for _ in range(3):
        assert await processor.handle(body) is Outcome.DUPLICATE
    assert await fetch(pool, "SELECT count(*) FROM whatsapp_messages") == [(1,)]
    assert await fetch(pool, "SELECT * FROM whatsapp_contacts") == before
    assert await fetch(pool, "SELECT * FROM whatsapp_conversations") == conversations_before
    assert len(router.routed) == 1


async def test_messages_of_one_user_share_one_open_conversation(pool: Pool) -> None:
    processor = EventProcessor(pool, RecordingRouter())
    for text in ("one", "two", "three"):
        await processor.handle(text_event(text))
    await processor.handle(text_event("other user", sender="15559990000"))
    assert await fetch(pool, "SELECT count(*) FROM whatsapp_conversations") == [(2,)]
    assert await fetch(pool, "SELECT count(*) FROM whatsapp_contacts") == [(2,)]
    assert await fetch(pool, "SELECT count(*) FROM whatsapp_messages") == [(4,)]


async def test_a_failed_routing_is_retried_on_redelivery(pool: Pool) -> None:
    router = RecordingRouter(fail_times=1)
    processor = EventProcessor(pool, router)
    body = text_event()
    with pytest.raises(RuntimeError):
        await processor.handle(body)
    assert router.routed == []
    assert await processor.handle(body) is Outcome.DUPLICATE
    assert len(router.routed) == 1
    assert await processor.handle(body) is Outcome.DUPLICATE
    assert len(router.routed) == 1


@pytest.mark.parametrize("order", list(itertools.permutations(["sent", "delivered", "read"])))
async def test_statuses_in_any_order_end_in_the_furthest_state(
    pool: Pool, order: tuple[str, ...]
) -> None:
    await insert_outbound(pool, "wamid.OUT", "reply:1")
    processor = EventProcessor(pool, RecordingRouter())
    for status in order:
        assert await processor.handle(status_event("wamid.OUT", status)) is Outcome.STATUS_APPLIED
    [(status, sent_at, delivered_at, read_at)] = await fetch(
        pool,
        "SELECT status, sent_at, delivered_at, read_at FROM whatsapp_messages "
        "WHERE wamid = 'wamid.OUT'",
    )
    assert status == "read"
    assert None not in (sent_at, delivered_at, read_at)


async def test_a_failure_keeps_its_code_and_a_later_delivery_still_wins(pool: Pool) -> None:
    await insert_outbound(pool, "wamid.OUT", "reply:1")
    processor = EventProcessor(pool, RecordingRouter())
    failed = status_event(
        "wamid.OUT",
        "failed",
        {
            "errors": [
                {
                    "code": 131047,
                    "title": "Re-engagement message",
                    "message": "Re-engagement message",
                    "error_data": {"details": "More than 24 hours have passed"},
                }
            ]
        },
    )
    await processor.handle(status_event("wamid.OUT", "sent"))
    await processor.handle(failed)
    [(status, code, title, details)] = await fetch(
        pool,
        "SELECT status, error_code, error_title, error_details FROM whatsapp_messages "
        "WHERE wamid = 'wamid.OUT'",
    )
    assert (status, code, title) == ("failed", 131047, "Re-engagement message")
    assert details == "More than 24 hours have passed"
    await processor.handle(status_event("wamid.OUT", "sent"))
    assert (await fetch(pool, "SELECT status FROM whatsapp_messages WHERE wamid='wamid.OUT'")) == [
        ("failed",)
    ]
    await processor.handle(status_event("wamid.OUT", "delivered"))
    [(status, code)] = await fetch(
        pool, "SELECT status, error_code FROM whatsapp_messages WHERE wamid = 'wamid.OUT'"
    )
    assert (status, code) == ("delivered", 131047)


async def test_a_repeated_status_changes_nothing(pool: Pool) -> None:
    await insert_outbound(pool, "wamid.OUT", "reply:1")
    processor = EventProcessor(pool, RecordingRouter())
    assert await processor.handle(status_event("wamid.OUT", "read")) is Outcome.STATUS_APPLIED
    assert await processor.handle(status_event("wamid.OUT", "read")) is Outcome.STATUS_DUPLICATE
    assert await fetch(pool, "SELECT count(*) FROM whatsapp_message_statuses") == [(1,)]


async def test_a_status_before_its_message_is_applied_when_the_wamid_is_recorded(
    pool: Pool,
) -> None:
    from shared_code.db.statuses import fold_statuses

    processor = EventProcessor(pool, RecordingRouter())
    assert await processor.handle(status_event("wamid.EARLY", "delivered")) is (
        Outcome.STATUS_PENDING
    )
    message_id = await insert_outbound(pool, None, "reply:2")
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_messages SET wamid = 'wamid.EARLY', status = 'sent' WHERE id = %s",
            (message_id,),
        )
        assert await fold_statuses(conn, "wamid.EARLY")
    [(status, delivered_at)] = await fetch(
        pool, "SELECT status, delivered_at FROM whatsapp_messages WHERE id = %s", message_id
    )
    assert status == "delivered" and delivered_at is not None


async def test_an_unreadable_queued_event_is_dropped_without_raising(pool: Pool) -> None:
    processor = EventProcessor(pool, RecordingRouter())
    assert await processor.handle(b"{not json") is Outcome.REJECTED
    assert await processor.handle(b'{"kind":"message","phone_number_id":"1"}') is Outcome.REJECTED
    assert await fetch(pool, "SELECT count(*) FROM whatsapp_messages") == [(0,)]
