"""Read models and keyset-paged queries of the management API's list endpoints.

Every list is ordered by a unique key (newest id first) and continues after the last row of the
previous page (``WHERE id < last``), never by OFFSET: a page costs the same 50 index entries on
page 1 and page 10,000, and rows inserted meanwhile (always with higher ids) neither shift nor
repeat what the client already has. The cursor carries the last id, signed (see cursors.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode

import msgspec
from psycopg import sql
from psycopg.rows import kwargs_row

from shared_code.db.pool import Pool
from shared_code.management.cursors import CursorSigner
from shared_code.management.problems import InvalidRequest, NotFound
from shared_code.management.redaction import redact_webhook_body

__all__ = [
    "ContactOut",
    "ContactPage",
    "ContactsQuery",
    "ConversationOut",
    "ConversationPage",
    "ConversationsQuery",
    "MessageOut",
    "MessagePage",
    "MessagesQuery",
    "PageQuery",
    "WebhookEventOut",
    "WebhookEventPage",
    "WebhookEventsQuery",
    "list_contacts",
    "list_conversation_messages",
    "list_conversations",
    "list_webhook_events",
]

Limit = Annotated[int, msgspec.Meta(ge=1, le=200, description="Rows per page (1-200).")]
Cursor = Annotated[
    str,
    msgspec.Meta(
        max_length=512,
        description="Opaque position returned as `next` by the previous page; do not build it.",
    ),
]
DEFAULT_LIMIT = 50
T = TypeVar("T")


class PageQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None


# --- models ---------------------------------------------------------------------------------


class ContactOut(msgspec.Struct, kw_only=True):
    id: int
    wa_id: Annotated[str, msgspec.Meta(description="The user's WhatsApp id (phone digits).")]
    profile_name: str | None
    opted_out: bool
    opted_out_at: datetime | None
    last_inbound_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ConversationOut(msgspec.Struct, kw_only=True):
    id: int
    phone_number_id: str
    contact_id: int
    status: Annotated[str, msgspec.Meta(description="open, handoff or closed.")]
    assigned_agent: str | None
    last_message_at: datetime | None
    last_inbound_at: datetime | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class StatusEntry(msgspec.Struct, kw_only=True):
    status: str
    at: datetime | None
    error_code: int | None = None
    error_title: str | None = None


class MessageOut(msgspec.Struct, kw_only=True):
    id: int
    conversation_id: int
    direction: Literal["inbound", "outbound"]
    wamid: str | None
    message_type: str
    text: str | None
    status: str
    error_code: int | None
    error_title: str | None
    agent: str | None
    purpose: Annotated[
        str | None,
        msgspec.Meta(
            description="Why an outbound message was written: reply, operator, template, "
            "marketing, opt_out_confirmation, opt_in_confirmation, handoff_notice, away_message."
        ),
    ]
    blocked_by_policy: Annotated[
        str | None,
        msgspec.Meta(
            description="Set when the messaging policy refused to send it (no Graph call): "
            "contact_opted_out, marketing_opted_out or window_closed."
        ),
    ]
    whatsapp_timestamp: datetime | None
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    status_history: list[StatusEntry]


class WebhookEventOut(msgspec.Struct, kw_only=True):
    id: int
    received_at: datetime
    status: str
    reason: str | None
    object: str | None
    fields: list[str]
    event_count: int
    duplicate_count: int
    redacted: bool
    body: Annotated[
        Any,
        msgspec.Meta(
            description="The JSON body; phone numbers, names, texts and wamids replaced by "
            "'[redacted]' unless raw=true was asked with a full-access credential. Null when "
            "the stored bytes are not JSON."
        ),
    ] = None
    body_base64: Annotated[
        str | None,
        msgspec.Meta(description="The exact bytes, base64, only with raw=true."),
    ] = None


class ContactPage(msgspec.Struct, kw_only=True):
    data: list[ContactOut]
    next: Annotated[str | None, msgspec.Meta(description="Link to the next page, or null.")]


class ConversationPage(msgspec.Struct, kw_only=True):
    data: list[ConversationOut]
    next: str | None


class MessagePage(msgspec.Struct, kw_only=True):
    data: list[MessageOut]
    next: str | None


class WebhookEventPage(msgspec.Struct, kw_only=True):
    data: list[WebhookEventOut]
    next: str | None


# --- queries --------------------------------------------------------------------------------

SearchText = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=100,
        description="A name fragment (case-insensitive), or the first digits of a phone number.",
    ),
]


class ContactsQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    search: SearchText | None = None
    opted_out: bool | None = None


class ConversationsQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    status: Literal["open", "handoff", "closed"] | None = None
    agent: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    contact_id: Annotated[int, msgspec.Meta(ge=1)] | None = None
    updated_since: datetime | None = None


class MessagesQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    direction: Literal["inbound", "outbound"] | None = None
    status: (
        Literal["received", "pending", "accepted", "sent", "delivered", "read", "failed", "deleted"]
        | None
    ) = None


class WebhookEventsQuery(PageQuery, kw_only=True, forbid_unknown_fields=True):
    status: Literal["pending", "published", "ignored", "invalid", "failed"] | None = None
    received_from: Annotated[datetime, msgspec.Meta(description="Inclusive.")] | None = None
    received_to: Annotated[datetime, msgspec.Meta(description="Exclusive.")] | None = None
    raw: Annotated[
        bool, msgspec.Meta(description="Unredacted bodies; needs a full-access credential.")
    ] = False


def _filters_of(query: PageQuery) -> dict[str, object]:
    """The query's filters (what a cursor is bound to and the next link repeats): everything
    given other than its default, but the position and size."""
    return {
        field.encode_name: getattr(query, field.name)
        for field in msgspec.structs.fields(query)
        if field.name not in ("cursor", "limit")
        and getattr(query, field.name) is not None
        and getattr(query, field.name) != field.default
    }


class _Pager:
    """Reads the cursor of a page query and writes the next link."""

    def __init__(self, signer: CursorSigner, scope: str, query: PageQuery, path: str) -> None:
        self._signer = signer
        self._scope = scope
        self._query = query
        self._path = path
        self._filters = _filters_of(query)
        self.after: int | None = None
        if query.cursor is not None:
            position = signer.decode(scope, self._filters, query.cursor)
            if len(position) != 1 or not isinstance(position[0], int):
                raise InvalidRequest("the cursor is invalid", code="invalid_cursor")
            self.after = position[0]

    @property
    def fetch(self) -> int:
        # One row more than asked says whether there is a next page.
        return self._query.limit + 1

    def next_link(self, rows: Sequence[Any], last_id: int) -> str | None:
        if len(rows) <= self._query.limit:
            return None
        cursor = self._signer.encode(self._scope, self._filters, [last_id])
        params: dict[str, str] = {}
        for name, value in self._filters.items():
            params[name] = _query_value(value)
        params["limit"] = str(self._query.limit)
        params["cursor"] = cursor
        return f"{self._path}?{urlencode(params)}"


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class _Conditions:
    """The WHERE clause of a page and its parameters, starting after the cursor's row."""

    def __init__(self, pager: _Pager, id_column: str = "id") -> None:
        self._parts: list[sql.Composable] = []
        self.params: dict[str, object] = {"limit": pager.fetch}
        if pager.after is not None:
            self.add(f"{id_column} < %(after)s", after=pager.after)

    def add(self, condition: str, **params: object) -> None:
        self._parts.append(sql.SQL(condition))
        self.params.update(params)

    def where(self) -> sql.Composable:
        return (
            sql.SQL("WHERE ") + sql.SQL(" AND ").join(self._parts) if self._parts else sql.SQL("")
        )


async def _rows(
    pool: Pool, statement: str, conditions: _Conditions, make: Callable[..., T]
) -> list[T]:
    """Run a page's SELECT; each row becomes ``make(**columns)``."""
    query = sql.SQL(statement).format(where=conditions.where(), columns=_CONTACT_COLUMNS)
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=kwargs_row(make))
        await cursor.execute(query, conditions.params)
        return await cursor.fetchall()


_CONTACT_COLUMNS = sql.SQL(
    "c.id, c.wa_id, c.profile_name, c.opted_out, c.opted_out_at, c.last_inbound_at, "
    "c.created_at, c.updated_at"
)
# A last word that starts more distinct words than this is matched as a whole word only.
MAX_PREFIX_WORDS = 20

# The search's words (split as names are, see 0010_analytics.sql), and the words of names that
# start with its last word: a loose index scan over whatsapp_contact_name_words, stopped past
# MAX_PREFIX_WORDS.
_SEARCH_WORDS = """
WITH RECURSIVE search AS (
    SELECT words, words[cardinality(words)] AS last FROM whatsapp_name_words(%(term)s) AS words
), expansion(word, n) AS (
    SELECT (SELECT w.word FROM whatsapp_contact_name_words w
            WHERE w.word >= s.last ORDER BY w.word LIMIT 1), 1
    FROM search s WHERE s.last IS NOT NULL
    UNION ALL
    SELECT (SELECT w.word FROM whatsapp_contact_name_words w
            WHERE w.word > e.word ORDER BY w.word LIMIT 1), e.n + 1
    FROM expansion e, search s
    WHERE starts_with(e.word, s.last) AND e.n <= %(max_words)s
)
SELECT s.words, array(SELECT e.word FROM expansion e WHERE starts_with(e.word, s.last))
FROM search s
"""


async def _name_search_words(pool: Pool, term: str) -> tuple[list[str], list[str]]:
    """The search's whole words but the last, and the words its last word may be."""
    async with pool.connection() as conn:
        cursor = await conn.execute(_SEARCH_WORDS, {"term": term, "max_words": MAX_PREFIX_WORDS})
        found = await cursor.fetchone()
    words, expansions = (found[0], found[1]) if found else ([], [])
    if not words:
        return [], []
    last = words[-1]
    if not expansions or len(expansions) > MAX_PREFIX_WORDS:
        expansions = [last]
    return words[:-1], expansions


def _name_match(whole: list[str], last: str, index: int, conditions: _Conditions) -> sql.Composable:
    """Contact ids whose name has every word of ``whole`` and ``last``, newest first: one merge
    of backward (word, contact_id) ranges, which stops once a page is found."""
    tables: list[sql.Composable] = [sql.SQL("whatsapp_contact_name_words w0")]
    where: list[sql.Composable] = [sql.SQL("w0.word = {}").format(sql.Placeholder(f"last{index}"))]
    conditions.params[f"last{index}"] = last
    for position, word in enumerate(whole, start=1):
        alias = sql.Identifier(f"w{position}")
        name = f"word{position}"
        tables.append(
            sql.SQL(
                "JOIN whatsapp_contact_name_words {a} ON {a}.contact_id = w0.contact_id "
                "AND {a}.word = {p}"
            ).format(a=alias, p=sql.Placeholder(name))
        )
        conditions.params[name] = word
    if "after" in conditions.params:
        where.append(sql.SQL("w0.contact_id < %(after)s"))
    if "opted_out" in conditions.params:
        tables.append(
            sql.SQL(
                "JOIN whatsapp_contacts o ON o.id = w0.contact_id AND o.opted_out = %(opted_out)s"
            )
        )
    return sql.SQL(
        "(SELECT w0.contact_id FROM {tables} WHERE {where} ORDER BY w0.contact_id DESC)"
    ).format(tables=sql.SQL(" ").join(tables), where=sql.SQL(" AND ").join(where))


async def _search_by_name(
    pool: Pool, pager: _Pager, query: ContactsQuery, term: str
) -> list[ContactOut]:
    whole, alternatives = await _name_search_words(pool, term)
    if not alternatives:
        return []
    conditions = _Conditions(pager)
    if query.opted_out is not None:
        conditions.params["opted_out"] = query.opted_out
    # A name with two words that start alike ("Anna Annette") comes from two branches: read
    # twice the page and keep each contact once.
    conditions.params["limit"] = 2 * pager.fetch
    branches = [
        _name_match(whole, last, index, conditions) for index, last in enumerate(alternatives)
    ]
    statement = sql.SQL(
        "SELECT {columns} FROM (SELECT contact_id FROM ({branches}) branch "
        "ORDER BY contact_id DESC LIMIT %(limit)s) hit "
        "JOIN whatsapp_contacts c ON c.id = hit.contact_id ORDER BY c.id DESC"
    ).format(columns=_CONTACT_COLUMNS, branches=sql.SQL(" UNION ALL ").join(branches))
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=kwargs_row(ContactOut))
        await cursor.execute(statement, conditions.params)
        rows = await cursor.fetchall()
    unique: dict[int, ContactOut] = {}
    for row in rows:
        unique.setdefault(row.id, row)
    return list(unique.values())[: pager.fetch]


async def list_contacts(
    pool: Pool, signer: CursorSigner, query: ContactsQuery, path: str
) -> ContactPage:
    """Contacts newest first. ``search``: digits are the start of a phone number; otherwise
    every word must be a word of the name, and the last one may be the start of a word."""
    pager = _Pager(signer, "contacts", query, path)
    term = (query.search or "").strip()
    digits = term.removeprefix("+").replace(" ", "")
    if query.search is not None and not digits.isdigit():
        rows = await _search_by_name(pool, pager, query, term)
    else:
        conditions = _Conditions(pager, id_column="c.id")
        if query.opted_out is not None:
            conditions.add("c.opted_out = %(opted_out)s", opted_out=query.opted_out)
        if query.search is not None:
            # wa_id is the number's digits; a prefix is what a person types.
            conditions.add('c.wa_id COLLATE "C" LIKE %(prefix)s', prefix=digits + "%")
        rows = await _rows(
            pool,
            "SELECT {columns} FROM whatsapp_contacts c {where} ORDER BY c.id DESC LIMIT %(limit)s",
            conditions,
            ContactOut,
        )
    page = rows[: query.limit]
    return ContactPage(data=page, next=pager.next_link(rows, page[-1].id if page else 0))


async def list_conversations(
    pool: Pool, signer: CursorSigner, query: ConversationsQuery, path: str
) -> ConversationPage:
    pager = _Pager(signer, "conversations", query, path)
    conditions = _Conditions(pager)
    if query.status is not None:
        conditions.add("status = %(status)s", status=query.status)
    if query.agent is not None:
        conditions.add("assigned_agent = %(agent)s", agent=query.agent)
    if query.contact_id is not None:
        conditions.add("contact_id = %(contact_id)s", contact_id=query.contact_id)
    if query.updated_since is not None:
        conditions.add("updated_at >= %(updated_since)s", updated_since=query.updated_since)
    rows = await _rows(
        pool,
        "SELECT id, phone_number_id, contact_id, status, assigned_agent, last_message_at, "
        "last_inbound_at, created_at, updated_at, closed_at FROM whatsapp_conversations "
        "{where} ORDER BY id DESC LIMIT %(limit)s",
        conditions,
        ConversationOut,
    )
    page = rows[: query.limit]
    return ConversationPage(data=page, next=pager.next_link(rows, page[-1].id if page else 0))


_MESSAGES = """
SELECT m.id, m.conversation_id, m.direction, m.wamid, m.message_type, m.text_body AS text,
       m.status, m.error_code, m.error_title, m.agent, m.purpose, m.blocked_by_policy,
       m.whatsapp_timestamp, m.created_at,
       m.sent_at, m.delivered_at, m.read_at, m.failed_at,
       COALESCE(h.history, '[]'::jsonb) AS status_history
FROM whatsapp_messages m
LEFT JOIN LATERAL (
    SELECT jsonb_agg(
               jsonb_build_object('status', s.status, 'at', s.status_timestamp,
                                  'error_code', s.error_code, 'error_title', s.error_title)
               ORDER BY whatsapp_status_rank(s.status), s.status_timestamp
           ) AS history
    FROM whatsapp_message_statuses s
    WHERE m.wamid IS NOT NULL AND s.wamid = m.wamid
) h ON true
{where}
ORDER BY m.id DESC
LIMIT %(limit)s
"""

_history = msgspec.json.Decoder(list[StatusEntry]).decode
_encode = msgspec.json.Encoder().encode


def _message(*, status_history: list[dict[str, Any]], **columns: Any) -> MessageOut:
    return MessageOut(**columns, status_history=_history(_encode(status_history)))


async def list_conversation_messages(
    pool: Pool, signer: CursorSigner, conversation_id: int, query: MessagesQuery, path: str
) -> MessagePage:
    pager = _Pager(signer, f"messages:{conversation_id}", query, path)
    conditions = _Conditions(pager, id_column="m.id")
    conditions.add("m.conversation_id = %(conversation_id)s", conversation_id=conversation_id)
    if query.direction is not None:
        conditions.add("m.direction = %(direction)s", direction=query.direction)
    if query.status is not None:
        conditions.add("m.status = %(status)s", status=query.status)
    rows = await _rows(pool, _MESSAGES, conditions, _message)
    if not rows and pager.after is None:
        async with pool.connection() as conn:
            found = await conn.execute(
                "SELECT 1 FROM whatsapp_conversations WHERE id = %s", (conversation_id,)
            )
            if await found.fetchone() is None:
                raise NotFound("no conversation with this id", code="conversation_not_found")
    page = rows[: query.limit]
    return MessagePage(data=page, next=pager.next_link(rows, page[-1].id if page else 0))


async def list_webhook_events(
    pool: Pool, signer: CursorSigner, query: WebhookEventsQuery, path: str
) -> WebhookEventPage:
    if (
        query.received_from is not None
        and query.received_to is not None
        and query.received_from >= query.received_to
    ):
        raise InvalidRequest("received_from must be before received_to", code="invalid_range")
    pager = _Pager(signer, "webhook-events", query, path)
    conditions = _Conditions(pager)
    if query.status is not None:
        conditions.add("status = %(status)s", status=query.status)
    if query.received_from is not None:
        conditions.add("received_at >= %(received_from)s", received_from=query.received_from)
    if query.received_to is not None:
        conditions.add("received_at < %(received_to)s", received_to=query.received_to)

    def event(*, body: bytes, fields: list[str], **columns: Any) -> WebhookEventOut:
        return _webhook_event(bytes(body), list(fields), columns, raw=query.raw)

    rows = await _rows(
        pool,
        "SELECT id, received_at, status, reason, object, fields, event_count, duplicate_count, "
        "body FROM whatsapp_webhook_events {where} ORDER BY id DESC LIMIT %(limit)s",
        conditions,
        event,
    )
    page = rows[: query.limit]
    return WebhookEventPage(data=page, next=pager.next_link(rows, page[-1].id if page else 0))


def _webhook_event(
    body: bytes, fields: list[str], columns: dict[str, Any], *, raw: bool
) -> WebhookEventOut:
    try:
        parsed: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        parsed = None
    return WebhookEventOut(
        **columns,
        fields=fields,
        redacted=not raw,
        body=parsed if raw else (None if parsed is None else redact_webhook_body(parsed)),
        body_base64=base64.b64encode(body).decode() if raw else None,
    )
