"""Repository of delivery statuses: a history per (wamid, status), folded onto the message row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql
from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection

__all__ = ["StatusRow", "fold_statuses", "record_status", "storable_error_code"]


_INT32 = range(-(2**31), 2**31)


def storable_error_code(code: int | None) -> int | None:
    """Meta's error code as the ``integer`` columns take it: one that does not fit (a hostile
    or broken payload) is dropped, not allowed to fail the write; the payload keeps it."""
    return code if code is not None and code in _INT32 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRow:
    wamid: str
    status: str
    status_timestamp: datetime
    recipient_id: str
    error_code: int | None
    error_title: str | None
    error_details: str | None
    biz_opaque_callback_data: str | None
    payload: dict[str, object]


# The message shows the furthest status ever seen and the first time of each, whatever order
# the webhooks came in; the error of a failure is kept even when a later "read" wins. The CASE
# compares with the row as it is when updated, so concurrent folds only ever move it forward.
_FOLD_TEMPLATE = """
UPDATE whatsapp_messages AS m SET
    status = CASE WHEN whatsapp_status_rank(s.best) > whatsapp_status_rank(m.status)
                  THEN s.best ELSE m.status END,
    sent_at = COALESCE(m.sent_at, s.sent_at),
    delivered_at = COALESCE(m.delivered_at, s.delivered_at),
    read_at = COALESCE(m.read_at, s.read_at),
    failed_at = COALESCE(m.failed_at, s.failed_at),
    error_code = COALESCE(s.error_code, m.error_code),
    error_title = COALESCE(s.error_title, m.error_title),
    error_details = COALESCE(s.error_details, m.error_details),
    updated_at = now()
FROM (
    SELECT
        (array_agg(status ORDER BY whatsapp_status_rank(status) DESC))[1] AS best,
        min(status_timestamp) FILTER (WHERE status = 'sent') AS sent_at,
        min(status_timestamp) FILTER (WHERE status = 'delivered') AS delivered_at,
        min(status_timestamp) FILTER (WHERE status = 'read') AS read_at,
        min(status_timestamp) FILTER (WHERE status = 'failed') AS failed_at,
        (array_agg(error_code ORDER BY received_at DESC)
            FILTER (WHERE error_code IS NOT NULL))[1] AS error_code,
        (array_agg(error_title ORDER BY received_at DESC)
            FILTER (WHERE error_code IS NOT NULL))[1] AS error_title,
        (array_agg(error_details ORDER BY received_at DESC)
            FILTER (WHERE error_code IS NOT NULL))[1] AS error_details
    FROM {history}
) AS s
WHERE m.wamid = %(wamid)s AND s.best IS NOT NULL
"""

_HISTORY_COLUMNS = sql.SQL(
    "status, status_timestamp, error_code, error_title, error_details, received_at"
)

_FOLD = sql.SQL(_FOLD_TEMPLATE).format(
    history=sql.SQL("whatsapp_message_statuses WHERE wamid = %(wamid)s")
)

# Record and fold in one round trip. The statement's snapshot does not show its own insert, so
# the new row is added to the history by hand; a repeat (conflict) is already in the table.
_RECORD_AND_FOLD = sql.SQL(
    """
WITH inserted AS (
    INSERT INTO whatsapp_message_statuses
        (wamid, status, status_timestamp, recipient_id, error_code, error_title,
         error_details, biz_opaque_callback_data, payload)
    VALUES (%(wamid)s, %(status)s, %(status_timestamp)s, %(recipient_id)s, %(error_code)s,
            %(error_title)s, %(error_details)s, %(biz_opaque_callback_data)s, %(payload)s)
    ON CONFLICT (wamid, status) DO NOTHING
    RETURNING {columns}
),
folded AS ({fold} RETURNING m.trace_context)
SELECT (SELECT count(*) FROM inserted) AS new, (SELECT count(*) FROM folded) AS applied,
       (SELECT max(trace_context) FROM folded) AS trace_context
"""
).format(
    columns=_HISTORY_COLUMNS,
    fold=sql.SQL(_FOLD_TEMPLATE).format(
        history=sql.SQL(
            """(
        SELECT {columns} FROM whatsapp_message_statuses WHERE wamid = %(wamid)s
        UNION ALL
        SELECT {columns} FROM inserted
    ) AS history"""
        ).format(columns=_HISTORY_COLUMNS)
    ),
)


async def record_status(conn: Connection, row: StatusRow) -> tuple[bool, bool, str | None]:
    """Store a status once and fold it onto its message, in one statement.

    Returns (new, applied, trace context): ``new`` is False for a repeated (wamid, status);
    ``applied`` is False while no message carries the wamid yet — the status waits in the history
    until one does; the trace context is the message's (see migration 0011), when it has one.
    """
    cursor = await conn.execute(
        _RECORD_AND_FOLD,
        {
            "wamid": row.wamid,
            "status": row.status,
            "status_timestamp": row.status_timestamp,
            "recipient_id": row.recipient_id,
            "error_code": storable_error_code(row.error_code),
            "error_title": row.error_title,
            "error_details": row.error_details,
            "biz_opaque_callback_data": row.biz_opaque_callback_data,
            "payload": Jsonb(row.payload),
        },
    )
    result = await cursor.fetchone()
    assert result is not None  # the statement always returns exactly one row
    new, applied, trace_context = result
    return new == 1, applied > 0, trace_context


async def fold_statuses(conn: Connection, wamid: str) -> bool:
    """Bring the message row up to date with every status seen for its wamid (idempotent).

    The sender calls this after recording a wamid, for statuses that beat it to the database.
    """
    cursor = await conn.execute(_FOLD, {"wamid": wamid})
    return cursor.rowcount > 0
