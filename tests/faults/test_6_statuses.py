"""Scenario 6: delivery statuses duplicated, out of order, failed then read, and before their send.

The message row must show the furthest state whatever the order (sent < failed < delivered <
read), keep a failure's code, and the history must hold each (wamid, status) once.

A. The simulator posts its statuses duplicated and out of order, some as ``failed``.
B. Statuses posted by hand: ``read`` after ``failed`` (the message arrived after all), and
   ``failed`` after ``read`` (changes nothing).
C. Statuses that arrive before the sender has recorded the wamid: the simulator accepts the send
   but holds its answer, and the test posts delivered, sent, read and read again meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.conftest import ClusterFactory
from tests.faults.harness import (
    Delivery,
    Meta,
    encode,
    inbound_message,
    new_text,
    new_users,
    query,
    sized,
    status_update,
    wait_for_replies,
)

# Runs once the background scenarios are done (see conftest._phase).
AFTER_BACKGROUND = True

pytestmark = [pytest.mark.faults, pytest.mark.timeout(sized(180, 3600))]

PHASE_A_MESSAGES = sized(60, 1_000)
PHASE_C_MESSAGES = sized(10, 100)
HOLD_SECONDS = 3.0
RANK = {"sent": 2, "failed": 3, "delivered": 4, "read": 5}


async def _replies(database_url: str, users: list[str]) -> dict[str, dict[str, Any]]:
    """Reply rows of these users by wamid: status, error code, history of statuses."""
    rows = await query(
        database_url,
        "SELECT m.id, m.wamid, m.status, m.error_code, m.contact_wa_id, "
        "coalesce(array_agg(s.status ORDER BY s.status) FILTER (WHERE s.status IS NOT NULL), "
        "'{}'), count(s.status), count(DISTINCT s.status) "
        "FROM whatsapp_messages m LEFT JOIN whatsapp_message_statuses s ON s.wamid = m.wamid "
        "WHERE m.direction = 'outbound' AND m.contact_wa_id = ANY(%s) "
        "GROUP BY m.id ORDER BY m.id",
        (users,),
    )
    return {
        wamid: {
            "id": row_id,
            "status": status,
            "error_code": code,
            "user": user,
            "history": list(history),
            "history_rows": n,
            "history_distinct": distinct,
        }
        for row_id, wamid, status, code, user, history, n, distinct in rows
    }


def _fold(history: list[str]) -> str | None:
    return max(history, key=RANK.__getitem__) if history else None


async def _post_all(url: str, payloads: list[dict[str, Any]]) -> int:
    deliveries = [Delivery(encode(p), ()) for p in payloads]
    async with Meta(url, concurrency=16) as meta:
        await asyncio.gather(*(meta.deliver(d, deadline=time.monotonic() + 30) for d in deliveries))
    return sum(d.ok for d in deliveries)


async def test_statuses_in_any_order_fold_to_the_furthest_state(
    make_cluster: ClusterFactory, record: Callable[..., dict[str, Any]]
) -> None:
    rng = random.Random(6)
    cluster = await make_cluster("statuses")
    simulator = await cluster.start_simulator(
        sent_delay_seconds=0.05, delivered_delay_seconds=0.3, read_delay_seconds=0.6
    )
    await simulator.configure(
        faults={
            "duplicate_status_probability": 0.5,
            "out_of_order_probability": 0.5,
            "failed_status_probability": 0.2,
        }
    )
    await cluster.start_host("host", settings={"WHATSAPP_GRAPH_TIMEOUT_SECONDS": "10"})
    db = cluster.database_url
    problems: list[str] = []

    # --- A: the simulator's statuses, duplicated and out of order -----------------------------
    users_a = new_users(max(1, PHASE_A_MESSAGES // 3), rng)
    await simulator.open_windows(users_a)
    expected: dict[str, str] = {}
    payloads = []
    for index in range(PHASE_A_MESSAGES):
        user = users_a[index % len(users_a)]
        wamid, payload = inbound_message(user, text=new_text(rng))
        expected[wamid] = user
        payloads.append(payload)
    await _post_all(cluster.webhook_url, payloads)
    await wait_for_replies(db, simulator, expected, timeout=sized(60, 600), quiet=1.0)
    stats = await simulator.webhooks_settled()
    await asyncio.sleep(1.0)
    replies_a = await _replies(db, users_a)
    failed_a = [w for w, r in replies_a.items() if r["status"] == "failed"]
    wrong_a = [
        w
        for w, r in replies_a.items()
        if r["status"] != _fold(r["history"])
        or set(r["history"]) not in ({"failed"}, {"sent", "delivered", "read"})
    ]
    record(
        a_replies=len(replies_a),
        a_statuses_posted=stats.get("statuses_posted"),
        a_statuses_scheduled=stats.get("statuses_scheduled"),
        a_final={s: sum(r["status"] == s for r in replies_a.values()) for s in RANK},
        a_wrong_final_state=len(wrong_a),
    )
    if wrong_a:
        problems.append(f"A: {len(wrong_a)} replies whose state is not the fold of their history")

    # --- B: read after failed, failed after read ----------------------------------------------
    read_a = [w for w, r in replies_a.items() if r["status"] == "read"][: max(3, len(failed_a))]
    late: list[dict[str, Any]] = []
    for wamid in failed_a:
        late.append(
            status_update(
                wamid,
                "read",
                replies_a[wamid]["user"],
                callback_data=f"outbound:{replies_a[wamid]['id']}",
            )
        )
    for wamid in read_a:
        late.append(
            status_update(
                wamid,
                "failed",
                replies_a[wamid]["user"],
                callback_data=f"outbound:{replies_a[wamid]['id']}",
                error_code=131049,
            )
        )
    posted_b = await _post_all(cluster.webhook_url, late)
    await asyncio.sleep(1.0)
    replies_b = await _replies(db, users_a)
    wrong_b = [w for w in [*failed_a, *read_a] if replies_b[w]["status"] != "read"]
    lost_code = [w for w in failed_a if replies_b[w]["error_code"] is None]
    record(
        b_failed_then_read=len(failed_a),
        b_read_then_failed=len(read_a),
        b_statuses_posted_200=posted_b,
        b_not_read=len(wrong_b),
        b_failure_code_lost=len(lost_code),
    )
    if wrong_b:
        problems.append(f"B: {len(wrong_b)} replies not read after read + failed")
    if lost_code:
        problems.append(f"B: {len(lost_code)} replies lost their failure code")

    # --- C: statuses before the send is recorded ----------------------------------------------
    await simulator.configure(
        status_webhooks=False,
        faults={"timeout_next": PHASE_C_MESSAGES, "hold_seconds": HOLD_SECONDS},
    )
    users_c = new_users(PHASE_C_MESSAGES, rng)
    await simulator.open_windows(users_c)
    expected_c: dict[str, str] = {}
    payloads = []
    for user in users_c:
        wamid, payload = inbound_message(user, text=new_text(rng))
        expected_c[wamid] = user
        payloads.append(payload)
    await _post_all(cluster.webhook_url, payloads)
    early: dict[str, str] = {}
    before_recorded = 0
    deadline = time.monotonic() + 30
    while len(early) < len(users_c) and time.monotonic() < deadline:
        batch = []
        for message in await simulator.messages():
            if message["wa_id"] in users_c and message["wamid"] not in early:
                early[message["wamid"]] = message["wa_id"]
                at = int(time.time())
                # Out of order and duplicated, and without the callback data: only the wamid
                # links them to the reply, which does not have it yet.
                for status in ("delivered", "sent", "read", "read"):
                    batch.append(status_update(message["wamid"], status, message["wa_id"], at=at))
        if batch:
            unrecorded = await query(
                db,
                "SELECT count(*) FROM whatsapp_messages WHERE direction = 'outbound' "
                "AND contact_wa_id = ANY(%s) AND wamid IS NULL",
                (list(early.values()),),
            )
            before_recorded = unrecorded[0][0]
            await _post_all(cluster.webhook_url, batch)
        await asyncio.sleep(0.1)
    await _until_recorded(db, users_c)
    replies_c = await _replies(db, users_c)
    wrong_c = [
        w
        for w, r in replies_c.items()
        if r["status"] != "read" or set(r["history"]) != {"sent", "delivered", "read"}
    ]
    duplicates = await query(
        db,
        "SELECT count(*) FROM (SELECT wamid, status FROM whatsapp_message_statuses "
        "GROUP BY wamid, status HAVING count(*) > 1) AS repeated",
    )
    counts = record(
        c_sends_held=len(early),
        c_statuses_posted_before_the_wamid_was_recorded=before_recorded,
        c_replies=len(replies_c),
        c_not_read=len(wrong_c),
        history_rows_repeated=duplicates[0][0],
        history_rows_per_reply_max=max(
            (r["history_rows"] for r in [*replies_b.values(), *replies_c.values()]), default=0
        ),
    )
    if len(replies_c) != len(users_c):
        problems.append(f"C: {len(replies_c)} replies of {len(users_c)}")
    if wrong_c:
        problems.append(f"C: {len(wrong_c)} replies not read with a full history")
    if counts["history_rows_repeated"]:
        problems.append("a (wamid, status) pair recorded twice")
    assert not problems, problems


async def _until_recorded(database_url: str, users: list[str], timeout: float = 30.0) -> None:
    """Until every user's reply has its wamid recorded (the held answers came back)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await query(
            database_url,
            "SELECT count(*) FROM whatsapp_messages WHERE direction = 'outbound' "
            "AND contact_wa_id = ANY(%s) AND wamid IS NOT NULL",
            (users,),
        )
        if rows[0][0] >= len(users):
            break
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)
