"""The distributed rate limiter against a real PostgreSQL, including several OS processes at once."""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import multiprocessing
import queue
import time
from dataclasses import asdict
from typing import Any

import pytest

from shared_code.db.pool import Pool, open_pool
from shared_code.ratelimit import Decision, RateLimiter, RateLimitPolicy, RateLimits

pytestmark = pytest.mark.integration

NUMBER = "100000000000001"
OTHER_NUMBER = "100000000000002"
# High enough that the limits a test is not about never interfere.
ROOMY = RateLimits(per_second=1000, per_minute=100_000, per_day=1_000_000)


def limiter_for(pool: Pool, **limits: Any) -> RateLimiter:
    return RateLimiter(pool, RateLimitPolicy(default=RateLimits(**{**asdict(ROOMY), **limits})))


def pair_key(phone_number_id: str, recipient: str) -> bytes:
    return hashlib.sha256(f"{phone_number_id}:{recipient}".encode()).digest()


async def acquire_each(limiter: RateLimiter, recipients: list[str]) -> list[Decision]:
    return [await limiter.acquire(NUMBER, recipient) for recipient in recipients]


def users(count: int, prefix: str = "1555000") -> list[str]:
    return [f"{prefix}{index:04d}" for index in range(count)]


async def test_a_burst_is_cut_at_the_per_second_capacity_then_paced(pool: Pool) -> None:
    limiter = limiter_for(pool, per_second=20)  # capacity 2, one token every 50 ms

    decisions = await acquire_each(limiter, users(12))

    assert all(d.allowed for d in decisions[:2])
    granted = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    assert decisions[0].decided_at is not None and decisions[-1].decided_at is not None
    elapsed = (decisions[-1].decided_at - decisions[0].decided_at).total_seconds()
    assert len(granted) <= 2 + elapsed * 20 + 1e-6
    assert refused, "12 quick sends cannot all pass a 20/s limit with a burst of 2"
    for decision in refused:
        assert decision.limit == "second"
        assert 0 < decision.retry_after <= 0.05


async def test_waiting_the_retry_after_lets_the_next_send_through(pool: Pool) -> None:
    limiter = limiter_for(pool, per_second=20)  # capacity 2
    decisions = await acquire_each(limiter, users(3))
    refused = next(d for d in decisions if not d.allowed)

    await asyncio.sleep(refused.retry_after)

    assert (await limiter.acquire(NUMBER, "15559999999")).allowed


async def test_the_minute_limit_refuses_with_the_wait_for_its_next_token(pool: Pool) -> None:
    limiter = limiter_for(pool, per_minute=3)  # one token every 20 s

    decisions = await acquire_each(limiter, users(4))

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[3].limit == "minute"
    assert 15 < decisions[3].retry_after <= 20


async def test_the_day_limit_refuses_with_the_wait_for_its_next_token(pool: Pool) -> None:
    limiter = limiter_for(pool, per_day=2)  # one token every 12 h

    decisions = await acquire_each(limiter, users(3))

    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].limit == "day"
    assert 43_000 < decisions[2].retry_after <= 43_200


async def test_a_refusal_names_the_limit_with_the_longest_wait(pool: Pool) -> None:
    limiter = limiter_for(pool, per_minute=1, per_day=1)

    first, second = await acquire_each(limiter, users(2))

    assert first.allowed
    assert (second.allowed, second.limit) == (False, "day")
    assert 86_000 < second.retry_after <= 86_400


async def test_a_pair_refusal_charges_none_of_the_numbers_buckets(pool: Pool) -> None:
    # pair_burst 2 lets one message through back to back (one token is the jitter margin).
    limiter = limiter_for(pool, per_minute=2, pair_burst=2)

    to_alice = await limiter.acquire(NUMBER, "15550000001")
    again_to_alice = await limiter.acquire(NUMBER, "15550000001")
    to_bob = await limiter.acquire(NUMBER, "15550000002")
    to_carol = await limiter.acquire(NUMBER, "15550000003")

    assert to_alice.allowed
    assert (again_to_alice.allowed, again_to_alice.limit) == (False, "pair")
    assert 5 < again_to_alice.retry_after <= 6
    assert to_bob.allowed, "the pair refusal must not have used the minute's second token"
    assert (to_carol.allowed, to_carol.limit) == (False, "minute")
    usage = await limiter.usage(NUMBER)
    assert usage.minute.used == pytest.approx(2, abs=0.01)


async def test_a_number_refusal_charges_nothing_to_the_pair(pool: Pool) -> None:
    limiter = limiter_for(pool, per_minute=1, pair_burst=2)
    assert (await limiter.acquire(NUMBER, "15550000001")).allowed

    refused = await limiter.acquire(NUMBER, "15550000002")

    assert (refused.allowed, refused.limit) == (False, "minute")
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM rate_limit_pairs WHERE pair_key = %s AND tat > clock_timestamp()",
            (pair_key(NUMBER, "15550000002"),),
        )
        assert await cursor.fetchone() == (0,)


async def test_report_throttled_pauses_the_number_for_every_caller(pool: Pool) -> None:
    limiter = limiter_for(pool)
    other_instance = limiter_for(pool)
    assert (await limiter.acquire(NUMBER, "15550000001")).allowed

    await limiter.report_throttled(NUMBER, seconds=2.0)

    decision = await other_instance.acquire(NUMBER, "15550000002")
    assert (decision.allowed, decision.limit) == (False, "second")
    assert 1.5 < decision.retry_after <= 2.0
    assert (await other_instance.acquire(OTHER_NUMBER, "15550000002")).allowed


async def test_report_throttled_never_shortens_a_longer_pause(pool: Pool) -> None:
    limiter = limiter_for(pool)
    await limiter.report_throttled(NUMBER, seconds=30.0)
    await limiter.report_throttled(NUMBER, seconds=1.0)

    decision = await limiter.acquire(NUMBER, "15550000001")

    assert decision.limit == "second"
    assert decision.retry_after > 25


async def test_report_pair_limited_holds_back_only_that_recipient(pool: Pool) -> None:
    limiter = limiter_for(pool)

    await limiter.report_pair_limited(NUMBER, "15550000001", seconds=30.0)

    held = await limiter.acquire(NUMBER, "15550000001")
    assert (held.allowed, held.limit) == (False, "pair")
    assert 25 < held.retry_after <= 30
    assert (await limiter.acquire(NUMBER, "15550000002")).allowed
    assert (await limiter.usage(NUMBER)).pair_limited_recipients == 1


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
async def test_a_pause_must_be_a_finite_non_negative_duration(pool: Pool, seconds: float) -> None:
    limiter = limiter_for(pool)
    with pytest.raises(ValueError, match="pause"):
        await limiter.report_throttled(NUMBER, seconds=seconds)
    with pytest.raises(ValueError, match="pause"):
        await limiter.report_pair_limited(NUMBER, "15550000001", seconds=seconds)


async def test_usage_reports_configured_values_and_what_is_in_use(pool: Pool) -> None:
    limiter = limiter_for(pool, per_second=80, per_minute=10, per_day=100)
    await acquire_each(limiter, users(3))

    usage = await limiter.usage(NUMBER)

    assert usage.phone_number_id == NUMBER
    assert (usage.second.configured, usage.second.capacity) == (80, 8)
    assert (usage.minute.configured, usage.minute.capacity) == (10, 10)
    assert (usage.day.configured, usage.day.capacity) == (100, 100)
    # Three sends: 3 x 6 s of the minute bucket and 3 x 864 s of the day bucket to refill.
    assert 2 < usage.minute.used <= 3
    assert 12 < usage.minute.seconds_until_full <= 18
    assert usage.minute.available == 7
    assert 2 < usage.day.used <= 3
    assert 2_500 < usage.day.seconds_until_full <= 2_592
    assert 0 <= usage.second.used <= 3
    assert usage.pair_limited_recipients == 0


async def test_usage_of_a_number_that_never_sent_is_all_available(pool: Pool) -> None:
    usage = await limiter_for(pool).usage(OTHER_NUMBER)

    for limit in (usage.second, usage.minute, usage.day):
        assert (limit.used, limit.seconds_until_full) == (0, 0)
        assert limit.available == limit.capacity


async def test_a_number_override_applies_to_that_number_only(pool: Pool) -> None:
    policy = RateLimitPolicy.parse(
        f'{{"default": {{"per_minute": 1}}, "{OTHER_NUMBER}": {{"per_minute": 5}}}}'
    )
    limiter = RateLimiter(pool, policy)

    default_number = [await limiter.acquire(NUMBER, user) for user in users(3)]
    overridden = [await limiter.acquire(OTHER_NUMBER, user) for user in users(6)]

    assert [d.allowed for d in default_number] == [True, False, False]
    assert [d.allowed for d in overridden] == [True] * 5 + [False]
    assert (await limiter.usage(OTHER_NUMBER)).minute.configured == 5


async def test_pair_rows_hold_a_hash_and_no_phone_number(pool: Pool) -> None:
    limiter = limiter_for(pool, pair_burst=2)
    await limiter.acquire(NUMBER, "+15557654321")

    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT pair_key, phone_number_id, tat::text FROM rate_limit_pairs"
        )
        rows = await cursor.fetchall()

    assert [(key, number) for key, number, _ in rows] == [(pair_key(NUMBER, "15557654321"), NUMBER)]
    assert "5557654321" not in repr(rows)
    # The E.164 form with "+" and the wa_id name the same user, so they share one bucket.
    assert (await limiter.acquire(NUMBER, "15557654321")).limit == "pair"


async def test_purge_idle_deletes_only_full_pair_buckets(pool: Pool) -> None:
    limiter = limiter_for(pool)
    await acquire_each(limiter, users(3))
    idle = [pair_key(NUMBER, user) for user in users(2)]
    async with pool.connection() as conn:
        # As if the buckets had refilled: their TAT is in the past.
        await conn.execute(
            "UPDATE rate_limit_pairs SET tat = clock_timestamp() - interval '1 second' "
            "WHERE pair_key = ANY(%s)",
            (idle,),
        )

    assert await limiter.purge_idle() == 2
    assert await limiter.purge_idle() == 0
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT pair_key FROM rate_limit_pairs")
        assert await cursor.fetchall() == [(pair_key(NUMBER, users(3)[2]),)]
    assert (await limiter.acquire(NUMBER, users(1)[0])).allowed


async def test_concurrent_acquires_in_one_process_never_exceed_the_capacity(pool: Pool) -> None:
    limiter = limiter_for(pool, per_minute=5)

    decisions = await asyncio.gather(*(limiter.acquire(NUMBER, user) for user in users(20)))

    assert sum(d.allowed for d in decisions) == 5
    assert {d.limit for d in decisions if not d.allowed} == {"minute"}


# --- several OS processes -----------------------------------------------------------------------


def _hammer(
    database_url: str,
    limits: dict[str, Any],
    seconds: float,
    tasks: int,
    worker: int,
    start: Any,
    results: Any,
) -> None:
    """Acquire on NUMBER as fast as possible for `seconds`; report the grants' PostgreSQL times."""

    async def run() -> tuple[list[float], int]:
        pool = await open_pool(database_url, max_size=tasks, name=f"hammer-{worker}")
        limiter = RateLimiter(pool, RateLimitPolicy(default=RateLimits(**limits)))
        granted: list[float] = []
        calls = 0

        async def loop(task: int) -> None:
            nonlocal calls
            deadline = time.monotonic() + seconds
            sent = 0
            while time.monotonic() < deadline:
                decision = await limiter.acquire(NUMBER, f"{worker}-{task}-{sent}")
                calls += 1
                if decision.allowed:
                    assert decision.decided_at is not None
                    granted.append(decision.decided_at.timestamp())
                    sent += 1

        start.wait(timeout=30)
        try:
            await asyncio.gather(*(loop(task) for task in range(tasks)))
        finally:
            await pool.close()
        return granted, calls

    results.put((worker, *asyncio.run(run())))


def run_processes(
    database_url: str, limits: RateLimits, *, processes: int, tasks: int, seconds: float
) -> list[tuple[int, list[float], int]]:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_hammer,
            args=(database_url, asdict(limits), seconds, tasks, worker, start, results),
        )
        for worker in range(processes)
    ]
    for process in workers:
        process.start()
    try:
        collected = [results.get(timeout=seconds + 60) for _ in workers]
    except queue.Empty:
        pytest.fail("a worker process did not report")
    finally:
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in workers)
    return collected


async def test_two_processes_together_stay_within_the_per_second_limit(database_url: str) -> None:
    limits = RateLimits(per_second=20, per_minute=100_000, per_day=1_000_000)  # capacity 2
    rate, capacity, interval = 20, 2, 1 / 20

    collected = await asyncio.to_thread(
        run_processes, database_url, limits, processes=2, tasks=2, seconds=2.0
    )

    grants = sorted(stamp for _, granted, _ in collected for stamp in granted)
    assert all(granted for _, granted, _ in collected), "both processes must have been granted"
    assert sum(calls for *_, calls in collected) > len(grants), "the limit must have refused some"
    for index, stamp in enumerate(grants):
        in_window = bisect.bisect_left(grants, stamp + 1.0) - index
        assert in_window <= rate + capacity
    # The exact invariant: replaying GCRA over the grant times, every grant conformed.
    tat = -float("inf")
    for stamp in grants:
        assert tat - stamp <= (capacity - 1) * interval + 1e-5
        tat = max(tat, stamp) + interval


@pytest.mark.slow
@pytest.mark.parametrize(
    ("per_second", "label"), [(1_000_000.0, "every acquire granted"), (1000.0, "capped at 1,000/s")]
)
async def test_benchmark_acquires_per_second_from_four_processes(
    database_url: str, per_second: float, label: str
) -> None:
    limits = RateLimits(per_second=per_second, per_minute=10**9, per_day=10**9)
    seconds = 5.0

    collected = await asyncio.to_thread(
        run_processes, database_url, limits, processes=4, tasks=4, seconds=seconds
    )

    grants = sorted(stamp for _, granted, _ in collected for stamp in granted)
    calls = sum(calls for *_, calls in collected)
    span = grants[-1] - grants[0]
    print(
        f"\nrate limiter, 4 processes x 4 tasks, {label}: {calls / seconds:,.0f} acquires/s, "
        f"{len(grants) / span:,.0f} grants/s over {span:.1f} s"
    )
    assert grants
