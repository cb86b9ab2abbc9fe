"""GET analytics' figures on hand-made data with known answers, live and from the daily rollup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest

from shared_code.db.pool import Pool, open_pool
from shared_code.management.analytics import analytics, refresh_rollup
from shared_code.management.problems import InvalidRequest

pytestmark = pytest.mark.integration

NUMBER = "100000000000001"
OTHER_NUMBER = "100000000000002"
FROM = datetime(2026, 3, 1, tzinfo=UTC)
TO = datetime(2026, 3, 3, tzinfo=UTC)
# Before these instants nothing may be stored (all live); after, both days are.
NOW_LIVE = datetime(2026, 3, 2, 12, tzinfo=UTC)
NOW_SEALED = datetime(2026, 4, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Data:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.count = 0

    def contact(self, opted_out_at: str | None = None) -> int:
        self.count += 1
        row = self.conn.execute(
            "INSERT INTO whatsapp_contacts (wa_id, opted_out, opted_out_at) "
            "VALUES (%s, %s, %s) RETURNING id",
            (
                f"1555000{self.count:04d}",
                opted_out_at is not None,
                opted_out_at and at(opted_out_at),
            ),
        ).fetchone()
        assert row
        return int(row[0])

    def conversation(self, created: str, last: str, number: str = NUMBER) -> int:
        row = self.conn.execute(
            "INSERT INTO whatsapp_conversations "
            "(phone_number_id, contact_id, status, created_at, updated_at, last_message_at) "
            "VALUES (%s, %s, 'closed', %s, %s, %s) RETURNING id",
            (number, self.contact(), at(created), at(last), at(last)),
        ).fetchone()
        assert row
        return int(row[0])

    def message(
        self,
        conversation_id: int,
        created: str,
        direction: str,
        status: str = "received",
        *,
        accepted: bool = False,
        error_code: int | None = None,
        number: str = NUMBER,
    ) -> int:
        self.count += 1
        row = self.conn.execute(
            "INSERT INTO whatsapp_messages (conversation_id, direction, wamid, phone_number_id, "
            "contact_wa_id, message_type, content, status, error_code, sent_at, created_at) "
            "VALUES (%s, %s, %s, %s, '15550000000', 'text', '{}', %s, %s, %s, %s) RETURNING id",
            (
                conversation_id,
                direction,
                f"wamid.analytics{self.count}" if direction == "inbound" or accepted else None,
                number,
                status,
                error_code,
                at(created) + timedelta(seconds=1) if accepted else None,
                at(created),
            ),
        ).fetchone()
        assert row
        return int(row[0])


@pytest.fixture
async def data(database_url: str) -> AsyncIterator[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        d = Data(conn)
        a = d.conversation("2026-03-01T10:00:00", "2026-03-01T10:02:00")
        d.message(a, "2026-03-01T10:00:00", "inbound")
        d.message(a, "2026-03-01T10:00:30", "inbound")
        d.message(a, "2026-03-01T10:01:00", "outbound", "read", accepted=True)  # 60 s
        d.message(a, "2026-03-01T10:02:00", "outbound", "delivered", accepted=True)
        # Opened a minute before the UTC midnight, answered two minutes later, on the next day.
        b = d.conversation("2026-03-01T23:59:00", "2026-03-02T00:01:00")
        d.message(b, "2026-03-01T23:59:00", "inbound")
        d.message(b, "2026-03-02T00:01:00", "outbound", "failed", accepted=True, error_code=131026)
        c = d.conversation("2026-03-02T12:00:00", "2026-03-02T12:06:00")
        d.message(c, "2026-03-02T12:00:00", "inbound")
        d.message(c, "2026-03-02T12:05:00", "outbound", "failed", error_code=131047)  # 300 s
        d.message(c, "2026-03-02T12:06:00", "outbound", "failed", error_code=131047)
        unanswered = d.conversation("2026-03-02T13:00:00", "2026-03-02T13:00:00")
        d.message(unanswered, "2026-03-02T13:00:00", "inbound")
        # Business-initiated: a template first, then the user's answer, answered in 40 s.
        e = d.conversation("2026-03-02T14:00:00", "2026-03-02T14:10:40")
        d.message(e, "2026-03-02T14:00:00", "outbound", "sent", accepted=True)
        d.message(e, "2026-03-02T14:10:00", "inbound")
        d.message(e, "2026-03-02T14:10:40", "outbound", "pending")
        # Outside the range: before, at `to` (exclusive), and an older conversation.
        old = d.conversation("2026-02-20T09:00:00", "2026-02-28T23:59:59")
        d.message(old, "2026-02-28T23:59:59", "inbound")
        later = d.conversation("2026-03-03T00:00:00", "2026-03-03T00:00:00")
        d.message(later, "2026-03-03T00:00:00", "inbound")
        # Another business number: counted only without the filter.
        other = d.conversation("2026-03-01T08:00:00", "2026-03-01T08:00:00", OTHER_NUMBER)
        d.message(other, "2026-03-01T08:00:00", "inbound", number=OTHER_NUMBER)
        d.contact(opted_out_at="2026-03-01T12:00:00")
        d.contact(opted_out_at="2026-02-27T12:00:00")
        # Days are UTC days whatever the session's time zone (New York is UTC-5 in March).
        conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET timezone = 'America/New_York'")
    yield database_url


@pytest.fixture
async def pool(data: str) -> AsyncIterator[Pool]:
    pool = await open_pool(data, max_size=4, name="tests")
    yield pool
    await pool.close()


EXPECTED = {
    "from": "2026-03-01T00:00:00Z",
    "to": "2026-03-03T00:00:00Z",
    "phone_number_id": NUMBER,
    "inbound": 6,
    "outbound": 7,
    "volumes": [
        {"day": "2026-03-01", "inbound": 3, "outbound": 2},
        {"day": "2026-03-02", "inbound": 3, "outbound": 5},
    ],
    # sent: read, delivered, failed after acceptance, sent; never the pending one nor the two
    # refused at send time.
    "funnel": {
        "outbound": 7,
        "sent": 4,
        "delivered": 2,
        "read": 1,
        "failed": 3,
        "pending": 1,
    },
    "top_errors": [{"code": 131047, "count": 2}, {"code": 131026, "count": 1}],
    # 40, 60, 120, 300 s: median (60 + 120) / 2, p90 at rank 2.7: 120 + 0.7 x 180.
    "first_response": {
        "conversations": 5,
        "answered": 4,
        "unanswered": 1,
        "median_seconds": 90.0,
        "p90_seconds": 246.0,
    },
    "active_conversations": 5,
    "opt_outs": 1,
}


def as_json(report: object) -> dict[str, object]:
    decoded = msgspec.json.decode(msgspec.json.encode(report))
    assert isinstance(decoded, dict)
    return decoded


async def test_live_figures_have_the_known_answers(pool: Pool) -> None:
    report = await analytics(pool, FROM, TO, NUMBER, now=NOW_LIVE)

    assert as_json(report) == EXPECTED
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM whatsapp_analytics_days")
        assert await cursor.fetchone() == (0,)


async def test_stored_days_give_the_same_answers_and_are_reused(pool: Pool) -> None:
    first = await analytics(pool, FROM, TO, NUMBER, now=NOW_SEALED)
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT day::text, phone_number_id FROM whatsapp_analytics_days ORDER BY 1, 2"
        )
        stored = await cursor.fetchall()
        # A change the stored days do not know of yet: served from them, it is not seen.
        await conn.execute(
            "UPDATE whatsapp_messages SET status = 'read' WHERE status = 'delivered'"
        )
    second = await analytics(pool, FROM, TO, NUMBER, now=NOW_SEALED)

    assert as_json(first) == EXPECTED
    assert stored == [
        ("2026-03-01", "*"),
        ("2026-03-01", NUMBER),
        ("2026-03-01", OTHER_NUMBER),
        ("2026-03-02", "*"),
        ("2026-03-02", NUMBER),
    ]
    assert as_json(second) == EXPECTED


async def test_refresh_rewrites_the_recent_stored_days(pool: Pool) -> None:
    await analytics(pool, FROM, TO, NUMBER, now=NOW_SEALED)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE whatsapp_messages SET status = 'read' WHERE status = 'delivered'"
        )

    rewritten = await refresh_rollup(pool, now=datetime(2026, 3, 5, tzinfo=UTC))
    report = await analytics(pool, FROM, TO, NUMBER, now=NOW_SEALED)

    assert rewritten == 7  # 2026-02-25 to 2026-03-03
    assert report.funnel.read == 2
    assert report.funnel.delivered == 2


async def test_a_range_mixing_stored_and_live_parts_adds_up(pool: Pool) -> None:
    # 2026-03-01 may be stored (it ended a day before `now`); the range's partial first day and
    # 2026-03-02 (too recent) are computed live.
    now = datetime(2026, 3, 3, 6, tzinfo=UTC)
    start, end = at("2026-02-28T12:00:00"), at("2026-03-02T13:30:00")

    report = await analytics(pool, start, end, now=now)

    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT DISTINCT day::text FROM whatsapp_analytics_days")
        assert await cursor.fetchall() == [("2026-03-01",)]
    assert [(v.day.isoformat(), v.inbound, v.outbound) for v in report.volumes] == [
        ("2026-02-28", 1, 0),
        ("2026-03-01", 4, 2),
        ("2026-03-02", 2, 3),
    ]
    assert report.phone_number_id is None
    # Opened in the range: the other number's (unanswered), A (60 s), B (120 s), C (300 s) and
    # the unanswered one of 13:00.
    assert as_json(report.first_response) == {
        "conversations": 5,
        "answered": 3,
        "unanswered": 2,
        "median_seconds": 120.0,
        "p90_seconds": 264.0,
    }
    assert report == await analytics(pool, start, end, now=NOW_LIVE)


async def test_without_a_number_every_number_counts(pool: Pool) -> None:
    live = await analytics(pool, FROM, TO, now=NOW_LIVE)
    stored = await analytics(pool, FROM, TO, now=NOW_SEALED)

    for report in (live, stored):
        assert report.inbound == 7
        assert report.volumes[0].inbound == 4
        assert report.first_response.conversations == 6
        assert report.first_response.unanswered == 2
        assert report.active_conversations == 6
    assert as_json(live) | {"phone_number_id": None} == as_json(stored) | {"phone_number_id": None}


@pytest.mark.parametrize(
    ("start", "end", "code"),
    [
        (TO, FROM, "invalid_range"),
        (FROM, FROM, "invalid_range"),
        (FROM, FROM + timedelta(days=367), "range_too_long"),
    ],
)
async def test_invalid_ranges_are_refused(
    pool: Pool, start: datetime, end: datetime, code: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await analytics(pool, start, end)
    assert refused.value.code == code


async def test_a_range_of_366_days_is_allowed(pool: Pool) -> None:
    report = await analytics(pool, FROM, FROM + timedelta(days=366), now=NOW_LIVE)
    assert report.inbound == 8  # the 7 of the two days and the one at 2026-03-03 00:00
