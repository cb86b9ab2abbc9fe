"""The management API's list queries on real PostgreSQL: keyset pages, filters, cursors, redaction."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from shared_code.db import conversations
from shared_code.db.pool import Pool
from shared_code.management import erasure, queries
from shared_code.management.cursors import CursorSigner
from shared_code.management.problems import InvalidRequest, NotFound
from shared_code.management.redaction import REDACTED
from tests.conftest import TEST_DATA, personal_data_in

SIGNER = CursorSigner(b"test-cursor-key")
BUSINESS_NUMBER = "100000000000001"


async def store_message(pool: Pool, wa_id: str, wamid: str, *, name: str | None = None) -> int:
    async with pool.connection() as conn:
        stored = await conversations.store_inbound(
            conn,
            conversations.InboundMessageRow(
                wamid=wamid,
                phone_number_id=BUSINESS_NUMBER,
                contact_wa_id=wa_id,
                profile_name=name,
                message_type="text",
                text_body="hello",
                content={"type": "text", "text": {"body": "hello"}},
                context_wamid=None,
                whatsapp_timestamp=datetime.now(UTC),
            ),
        )
    assert stored is not None
    return stored.conversation_id


def cursor_of(link: str | None) -> str:
    assert link is not None
    return parse_qs(urlsplit(link).query)["cursor"][0]


async def test_contact_pages_cover_every_contact_once_while_new_ones_arrive(pool: Pool) -> None:
    for n in range(25):
        await store_message(pool, f"1555000{n:04d}", f"wamid.a{n}", name=f"User {n}")
    seen: list[int] = []
    query = queries.ContactsQuery(limit=10)
    page = await queries.list_contacts(pool, SIGNER, query, "/api/v1/whatsapp/contacts")
    seen += [c.id for c in page.data]
    # Contacts created between pages come before the first page, never inside the next ones.
    for n in range(25, 30):
        await store_message(pool, f"1555000{n:04d}", f"wamid.a{n}")
    while page.next is not None:
        assert page.next.startswith("/api/v1/whatsapp/contacts?")
        query = queries.ContactsQuery(limit=10, cursor=cursor_of(page.next))
        page = await queries.list_contacts(pool, SIGNER, query, "/api/v1/whatsapp/contacts")
        seen += [c.id for c in page.data]
    assert len(seen) == 25
    assert seen == sorted(set(seen), reverse=True)


async def test_contacts_are_found_by_name_fragment_or_number_prefix(pool: Pool) -> None:
    await store_message(pool, "15550001111", "wamid.b1", name="Amélie Poulain")
    await store_message(pool, "15559992222", "wamid.b2", name="Bob 100%_sure")
    await store_message(pool, "33612345678", "wamid.b3", name="Claire")
    path = "/api/v1/whatsapp/contacts"

    async def found(search: str) -> list[str]:
        query = queries.ContactsQuery(search=search)
        return [c.wa_id for c in (await queries.list_contacts(pool, SIGNER, query, path)).data]

    assert await found("poul") == ["15550001111"]
    assert await found("+1555") == ["15559992222", "15550001111"]
    assert await found("3361") == ["33612345678"]
    # LIKE wildcards in the search are literal characters.
    assert await found("%_") == ["15559992222"]
    assert await found("_") == ["15559992222"]


async def test_opted_out_filter(pool: Pool) -> None:
    await store_message(pool, "15550003333", "wamid.c1")
    await store_message(pool, "15550004444", "wamid.c2")
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_contacts SET opted_out = true, opted_out_at = now() "
            "WHERE wa_id = '15550004444'"
        )
    query = queries.ContactsQuery(opted_out=True)
    page = await queries.list_contacts(pool, SIGNER, query, "/x")
    assert [c.wa_id for c in page.data] == ["15550004444"]
    assert page.data[0].opted_out_at is not None


async def test_a_cursor_is_refused_when_tampered_or_used_with_other_filters(pool: Pool) -> None:
    for n in range(3):
        await store_message(pool, f"1555111{n:04d}", f"wamid.d{n}")
    first = await queries.list_contacts(
        pool, SIGNER, queries.ContactsQuery(limit=1, opted_out=False), "/x"
    )
    cursor = cursor_of(first.next)
    payload, mac = cursor.split(".")
    forged_position = "WzFd"  # base64url of [1]
    for bad in (f"{forged_position}.{mac}", f"{payload}.{mac[:-2]}AA", "x" * 600, "", "a.b.c"):
        with pytest.raises(InvalidRequest):
            await queries.list_contacts(
                pool, SIGNER, queries.ContactsQuery(limit=1, opted_out=False, cursor=bad), "/x"
            )
    with pytest.raises(InvalidRequest):
        await queries.list_contacts(
            pool, SIGNER, queries.ContactsQuery(limit=1, opted_out=True, cursor=cursor), "/x"
        )
    with pytest.raises(InvalidRequest):
        await queries.list_conversations(
            pool, SIGNER, queries.ConversationsQuery(limit=1, cursor=cursor), "/x"
        )
    with pytest.raises(InvalidRequest):
        await queries.list_contacts(
            pool,
            CursorSigner(b"another key"),
            queries.ContactsQuery(limit=1, opted_out=False, cursor=cursor),
            "/x",
        )
    # The same filters go on with it.
    second = await queries.list_contacts(
        pool, SIGNER, queries.ContactsQuery(limit=1, opted_out=False, cursor=cursor), "/x"
    )
    assert second.data[0].id < first.data[0].id


async def test_conversation_filters(pool: Pool) -> None:
    first = await store_message(pool, "15550005555", "wamid.e1")
    second = await store_message(pool, "15550006666", "wamid.e2")
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_conversations SET assigned_agent = 'sales', "
            "updated_at = now() - interval '2 days' WHERE id = %s",
            (first,),
        )
    path = "/x"
    by_agent = await queries.list_conversations(
        pool, SIGNER, queries.ConversationsQuery(agent="sales"), path
    )
    assert [c.id for c in by_agent.data] == [first]
    recent = await queries.list_conversations(
        pool,
        SIGNER,
        queries.ConversationsQuery(updated_since=datetime.now(UTC) - timedelta(days=1)),
        path,
    )
    assert [c.id for c in recent.data] == [second]
    by_status = await queries.list_conversations(
        pool, SIGNER, queries.ConversationsQuery(status="open"), path
    )
    assert {c.id for c in by_status.data} == {first, second}
    assert all(c.status == "open" for c in by_status.data)


async def test_messages_come_with_their_status_history_and_error(pool: Pool) -> None:
    conversation_id = await store_message(pool, "15550007777", "wamid.f1")
    async with pool.connection() as conn:
        await conn.execute(
            """
            INSERT INTO whatsapp_messages (conversation_id, direction, wamid, phone_number_id,
                contact_wa_id, message_type, text_body, content, status, error_code, error_title,
                purpose)
            VALUES (%s, 'outbound', 'wamid.f2', %s, '15550007777', 'text', 'answer', '{}',
                    'failed', 131026, 'Message undeliverable', 'operator')
            """,
            (conversation_id, BUSINESS_NUMBER),
        )
        for status, code in (("failed", 131026), ("sent", None)):
            await conn.execute(
                "INSERT INTO whatsapp_message_statuses (wamid, status, status_timestamp, "
                "error_code, payload) VALUES ('wamid.f2', %s, now(), %s, '{}')",
                (status, code),
            )
    page = await queries.list_conversation_messages(
        pool, SIGNER, conversation_id, queries.MessagesQuery(), "/x"
    )
    outbound, inbound = page.data
    assert (outbound.direction, inbound.direction) == ("outbound", "inbound")
    assert [entry.status for entry in outbound.status_history] == ["sent", "failed"]
    assert outbound.status_history[1].error_code == 131026
    assert outbound.error_code == 131026
    assert (outbound.purpose, outbound.blocked_by_policy) == ("operator", None)
    assert inbound.status_history == []
    only_inbound = await queries.list_conversation_messages(
        pool, SIGNER, conversation_id, queries.MessagesQuery(direction="inbound"), "/x"
    )
    assert [m.id for m in only_inbound.data] == [inbound.id]


async def test_messages_of_an_unknown_conversation_are_404(pool: Pool) -> None:
    with pytest.raises(NotFound):
        await queries.list_conversation_messages(
            pool, SIGNER, 987654, queries.MessagesQuery(), "/x"
        )


async def test_message_pages_stay_stable_while_the_conversation_grows(pool: Pool) -> None:
    conversation_id = await store_message(pool, "15550008888", "wamid.g0")
    for n in range(1, 40):
        await store_message(pool, "15550008888", f"wamid.g{n}")
    collected: list[int] = []
    page = await queries.list_conversation_messages(
        pool, SIGNER, conversation_id, queries.MessagesQuery(limit=7), "/x"
    )
    collected += [m.id for m in page.data]
    growth = asyncio.gather(*(store_message(pool, "15550008888", f"wamid.h{n}") for n in range(10)))
    while page.next is not None:
        query = queries.MessagesQuery(limit=7, cursor=cursor_of(page.next))
        page = await queries.list_conversation_messages(pool, SIGNER, conversation_id, query, "/x")
        collected += [m.id for m in page.data]
    await growth
    assert len(collected) == 40 and len(set(collected)) == 40
    assert collected == sorted(collected, reverse=True)


async def test_webhook_bodies_are_redacted_unless_raw_is_asked(pool: Pool) -> None:
    body = (TEST_DATA / "webhooks" / "text.json").read_bytes()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO whatsapp_webhook_events (body, body_sha256, object, fields, status) "
            "VALUES (%s, %s, 'whatsapp_business_account', '{messages}', 'published')",
            (body, hashlib.sha256(body).digest()),
        )
        await conn.execute(
            "INSERT INTO whatsapp_webhook_events (body, body_sha256, status, reason) "
            "VALUES (%s, %s, 'invalid', 'not JSON')",
            (b"\xff\x00not json", hashlib.sha256(b"\xff\x00not json").digest()),
        )
    redacted = await queries.list_webhook_events(pool, SIGNER, queries.WebhookEventsQuery(), "/x")
    unreadable, event = redacted.data
    assert unreadable.body is None and unreadable.reason == "not JSON"
    shown = json.dumps(event.body)
    assert personal_data_in(shown) == []
    assert REDACTED in shown
    assert event.body["object"] == "whatsapp_business_account"
    assert event.body_base64 is None and event.redacted
    raw = await queries.list_webhook_events(
        pool, SIGNER, queries.WebhookEventsQuery(raw=True, status="published"), "/x"
    )
    assert [e.id for e in raw.data] == [event.id]
    assert raw.data[0].body == json.loads(body)
    assert not raw.data[0].redacted


async def test_webhook_events_by_time_range(pool: Pool) -> None:
    async with pool.connection() as conn:
        for days in (1, 3, 5):
            payload = f'{{"n": {days}}}'.encode()
            await conn.execute(
                "INSERT INTO whatsapp_webhook_events (body, body_sha256, status, received_at) "
                "VALUES (%s, %s, 'ignored', now() - make_interval(days => %s))",
                (payload, hashlib.sha256(payload).digest(), days),
            )
    now = datetime.now(UTC)
    page = await queries.list_webhook_events(
        pool,
        SIGNER,
        queries.WebhookEventsQuery(
            received_from=now - timedelta(days=4), received_to=now - timedelta(days=2)
        ),
        "/x",
    )
    assert [e.body for e in page.data] == [{"n": 3}]
    with pytest.raises(InvalidRequest):
        await queries.list_webhook_events(
            pool, SIGNER, queries.WebhookEventsQuery(received_from=now, received_to=now), "/x"
        )


async def test_a_name_search_matches_whole_words_in_any_order_and_the_last_as_a_start(
    pool: Pool,
) -> None:
    await store_message(pool, "15550010001", "wamid.n1", name="Mohamed Okafor")
    await store_message(pool, "15550010002", "wamid.n2", name="Okafor Anna-Maria")
    await store_message(pool, "15550010003", "wamid.n3", name="Anna Kim")
    await store_message(pool, "15550010004", "wamid.n4", name="ANNETTE okonkwo")
    path = "/api/v1/whatsapp/contacts"

    async def found(search: str) -> list[str]:
        query = queries.ContactsQuery(search=search)
        return [c.wa_id for c in (await queries.list_contacts(pool, SIGNER, query, path)).data]

    assert await found("okafor mohamed") == ["15550010001"]
    assert await found("Okafor") == ["15550010002", "15550010001"]
    assert await found("oka") == ["15550010002", "15550010001"]
    assert await found("ok") == ["15550010004", "15550010002", "15550010001"]
    assert await found("anna ok") == ["15550010002"]
    # Only the last word may be the start of a word.
    assert await found("ann kim") == []
    assert await found("ann") == ["15550010004", "15550010003", "15550010002"]
    assert await found("maria okafor") == ["15550010002"]
    assert await found("!!!") == []
    # A renamed contact is found by the new name only; an erased one not at all.
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_contacts SET profile_name = 'Anna Lee' WHERE wa_id = '15550010003'"
        )
    assert await found("kim") == []
    assert await found("lee") == ["15550010003"]
    erased = await queries.list_contacts(pool, SIGNER, queries.ContactsQuery(search="lee"), "/x")
    await erasure.erase_contact(pool, erased.data[0].id, "key:test")
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM whatsapp_contact_name_words")
        assert await cursor.fetchone() == (7,)  # the three names left
    assert await found("lee") == []


async def test_a_name_search_pages_and_filters_like_the_list(pool: Pool) -> None:
    for n in range(12):
        await store_message(pool, f"155500200{n:02d}", f"wamid.p{n}", name=f"Ana Silva{n}")
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_contacts SET opted_out = true WHERE wa_id IN "
            "('15550020003', '15550020007')"
        )
    seen: list[str] = []
    query = queries.ContactsQuery(search="ana silv", limit=5, opted_out=False)
    while True:
        page = await queries.list_contacts(pool, SIGNER, query, "/x")
        seen += [c.wa_id for c in page.data]
        if page.next is None:
            break
        query = queries.ContactsQuery(
            search="ana silv", limit=5, opted_out=False, cursor=cursor_of(page.next)
        )
    expected = [f"155500200{n:02d}" for n in reversed(range(12)) if n not in (3, 7)]
    assert seen == expected


async def test_a_last_word_that_starts_too_many_words_matches_only_itself(pool: Pool) -> None:
    for n in range(queries.MAX_PREFIX_WORDS + 1):
        await store_message(pool, f"155500300{n:02d}", f"wamid.q{n}", name=f"Zed{n:02d}")
    await store_message(pool, "15550030099", "wamid.q99", name="Zed")
    query = queries.ContactsQuery(search="zed")
    page = await queries.list_contacts(pool, SIGNER, query, "/x")
    assert [c.wa_id for c in page.data] == ["15550030099"]


async def test_a_next_link_repeats_the_filters_given_and_no_defaults(pool: Pool) -> None:
    async with pool.connection() as conn:
        for n in range(3):
            payload = f'{{"n": {n}}}'.encode()
            await conn.execute(
                "INSERT INTO whatsapp_webhook_events (body, body_sha256, status) "
                "VALUES (%s, %s, 'ignored')",
                (payload, hashlib.sha256(payload).digest()),
            )
    page = await queries.list_webhook_events(
        pool, SIGNER, queries.WebhookEventsQuery(limit=1, status="ignored"), "/events"
    )
    assert page.next is not None
    params = parse_qs(urlsplit(page.next).query)
    assert set(params) == {"status", "limit", "cursor"}
    assert params["status"] == ["ignored"]
