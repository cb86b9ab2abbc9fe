"""DELETE contacts/{id}: nothing of the user is left in any table, everyone else is untouched."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from psycopg import sql

from shared_code.bus.local_queue import LocalQueue
from shared_code.db.pool import Pool
from shared_code.management.erasure import ERASE_ACTION, erase_contact, without_user
from shared_code.management.problems import NotFound
from shared_code.ratelimit import RateLimiter, RateLimitPolicy
from shared_code.secrets import Secret
from shared_code.sending import OutboundSender, SendOutcome, outbound_bus_message
from shared_code.whatsapp.graph_client import GraphApiClient

pytestmark = pytest.mark.integration

NUMBER = "100000000000001"
ERASED = "15550001111"
KEPT = "15550002222"
ERASED_NAME = "Erika Erased"
KEPT_NAME = "Karl Kept"
START = datetime.now(UTC) - timedelta(days=10)


def envelope(value: dict[str, object]) -> bytes:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "200000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": NUMBER,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def inbound_body(wa_id: str, name: str, wamid: str, text: str) -> bytes:
    return envelope(
        {
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [
                {
                    "from": wa_id,
                    "id": wamid,
                    "timestamp": "1700000000",
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
    )


def status(wamid: str, wa_id: str, state: str) -> dict[str, object]:
    return {"id": wamid, "status": state, "timestamp": "1700000000", "recipient_id": wa_id}


@dataclass
class World:
    erased_id: int
    kept_id: int
    pending_id: int
    erased_wamids: list[str]
    mixed_event_id: int
    kept_event_id: int
    far_event_id: int


def add_user(
    conn: psycopg.Connection, wa_id: str, name: str, prefix: str, conversations: int
) -> tuple[int, list[str], int]:
    """A contact with conversations of 3 messages each (inbound, outbound read, outbound
    delivered) and their statuses; returns (contact id, wamids, last conversation id)."""
    row = conn.execute(
        "INSERT INTO whatsapp_contacts (wa_id, profile_name, created_at, last_inbound_at) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        (wa_id, name, START, START),
    ).fetchone()
    assert row
    contact_id = int(row[0])
    wamids: list[str] = []
    conversation_id = 0
    for n in range(conversations):
        opened = START + timedelta(days=2 * n)
        row = conn.execute(
            "INSERT INTO whatsapp_conversations (phone_number_id, contact_id, status, created_at, "
            "updated_at, last_message_at, closed_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "RETURNING id",
            (
                NUMBER,
                contact_id,
                "closed" if n < conversations - 1 else "open",
                opened,
                opened + timedelta(minutes=5),
                opened + timedelta(minutes=5),
                opened + timedelta(days=1) if n < conversations - 1 else None,
            ),
        ).fetchone()
        assert row
        conversation_id = int(row[0])
        inbound = conn.execute(
            "INSERT INTO whatsapp_messages (conversation_id, direction, wamid, phone_number_id, "
            "contact_wa_id, message_type, text_body, content, status, created_at) "
            "VALUES (%s, 'inbound', %s, %s, %s, 'text', %s, %s, 'received', %s) RETURNING id",
            (
                conversation_id,
                f"wamid.{prefix}in{n}",
                NUMBER,
                wa_id,
                f"hello from {name}",
                json.dumps({"from": wa_id, "text": {"body": f"hello from {name}"}}),
                opened,
            ),
        ).fetchone()
        assert inbound
        wamids.append(f"wamid.{prefix}in{n}")
        for k, state in enumerate(("read", "delivered")):
            wamid = f"wamid.{prefix}out{n}{k}"
            conn.execute(
                "INSERT INTO whatsapp_messages (conversation_id, direction, wamid, "
                "phone_number_id, contact_wa_id, message_type, text_body, content, status, "
                "reply_to_message_id, sent_at, created_at) VALUES (%s, 'outbound', %s, %s, %s, "
                "'text', 'an answer', %s, %s, %s, %s, %s)",
                (
                    conversation_id,
                    wamid,
                    NUMBER,
                    wa_id,
                    json.dumps({"to": wa_id, "text": {"body": "an answer"}}),
                    state,
                    inbound[0],
                    opened + timedelta(minutes=1),
                    opened + timedelta(minutes=1 + k),
                ),
            )
            wamids.append(wamid)
            for reached in ("sent", "delivered", "read")[: 3 - k]:
                conn.execute(
                    "INSERT INTO whatsapp_message_statuses (wamid, status, recipient_id, "
                    "payload) VALUES (%s, %s, %s, %s)",
                    (wamid, reached, wa_id, json.dumps(status(wamid, wa_id, reached))),
                )
    return contact_id, wamids, conversation_id


def add_event(conn: psycopg.Connection, body: bytes, received_at: datetime) -> int:
    row = conn.execute(
        "INSERT INTO whatsapp_webhook_events (received_at, body, body_sha256, status, "
        "event_count) VALUES (%s, %s, %s, 'published', 1) RETURNING id",
        (received_at, body, hashlib.sha256(body).digest()),
    ).fetchone()
    assert row
    return int(row[0])


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        erased_id, erased_wamids, open_conversation = add_user(conn, ERASED, ERASED_NAME, "e", 3)
        kept_id, kept_wamids, _ = add_user(conn, KEPT, KEPT_NAME, "k", 2)
        # A reply queued for the erased user and not sent yet.
        row = conn.execute(
            "INSERT INTO whatsapp_messages (conversation_id, direction, phone_number_id, "
            "contact_wa_id, message_type, text_body, content, status, idempotency_key) "
            "VALUES (%s, 'outbound', %s, %s, 'text', 'queued', %s, 'pending', 'test:queued') "
            "RETURNING id",
            (open_conversation, NUMBER, ERASED, json.dumps({"to": ERASED})),
        ).fetchone()
        assert row
        pending_id = int(row[0])
        # A failure recorded for one of the erased user's status events.
        conn.execute(
            "INSERT INTO whatsapp_event_failures (stage, kind, event_key, reason) "
            "VALUES ('process', 'status', %s, 'poison')",
            (f"{erased_wamids[1]}:read",),
        )
        conn.execute(
            "INSERT INTO whatsapp_event_failures (stage, kind, event_key, reason) "
            "VALUES ('process', 'status', %s, 'poison')",
            (f"{kept_wamids[1]}:read",),
        )
        during = START + timedelta(hours=1)
        add_event(conn, inbound_body(ERASED, ERASED_NAME, erased_wamids[0], "hi"), during)
        # Meta batches statuses of several users in one body.
        mixed = add_event(
            conn,
            envelope(
                {
                    "statuses": [
                        status(erased_wamids[1], ERASED, "read"),
                        status(kept_wamids[1], KEPT, "read"),
                    ]
                }
            ),
            during + timedelta(seconds=1),
        )
        kept_event = add_event(conn, inbound_body(KEPT, KEPT_NAME, kept_wamids[0], "hello"), during)
        # Signed but unreadable, naming the user: goes too.
        add_event(conn, b'{"broken": "' + ERASED.encode() + b'", ', during)
        # The erased user long before they were active: outside the periods searched.
        far = add_event(
            conn,
            inbound_body(ERASED, ERASED_NAME, "wamid.far", "long ago"),
            START - timedelta(days=30),
        )
    yield World(
        erased_id=erased_id,
        kept_id=kept_id,
        pending_id=pending_id,
        erased_wamids=erased_wamids,
        mixed_event_id=mixed,
        kept_event_id=kept_event,
        far_event_id=far,
    )


def traces_of(
    conn: psycopg.Connection, needles: list[str], skip_ids: dict[str, list[int]]
) -> list[str]:
    """Rows of any table whose text (bytea shown as hex, so also searched as hex) holds a
    needle; ``skip_ids`` leaves out known rows by id."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    ]
    found = []
    for table in tables:
        for needle in needles:
            patterns = [needle, needle.encode().hex()]
            skip = skip_ids.get(table, [])
            query = sql.SQL(
                "SELECT count(*) FROM {} t WHERE (t::text LIKE %s OR t::text LIKE %s)"
            ).format(sql.Identifier(table))
            if skip:
                query += sql.SQL(" AND t.id <> ALL(%s)")
            params: list[object] = [f"%{patterns[0]}%", f"%{patterns[1]}%"]
            if skip:
                params.append(skip)
            row = conn.execute(query, params).fetchone()
            if row and row[0]:
                found.append(f"{table}: {row[0]} row(s) with {needle!r}")
    return found


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    return {
        table: int(
            conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()[0]  # type: ignore[index]
        )
        for table in (
            "whatsapp_contacts",
            "whatsapp_conversations",
            "whatsapp_messages",
            "whatsapp_message_statuses",
            "whatsapp_webhook_events",
            "whatsapp_event_failures",
        )
    }


async def test_erasure_leaves_nothing_of_the_user_and_touches_no_one_else(
    pool: Pool, database_url: str, world: World
) -> None:
    with psycopg.connect(database_url) as conn:
        kept_before = conn.execute(
            "SELECT m.* FROM whatsapp_messages m JOIN whatsapp_conversations c "
            "ON c.id = m.conversation_id WHERE c.contact_id = %s ORDER BY m.id",
            (world.kept_id,),
        ).fetchall()
        before = table_counts(conn)
        needles = [ERASED, ERASED_NAME, *world.erased_wamids]
        # The scan finds them where they are (bytea bodies included) before the erasure.
        traces_before = traces_of(conn, needles, {})
    assert any(t.startswith("whatsapp_webhook_events: 4 row(s) with '1555") for t in traces_before)
    assert any(t.startswith("whatsapp_message_statuses:") for t in traces_before)

    report = await erase_contact(pool, world.erased_id, "key:0123456789ab")

    assert report.messages == 3 * 3 + 1
    assert report.message_statuses == 3 * (3 + 2)
    assert report.conversations == 3
    assert report.outbound_cancelled == 1
    assert report.webhook_events_deleted == 2  # their own message, the unreadable body
    assert report.webhook_events_redacted == 1  # the batch of statuses shared with KEPT
    assert report.event_failures == 1
    assert not report.already_erased
    with psycopg.connect(database_url) as conn:
        # Documented limit: a body naming them outside their active periods is not searched.
        assert traces_of(conn, needles, {"whatsapp_webhook_events": [world.far_event_id]}) == []
        after = table_counts(conn)
        kept_after = conn.execute(
            "SELECT m.* FROM whatsapp_messages m JOIN whatsapp_conversations c "
            "ON c.id = m.conversation_id WHERE c.contact_id = %s ORDER BY m.id",
            (world.kept_id,),
        ).fetchall()
        mixed_body, mixed_sha256 = conn.execute(
            "SELECT body, body_sha256 FROM whatsapp_webhook_events WHERE id = %s",
            (world.mixed_event_id,),
        ).fetchone() or (b"", b"")
        kept_event = conn.execute(
            "SELECT count(*) FROM whatsapp_webhook_events WHERE id = %s", (world.kept_event_id,)
        ).fetchone()
        audit_rows = conn.execute(
            "SELECT actor, action, target_type, target_id, details::text FROM whatsapp_audit_log"
        ).fetchall()
    assert kept_after == kept_before
    assert kept_event == (1,)
    mixed = json.loads(bytes(mixed_body))
    statuses = mixed["entry"][0]["changes"][0]["value"]["statuses"]
    assert [s["recipient_id"] for s in statuses] == [KEPT]
    assert bytes(mixed_sha256) == hashlib.sha256(bytes(mixed_body)).digest()
    assert before["whatsapp_contacts"] - after["whatsapp_contacts"] == 1
    assert before["whatsapp_webhook_events"] - after["whatsapp_webhook_events"] == 2
    assert before["whatsapp_event_failures"] - after["whatsapp_event_failures"] == 1
    assert len(audit_rows) == 1
    actor, action, target_type, target_id, details = audit_rows[0]
    assert (actor, action, target_type, target_id) == (
        "key:0123456789ab",
        ERASE_ACTION,
        "contact",
        str(world.erased_id),
    )
    assert json.loads(details)["messages"] == 10
    for needle in needles:
        assert needle not in details


async def test_a_reply_queued_for_the_user_is_not_sent(
    pool: Pool, local_queue: LocalQueue, world: World
) -> None:
    requests: list[httpx.Request] = []

    def meta(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"messages": [{"id": "wamid.never"}]})

    http = httpx.AsyncClient(transport=httpx.MockTransport(meta))
    graph = GraphApiClient(
        base_url="https://graph.test",
        api_version="v23.0",
        access_token=Secret("token"),
        phone_number_id=NUMBER,
        http=http,
    )
    sender = OutboundSender(
        pool=pool,
        bus=local_queue,
        queue="outbound-messages",
        graph=graph,
        limiter=RateLimiter(pool, RateLimitPolicy()),
    )
    queued = outbound_bus_message(world.pending_id, phone_number_id=NUMBER, contact_wa_id=ERASED)

    await erase_contact(pool, world.erased_id, "key:0123456789ab")
    outcome = await sender.handle(queued.body)

    await http.aclose()
    assert outcome is SendOutcome.NOT_FOUND
    assert requests == []


async def test_erasing_again_is_harmless_and_an_unknown_contact_is_not_found(
    pool: Pool, database_url: str, world: World
) -> None:
    await erase_contact(pool, world.erased_id, "key:0123456789ab")

    again = await erase_contact(pool, world.erased_id, "key:0123456789ab")

    assert again.already_erased
    assert again.messages == 0
    with pytest.raises(NotFound) as missing:
        await erase_contact(pool, 999_999, "key:0123456789ab")
    assert missing.value.code == "contact_not_found"
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM whatsapp_audit_log").fetchone()
    assert rows == (1,)


def test_a_body_is_rewritten_only_when_someone_else_is_in_it() -> None:
    only_them = inbound_body(ERASED, ERASED_NAME, "wamid.a", "hi")
    shared = envelope(
        {"statuses": [status("wamid.a", ERASED, "read"), status("wamid.b", KEPT, "read")]}
    )
    nobody = envelope({"statuses": [status("wamid.b", KEPT, "read")]})

    assert without_user(only_them, ERASED) is None
    assert without_user(b"not json " + ERASED.encode(), ERASED) is None
    rewritten = without_user(shared, ERASED)
    assert rewritten is not None and ERASED.encode() not in rewritten
    assert KEPT.encode() in rewritten
    assert json.loads(without_user(nobody, ERASED) or b"") == json.loads(nobody)
