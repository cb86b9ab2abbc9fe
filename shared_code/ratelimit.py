"""Outbound rate control shared by every sender instance, kept in PostgreSQL.

Every limit is a GCRA bucket (generic cell rate algorithm: a token bucket stored as a single
timestamp, see ``db/migrations/0002_rate_limits.sql``): it refills one token per *emission
interval* T, holds at most *capacity* tokens, and a send takes one. Over any span of ``w``
seconds a bucket grants at most ``capacity + w / T`` sends. Per business number
(``phone_number_id``), with :class:`RateLimits`:

- **second**: T = 1 / per_second, capacity = per_second / 10 (at least 1). Sends leave evenly
  spaced rather than in bursts. Meta's own bucket (capacity = per_second, refilled per_second/s)
  then has 0.9 s of slack for the delay between our grant and the request's arrival, and the
  small burst covers senders that wake a little late, so a saturated number still gets the
  whole rate.
- **minute**: T = 60 s / per_minute, capacity = per_minute. A quiet number may send a full
  minute's quota at once (still paced by the per-second bucket); the long-run average is exactly
  per_minute. Worst case: just under 2 x per_minute in one sliding 60 s window (a full bucket
  spent at its start, then the refill).
- **day**: the same with 86,400 s and per_day: at most 2 x per_day in one sliding 24 h window,
  and after the quota is spent one send every 86,400 / per_day s instead of a wait until midnight.
- **pair**, per (business number, recipient): T = pair_interval_seconds, capacity =
  pair_burst - 1 (at least 1). Meta's pair bucket has the full pair_burst; the token we hold
  back absorbs up to one interval of delay between our grant and Meta's clock.

One :meth:`RateLimiter.acquire` is one database round trip that charges all four buckets or
none. Time is PostgreSQL's ``clock_timestamp()``, so instances with skewed clocks agree.
"""

from __future__ import annotations

import hashlib
import logging
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from shared_code.db.pool import Pool

logger = logging.getLogger(__name__)

__all__ = [
    "Decision",
    "LimitName",
    "LimitUsage",
    "RateCharge",
    "RateLimitPolicy",
    "RateLimiter",
    "RateLimits",
    "Usage",
    "decision_of",
]

LimitName = Literal["second", "minute", "day", "pair"]

_SECOND_BURST_FRACTION = 0.1
_SECONDS_PER_MINUTE = 60.0
_SECONDS_PER_DAY = 86_400.0
_PURGE_BATCH_SIZE = 5_000


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """The limits of one business number; the defaults are the seed's."""

    per_second: float = 80
    per_minute: int = 1000
    per_day: int = 10000
    pair_burst: int = 45
    pair_interval_seconds: float = 6.0

    def __post_init__(self) -> None:
        for name in ("per_second", "pair_interval_seconds"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("per_minute", "per_day", "pair_burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitPolicy:
    """Limits per business number: ``per_number`` overrides, ``default`` for every other one."""

    default: RateLimits = RateLimits()
    per_number: Mapping[str, RateLimits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_number", types.MappingProxyType(dict(self.per_number)))

    def for_number(self, phone_number_id: str) -> RateLimits:
        return self.per_number.get(phone_number_id, self.default)

    @classmethod
    def parse(cls, raw: str | None) -> RateLimitPolicy:
        """Read the ``RATE_LIMITS`` setting: a JSON object of limits by business number.

        ``{"default": {"per_second": 80}, "100000000000001": {"per_second": 1000}}``: keys are
        ``"default"`` or a phone number id; each value sets any of :class:`RateLimits`' fields.
        Fields left out of ``"default"`` keep the built-in defaults, and fields left out of a
        number's entry keep ``"default"``'s. Empty or unset means the built-in defaults.
        """
        if raw is None or not raw.strip():
            return cls()
        try:
            document = msgspec.json.decode(raw, type=dict[str, object])
        except msgspec.DecodeError as error:  # ValidationError included
            raise ValueError(f"not a JSON object of limits: {error}") from None
        entries: dict[str, _LimitsOverride] = {}
        for key, value in document.items():
            if key != "default" and not key.isdigit():
                raise ValueError(f'keys must be "default" or a phone number id, got {key!r}')
            try:
                entries[key] = msgspec.convert(value, _LimitsOverride)
            except msgspec.ValidationError as error:
                raise ValueError(f"{key!r}: {error}") from None
        default = _with_overrides(RateLimits(), entries.pop("default", None), "default")
        per_number = {key: _with_overrides(default, value, key) for key, value in entries.items()}
        return cls(default=default, per_number=per_number)


class _LimitsOverride(msgspec.Struct, forbid_unknown_fields=True):
    per_second: float | msgspec.UnsetType = msgspec.UNSET
    per_minute: int | msgspec.UnsetType = msgspec.UNSET
    per_day: int | msgspec.UnsetType = msgspec.UNSET
    pair_burst: int | msgspec.UnsetType = msgspec.UNSET
    pair_interval_seconds: float | msgspec.UnsetType = msgspec.UNSET


def _with_overrides(base: RateLimits, override: _LimitsOverride | None, key: str) -> RateLimits:
    if override is None:
        return base
    changes: dict[str, Any] = {
        item.name: getattr(override, item.name)
        for item in fields(RateLimits)
        if getattr(override, item.name) is not msgspec.UNSET
    }
    try:
        return replace(base, **changes)
    except ValueError as error:
        raise ValueError(f"{key!r}: {error}") from None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # Seconds until a retry can succeed: 0 when allowed, else the longest wait among the
    # refusing buckets (other senders may still take the slot first).
    retry_after: float
    # The refusing bucket with that longest wait; None when allowed.
    limit: LimitName | None
    # PostgreSQL's clock when the decision was made.
    decided_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitUsage:
    """One bucket's state, estimated from its GCRA timestamp.

    ``used`` is the tokens taken and not yet refilled (0 to ``capacity``): for the minute and day
    limits, roughly the sends of the last minute or day that still count; for the second limit,
    the backlog of a number sending at its full rate. A pause after Meta throttled us shows as a
    full bucket.
    """

    configured: float  # the limit as configured (per second, per minute, per day)
    capacity: int  # sends a full bucket allows back to back
    used: float
    seconds_until_full: float

    @property
    def available(self) -> int:
        return max(0, math.floor(self.capacity - self.used + 1e-9))


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What ``GET /status`` shows for one business number."""

    phone_number_id: str
    limits: RateLimits
    second: LimitUsage
    minute: LimitUsage
    day: LimitUsage
    # Recipients whose pair bucket is empty: a send to them now would be refused.
    pair_limited_recipients: int


@dataclass(frozen=True, slots=True)
class _Bucket:
    """GCRA parameters: the emission interval and the burst tolerance, in seconds."""

    interval: float
    tolerance: float

    @classmethod
    def of(cls, interval: float, capacity: int) -> _Bucket:
        return cls(interval, (capacity - 1) * interval)

    @property
    def capacity(self) -> int:
        return round(self.tolerance / self.interval) + 1


@dataclass(frozen=True, slots=True)
class _Buckets:
    second: _Bucket
    minute: _Bucket
    day: _Bucket
    pair: _Bucket

    @classmethod
    def of(cls, limits: RateLimits) -> _Buckets:
        second_capacity = max(1, math.floor(limits.per_second * _SECOND_BURST_FRACTION))
        return cls(
            second=_Bucket.of(1.0 / limits.per_second, second_capacity),
            minute=_Bucket.of(_SECONDS_PER_MINUTE / limits.per_minute, limits.per_minute),
            day=_Bucket.of(_SECONDS_PER_DAY / limits.per_day, limits.per_day),
            pair=_Bucket.of(limits.pair_interval_seconds, max(1, limits.pair_burst - 1)),
        )


# A pause is a TAT pushed to now + pause + tolerance: the next send then waits `pause` seconds,
# and the bucket restarts empty instead of with a burst.
_PAUSE_NUMBER = """
INSERT INTO rate_limit_numbers AS numbers (phone_number_id, second_tat)
VALUES (%(number)s, clock_timestamp() + make_interval(secs => %(pause)s + %(tolerance)s))
ON CONFLICT (phone_number_id)
DO UPDATE SET second_tat = greatest(numbers.second_tat, excluded.second_tat)
"""

_PAUSE_PAIR = """
INSERT INTO rate_limit_pairs AS pairs (pair_key, phone_number_id, tat)
VALUES (%(key)s, %(number)s, clock_timestamp() + make_interval(secs => %(pause)s + %(tolerance)s))
ON CONFLICT (pair_key) DO UPDATE SET tat = greatest(pairs.tat, excluded.tat)
"""

# The pair count scans the number's pair rows: only recipients messaged in the last few minutes
# have one (purge_idle removes the rest), so the table stays small.
_USAGE = """
SELECT extract(epoch FROM clock.now)::float8,
       extract(epoch FROM numbers.second_tat)::float8,
       extract(epoch FROM numbers.minute_tat)::float8,
       extract(epoch FROM numbers.day_tat)::float8,
       (SELECT count(*) FROM rate_limit_pairs AS pairs
        WHERE pairs.phone_number_id = %(number)s
          AND pairs.tat > clock.now + make_interval(secs => %(pair_tolerance)s))
FROM (SELECT clock_timestamp() AS now) AS clock
LEFT JOIN rate_limit_numbers AS numbers ON numbers.phone_number_id = %(number)s
"""


@dataclass(frozen=True, slots=True)
class RateCharge:
    """One ``rate_limit_acquire(...)`` call, for a statement that charges a send together with
    other work (see :func:`shared_code.db.outbound.load_outbound`): put :attr:`CALL` in the
    statement and :attr:`parameters` among its named parameters."""

    phone_number_id: str
    recipient: str
    arguments: tuple[str | bytes | float, ...]

    CALL: ClassVar[str] = "rate_limit_acquire({})".format(
        ", ".join(f"%(charge_{n})s" for n in range(10))
    )

    @property
    def parameters(self) -> dict[str, str | bytes | float]:
        return {f"charge_{n}": value for n, value in enumerate(self.arguments)}


# Both parts are constants of this module: nothing from outside reaches the text.
_ACQUIRE = f"SELECT allowed, retry_after, refused_by, decided_at FROM {RateCharge.CALL}"  # noqa: S608


def decision_of(columns: Sequence[Any]) -> Decision:
    """A :class:`Decision` from the four columns ``rate_limit_acquire`` returns, in order."""
    allowed, retry_after, refused_by, decided_at = columns
    return Decision(bool(allowed), float(retry_after), refused_by, decided_at)


class RateLimiter:
    """Asks PostgreSQL, before each send, whether every limit allows it; shared by all instances."""

    def __init__(self, pool: Pool, policy: RateLimitPolicy) -> None:
        self._pool = pool
        self._policy = policy

    def charge_for(self, phone_number_id: str, recipient: str) -> RateCharge:
        """What :meth:`acquire` would ask PostgreSQL, for a statement of the caller's."""
        buckets = _Buckets.of(self._policy.for_number(phone_number_id))
        return RateCharge(
            phone_number_id,
            recipient,
            (
                phone_number_id,
                _pair_key(phone_number_id, recipient),
                *_gcra_parameters(buckets.second),
                *_gcra_parameters(buckets.minute),
                *_gcra_parameters(buckets.day),
                *_gcra_parameters(buckets.pair),
            ),
        )

    async def acquire(self, phone_number_id: str, recipient: str) -> Decision:
        """Take one send from the number's and the pair's buckets, or from none of them."""
        charge = self.charge_for(phone_number_id, recipient)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_ACQUIRE, charge.parameters)
            row = await cursor.fetchone()
        if row is None:
            raise RuntimeError("rate_limit_acquire returned no row")
        return decision_of(row)

    async def report_throttled(self, phone_number_id: str, *, seconds: float = 1.0) -> None:
        """Meta throttled the number anyway (130429, 4, 80007): pause it for every instance."""
        _check_pause(seconds)
        tolerance = _Buckets.of(self._policy.for_number(phone_number_id)).second.tolerance
        async with self._pool.connection() as conn:
            await conn.execute(
                _PAUSE_NUMBER,
                {"number": phone_number_id, "pause": seconds, "tolerance": tolerance},
            )
        logger.info(
            "sends on number %s paused for %.1f s after a throttle", phone_number_id, seconds
        )

    async def report_pair_limited(
        self, phone_number_id: str, recipient: str, *, seconds: float
    ) -> None:
        """Meta refused a send to this user (131056): hold that pair back for ``seconds``."""
        _check_pause(seconds)
        tolerance = _Buckets.of(self._policy.for_number(phone_number_id)).pair.tolerance
        params = {
            "key": _pair_key(phone_number_id, recipient),
            "number": phone_number_id,
            "pause": seconds,
            "tolerance": tolerance,
        }
        async with self._pool.connection() as conn:
            await conn.execute(_PAUSE_PAIR, params)
        logger.info(
            "sends to one recipient of number %s paused for %.1f s", phone_number_id, seconds
        )

    async def usage(self, phone_number_id: str) -> Usage:
        """The number's limits and how much of each is in use right now (see :class:`LimitUsage`)."""
        limits = self._policy.for_number(phone_number_id)
        buckets = _Buckets.of(limits)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                _USAGE, {"number": phone_number_id, "pair_tolerance": buckets.pair.tolerance}
            )
            row = await cursor.fetchone()
        if row is None:
            raise RuntimeError("rate limit usage query returned no row")
        now, second_tat, minute_tat, day_tat, pair_limited = row
        return Usage(
            phone_number_id=phone_number_id,
            limits=limits,
            second=_limit_usage(limits.per_second, buckets.second, second_tat, now),
            minute=_limit_usage(limits.per_minute, buckets.minute, minute_tat, now),
            day=_limit_usage(limits.per_day, buckets.day, day_tat, now),
            pair_limited_recipients=int(pair_limited),
        )

    async def purge_idle(self) -> int:
        """Delete the pair rows whose bucket is full again; returns how many. For a timer."""
        purged = 0
        while True:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT rate_limit_purge_idle(%s)", (_PURGE_BATCH_SIZE,)
                )
                row = await cursor.fetchone()
            batch = int(row[0]) if row else 0
            purged += batch
            if batch < _PURGE_BATCH_SIZE:
                break
        if purged:
            logger.info("purged %d idle pair rate-limit rows", purged)
        return purged


def _pair_key(phone_number_id: str, recipient: str) -> bytes:
    # wa_id never has the "+" that an E.164 "to" may carry; both name the same user.
    return hashlib.sha256(f"{phone_number_id}:{recipient.lstrip('+')}".encode()).digest()


def _gcra_parameters(bucket: _Bucket) -> tuple[float, float]:
    return bucket.interval, bucket.tolerance


def _check_pause(seconds: float) -> None:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a pause must be a finite number of seconds >= 0, got {seconds!r}")


def _limit_usage(configured: float, bucket: _Bucket, tat: float | None, now: float) -> LimitUsage:
    ahead = max(0.0, (tat if tat is not None else -math.inf) - now)
    used = min(float(bucket.capacity), ahead / bucket.interval)
    return LimitUsage(
        configured=configured,
        capacity=bucket.capacity,
        used=round(used, 3),
        seconds_until_full=round(ahead, 3),
    )
