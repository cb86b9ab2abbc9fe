"""Property: whatever a signed body holds, the intake answers below 500, stores it byte for byte,
publishes its valid messages, counts its repeats, and the processor never raises on what it
queued; afterwards a normal message still goes through.

Sized for the default test command (300 batches of one to six bodies, about half a minute on two cores).
``FUZZ_EXAMPLES=5000`` runs longer; ``FUZZ_SHRINK=1`` shrinks a failure to a minimal batch (slow
with a database in the loop). The run is derandomized: CI and a laptop try the same batches.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import closing

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzz.harness import IntakeHarness, Post
from tests.fuzz.strategies import post_batches

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
PHASES = (Phase.explicit, Phase.generate) + (
    (Phase.shrink,) if os.environ.get("FUZZ_SHRINK") == "1" else ()
)


@pytest.mark.timeout(max(120, EXAMPLES // 2))
def test_every_signed_body_is_stored_answered_published_and_processed(
    fuzz_database_url: str,
) -> None:
    # Hypothesis calls the example synchronously, so the harness lives on a loop of this test's
    # own, which runs each batch to completion.
    with closing(asyncio.new_event_loop()) as loop:
        run = loop.run_until_complete
        opened = IntakeHarness.open(fuzz_database_url)
        harness = run(opened.__aenter__())
        try:

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=PHASES,
                report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck),
            )
            @given(batch=post_batches())
            def one_batch(batch: list[Post]) -> None:
                # Each batch on empty tables: a failure replays the same way.
                run(harness.reset())
                problems = run(harness.post(batch))
                assert not problems, "\n".join(problems)

            one_batch()
            print(harness.summary())  # shown with -s: what the run exercised
            problems = run(harness.normal_message_works())
            assert not problems, "\n".join(problems)
        finally:
            run(opened.__aexit__(None, None, None))
