"""bench/management's data: contacts, conversations, messages, statuses and webhook events by COPY.

Shapes (full size): 1,000,000 contacts, 100,000 conversations with 10,000,000 messages over the
last 60 days. Conversation lengths are log-normal (a median of ~40 messages, a few with tens of
thousands), each conversation a run of exchanges: 1-3 inbound messages, then 1-2 outbound replies
after a log-normal delay (median ~25 s), then a pause. Message ids follow time, as in production
(rows are written in time order). Outbound messages end read (60 %), delivered (25 %), sent (8 %),
failed (5 %, with Meta's usual codes) or pending (2 %); one outbound message in ten has its status
history in whatsapp_message_statuses; 1 % of contacts are opted out. Deterministic (seeded).

The non-unique indexes of the loaded tables are dropped before the COPY and rebuilt after it
(from their definitions in the migrations), then the tables are vacuumed and analyzed, as
autovacuum would leave them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

__all__ = ["FULL", "SMALL", "LoadedData", "Size", "load"]

PHONE_NUMBER_ID = "100000000000001"
DAYS = 60
_FIRST_NAMES = (  # noqa: SIM905 - easier to read than 47 quoted names
    "Anna Ahmed Alice Amelie Ana Antoine Ben Camille Carlos Chen Chloe David Diego Elena Emma "
    "Fatima Felix Gabriel Hana Hugo Ines Ivan Jana John Jose Julia Karim Kenji Laura Leo Lucas "
    "Maria Marie Mateo Mohamed Nadia Noah Olga Omar Paul Priya Rafael Sara Sofia Tom Yuki Zoe"
).split()
_LAST_NAMES = (  # noqa: SIM905
    "Silva Smith Martin Garcia Muller Rossi Nguyen Kim Dubois Bernard Lopez Khan Patel Sato "
    "Novak Costa Ivanova Jensen Haddad Moreau Fischer Santos Ali Wang Tanaka Kowalski Okafor"
).split()
_ERRORS = ((131026, 40), (131047, 25), (131049, 15), (131000, 10), (132001, 5), (131050, 5))
_TABLES = (
    "whatsapp_contacts",
    # Filled by a trigger as the contacts are copied in.
    "whatsapp_contact_name_words",
    "whatsapp_conversations",
    "whatsapp_messages",
    "whatsapp_message_statuses",
    "whatsapp_webhook_events",
)


@dataclass(frozen=True, slots=True)
class Size:
    contacts: int
    conversations: int
    messages: int
    webhook_events: int


FULL = Size(contacts=1_000_000, conversations=100_000, messages=10_000_000, webhook_events=200_000)
SMALL = Size(contacts=20_000, conversations=2_000, messages=200_000, webhook_events=5_000)


@dataclass(frozen=True, slots=True)
class LoadedData:
    seconds: float
    database_bytes: int
    # Conversation ids by message count, longest first (the deep-page candidates).
    longest_conversations: list[tuple[int, int]]
    end: datetime


def load(database_url: str, size: Size, *, seed: int = 13) -> LoadedData:
    """Fill the (migrated, empty) database; returns what the measurements need."""
    rng = random.Random(seed)
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=DAYS)
    began = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        indexes = _drop_secondary_indexes(conn)
        plan = _plan_conversations(rng, size, start, end)
        _copy_contacts(conn, rng, size, plan, start, end)
        _copy_conversations(conn, plan, end)
        statuses = _copy_messages(conn, rng, plan, start)
        _copy_statuses(conn, statuses)
        _copy_webhook_events(conn, rng, size, start, end)
        print(f"  rows copied in {time.perf_counter() - began:,.1f} s; rebuilding indexes")
        conn.execute("SET maintenance_work_mem = '512MB'")
        for definition in indexes:
            conn.execute(definition)
        for table in _TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")
        cursor = conn.execute("SELECT pg_database_size(current_database())")
        row = cursor.fetchone()
        database_bytes = int(row[0]) if row else 0
        longest = conn.execute(
            "SELECT conversation_id, count(*) FROM whatsapp_messages GROUP BY 1 "
            "ORDER BY 2 DESC LIMIT 20"
        ).fetchall()
    return LoadedData(
        seconds=time.perf_counter() - began,
        database_bytes=database_bytes,
        longest_conversations=[(int(a), int(b)) for a, b in longest],
        end=end,
    )


def _drop_secondary_indexes(conn: psycopg.Connection) -> list[str]:
    """Drop the indexes that back no constraint; returns their definitions to rebuild them."""
    rows = conn.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = ANY(%s::regclass[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        (list(_TABLES),),
    ).fetchall()
    for name, _ in rows:
        conn.execute(f"DROP INDEX {name}")
    return [definition for _, definition in rows]


@dataclass(slots=True)
class _Conversation:
    contact_index: int
    length: int
    first_at: float  # seconds after the start
    span: float


def _plan_conversations(
    rng: random.Random, size: Size, start: datetime, end: datetime
) -> list[_Conversation]:
    total_seconds = (end - start).total_seconds()
    weights = [rng.lognormvariate(0.0, 1.6) for _ in range(size.conversations)]
    scale = size.messages / sum(weights)
    lengths = [max(2, round(w * scale)) for w in weights]
    # Correct the rounding (and the minimum of 2) on the longest one, so the total is exact.
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    lengths[longest] += size.messages - sum(lengths)
    if lengths[longest] < 2:
        raise ValueError("size too small for its conversations")
    contacts = rng.sample(range(size.contacts), size.conversations)
    plan = []
    for length, contact_index in zip(lengths, contacts, strict=True):
        # Long conversations last longer: ~8 minutes per exchange pair, up to the whole period.
        span = min(total_seconds * 0.98, length * rng.uniform(120.0, 900.0))
        first_at = rng.uniform(0.0, total_seconds - span)
        plan.append(_Conversation(contact_index, length, first_at, span))
    plan.sort(key=lambda c: c.first_at)
    return plan


def wa_id_of(contact_index: int) -> str:
    """A distinct, realistic number per contact (country code + 9 to 10 digits)."""
    prefix = ("33", "1", "44", "49", "55", "91")[contact_index % 6]
    return prefix + f"{(contact_index * 2_654_435_761) % 10**10:010d}"


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _ts(value: datetime) -> str:
    return value.isoformat()


def _copy_contacts(
    conn: psycopg.Connection,
    rng: random.Random,
    size: Size,
    plan: list[_Conversation],
    start: datetime,
    end: datetime,
) -> None:
    first_contact: dict[int, float] = {}
    for conversation in plan:
        first_contact.setdefault(conversation.contact_index, conversation.first_at)
    total_seconds = (end - start).total_seconds()
    with conn.cursor().copy(
        "COPY whatsapp_contacts (wa_id, profile_name, opted_out, opted_out_at, last_inbound_at, "
        "created_at, updated_at) FROM STDIN"
    ) as copy:
        for index in range(size.contacts):
            created = start + timedelta(
                seconds=first_contact.get(index, rng.uniform(0.0, total_seconds))
            )
            opted_out = rng.random() < 0.01
            opted_at = _ts(created + (end - created) * rng.random()) if opted_out else "\\N"
            name = _name(rng) if rng.random() < 0.95 else "\\N"
            copy.write(
                f"{wa_id_of(index)}\t{name}\t{'t' if opted_out else 'f'}\t{opted_at}\t"
                f"\\N\t{_ts(created)}\t{_ts(created)}\n"
            )


def _copy_conversations(conn: psycopg.Connection, plan: list[_Conversation], end: datetime) -> None:
    with conn.cursor().copy(
        "COPY whatsapp_conversations (phone_number_id, contact_id, status, last_message_at, "
        "last_inbound_at, created_at, updated_at, closed_at) FROM STDIN"
    ) as copy:
        start = end - timedelta(days=DAYS)
        for conversation in plan:
            first = start + timedelta(seconds=conversation.first_at)
            last = first + timedelta(seconds=conversation.span)
            closed = end - last > timedelta(days=1)
            copy.write(
                f"{PHONE_NUMBER_ID}\t{conversation.contact_index + 1}\t"
                f"{'closed' if closed else 'open'}\t{_ts(last)}\t{_ts(last)}\t{_ts(first)}\t"
                f"{_ts(last)}\t{_ts(last) if closed else chr(92) + 'N'}\n"
            )


def _message_times(rng: random.Random, conversation: _Conversation) -> Iterator[tuple[float, int]]:
    """(seconds after the start, 0 inbound / 1 outbound) of each message, in time order."""
    made = 0
    now = conversation.first_at
    # Pauses between exchanges share out what the exchanges themselves leave of the span.
    exchanges = max(1, conversation.length // 3)
    pause = conversation.span / exchanges
    while made < conversation.length:
        for _ in range(rng.randint(1, 3)):
            if made == conversation.length:
                return
            yield now, 0
            made += 1
            now += rng.uniform(3.0, 40.0)
        now += min(3600.0, rng.lognormvariate(math.log(25.0), 1.0))
        for _ in range(rng.randint(1, 2)):
            if made == conversation.length:
                return
            yield now, 1
            made += 1
            now += rng.uniform(1.0, 4.0)
        now += rng.uniform(0.2, 1.8) * pause


def _copy_messages(
    conn: psycopg.Connection, rng: random.Random, plan: list[_Conversation], start: datetime
) -> list[tuple[str, str, float, int | None]]:
    """COPY every message in time order; returns the status rows to write (wamid, status, at,
    error code) for one outbound message in ten."""
    # Each message packed in one int (time in ms, conversation index, direction): 10 M of them
    # sort in seconds and take ~400 MB.
    packed: list[int] = []
    for index, conversation in enumerate(plan):
        for seconds, direction in _message_times(rng, conversation):
            packed.append((int(seconds * 1000) << 18 | index) << 1 | direction)
    packed.sort()
    statuses: list[tuple[str, str, float, int | None]] = []
    error_codes = [code for code, _ in _ERRORS]
    error_weights = [weight for _, weight in _ERRORS]
    base = start.timestamp()
    with conn.cursor().copy(
        "COPY whatsapp_messages (conversation_id, direction, wamid, phone_number_id, "
        "contact_wa_id, message_type, text_body, content, status, error_code, "
        "whatsapp_timestamp, sent_at, delivered_at, read_at, failed_at, created_at, updated_at) "
        "FROM STDIN"
    ) as copy:
        buffer: list[str] = []
        for number, value in enumerate(packed, start=1):
            direction = value & 1
            index = (value >> 1) & 0x3FFFF
            at_seconds = (value >> 19) / 1000.0
            conversation = plan[index]
            wa_id = wa_id_of(conversation.contact_index)
            at = datetime.fromtimestamp(base + at_seconds, UTC)
            created = _ts(at)
            wamid = f"wamid.bench{number}"
            text = f"message {number} of the bench"
            content = '{"type": "text", "text": {"body": "' + text + '"}}'
            sent = delivered = read = failed = "\\N"
            code = "\\N"
            if direction == 0:
                status = "received"
                row_direction = "inbound"
            else:
                row_direction = "outbound"
                draw = rng.random()
                if draw < 0.02:
                    status, wamid = "pending", "\\N"
                elif draw < 0.07:
                    status = "failed"
                    failed = _ts(at + timedelta(seconds=2))
                    code = str(rng.choices(error_codes, error_weights)[0])
                    if rng.random() < 0.5:
                        wamid = "\\N"  # refused at send time
                    else:
                        sent = _ts(at + timedelta(seconds=1))
                else:
                    sent = _ts(at + timedelta(seconds=1))
                    status = "sent"
                    if draw >= 0.15:
                        status = "delivered"
                        delivered = _ts(at + timedelta(seconds=3))
                    if draw >= 0.40:
                        status = "read"
                        read = _ts(at + timedelta(seconds=rng.uniform(10.0, 7200.0)))
                if wamid != "\\N" and number % 10 == 0:
                    for step in ("sent", "delivered", "read", "failed"):
                        if step == "failed" and status == "failed":
                            statuses.append((wamid, step, base + at_seconds + 2, int(code)))
                        elif step != "failed" and _rank(step) <= _rank(status):
                            statuses.append((wamid, step, base + at_seconds + 1, None))
            buffer.append(
                f"{index + 1}\t{row_direction}\t{wamid}\t{PHONE_NUMBER_ID}\t{wa_id}\ttext\t{text}\t"
                f"{content}\t{status}\t{code}\t{created}\t{sent}\t{delivered}\t{read}\t{failed}\t"
                f"{created}\t{created}\n"
            )
            if len(buffer) >= 10_000:
                copy.write("".join(buffer))
                buffer.clear()
        copy.write("".join(buffer))
    return statuses


def _rank(status: str) -> int:
    return {"sent": 2, "failed": 3, "delivered": 4, "read": 5}.get(status, 0)


def _copy_statuses(
    conn: psycopg.Connection, statuses: list[tuple[str, str, float, int | None]]
) -> None:
    with conn.cursor().copy(
        "COPY whatsapp_message_statuses (wamid, status, status_timestamp, error_code, payload, "
        "received_at) FROM STDIN"
    ) as copy:
        for wamid, status, at, code in statuses:
            when = _ts(datetime.fromtimestamp(at, UTC))
            payload = '{"id": "' + wamid + '", "status": "' + status + '"}'
            copy.write(
                f"{wamid}\t{status}\t{when}\t{code if code is not None else chr(92) + 'N'}\t"
                f"{payload}\t{when}\n"
            )


def _copy_webhook_events(
    conn: psycopg.Connection, rng: random.Random, size: Size, start: datetime, end: datetime
) -> None:
    import hashlib

    total_seconds = (end - start).total_seconds()
    times = sorted(rng.uniform(0.0, total_seconds) for _ in range(size.webhook_events))
    with conn.cursor().copy(
        "COPY whatsapp_webhook_events (received_at, body, body_sha256, object, fields, status, "
        "event_count, last_received_at, published_at) FROM STDIN"
    ) as copy:
        for number, seconds in enumerate(times):
            wa_id = wa_id_of(rng.randrange(size.contacts))
            body = (
                '{"object":"whatsapp_business_account","entry":[{"id":"200000000000001",'
                '"changes":[{"field":"messages","value":{"messaging_product":"whatsapp",'
                '"metadata":{"display_phone_number":"15550783801","phone_number_id":"'
                + PHONE_NUMBER_ID
                + '"},"contacts":[{"profile":{"name":"Bench"},"wa_id":"'
                + wa_id
                + '"}],"messages":[{"from":"'
                + wa_id
                + f'","id":"wamid.event{number}","timestamp":"{int(seconds)}","type":"text",'
                + f'"text":{{"body":"event {number}"}}}}]}}}}]}}]}}'
            ).encode()
            at = _ts(start + timedelta(seconds=seconds))
            digest = hashlib.sha256(body).hexdigest()
            copy.write(
                f"{at}\t\\\\x{body.hex()}\t\\\\x{digest}\twhatsapp_business_account\t"
                f"{{messages}}\tpublished\t1\t{at}\t{at}\n"
            )
