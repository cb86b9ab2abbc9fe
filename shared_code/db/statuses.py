"""Repository of delivery statuses: a history per (wamid, status), folded onto the message row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from shared_code.db.pool import Connection

__all__ = ["StatusRow", "fold_statuses", "record_status"]


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
# the webhooks came in; the error of a failure is kept even when a later "read" wins.
_FOLD = """
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
    FROM whatsapp_message_statuses
    WHERE wamid = %(wamid)s
) AS s
WHERE m.wamid = %(wamid)s AND s.best IS NOT NULL
"""


async def record_status(conn: Connection, row: StatusRow) -> tuple[bool, bool]:
    """Store a status once and fold it onto its message.

    Returns (new, applied): ``new`` is False for a repeated (wamid, status); ``applied`` is False
    while no message carries the wamid yet — the status waits in the history until one does.
    """
    cursor = await conn.execute(
        """
        INSERT INTO whatsapp_message_statuses
            (wamid, status, status_timestamp, recipient_id, error_code, error_title,
             error_details, biz_opaque_callback_data, payload)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (wamid, status) DO NOTHING
        """,
        (
            row.wamid,
            row.status,
            row.status_timestamp,
            row.recipient_id,
            row.error_code,
            row.error_title,
            row.error_details,
            row.biz_opaque_callback_data,
            Jsonb(row.payload),
        ),
    )
    new = cursor.rowcount == 1
    applied = await fold_statuses(conn, row.wamid)
    return new, applied


async def fold_statuses(conn: Connection, wamid: str) -> bool:
    """Bring the message row up to date with every status seen for its wamid (idempotent).

    The sender calls this after recording a wamid, for statuses that beat it to the database.
    """
    cursor = await conn.execute(_FOLD, {"wamid": wamid})
    return cursor.rowcount > 0
