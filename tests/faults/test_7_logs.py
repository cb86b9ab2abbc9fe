"""Scenario 7: no secret, message text, phone number or wamid in any log line of the suite.

Every host and simulator started by the scenarios before this one (this file runs last) wrote its
output to a registered file; this test adds a small run of its own (so it checks something when
run alone): users writing through the simulator, signed posts, a bad signature, an unreadable
body, the subscription handshake with the verify token, statuses. Then every line is scanned.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.faults.conftest import ClusterFactory
from tests.faults.harness import (
    SESSION,
    VERIFY_TOKEN,
    Delivery,
    Meta,
    encode,
    inbound_message,
    new_text,
    new_users,
    status_update,
    wait_for_replies,
)
from tests.faults.privacy import Scanner

# Runs once the background scenarios are done (see conftest._phase).
AFTER_BACKGROUND = True

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


async def _own_run(make_cluster: ClusterFactory) -> None:
    rng = random.Random(7)
    cluster = await make_cluster("logs")
    simulator = await cluster.start_simulator()
    await cluster.start_host("host")
    users = new_users(10, rng)
    await simulator.open_windows(users)
    expected: dict[str, str] = {}
    for user in users[:5]:
        result = await simulator.user_writes(user, new_text(rng, "through the simulator"))
        expected[str(result["wamid"])] = user
    deliveries = []
    for user in users[5:]:
        wamid, payload = inbound_message(user, text=new_text(rng))
        expected[wamid] = user
        deliveries.append(Delivery(encode(payload), (wamid,)))
    wamid, payload = inbound_message(users[0], text=new_text(rng, "an unknown status follows"))
    deliveries.append(Delivery(encode(status_update(wamid, "read", users[0])), ()))
    deliveries.append(Delivery(b"not json, but signed " + new_text(rng).encode(), ()))
    async with Meta(cluster.webhook_url) as meta:
        await asyncio.gather(*(meta.deliver(d, deadline=time.monotonic() + 30) for d in deliveries))
    async with aiohttp.ClientSession() as http:
        body = encode(inbound_message(users[1], text=new_text(rng, "bad signature"))[1])
        async with http.post(
            cluster.webhook_url, data=body, headers={"X-Hub-Signature-256": "sha256=00"}
        ) as answer:
            assert answer.status == 401
        for token in (VERIFY_TOKEN, "wrong-" + VERIFY_TOKEN):
            params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"}
            async with http.get(cluster.webhook_url, params=params) as answer:
                assert answer.status == (200 if token == VERIFY_TOKEN else 403)
    await wait_for_replies(cluster.database_url, simulator, expected, timeout=60, quiet=1.5)
    # Stopped here, not at teardown: the shutdown lines must be in the files scanned.
    await cluster.close()


async def test_no_secret_text_phone_number_or_wamid_in_any_log(
    make_cluster: ClusterFactory, record: Callable[..., dict[str, Any]]
) -> None:
    await _own_run(make_cluster)
    scanner = Scanner(SESSION.sensitive)
    findings = []
    lines = 0
    for path in SESSION.logs:
        if path.exists():
            lines += len(path.read_text(errors="replace").splitlines())
            findings += scanner.scan_file(path)
    by_kind = Counter(f.kind for f in findings)
    by_source = Counter(f.where.split(":")[0].rsplit("-", 2)[0] for f in findings)
    record(
        log_files=len(SESSION.logs),
        log_lines=lines,
        phone_numbers_checked=len(SESSION.sensitive.wa_ids),
        texts_checked=len(SESSION.sensitive.texts),
        wamids_checked=len(SESSION.sensitive.wamids),
        findings=len(findings),
        findings_by_kind=dict(by_kind),
        findings_by_process=dict(by_source),
        first_findings=[f.as_json() for f in findings[:20]],
    )
    assert not findings, f"{len(findings)} findings: {dict(by_kind)}; first: {findings[:5]}"
