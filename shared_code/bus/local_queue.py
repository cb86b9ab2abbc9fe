"""A PostgreSQL queue with the Service Bus semantics the bridge relies on (local development).

Semantics (mirroring Azure Service Bus):
- publish: message-id duplicate detection within a window (default 10 min): a message whose id was
  accepted on the same queue within the window is silently dropped (also within one batch: the
  first occurrence wins). Scheduled enqueue time delays visibility. A NOTIFY per queue and
  session touched by a publishing transaction wakes idle receivers: the queue's feeders, and the
  holder of that one session only (not every idle session holder of the queue).
- sessions: a message with a session id is only delivered to the holder of that session's lock;
  one holder per session at a time; messages of a session are delivered in sequence order, one at a
  time while one is locked. Session lock expires after ``lock_duration`` unless renewed. A session
  message's lock only counts while the session lock it was received under is held.
- peek-lock: receive locks a message for ``lock_duration`` and increments its delivery count;
  complete deletes it; abandon unlocks it (it is delivered again); an expired lock makes it
  deliverable again. When a message would be delivered with delivery_count > max_delivery_count
  it is moved to the dead-letter state instead (reason "MaxDeliveryCountExceeded"); abandoning a
  message that already had its last delivery dead-letters it at once.
- dead-letter: explicit dead_letter(reason, description), kept and listable, never delivered
  until :meth:`LocalQueue.replay_dead_letters` moves them back (what re-sending from the
  dead-letter sub-queue does in Azure; scripts/replay_dead_letters.py).
- size: a message over ``max_message_size`` (Standard tier: 256 KB, counted here as body,
  properties and ids) is refused for good, the others of the call are accepted, as the Azure
  adapter does, so an oversized event fails on the dev host the way it would in Azure.

Durability: the bus may run on connections with ``synchronous_commit=off`` (the dev host and the
app's local-bus pool do): a commit returns before its WAL is on disk, which saves a disk flush per
accept, receive, settle and publish. Delivery stays at-least-once: WAL is flushed in order, so any
later synchronous commit (every row the app writes) makes the earlier bus writes durable too, and
a crash can only lose bus writes that nothing durable depends on yet: a lost complete means a
redelivery (processing is idempotent), a lost publish of a webhook event leaves it ``pending`` for
the sweeper, a lost reply publish comes back with the redelivered inbound message.

Publishing a batch of any size, receiving, accepting a session and every settlement are each one
SQL statement (one round trip); accepting a session also locks and returns its first message, and
a session holder completes a message and receives the next in one statement. Waiting receivers
share one LISTEN connection per :class:`LocalQueue` and otherwise sleep until the next scheduled
message or lock expiry is due, so an idle queue costs no polling.

Errors::

    MessageLockLost      settling or renewing with a lock that expired or was taken over
    └── SessionLockLost  the session lock itself expired, was released, or was taken over
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row

from shared_code.batching import BatchingQueue
from shared_code.bus.dead_letters import ReplayReport
from shared_code.bus.port import (
    STANDARD_TIER_MAX_MESSAGE_BYTES,
    OutgoingMessage,
    PropertyValue,
    PublishError,
    QueueDepth,
)
from shared_code.db.pool import Pool
from shared_code.log_privacy import pseudonym

__all__ = [
    "LOCAL_BUS_MIGRATIONS",
    "DeadLetteredMessage",
    "LocalQueue",
    "MessageLockLost",
    "QueueOptions",
    "ReceivedMessage",
    "SessionLockLost",
    "SessionReceiver",
]

logger = logging.getLogger(__name__)

LOCAL_BUS_MIGRATIONS = Path(__file__).with_name("migrations")

# One channel for every queue: one LISTEN serves all queues. Payload: the queue, then on new lines
# the session (if any) and "1" when due times may have changed (scheduled publish, release).
NOTIFY_CHANNEL: Final = "local_bus"
MAX_DELIVERY_COUNT_EXCEEDED: Final = "MaxDeliveryCountExceeded"

# Without a working LISTEN connection, waiters fall back to polling at this interval.
_DEAF_POLL_SECONDS: Final = 1.0
_LISTENER_READY_TIMEOUT: Final = 5.0
_RECONNECT_MIN_SECONDS: Final = 0.5
_RECONNECT_MAX_SECONDS: Final = 10.0
# Sleeping a little past a due time makes sure the next query's now() is past it too.
_DUE_MARGIN_SECONDS: Final = 0.005
_DUE_CACHE_SECONDS: Final = 0.25
# Acceptors woken together may pick the same session; each loser looks again, up to this often.
_ACCEPT_ATTEMPTS: Final = 10
_ACCEPT_SCAN_PER_SESSION: Final = 4
# How long a release waits for others to share its statement.
_RELEASE_LINGER_SECONDS: Final = 0.02


@dataclass(frozen=True, slots=True)
class QueueOptions:
    lock_duration: timedelta = timedelta(seconds=60)
    max_delivery_count: int = 10
    duplicate_detection_window: timedelta = timedelta(minutes=10)
    max_message_size: int = STANDARD_TIER_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.lock_duration <= timedelta(0):
            raise ValueError("lock_duration must be positive")
        if self.max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        if self.duplicate_detection_window < timedelta(0):
            raise ValueError("duplicate_detection_window must not be negative")
        if self.max_message_size < 1:
            raise ValueError("max_message_size must be positive")


_DEFAULT_OPTIONS: Final = QueueOptions()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedMessage:
    queue: str
    sequence_number: int
    message_id: str
    session_id: str | None
    body: bytes
    content_type: str | None
    subject: str | None
    application_properties: Mapping[str, PropertyValue]
    delivery_count: int
    enqueued_time: datetime
    scheduled_enqueue_time: datetime | None
    lock_token: str
    locked_until: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetteredMessage:
    queue: str
    sequence_number: int
    message_id: str
    session_id: str | None
    body: bytes
    delivery_count: int
    dead_letter_reason: str
    dead_letter_description: str | None
    dead_lettered_at: datetime


class MessageLockLost(RuntimeError):
    """The lock expired or was taken by another receiver; the settle call changed nothing."""


class SessionLockLost(MessageLockLost):
    """The session lock expired, was released or was taken by another receiver."""


# --- SQL -------------------------------------------------------------------------------------
# Columns copied when a message moves to the dead letters (same names in both tables).
_DEAD_LETTER_COPY = sql.SQL(
    "sequence_number, queue, message_id, session_id, body, content_type, subject,"
    " application_properties, enqueued_at, scheduled_enqueue_time, delivery_count"
)
_RETURNED = sql.SQL(
    "m.sequence_number, m.queue, m.message_id, m.session_id, m.body, m.content_type, m.subject,"
    " m.application_properties, m.delivery_count, m.enqueued_at, m.scheduled_enqueue_time,"
    " m.lock_token, m.locked_until"
)
# A lock is valid while unexpired and, for a session message, while the session lock it was
# received under is still held.
_LOCK_IS_VALID = sql.SQL(
    """m.sequence_number = %(sequence_number)s
      AND m.lock_token = %(lock_token)s
      AND m.locked_until > now()
      AND (m.session_id IS NULL OR EXISTS (
          SELECT 1 FROM local_bus_sessions s
          WHERE s.queue = m.queue AND s.session_id = m.session_id
            AND s.lock_token = m.session_lock_token AND s.locked_until > now()))"""
)

_PUBLISH: Final = """
WITH input AS (
    SELECT *
    FROM unnest(
        %(message_ids)s::text[], %(session_ids)s::text[], %(bodies)s::bytea[],
        %(content_types)s::text[], %(subjects)s::text[], %(properties)s::text[],
        %(scheduled)s::timestamptz[]
    ) WITH ORDINALITY AS t(message_id, session_id, body, content_type, subject, properties,
                           scheduled_enqueue_time, position)
),
first_of_id AS (
    -- Within one batch the first occurrence of an id wins, as if sent one after the other.
    -- Sorted by id, so concurrent publishers lock history rows in the same order (no deadlock).
    SELECT DISTINCT ON (message_id) * FROM input ORDER BY message_id, position
),
accepted AS (
    INSERT INTO local_bus_duplicates AS d (queue, message_id, expires_at)
    SELECT %(queue)s, message_id, now() + %(window)s FROM first_of_id ORDER BY message_id
    ON CONFLICT (queue, message_id) DO UPDATE
        SET accepted_at = excluded.accepted_at, expires_at = excluded.expires_at
        WHERE d.expires_at <= now()
    RETURNING d.message_id
),
inserted AS (
    INSERT INTO local_bus_messages (
        queue, message_id, session_id, body, content_type, subject, application_properties,
        scheduled_enqueue_time, visible_at)
    SELECT %(queue)s, f.message_id, f.session_id, f.body, f.content_type, f.subject,
           f.properties::jsonb, f.scheduled_enqueue_time, greatest(now(), f.scheduled_enqueue_time)
    FROM first_of_id f JOIN accepted a USING (message_id)
    ORDER BY f.position
    RETURNING session_id, visible_at > now() AS later
),
notified AS (
    -- Payload: queue, session id (may be empty), and "1" if some message is scheduled for later,
    -- one per line. The session's holder wakes, no other holder; the scheduled mark tells
    -- waiters that a due time may have moved closer.
    SELECT pg_notify('local_bus', %(queue)s || E'\n' || coalesce(session_id, '')
                     || CASE WHEN bool_or(later) THEN E'\n1' ELSE '' END)::text
    FROM inserted GROUP BY session_id
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM notified)
"""

_RECEIVE = sql.SQL(
    """
WITH candidate AS (
    SELECT m.sequence_number, m.delivery_count
    FROM local_bus_messages m
    WHERE m.queue = %(queue)s AND m.session_id IS NULL AND m.visible_at <= now()
      AND (m.lock_token IS NULL OR m.locked_until <= now())
    ORDER BY m.sequence_number
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
exhausted AS (
    DELETE FROM local_bus_messages m USING candidate c
    WHERE m.sequence_number = c.sequence_number AND c.delivery_count >= %(max_delivery_count)s
    RETURNING m.*
),
dead_lettered AS (
    INSERT INTO local_bus_dead_letters ({copy}, dead_letter_reason, dead_letter_description)
    SELECT {copy}, %(exhausted_reason)s, %(exhausted_description)s FROM exhausted
),
delivered AS (
    UPDATE local_bus_messages m
    SET delivery_count = m.delivery_count + 1, lock_token = gen_random_uuid(),
        locked_until = now() + %(lock_duration)s, session_lock_token = NULL
    FROM candidate c
    WHERE m.sequence_number = c.sequence_number AND c.delivery_count < %(max_delivery_count)s
    RETURNING {returned}
)
SELECT true AS session_held, (SELECT count(*) FROM exhausted) AS exhausted, m.*
FROM (VALUES (1)) AS one (x) LEFT JOIN delivered m ON true
"""
).format(copy=_DEAD_LETTER_COPY, returned=_RETURNED)

# The session's next message. With {completing}, the message just processed is completed in the
# same statement (one round trip per message instead of two); the snapshot still shows the row
# being deleted, so it is excluded from the in-flight check and from the candidates by hand.
_SESSION_RECEIVE_TEMPLATE: Final = """
WITH {completing}
held AS (
    SELECT 1 FROM local_bus_sessions s
    WHERE s.queue = %(queue)s AND s.session_id = %(session_id)s
      AND s.lock_token = %(session_lock_token)s AND s.locked_until > now()
),
in_flight AS (
    SELECT 1 FROM local_bus_messages f
    WHERE f.queue = %(queue)s AND f.session_id = %(session_id)s AND f.lock_token IS NOT NULL
      AND f.locked_until > now() AND f.session_lock_token = %(session_lock_token)s
      {not_completed_f}
    LIMIT 1
),
candidate AS (
    -- No SKIP LOCKED: the session is ours, and skipping its head row would break FIFO order.
    SELECT m.sequence_number, m.delivery_count
    FROM local_bus_messages m
    WHERE m.queue = %(queue)s AND m.session_id = %(session_id)s AND m.visible_at <= now()
      AND EXISTS (SELECT 1 FROM held) AND NOT EXISTS (SELECT 1 FROM in_flight)
      {not_completed_m}
    ORDER BY m.sequence_number
    LIMIT 1
    FOR UPDATE OF m
),
exhausted AS (
    DELETE FROM local_bus_messages m USING candidate c
    WHERE m.sequence_number = c.sequence_number AND c.delivery_count >= %(max_delivery_count)s
    RETURNING m.*
),
dead_lettered AS (
    INSERT INTO local_bus_dead_letters ({copy}, dead_letter_reason, dead_letter_description)
    SELECT {copy}, %(exhausted_reason)s, %(exhausted_description)s FROM exhausted
),
delivered AS (
    UPDATE local_bus_messages m
    SET delivery_count = m.delivery_count + 1, lock_token = gen_random_uuid(),
        locked_until = now() + %(lock_duration)s, session_lock_token = %(session_lock_token)s
    FROM candidate c
    WHERE m.sequence_number = c.sequence_number AND c.delivery_count < %(max_delivery_count)s
    RETURNING {returned}
)
SELECT {completed} AS completed, EXISTS (SELECT 1 FROM held) AS session_held,
       (SELECT count(*) FROM exhausted) AS exhausted, m.*
FROM (VALUES (1)) AS one (x) LEFT JOIN delivered m ON true
"""

_RECEIVE_FROM_SESSION = sql.SQL(_SESSION_RECEIVE_TEMPLATE).format(
    completing=sql.SQL(""),
    not_completed_f=sql.SQL(""),
    not_completed_m=sql.SQL(""),
    completed=sql.SQL("1"),
    copy=_DEAD_LETTER_COPY,
    returned=_RETURNED,
)

_COMPLETE_AND_RECEIVE_FROM_SESSION = sql.SQL(_SESSION_RECEIVE_TEMPLATE).format(
    completing=sql.SQL(
        "completed AS (DELETE FROM local_bus_messages m WHERE {valid} RETURNING 1),"
    ).format(valid=_LOCK_IS_VALID),
    not_completed_f=sql.SQL("AND f.sequence_number <> %(sequence_number)s"),
    not_completed_m=sql.SQL(
        "AND m.sequence_number <> %(sequence_number)s AND EXISTS (SELECT 1 FROM completed)"
    ),
    completed=sql.SQL("(SELECT count(*) FROM completed)"),
    copy=_DEAD_LETTER_COPY,
    returned=_RETURNED,
)

_ACCEPT_SESSIONS = sql.SQL(
    """
WITH held_sessions AS (
    -- Read once; ``NOT IN`` over it is a hashed subplan, one probe per scanned message, which
    -- keeps skipping a long backlog of held sessions' messages cheap (``<> ALL`` over an array
    -- compared every message with every held session: 60 ms per accept behind 256 of them).
    SELECT s.session_id FROM local_bus_sessions s
    WHERE s.queue = %(queue)s AND s.locked_until > now()
),
scanned AS (
    -- The oldest deliverable messages of sessions nobody holds. SKIP LOCKED makes concurrent
    -- acceptors pass over each other's candidates.
    SELECT m.sequence_number, m.session_id, m.delivery_count
    FROM local_bus_messages m
    WHERE m.queue = %(queue)s AND m.session_id IS NOT NULL AND m.visible_at <= now()
      AND m.session_id NOT IN (SELECT session_id FROM held_sessions)
    ORDER BY m.sequence_number
    LIMIT %(scan_limit)s
    FOR UPDATE OF m SKIP LOCKED
),
candidate AS (
    -- Up to max_sessions sessions, oldest first, each with its oldest scanned message.
    SELECT * FROM (
        SELECT DISTINCT ON (session_id) sequence_number, session_id, delivery_count
        FROM scanned ORDER BY session_id, sequence_number
    ) AS heads
    ORDER BY sequence_number
    LIMIT %(max_sessions)s
),
locked AS (
    -- The conflict check settles a race between two acceptors that picked the same session.
    INSERT INTO local_bus_sessions AS s (queue, session_id, lock_token, locked_until)
    SELECT %(queue)s, session_id, gen_random_uuid(), now() + %(lock_duration)s FROM candidate
    ON CONFLICT (queue, session_id) DO UPDATE
        SET lock_token = excluded.lock_token, locked_until = excluded.locked_until
        WHERE s.locked_until <= now()
    RETURNING s.session_id, s.lock_token, s.locked_until
),
delivered AS (
    -- A session comes with its first message (one round trip less per session) when its
    -- candidate is the session's head and has deliveries left; otherwise the holder receives.
    UPDATE local_bus_messages m
    SET delivery_count = m.delivery_count + 1, lock_token = gen_random_uuid(),
        locked_until = now() + %(lock_duration)s, session_lock_token = l.lock_token
    FROM candidate c JOIN locked l ON l.session_id = c.session_id
    WHERE m.sequence_number = c.sequence_number AND c.delivery_count < %(max_delivery_count)s
      -- A scalar subquery, so it runs as one index probe per candidate whatever the statistics
      -- say: written as NOT EXISTS (an older visible message), the planner made it an anti join
      -- that read every index entry of the queue (7,172, mostly dead, in one accept of 7.7 ms).
      AND c.sequence_number = (
          SELECT o.sequence_number FROM local_bus_messages o
          WHERE o.queue = %(queue)s AND o.session_id = c.session_id AND o.visible_at <= now()
          ORDER BY o.sequence_number
          LIMIT 1)
    RETURNING {returned}
)
SELECT (SELECT count(*) FROM candidate) AS candidates,
       l.session_id AS held_session_id, l.lock_token AS session_lock_token,
       l.locked_until AS session_locked_until,
       -- Another free session has work too: the acceptor should come back at once.
       EXISTS (
           SELECT 1 FROM local_bus_messages w
           WHERE w.queue = %(queue)s AND w.session_id IS NOT NULL AND w.visible_at <= now()
             AND w.session_id NOT IN (SELECT session_id FROM held_sessions)
             AND w.session_id NOT IN (SELECT session_id FROM candidate)
       ) AS more_sessions,
       m.*
FROM (VALUES (1)) AS one (x)
LEFT JOIN (locked l LEFT JOIN delivered m ON m.session_id = l.session_id) ON true
"""
).format(returned=_RETURNED)

_RENEW_SESSION_LOCK: Final = """
UPDATE local_bus_sessions
SET locked_until = now() + %(lock_duration)s
WHERE queue = %(queue)s AND session_id = %(session_id)s
  AND lock_token = %(session_lock_token)s AND locked_until > now()
RETURNING locked_until
"""

_RELEASE_SESSIONS: Final = """
WITH released AS (
    DELETE FROM local_bus_sessions s
    USING unnest(%(queues)s::text[], %(session_ids)s::text[], %(lock_tokens)s::uuid[])
        AS r (queue, session_id, lock_token)
    WHERE s.queue = r.queue AND s.session_id = r.session_id AND s.lock_token = r.lock_token
    RETURNING s.queue, s.session_id
),
-- Another acceptor may now take a released session that still has messages; the "1" says
-- that due times may have changed too (the due-time query leaves held sessions out).
notified AS (
    SELECT pg_notify('local_bus', waiting.queue || E'\n\n1')::text
    FROM (SELECT DISTINCT r.queue FROM released r
          WHERE EXISTS (SELECT 1 FROM local_bus_messages m
                        WHERE m.queue = r.queue AND m.session_id = r.session_id)) AS waiting
)
SELECT count(*) FROM notified
"""

_COMPLETE = sql.SQL("DELETE FROM local_bus_messages m WHERE {valid}").format(valid=_LOCK_IS_VALID)

_ABANDON = sql.SQL(
    """
WITH exhausted AS (
    DELETE FROM local_bus_messages m
    WHERE {valid} AND m.delivery_count >= %(max_delivery_count)s
    RETURNING m.*
),
dead_lettered AS (
    INSERT INTO local_bus_dead_letters ({copy}, dead_letter_reason, dead_letter_description)
    SELECT {copy}, %(exhausted_reason)s, %(exhausted_description)s FROM exhausted
),
released AS (
    UPDATE local_bus_messages m
    SET lock_token = NULL, locked_until = NULL, session_lock_token = NULL
    WHERE {valid} AND m.delivery_count < %(max_delivery_count)s
    RETURNING m.queue, m.session_id
),
notified AS (
    SELECT pg_notify('local_bus', queue || coalesce(E'\n' || session_id, ''))::text
    FROM released
)
SELECT (SELECT count(*) FROM exhausted) + (SELECT count(*) FROM notified)
"""
).format(valid=_LOCK_IS_VALID, copy=_DEAD_LETTER_COPY)

_DEAD_LETTER = sql.SQL(
    """
WITH removed AS (DELETE FROM local_bus_messages m WHERE {valid} RETURNING m.*)
INSERT INTO local_bus_dead_letters ({copy}, dead_letter_reason, dead_letter_description)
SELECT {copy}, %(reason)s, %(description)s FROM removed
"""
).format(valid=_LOCK_IS_VALID, copy=_DEAD_LETTER_COPY)

_RENEW_MESSAGE_LOCK = sql.SQL(
    """
UPDATE local_bus_messages m SET locked_until = now() + %(lock_duration)s
WHERE {valid}
RETURNING m.locked_until
"""
).format(valid=_LOCK_IS_VALID)

# Seconds until something a receiver of the queue may be waiting for becomes due: a scheduled
# message turning visible, a message lock or a (non-empty) session's lock expiring.
_SECONDS_UNTIL_DUE: Final = """
SELECT extract(epoch FROM least(
    -- Scheduled messages of free sessions (a held one is handed on by its release's
    -- notification). Those that came due in the last second count too, at once: the waiter's
    -- receive or accept ran a moment before this query and may just have missed them.
    (SELECT min(m.visible_at) FROM local_bus_messages m
     WHERE m.queue = %(queue)s AND m.scheduled_enqueue_time IS NOT NULL AND m.lock_token IS NULL
       AND m.visible_at > now() - interval '1 second'
       AND NOT EXISTS (SELECT 1 FROM local_bus_sessions s
                       WHERE s.queue = m.queue AND s.session_id = m.session_id
                         AND s.locked_until > now())),
    (SELECT min(locked_until) FROM local_bus_messages
     WHERE queue = %(queue)s AND lock_token IS NOT NULL AND locked_until > now()),
    (SELECT min(s.locked_until) FROM local_bus_sessions s
     WHERE s.queue = %(queue)s AND s.locked_until > now()
       AND EXISTS (SELECT 1 FROM local_bus_messages m
                   WHERE m.queue = s.queue AND m.session_id = s.session_id))
) - clock_timestamp())::float8
"""

_DEAD_LETTERS: Final = """
SELECT queue, sequence_number, message_id, session_id, body, delivery_count,
       dead_letter_reason, dead_letter_description, dead_lettered_at
FROM local_bus_dead_letters
WHERE queue = %(queue)s
ORDER BY sequence_number
LIMIT %(limit)s
"""

# Dead letters whose id the queue's duplicate detection would no longer drop, oldest first; the
# others are held back (see shared_code/bus/dead_letters.py).
_REPLAYABLE: Final = """
SELECT d.sequence_number
FROM local_bus_dead_letters d
WHERE d.queue = %(queue)s
  AND NOT EXISTS (SELECT 1 FROM local_bus_duplicates h
                  WHERE h.queue = d.queue AND h.message_id = d.message_id AND h.expires_at > now())
ORDER BY d.sequence_number
LIMIT %(limit)s
"""

_HELD_BACK: Final = """
SELECT count(*), max(h.expires_at)
FROM local_bus_dead_letters d
JOIN local_bus_duplicates h ON h.queue = d.queue AND h.message_id = d.message_id
WHERE d.queue = %(queue)s AND h.expires_at > now()
"""

# Back to the queue as a publish would put them (a new sequence number, so after the session's
# waiting messages; delivery count 0), their ids entered in the duplicate history again, in one
# statement: a dead letter is never lost nor doubled.
_REPLAY: Final = """
WITH candidate AS (
    SELECT d.sequence_number
    FROM local_bus_dead_letters d
    WHERE d.queue = %(queue)s
      AND NOT EXISTS (SELECT 1 FROM local_bus_duplicates h
                      WHERE h.queue = d.queue AND h.message_id = d.message_id
                        AND h.expires_at > now())
    ORDER BY d.sequence_number
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
moved AS (
    DELETE FROM local_bus_dead_letters d USING candidate c
    WHERE d.sequence_number = c.sequence_number
    RETURNING d.*
),
remembered AS (
    INSERT INTO local_bus_duplicates AS h (queue, message_id, expires_at)
    SELECT DISTINCT queue, message_id, now() + %(window)s FROM moved
    ON CONFLICT (queue, message_id) DO UPDATE
        SET accepted_at = excluded.accepted_at, expires_at = excluded.expires_at
),
inserted AS (
    INSERT INTO local_bus_messages (
        queue, message_id, session_id, body, content_type, subject, application_properties,
        visible_at)
    SELECT queue, message_id, session_id, body, content_type, subject, application_properties,
           now()
    FROM moved ORDER BY sequence_number
    RETURNING session_id
),
notified AS (
    SELECT pg_notify('local_bus', %(queue)s || E'\n' || coalesce(session_id, ''))::text
    FROM inserted GROUP BY session_id
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM notified)
"""

_COUNT_ACTIVE: Final = """
SELECT count(*) FROM local_bus_messages WHERE queue = %(queue)s AND visible_at <= now()
"""

_QUEUE_DEPTHS: Final = """
SELECT q.queue,
       (SELECT count(*) FROM local_bus_messages m WHERE m.queue = q.queue AND m.visible_at <= now()),
       (SELECT count(*) FROM local_bus_messages m WHERE m.queue = q.queue AND m.visible_at > now()),
       (SELECT count(*) FROM local_bus_dead_letters d WHERE d.queue = q.queue)
FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS q (queue, position)
ORDER BY q.position
"""

_PURGE_EXPIRED: Final = """
WITH stale_sessions AS (
    -- Lock rows left behind by holders that never closed; an expired lock protects nothing.
    DELETE FROM local_bus_sessions WHERE locked_until <= now() - interval '1 hour'
)
DELETE FROM local_bus_duplicates WHERE expires_at <= now()
"""


# The activity generation each task saw when it last looked at a queue, so that
# ``receive(); wait_for_activity()`` cannot miss a publish landing between the two calls. Keyed by
# (id(LocalQueue), queue); immutable, so tasks that inherit the context never share updates.
_SEEN_GENERATION: ContextVar[Mapping[tuple[int, str], int]] = ContextVar(
    "local_bus_seen_generation"
)


class SessionReceiver:
    """Holds one session's lock; receives that session's messages in order."""

    session_id: str
    locked_until: datetime

    def __init__(
        self,
        bus: LocalQueue,
        *,
        queue: str,
        session_id: str,
        lock_token: str,
        locked_until: datetime,
        first_message: ReceivedMessage | None = None,
        more_sessions: bool = True,
    ) -> None:
        self._bus = bus
        self.queue = queue
        self.session_id = session_id
        self.lock_token = lock_token
        self.locked_until = locked_until
        # Whether, when this session was accepted, another free session had work as well: an
        # acceptor that sees False may wait for a notification instead of asking again.
        self.more_sessions = more_sessions
        # Delivered together with the session lock; the first receive returns it.
        self._first_message = first_message
        self._closed = False
        # One statement at a time per holder keeps "one message in flight" airtight.
        self._lock = asyncio.Lock()
        # Notifications for this session seen by the listener, and the count at the last receive:
        # a publish between a receive and the next wait is never slept through.
        self._notified = 0
        self._seen = 0
        self._event: asyncio.Event | None = None

    async def receive(self, *, wait: float = 0.0) -> ReceivedMessage | None:
        """The session's next message, or None when none arrives within ``wait`` seconds.

        Raises :class:`SessionLockLost` when the session lock is no longer held.
        """
        if self._closed:
            raise SessionLockLost(f"session receiver for {pseudonym(self.session_id)} is closed")
        if self._first_message is not None:
            first, self._first_message = self._first_message, None
            return first
        return await self._bus._receive_until(self.queue, wait, session=self)

    async def complete_and_receive(self, message: ReceivedMessage) -> ReceivedMessage | None:
        """Complete ``message`` and receive the session's next one in a single round trip.

        Raises :class:`MessageLockLost` (nothing completed, nothing received) when the message's
        lock is gone, :class:`SessionLockLost` when the session's is.
        """
        if self._closed:
            raise SessionLockLost(f"session receiver for {pseudonym(self.session_id)} is closed")
        self._seen = self._notified
        async with self._lock:
            following, dead_lettered = await self._bus._complete_and_receive(self, message)
        if dead_lettered:
            # The next message, if any, is behind the dead-lettered one: an ordinary receive
            # (outside the lock, which it takes itself).
            return await self.receive()
        return following

    async def wait_for_message(self, timeout: float) -> bool:  # noqa: ASYNC109 - see wait_for_activity
        """Wait until a message was published to this session (or one of its messages was
        abandoned) since the last receive; False when ``timeout`` seconds passed without one.

        Only this session's notifications wake it, so a hundred idle holders do not all query
        on every publish to the queue. False means a receive now would find nothing new, except
        a scheduled message coming due, which the queue's feeder hands out once the session is
        released.
        """
        if self._closed or self._notified != self._seen:
            return True
        if timeout <= 0:
            return False
        self._event = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event = None
        return True

    def _on_notify(self) -> None:
        self._notified += 1
        if self._event is not None:
            self._event.set()

    async def renew_session_lock(self) -> datetime:
        if self._closed:
            raise SessionLockLost(f"session receiver for {pseudonym(self.session_id)} is closed")
        self.locked_until = await self._bus._renew_session_lock(self)
        return self.locked_until

    async def close(self) -> None:
        """Release the session lock (messages stay for the next holder)."""
        if self._closed:
            return
        self._closed = True
        self._on_notify()  # a waiter returns at once
        await self._bus._release_session(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class LocalQueue:
    """Implements ``MessageBus`` (publish/close) plus the receive side the dev host uses."""

    def __init__(
        self,
        pool: Pool,
        options: Mapping[str, QueueOptions] | None = None,
        default_options: QueueOptions = _DEFAULT_OPTIONS,
        *,
        owns_pool: bool = False,
        release_linger_seconds: float = _RELEASE_LINGER_SECONDS,
    ) -> None:
        self._pool = pool
        self._owns_pool = owns_pool
        self._options = dict(options or {})
        self._default_options = default_options
        self._closed = False
        # Fan-out of the one LISTEN connection: per queue a counter of notifications seen and an
        # event the current waiters sleep on (replaced after each wake-up).
        self._notified: dict[str, int] = {}
        self._epoch = 0
        self._events: dict[str, asyncio.Event] = {}
        self._listening = asyncio.Event()
        self._listened_once = False
        self._listener: asyncio.Task[None] | None = None
        # Session holders in this process, woken by their session's notifications only.
        self._holders: dict[tuple[str, str], SessionReceiver] = {}
        # Per queue: (generation, loop time, seconds until due) of the last due-time query.
        self._due_cache: dict[str, tuple[int, float, float | None]] = {}
        # Per queue: publishes of scheduled messages seen (they may bring a due time closer).
        self._scheduled_publishes: dict[str, int] = {}
        # Sessions ending within a few milliseconds of each other are released by one statement.
        self._releases: BatchingQueue[SessionReceiver, None] = BatchingQueue(
            self._release_sessions, max_in_flight=1, linger_seconds=release_linger_seconds
        )

    def options_for(self, queue: str) -> QueueOptions:
        return self._options.get(queue, self._default_options)

    # --- MessageBus ---------------------------------------------------------------------------

    async def publish(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        for message in messages:
            when = message.scheduled_enqueue_time
            if when is not None and when.utcoffset() is None:
                raise ValueError(
                    f"scheduled_enqueue_time of {pseudonym(message.message_id)} is naive"
                )
        max_size = self.options_for(queue).max_message_size
        too_large = frozenset(m.message_id for m in messages if _size_of(m) > max_size)
        if too_large:
            messages = [m for m in messages if m.message_id not in too_large]
        if messages:
            await self._insert(queue, messages)
        if too_large:
            raise PublishError(
                f"{len(too_large)} message(s) for queue {queue} exceed {max_size} bytes "
                "(the others were accepted)",
                refused_message_ids=too_large,
            )

    async def _insert(self, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        params = {
            "queue": queue,
            "window": self.options_for(queue).duplicate_detection_window,
            "message_ids": [m.message_id for m in messages],
            "session_ids": [m.session_id for m in messages],
            "bodies": [m.body for m in messages],
            "content_types": [m.content_type for m in messages],
            "subjects": [m.subject for m in messages],
            "properties": [json.dumps(dict(m.application_properties)) for m in messages],
            "scheduled": [m.scheduled_enqueue_time for m in messages],
        }
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(_PUBLISH, params)
                row = await cursor.fetchone()
        except psycopg.Error as error:
            # Class 22 (data exceptions) is about the messages themselves, not the server.
            raise PublishError(
                f"local bus rejected {len(messages)} message(s): {type(error).__name__}",
                permanent=isinstance(error, psycopg.DataError),
            ) from error
        published = row[0] if row else 0
        if published < len(messages):
            logger.debug(
                "queue %s: %s of %s message(s) dropped as duplicates",
                queue,
                len(messages) - published,
                len(messages),
            )

    async def close(self) -> None:
        """Stop listening; the pool stays open unless the queue was given it (``owns_pool``)."""
        self._closed = True
        await self._releases.flush()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._wake_everyone()
        if self._owns_pool:
            await self._pool.close()

    # --- receiving ----------------------------------------------------------------------------

    async def accept_next_session(self, queue: str, *, wait: float = 0.0) -> SessionReceiver | None:
        """Lock a session that has a deliverable message, or None after ``wait`` seconds."""
        receivers = await self.accept_next_sessions(queue, 1, wait=wait)
        return receivers[0] if receivers else None

    async def accept_next_sessions(
        self, queue: str, max_sessions: int, *, wait: float = 0.0
    ) -> list[SessionReceiver]:
        """Lock up to ``max_sessions`` sessions with deliverable messages in one round trip,
        oldest work first; an empty list after ``wait`` seconds without any."""
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            # Listening before the first query, even without a wait, means a later
            # wait_for_activity knows whether anything was published since this query.
            await self._ensure_listening()
            seen = self._remember_generation(queue)
            receivers = await self._try_accept(queue, max_sessions)
            remaining = deadline - asyncio.get_running_loop().time()
            if receivers or remaining <= 0 or self._closed:
                return receivers
            await self._wait(queue, remaining, seen)

    async def receive(self, queue: str, *, wait: float = 0.0) -> ReceivedMessage | None:
        """Receive from the messages without a session id."""
        return await self._receive_until(queue, wait, session=None)

    async def complete(self, message: ReceivedMessage) -> None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_COMPLETE, _lock_params(message))
            done = cursor.rowcount
        if done != 1:
            raise MessageLockLost(_lock_lost(message))

    async def abandon(self, message: ReceivedMessage) -> None:
        options = self.options_for(message.queue)
        params = _lock_params(message) | _exhausted_params(options)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_ABANDON, params)
            row = await cursor.fetchone()
        if not row or row[0] != 1:
            raise MessageLockLost(_lock_lost(message))

    async def dead_letter(
        self, message: ReceivedMessage, *, reason: str, description: str | None = None
    ) -> None:
        params = _lock_params(message) | {"reason": reason, "description": description}
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_DEAD_LETTER, params)
            done = cursor.rowcount
        if done != 1:
            raise MessageLockLost(_lock_lost(message))

    async def renew_message_lock(self, message: ReceivedMessage) -> datetime:
        """Extend the lock by the queue's lock duration; returns the new expiry.

        The :class:`ReceivedMessage` is immutable, so its ``locked_until`` keeps the old value.
        """
        params = _lock_params(message)
        params["lock_duration"] = self.options_for(message.queue).lock_duration
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_RENEW_MESSAGE_LOCK, params)
            row = await cursor.fetchone()
        if row is None:
            raise MessageLockLost(_lock_lost(message))
        return _utc(row[0])

    # The dev host's contract names it ``timeout``; the wait mixes notifications and due times,
    # which a caller-side asyncio.timeout could not express.
    async def wait_for_activity(self, queue: str, timeout: float) -> None:  # noqa: ASYNC109
        """Return when a message was published to ``queue`` (LISTEN/NOTIFY) or a scheduled
        message became due, or after ``timeout`` seconds; an idle wait runs no queries.

        A publish that landed after this task's last receive on ``queue`` returns at once, so the
        ``receive(); wait_for_activity()`` loop never sleeps through a message. After
        :meth:`close` it returns at once.
        """
        await self._ensure_listening()
        seen = _SEEN_GENERATION.get({}).get((id(self), queue))
        if seen is None:
            seen = self._generation(queue)
        await self._wait(queue, timeout, seen)
        self._remember_generation(queue)

    # --- inspection and housekeeping ----------------------------------------------------------

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetteredMessage]:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_DEAD_LETTERS, {"queue": queue, "limit": limit})
            rows = await cursor.fetchall()
        return [
            DeadLetteredMessage(
                queue=row["queue"],
                sequence_number=row["sequence_number"],
                message_id=row["message_id"],
                session_id=row["session_id"],
                body=bytes(row["body"]),
                delivery_count=row["delivery_count"],
                dead_letter_reason=row["dead_letter_reason"],
                dead_letter_description=row["dead_letter_description"],
                dead_lettered_at=_utc(row["dead_lettered_at"]),
            )
            for row in rows
        ]

    async def replay_dead_letters(
        self, queue: str, *, max_messages: int, dry_run: bool = False
    ) -> ReplayReport:
        """Move up to ``max_messages`` dead letters of ``queue`` back to it, oldest first, with
        their ids, sessions, bodies and properties; ids still within the duplicate detection
        window stay dead-lettered (``held_back``), as Azure Service Bus would drop them."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        params = {
            "queue": queue,
            "limit": max_messages,
            "window": self.options_for(queue).duplicate_detection_window,
        }
        async with self._pool.connection() as conn:
            if dry_run:
                cursor = await conn.execute(_REPLAYABLE, params)
                replayed = len(await cursor.fetchall())
            else:
                cursor = await conn.execute(_REPLAY, params)
                row = await cursor.fetchone()
                replayed = int(row[0]) if row else 0
            cursor = await conn.execute(_HELD_BACK, params)
            held = await cursor.fetchone()
        held_back, until = (int(held[0]), held[1]) if held else (0, None)
        if replayed and not dry_run:
            logger.info("queue %s: replayed %d dead-lettered message(s)", queue, replayed)
        return ReplayReport(
            queue=queue,
            replayed=replayed,
            held_back=held_back,
            dry_run=dry_run,
            held_back_until=None if until is None else _utc(until),
        )

    async def purge_expired_duplicates(self) -> int:
        """Forget message ids past their duplicate detection window; returns how many.

        Also drops session lock rows abandoned by holders that never closed them.
        """
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_PURGE_EXPIRED)
            purged = cursor.rowcount
        return max(purged, 0)

    async def count_active(self, queue: str) -> int:
        """Messages that are visible now, locked or not (scheduled ones are not active yet)."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_COUNT_ACTIVE, {"queue": queue})
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def queue_depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """Active (visible now, locked or not), scheduled and dead-lettered counts per queue."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_QUEUE_DEPTHS, {"queues": list(queues)})
            rows = await cursor.fetchall()
        return [
            QueueDepth(
                queue=queue, active=int(active), scheduled=int(scheduled), dead_lettered=int(dead)
            )
            for queue, active, scheduled, dead in rows
        ]

    # --- internals ----------------------------------------------------------------------------

    async def _receive_until(
        self, queue: str, wait: float, *, session: SessionReceiver | None
    ) -> ReceivedMessage | None:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            # Listening before the first query, even without a wait, means a later
            # wait_for_activity knows whether anything was published since this query.
            await self._ensure_listening()
            seen = self._remember_generation(queue)
            if session is None:
                message = await self._try_receive(queue, None)
            else:
                session._seen = session._notified
                async with session._lock:
                    message = await self._try_receive(queue, session)
            remaining = deadline - asyncio.get_running_loop().time()
            if message is not None or remaining <= 0 or self._closed:
                return message
            if session is None:
                await self._wait(queue, remaining, seen)
            else:
                await session.wait_for_message(min(remaining, _DEAF_POLL_SECONDS))

    async def _try_receive(
        self, queue: str, session: SessionReceiver | None
    ) -> ReceivedMessage | None:
        options = self.options_for(queue)
        params: dict[str, Any] = {
            "queue": queue,
            "lock_duration": options.lock_duration,
            **_exhausted_params(options),
        }
        statement = _RECEIVE
        if session is not None:
            statement = _RECEIVE_FROM_SESSION
            params["session_id"] = session.session_id
            params["session_lock_token"] = uuid.UUID(session.lock_token)
        while True:
            row = await self._one_row(statement, params)
            if not row["session_held"]:
                assert session is not None
                raise SessionLockLost(f"lock on session {pseudonym(session.session_id)} was lost")
            if row["sequence_number"] is not None:
                return _received(row)
            if not row["exhausted"]:
                return None
            logger.info(
                "queue %s: dead-lettered a message past %s deliveries",
                queue,
                options.max_delivery_count,
            )

    async def _try_accept(self, queue: str, max_sessions: int) -> list[SessionReceiver]:
        options = self.options_for(queue)
        params = {
            "queue": queue,
            "lock_duration": options.lock_duration,
            "max_delivery_count": options.max_delivery_count,
            "max_sessions": max_sessions,
            # Messages looked at to find that many distinct sessions (a session's later messages
            # take up scan rows too).
            "scan_limit": max_sessions * _ACCEPT_SCAN_PER_SESSION,
        }
        for _ in range(_ACCEPT_ATTEMPTS):
            async with self._pool.connection() as conn:
                cursor = conn.cursor(row_factory=dict_row)
                await cursor.execute(_ACCEPT_SESSIONS, params)
                rows = await cursor.fetchall()
            receivers = [
                SessionReceiver(
                    self,
                    queue=queue,
                    session_id=row["held_session_id"],
                    lock_token=str(row["session_lock_token"]),
                    locked_until=_utc(row["session_locked_until"]),
                    first_message=None if row["sequence_number"] is None else _received(row),
                    more_sessions=row["more_sessions"],
                )
                for row in rows
                if row["held_session_id"] is not None
            ]
            for receiver in receivers:
                self._holders[(queue, receiver.session_id)] = receiver
            if receivers or not rows[0]["candidates"]:
                return receivers
            # Other acceptors locked the same sessions in the same instant: look again.
        return []

    async def _one_row(self, statement: sql.Composed, params: Mapping[str, Any]) -> DictRow:
        """Run one of the statements above that always return exactly one row."""
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(statement, params)
            row = await cursor.fetchone()
        assert row is not None
        return row

    async def _complete_and_receive(
        self, session: SessionReceiver, message: ReceivedMessage
    ) -> tuple[ReceivedMessage | None, bool]:
        """(the next message, whether a message was dead-lettered instead of delivered)."""
        options = self.options_for(session.queue)
        params = (
            _session_params(session)
            | _lock_params(message)
            | _exhausted_params(options)
            | {"lock_duration": options.lock_duration}
        )
        row = await self._one_row(_COMPLETE_AND_RECEIVE_FROM_SESSION, params)
        if not row["completed"]:
            if not row["session_held"]:
                raise SessionLockLost(f"lock on session {pseudonym(session.session_id)} was lost")
            raise MessageLockLost(_lock_lost(message))
        if row["exhausted"]:
            logger.info(
                "queue %s: dead-lettered a message past %s deliveries",
                session.queue,
                options.max_delivery_count,
            )
            return None, True
        return (None if row["sequence_number"] is None else _received(row)), False

    async def _renew_session_lock(self, session: SessionReceiver) -> datetime:
        params = _session_params(session)
        params["lock_duration"] = self.options_for(session.queue).lock_duration
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_RENEW_SESSION_LOCK, params)
            row = await cursor.fetchone()
        if row is None:
            raise SessionLockLost(f"lock on session {pseudonym(session.session_id)} was lost")
        return _utc(row[0])

    async def _release_session(self, session: SessionReceiver) -> None:
        if self._holders.get((session.queue, session.session_id)) is session:
            del self._holders[(session.queue, session.session_id)]
        await self._releases.submit(session)

    async def _release_sessions(self, sessions: Sequence[SessionReceiver]) -> list[None]:
        params = {
            "queues": [session.queue for session in sessions],
            "session_ids": [session.session_id for session in sessions],
            "lock_tokens": [uuid.UUID(session.lock_token) for session in sessions],
        }
        async with self._pool.connection() as conn:
            await conn.execute(_RELEASE_SESSIONS, params)
        return [None] * len(sessions)

    # --- waiting: one LISTEN connection, fanned out to asyncio waiters --------------------------

    def _generation(self, queue: str) -> int:
        # The epoch moves on every (re)connect of the listener: notifications may have been missed.
        return self._epoch + self._notified.get(queue, 0)

    def _remember_generation(self, queue: str) -> int:
        generation = self._generation(queue)
        seen = _SEEN_GENERATION.get({})
        if seen.get((id(self), queue)) != generation:
            _SEEN_GENERATION.set({**seen, (id(self), queue): generation})
        return generation

    async def _wait(self, queue: str, seconds: float, seen: int) -> None:
        """Sleep until a notification for ``queue`` after generation ``seen``, the next due time,
        or ``seconds``, whichever comes first."""
        if self._closed or seconds <= 0 or self._generation(queue) != seen:
            return
        listening = self._listening.is_set()
        due = await self._cached_seconds_until_due(queue)
        if self._generation(queue) != seen:
            return  # a notification arrived during the query
        delay = seconds
        if due is not None:
            delay = min(delay, max(due, 0.0) + _DUE_MARGIN_SECONDS)
        if not listening:
            delay = min(delay, _DEAF_POLL_SECONDS)
        event = self._events.get(queue)
        if event is None:
            event = self._events[queue] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()

    async def _cached_seconds_until_due(self, queue: str) -> float | None:
        """The next due time, shared by the waiters of a queue for a moment.

        Under load every waiter would ask after every message; that was a large share of the
        database round trips. A cached answer stays valid until a publish of scheduled messages
        (its notification says so) or a listener reconnect, and for a moment at most: the due
        times that appear without a notification are lock expiries, a lock duration away.
        """
        now = asyncio.get_running_loop().time()
        generation = self._epoch + self._scheduled_publishes.get(queue, 0)
        cached = self._due_cache.get(queue)
        if cached is not None:
            cached_generation, computed_at, due = cached
            fresh = cached_generation == generation and now - computed_at < _DUE_CACHE_SECONDS
            if fresh and (due is None or computed_at + due > now):
                return None if due is None else due - (now - computed_at)
        due = await self._seconds_until_due(queue)
        self._due_cache[queue] = (generation, now, due)
        return due

    async def _seconds_until_due(self, queue: str) -> float | None:
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(_SECONDS_UNTIL_DUE, {"queue": queue})
                row = await cursor.fetchone()
        except psycopg.Error as error:
            logger.warning("queue %s: cannot compute the next due time: %s", queue, error)
            return _DEAF_POLL_SECONDS
        return None if row is None or row[0] is None else float(row[0])

    def _on_notify(self, payload: str) -> None:
        queue, _, rest = payload.partition("\n")
        session_id, _, scheduled = rest.partition("\n")
        if scheduled:
            self._scheduled_publishes[queue] = self._scheduled_publishes.get(queue, 0) + 1
        if session_id:
            holder = self._holders.get((queue, session_id))
            if holder is not None:
                holder._on_notify()
                # Nobody else here can take a session that is held: the feeders sleep on.
                return
        self._notified[queue] = self._notified.get(queue, 0) + 1
        event = self._events.pop(queue, None)
        if event is not None:
            event.set()

    def _wake_everyone(self) -> None:
        for holder in list(self._holders.values()):
            holder._on_notify()
        self._epoch += 1
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    async def _ensure_listening(self) -> bool:
        """Start the listener on first use; True while its LISTEN is in place.

        Callers wait for the listener's first start only: while it reconnects later, waiters
        poll instead of every receive stalling until the database is back.
        """
        if self._closed:
            return False
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_forever(), name="local-bus-listener")
        if not self._listened_once:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LISTENER_READY_TIMEOUT):
                    await self._listening.wait()
        return self._listening.is_set()

    async def _listen_forever(self) -> None:
        backoff = _RECONNECT_MIN_SECONDS
        while not self._closed:
            try:
                conn = await self._connect_listener()
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    backoff = _RECONNECT_MIN_SECONDS
                    self._listening.set()
                    self._listened_once = True
                    # Whatever was published while not listening is unknown: wake everyone.
                    self._wake_everyone()
                    async for notify in conn.notifies():
                        self._on_notify(notify.payload)
            except psycopg.Error as error:
                logger.warning(
                    "local bus listener lost its connection (%s); retrying in %.1f s",
                    type(error).__name__,
                    backoff,
                )
            except Exception:
                # Never let the listener die: waiters would silently fall back to polling.
                logger.exception("local bus listener failed; retrying in %.1f s", backoff)
            finally:
                self._listening.clear()
                self._wake_everyone()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RECONNECT_MAX_SECONDS)

    async def _connect_listener(self) -> psycopg.AsyncConnection[Any]:
        # The pool's own conninfo and kwargs (which may be callables, e.g. for an Entra ID token),
        # but a connection of its own: LISTEN needs one that is never handed to anyone else.
        conninfo: Any = self._pool.conninfo
        if callable(conninfo):
            conninfo = conninfo()
            if inspect.isawaitable(conninfo):
                conninfo = await conninfo
        kwargs: Any = self._pool.kwargs
        if callable(kwargs):
            kwargs = kwargs()
            if inspect.isawaitable(kwargs):
                kwargs = await kwargs
        kwargs = dict(kwargs or {})
        kwargs["autocommit"] = True
        name = kwargs.get("application_name")
        if name:
            kwargs["application_name"] = f"{name}-listener"
        return await psycopg.AsyncConnection.connect(conninfo, **kwargs)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _size_of(message: OutgoingMessage) -> int:
    """What Service Bus counts against its limit, roughly: body, properties and system fields."""
    properties = (
        json.dumps(dict(message.application_properties)) if message.application_properties else ""
    )
    return (
        len(message.body)
        + len(properties.encode())
        + len(message.message_id.encode())
        + len((message.session_id or "").encode())
        + len((message.subject or "").encode())
        + len(message.content_type.encode())
    )


def _lock_params(message: ReceivedMessage) -> dict[str, Any]:
    try:
        token = uuid.UUID(message.lock_token)
    except ValueError as error:
        raise MessageLockLost(f"not a lock token: {message.lock_token!r}") from error
    return {"sequence_number": message.sequence_number, "lock_token": token}


def _session_params(session: SessionReceiver) -> dict[str, Any]:
    return {
        "queue": session.queue,
        "session_id": session.session_id,
        "session_lock_token": uuid.UUID(session.lock_token),
    }


def _exhausted_params(options: QueueOptions) -> dict[str, Any]:
    return {
        "max_delivery_count": options.max_delivery_count,
        "exhausted_reason": MAX_DELIVERY_COUNT_EXCEEDED,
        # Service Bus's own wording, so dashboards read the same locally and in Azure.
        "exhausted_description": (
            f"Message could not be consumed after {options.max_delivery_count} delivery attempts."
        ),
    }


def _lock_lost(message: ReceivedMessage) -> str:
    return (
        f"lock on message {message.sequence_number} of queue {message.queue!r} expired "
        "or was taken over"
    )


def _received(row: DictRow) -> ReceivedMessage:
    scheduled = row["scheduled_enqueue_time"]
    return ReceivedMessage(
        queue=row["queue"],
        sequence_number=row["sequence_number"],
        message_id=row["message_id"],
        session_id=row["session_id"],
        body=bytes(row["body"]),
        content_type=row["content_type"],
        subject=row["subject"],
        application_properties=row["application_properties"],
        delivery_count=row["delivery_count"],
        enqueued_time=_utc(row["enqueued_at"]),
        scheduled_enqueue_time=None if scheduled is None else _utc(scheduled),
        lock_token=str(row["lock_token"]),
        locked_until=_utc(row["locked_until"]),
    )
