"""The named hostile bodies, each on its own, and the scenarios a single body cannot show.

Regression tests of the hostile test report's defects 1-5 (see ``corpus/__init__.py``).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from shared_code.processing import Outcome
from tests.fuzz.bodies import FuzzBody
from tests.fuzz.corpus import ALL_CASES, CorpusCase, as_json, change, text_message, webhook
from tests.fuzz.harness import IntakeHarness, Post

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda case: f"d{case.defect or 0}-{case.name}")
async def test_corpus_body(harness: IntakeHarness, case: CorpusCase) -> None:
    problems = await harness.post([Post(case.fuzz_body())])
    for wamid in sorted(case.must_store):
        outcome = harness.outcome_of.get(wamid)
        if outcome is not Outcome.STORED:
            problems.append(
                f"the user's message {wamid!r} was not stored by the processor: {outcome}"
            )
    assert not problems, f"{case.why}:\n" + "\n".join(problems)


async def test_repeats_racing_in_one_insert_batch_are_all_counted(harness: IntakeHarness) -> None:
    """Defect 5: Meta's retries of one body that meet in one batch were counted as one."""
    payload = webhook(change([text_message("wamid.C5race")]))
    body = FuzzBody(as_json(payload), "defect 5", frozenset({"wamid.C5race"}))
    # The harness checks duplicate_count == deliveries - 1 after each round.
    problems = await harness.post([Post(body)] * 49)
    problems += await harness.post([Post(body)] * 3)
    assert not problems, "\n".join(problems)
    assert harness.accepted[body.sha256] == 52


async def test_a_body_postgresql_refuses_does_not_fail_its_batch(harness: IntakeHarness) -> None:
    """Defect 2: one NUL in a text column failed the whole batched INSERT (503 for all)."""
    poisoned = [
        webhook(object_="whatsapp_business_account\x00"),
        webhook(change(field="\x00")),
        webhook(change([text_message("wamid.C2batch0", sender="1\x00")])),
        webhook(change([text_message("wamid.C2batch1")], phone_number_id="\x00")),
    ]
    normal = [webhook(change([text_message(f"wamid.C2ok{n}", f"ok {n}")])) for n in range(8)]
    posts = [Post(FuzzBody(as_json(p), "defect 2 poison")) for p in poisoned] + [
        Post(FuzzBody(as_json(p), "defect 2 neighbour", frozenset({f"wamid.C2ok{n}"})))
        for n, p in enumerate(normal)
    ]
    # Interleaved, so every insert batch holds poison and neighbours.
    problems = await harness.post(posts[::2] + posts[1::2])
    assert not problems, "\n".join(problems)


def _queued_envelope(message: dict[str, object]) -> bytes:
    """A bus message as an intake without the repairs queued it (or an old one still queued)."""
    envelope = {
        "kind": "message",
        "waba_id": "102290129340398",
        "phone_number_id": "106540352242922",
        "display_phone_number": "15550783881",
        "contact": {"profile": {"name": "Ana\x00"}, "wa_id": "16505551234"},
        "message": message,
        "webhook_event_id": None,
    }
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("name", "text"),
    [("nul", "hello\x00world"), ("nuls", "\x00" * 10), ("surrogate", "a\ud800b")],
)
async def test_the_processor_stores_a_queued_message_whose_text_postgresql_refuses(
    harness: IntakeHarness, name: str, text: str
) -> None:
    """Defect 4: a user's text with NUL failed the processor on every delivery."""
    wamid = f"wamid.C4queued{name}"
    body = _queued_envelope(text_message(wamid, text))
    outcomes = []
    for _ in range(2):  # a redelivery finds it stored
        outcomes.append(await asyncio.wait_for(harness.processor.handle(body), timeout=30))
    assert outcomes == [Outcome.STORED, Outcome.DUPLICATE]
    async with harness.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT text_body FROM whatsapp_messages WHERE wamid = %s", (wamid,)
        )
        [(stored_text,)] = await cursor.fetchall()
    assert stored_text and "\x00" not in stored_text


async def test_the_intake_still_takes_a_normal_message_after_the_corpus(
    harness: IntakeHarness,
) -> None:
    for case in ALL_CASES:
        # Each case's own promises are checked on their own above; here only what follows.
        await harness.post([Post(case.fuzz_body())])
    problems = await harness.normal_message_works()
    assert not problems, "\n".join(problems)
