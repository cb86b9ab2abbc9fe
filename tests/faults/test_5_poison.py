"""Scenario 5: poison among good messages, at the webhook, on the queue and in the outbox.

Poison is anything that can never be processed as it is: a text with NUL (PostgreSQL text cannot
hold it), a lone surrogate (not valid UTF-8 once decoded), a wamid with NUL (the bus cannot carry
it as a message id), a type the processor does not know, an envelope on the queue that does not
decode, and webhook rows left ``pending`` in the outbox whose events cannot be published. The
good messages around them must all flow; each poison item must end somewhere visible (stored with
a reason, marked failed, recorded in whatsapp_event_failures or dead-lettered), not block
anything, and not be retried forever; the user who sent a NUL text still gets one reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared_code.bus.local_queue import LocalQueue
from shared_code.bus.port import OutgoingMessage
from shared_code.db.pool import open_pool
from shared_code.whatsapp.webhook import session_id_for
from tests.faults.conftest import BackgroundRuns, ClusterFactory
from tests.faults.harness import (
    PHONE_NUMBER_ID,
    SESSION,
    Cluster,
    Delivery,
    Meta,
    Recorder,
    delivery_counts,
    encode,
    inbound_message,
    new_text,
    new_users,
    nonzero,
    query,
    reply_counts,
    runs_in_background,
    sized,
    status_update,
    wait_for,
    wait_for_replies,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(sized(240, 3600))]

GOOD_MESSAGES = sized(100, 2_000)
GOOD_USERS = sized(20, 400)
OUTBOX_GOOD_ROWS = sized(10, 100)
# The sweeper runs at second 0 of every minute; poison rows are claimed before the good ones.
SWEEP_TIMEOUT = 150.0


def _json_bytes(payload: object) -> bytes:
    # ensure_ascii keeps NUL and lone surrogates as \u escapes, as Meta's JSON would carry them.
    return json.dumps(payload, ensure_ascii=True).encode()


async def _failures_table_exists(database_url: str) -> bool:
    rows = await query(database_url, "SELECT to_regclass('whatsapp_event_failures') IS NOT NULL")
    return bool(rows[0][0])


async def _fate(
    database_url: str,
    *,
    event_ids: list[int],
    wamid: str | None,
    replies: int | None,
    failures_table: bool,
    status_recipient: str | None = None,
) -> dict[str, Any]:
    """Where one poison item ended up."""
    events = await query(
        database_url,
        "SELECT status, reason, publish_attempts, last_publish_error "
        "FROM whatsapp_webhook_events WHERE id = ANY(%s) ORDER BY id",
        (event_ids,),
    )
    fate: dict[str, Any] = {
        "webhook_rows": [
            {"status": s, "reason": r, "publish_attempts": a, "last_publish_error": e}
            for s, r, a, e in events
        ]
    }
    if failures_table:
        failures = await query(
            database_url,
            "SELECT stage, reason, fallback_queued, attempts FROM whatsapp_event_failures "
            "WHERE webhook_event_id = ANY(%s) OR event_key = %s",
            (event_ids, wamid or ""),
        )
        fate["failures"] = [
            {"stage": s, "reason": r, "fallback_queued": f, "attempts": a}
            for s, r, f, a in failures
        ]
    if wamid is not None:
        dead = await query(
            database_url,
            "SELECT dead_letter_reason FROM local_bus_dead_letters WHERE message_id = %s",
            (wamid,),
        )
        fate["dead_lettered"] = [r for (r,) in dead]
        stored = await query(
            database_url, "SELECT status FROM whatsapp_messages WHERE wamid = %s", (wamid,)
        )
        fate["message_rows"] = [s for (s,) in stored]
    if replies is not None:
        fate["replies"] = replies
    if status_recipient is not None:
        applied = await query(
            database_url,
            "SELECT status FROM whatsapp_message_statuses WHERE recipient_id = %s",
            (status_recipient,),
        )
        fate["status_history_rows"] = [s for (s,) in applied]
    return fate


def _isolated(fate: dict[str, Any]) -> bool:
    """Ended somewhere visible and final: not pending, not silently dropped."""
    rows = fate["webhook_rows"]
    if any(row["status"] == "pending" for row in rows):
        return False
    if fate.get("replies") == 1 or fate.get("status_history_rows"):
        return True
    return bool(
        fate.get("failures")
        or fate.get("dead_lettered")
        or any(row["status"] in ("invalid", "failed") and row["reason"] for row in rows)
    )


@runs_in_background("test_poison_is_isolated_and_the_good_messages_flow", early=True)
async def _poison(make: ClusterFactory, record: Recorder) -> list[str]:
    cluster = await make("poison")
    try:
        return await _poison_in(cluster, record)
    finally:
        await cluster.close()


async def test_poison_is_isolated_and_the_good_messages_flow(
    background: BackgroundRuns,
) -> None:
    problems = await background["test_poison_is_isolated_and_the_good_messages_flow"]
    assert not problems, problems


async def _poison_in(cluster: Cluster, record: Recorder) -> list[str]:
    rng = random.Random(5)
    simulator = await cluster.start_simulator()
    await cluster.start_host("host", settings={"OUTBOX_SWEEP_MIN_AGE_SECONDS": "5"})
    db = cluster.database_url
    failures_table = await _failures_table_exists(db)
    good_users = new_users(GOOD_USERS, rng)
    poison_users = new_users(8, rng)
    outbox_users = new_users(OUTBOX_GOOD_ROWS, rng)
    await simulator.open_windows([*good_users, *poison_users, *outbox_users])
    expected: dict[str, str] = {}
    started = time.monotonic()

    # --- the outbox: rows stored but never published, poison first ----------------------------
    nul_user, surrogate_user, unknown_user, nul_wamid_user, status_user = poison_users[:5]
    outbox_poison: dict[str, bytes] = {}
    outbox_poison_user = {
        "wamid_with_nul": poison_users[5],
        "id_longer_than_the_bus_allows": poison_users[6],
        "status_id_with_nul": poison_users[7],
    }
    _, payload = inbound_message(poison_users[5], text=new_text(rng, "outbox nul id"))
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.\u0000" + "A" * 20
    outbox_poison["wamid_with_nul"] = _json_bytes(payload)
    _, payload = inbound_message(poison_users[6], text=new_text(rng, "outbox long id"))
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid." + "B" * 300
    outbox_poison["id_longer_than_the_bus_allows"] = _json_bytes(payload)
    outbox_poison["not_json"] = b'{"object": "whatsapp_business_account", "entry": ['
    outbox_poison["status_id_with_nul"] = _json_bytes(
        status_update("wamid.\u0000status", "delivered", poison_users[7])
    )
    outbox_good: dict[str, bytes] = {}
    for user in outbox_users:
        wamid, payload = inbound_message(user, text=new_text(rng, "from the outbox"))
        expected[wamid] = user
        outbox_good[wamid] = encode(payload)
    inserted: dict[str, int] = {}
    # Poison older than the good rows, so the sweeper claims it first, in the same batch.
    for age, rows in (("10 minutes", outbox_poison), ("9 minutes", outbox_good)):
        for key, body in rows.items():
            [(row_id,)] = await query(
                db,
                "INSERT INTO whatsapp_webhook_events (body, body_sha256, object, fields, status, "
                "event_count, received_at) VALUES (%s, %s, 'whatsapp_business_account', "
                "'{messages}', 'pending', 1, now() - %s::interval) RETURNING id",
                (body, hashlib.sha256(body).digest(), age),
            )
            inserted[key] = row_id

    # --- the queue: an envelope the processor cannot decode, ahead of a good user's messages ----
    queue_user = good_users[0]
    pool = await open_pool(db, max_size=2, name="fault-suite")
    try:
        bus = LocalQueue(pool)
        await bus.publish(
            "inbound-events",
            [
                OutgoingMessage(
                    body=b'{"kind": "message", "message": 42, "\xff": [',
                    message_id="poison-envelope-1",
                    session_id=session_id_for(PHONE_NUMBER_ID, queue_user),
                )
            ],
        )
        await bus.close()
    finally:
        await pool.close()

    # --- the webhook: poison bodies among good ones ----------------------------------------------
    deliveries: list[Delivery] = []
    for index in range(GOOD_MESSAGES):
        user = good_users[index % GOOD_USERS]
        wamid, payload = inbound_message(user, text=new_text(rng))
        expected[wamid] = user
        deliveries.append(Delivery(encode(payload), (wamid,)))
    # name -> (delivery, its wamid if it has a usable one, the user whose replies to count,
    # the recipient of a status)
    poison: dict[str, tuple[Delivery, str | None, str | None, str | None]] = {}
    nul_text = "before\u0000after " + new_text(rng, "nul")
    SESSION.sensitive.texts.add(nul_text)
    wamid, payload = inbound_message(nul_user, text=nul_text)
    poison["text_with_nul"] = (Delivery(_json_bytes(payload), (wamid,)), wamid, nul_user, None)
    surrogate_text = "lone \ud800 surrogate " + new_text(rng, "surrogate")
    wamid, payload = inbound_message(surrogate_user, text=surrogate_text)
    poison["text_with_lone_surrogate"] = (
        Delivery(_json_bytes(payload), (wamid,)),
        wamid,
        surrogate_user,
        None,
    )
    wamid, payload = inbound_message(
        unknown_user, message={"type": "hologram", "hologram": {"frames": 3}}
    )
    poison["unknown_message_type"] = (
        Delivery(_json_bytes(payload), (wamid,)),
        wamid,
        unknown_user,
        None,
    )
    nul_wamid = "wamid.\u0000" + "C" * 20
    _, payload = inbound_message(nul_wamid_user, text=new_text(rng, "nul id"), wamid=nul_wamid)
    poison["wamid_with_nul"] = (Delivery(_json_bytes(payload), ()), None, nul_wamid_user, None)
    poison["status_id_with_nul"] = (
        Delivery(_json_bytes(status_update("wamid.\u0000s2", "read", status_user)), ()),
        None,
        None,
        status_user,
    )
    poison["signed_not_json"] = (Delivery(b"this is not json {", ()), None, None, None)
    everything = [*deliveries, *(p[0] for p in poison.values())]
    rng.shuffle(everything)
    async with Meta(cluster.webhook_url, concurrency=16) as meta:
        await asyncio.gather(*(meta.deliver(d, deadline=time.monotonic() + 60) for d in everything))

    # The NUL-text user must get a reply too (the fallback text at worst).
    must_reply = {**expected, poison["text_with_nul"][1] or "": nul_user}
    replies_after = await wait_for_replies(db, simulator, must_reply, timeout=SWEEP_TIMEOUT)
    # Whatever happened, wait until a sweep has looked at the outbox poison.
    swept = True
    try:
        await wait_for(
            "a sweep over the outbox rows",
            _swept(db, list(inserted.values())),
            timeout=SWEEP_TIMEOUT,
        )
    except TimeoutError:
        swept = False
    await asyncio.sleep(3.0)

    _, sent, _ = await reply_counts(db, simulator)
    replies_by_user: dict[str, int] = {}
    for message in sent:
        replies_by_user[message["wa_id"]] = replies_by_user.get(message["wa_id"], 0) + 1
    fates: dict[str, dict[str, Any]] = {}
    for name, (delivery, poison_wamid, sender, recipient) in poison.items():
        ids = await query(
            db,
            "SELECT id FROM whatsapp_webhook_events WHERE body_sha256 = %s",
            (delivery.sha256,),
        )
        fates[f"webhook:{name}"] = await _fate(
            db,
            event_ids=[i for (i,) in ids],
            wamid=poison_wamid,
            replies=replies_by_user.get(sender, 0) if sender else None,
            failures_table=failures_table,
            status_recipient=recipient,
        )
        fates[f"webhook:{name}"]["answered"] = [a.status for a in delivery.attempts]
    for name in outbox_poison:
        writer = outbox_poison_user.get(name)
        is_status = name.startswith("status")
        fates[f"outbox:{name}"] = await _fate(
            db,
            event_ids=[inserted[name]],
            wamid=None,
            replies=replies_by_user.get(writer, 0) if writer and not is_status else None,
            failures_table=failures_table,
            status_recipient=writer if is_status else None,
        )
    queue_poison = {
        "dead_lettered": await query(
            db,
            "SELECT dead_letter_reason FROM local_bus_dead_letters "
            "WHERE message_id = 'poison-envelope-1'",
        ),
        "still_queued": await query(
            db,
            "SELECT delivery_count FROM local_bus_messages WHERE message_id = 'poison-envelope-1'",
        ),
        # The processor cannot know an undecodable body's ids: its record has none.
        "failures": await query(
            db,
            "SELECT stage, reason FROM whatsapp_event_failures WHERE stage = 'process' "
            "AND event_key IS NULL AND webhook_event_id IS NULL",
        )
        if failures_table
        else [],
    }
    good_outbox_rows = await query(
        db,
        "SELECT status, count(*) FROM whatsapp_webhook_events WHERE id = ANY(%s) GROUP BY status",
        ([inserted[w] for w in outbox_good],),
    )
    counts = record(
        seconds=round(time.monotonic() - started, 1),
        replies_seconds=replies_after,
        sweep_seen=swept,
        good_messages=len(expected),
        outbox_good_rows={s: n for s, n in good_outbox_rows},
        poison_items=len(fates) + 1,
        poison_isolated=sum(_isolated(f) for f in fates.values()),
        poison_not_isolated=sorted(k for k, f in fates.items() if not _isolated(f)),
        fates=fates,
        queue_poison={k: [list(r) for r in v] for k, v in queue_poison.items()},
        nul_text_user_replies=replies_by_user.get(nul_user, 0),
        event_failures_rows=(
            (await query(db, "SELECT count(*) FROM whatsapp_event_failures"))[0][0]
            if failures_table
            else None
        ),
        **await delivery_counts(db, simulator, expected, deliveries),
    )

    problems = [
        f"good messages: {p}"
        for p in nonzero(
            counts, "inbound_lost", "replies_lost", "duplicate_replies", "bodies_never_200"
        )
    ]
    if counts["nul_text_user_replies"] != 1:
        problems.append(f"the NUL-text user got {counts['nul_text_user_replies']} replies")
    if counts["poison_not_isolated"]:
        problems.append(f"poison not isolated: {counts['poison_not_isolated']}")
    if any(f.get("replies", 0) > 1 for f in fates.values()):
        problems.append("a poison sender got more than one reply")
    if not queue_poison["failures"] and not queue_poison["dead_lettered"]:
        # Completed and gone without a trace: the processor dropped it with a log line only.
        problems.append("the undecodable queued envelope left no record")
    if queue_poison["still_queued"]:
        problems.append("the undecodable queued envelope is still being retried")
    return problems


def _swept(database_url: str, event_ids: list[int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rows = await query(
            database_url,
            "SELECT count(*) FROM whatsapp_webhook_events WHERE id = ANY(%s) "
            "AND (status <> 'pending' OR publish_attempts > 0)",
            (event_ids,),
        )
        return bool(rows[0][0])

    return check
