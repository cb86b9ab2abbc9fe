"""Split one decoded webhook body into bus events: one per inbound message, one per status.

This runs inside the webhook's HTTP answer, so it walks plain dicts and checks only what the bus
needs (ids for duplicate detection, the sender for the session); typed validation is the
processor's job (:func:`shared_code.whatsapp.payloads.decode_event`). It never raises: a body
that cannot be split is still stored, with :attr:`SplitResult.reason` saying why, because an
error answer would make Meta retry it for days.

Every entry and every change is used. A malformed message or status is skipped with a problem
note (positions and field names only, never content or numbers) and the rest of the batch still
goes out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "MAX_BUS_ID_LENGTH",
    "PREFERENCES_FIELD",
    "TEMPLATE_FIELD",
    "WHATSAPP_OBJECT",
    "SplitEvent",
    "SplitResult",
    "session_id_for",
    "split_webhook",
    "status_message_id",
    "template_event_message_id",
    "template_session_id",
]

logger = logging.getLogger(__name__)

WHATSAPP_OBJECT = "whatsapp_business_account"
# Service Bus refuses a message id or session id longer than this, and one refused message
# fails its whole batch: such parts are skipped here instead.
MAX_BUS_ID_LENGTH = 128
_MAX_REASON_LENGTH = 500
_MAX_NAME_LENGTH = 100
_MAX_PROBLEMS = 20
# Ten digits until 2286; more is not a time Meta sends and would not convert to a datetime.
_MAX_TIMESTAMP_DIGITS = 11

SplitStatus = Literal["pending", "ignored", "invalid"]


def session_id_for(phone_number_id: str, wa_id: str) -> str:
    """The bus session of a conversation: one business number with one user, kept in order."""
    return f"{phone_number_id}:{wa_id}"


def status_message_id(wamid: str, status: str) -> str:
    """The bus message id of a status: each (message, status) pair is published once."""
    return f"{wamid}:{status}"


TEMPLATE_FIELD = "message_template_status_update"
# Meta's marketing opt-out reports (a user stopped or resumed marketing messages in WhatsApp).
PREFERENCES_FIELD = "user_preferences"


def template_event_message_id(template_id: str, event: str, entry_time: int | None) -> str:
    """The bus message id of a template status change: each change of a template once."""
    return f"template:{template_id}:{event}:{entry_time if entry_time is not None else ''}"


def template_session_id(waba_id: str | None) -> str:
    """Template changes of one business account share a session: they are applied in order."""
    return f"templates:{waba_id or ''}"


@dataclass(frozen=True, slots=True)
class SplitEvent:
    """One bus message to publish; ``envelope`` is what :func:`decode_event` reads back once the
    caller adds ``webhook_event_id``."""

    kind: Literal["message", "status", "template", "preference"]
    message_id: str
    session_id: str
    envelope: dict[str, object]


@dataclass(frozen=True, slots=True)
class SplitResult:
    """What one body holds, and what to record about it.

    ``status`` is ``pending`` when there are events to publish, ``ignored`` for a valid body with
    nothing to publish (other fields, Meta-reported errors), ``invalid`` when it is not a
    WhatsApp webhook at all or every part of it was broken.
    """

    object: str | None
    fields: tuple[str, ...]
    events: tuple[SplitEvent, ...]
    problems: tuple[str, ...]
    # Changes understood in full or in part; none with problems means the body is invalid.
    usable_parts: int = 0
    # Set when the body as a whole was refused (not an object, wrong object, no entry list).
    rejection: str | None = None
    # What the JSON decoding replaced to make the body storable (NUL, lone surrogates, bytes
    # that are not UTF-8): the events carry the repaired text, the stored raw body the original.
    repairs: tuple[str, ...] = ()

    @classmethod
    def invalid(cls, reason: str, *, object: str | None = None) -> SplitResult:
        return cls(object=object, fields=(), events=(), problems=(), rejection=reason)

    @property
    def is_whatsapp(self) -> bool:
        return self.object == WHATSAPP_OBJECT

    @property
    def status(self) -> SplitStatus:
        if self.rejection is not None or not self.is_whatsapp:
            return "invalid"
        if self.events:
            return "pending"
        if self.problems and not self.usable_parts:
            return "invalid"
        return "ignored"

    @property
    def reason(self) -> str | None:
        notes = [f"repaired: {', '.join(self.repairs)}"] if self.repairs else []
        if self.rejection is not None:
            notes.insert(0, self.rejection)
        elif not self.is_whatsapp:
            notes.insert(0, "missing object")
        elif self.problems:
            notes.extend(self.problems)
        elif not self.events:
            notes.insert(0, f"no messages or statuses (fields: {', '.join(self.fields) or 'none'})")
        return _truncate("; ".join(notes), _MAX_REASON_LENGTH) if notes else None


def split_webhook(payload: object) -> SplitResult:
    """Split a decoded webhook body; never raises, whatever the input."""
    try:
        return _split(payload)
    except Exception:
        # A bug here must not turn into an error answer and days of retries: the body is
        # stored as invalid and can be replayed once fixed.
        logger.exception("webhook could not be split")
        return SplitResult.invalid("internal error while splitting")


def _split(payload: object) -> SplitResult:
    if not isinstance(payload, dict):
        return SplitResult.invalid(f"body is a JSON {_kind_of(payload)}, not an object")
    obj = payload.get("object")
    if obj != WHATSAPP_OBJECT:
        if not isinstance(obj, str):
            return SplitResult.invalid("missing object")
        shown = _truncate(obj, 40)
        return SplitResult.invalid(f"unexpected object {shown!r}", object=_name(obj))
    entries = payload.get("entry")
    if not isinstance(entries, list):
        return SplitResult.invalid("entry missing or not a list", object=obj)
    splitter = _Splitter()
    for i, entry in enumerate(entries):
        splitter.entry(i, entry)
    if splitter.more_problems:
        splitter.problems.append(f"{splitter.more_problems} more problems")
    return SplitResult(
        object=obj,
        fields=tuple(splitter.fields),
        events=tuple(splitter.events),
        problems=tuple(splitter.problems),
        usable_parts=splitter.usable_parts,
    )


class _Splitter:
    __slots__ = ("events", "fields", "more_problems", "problems", "usable_parts")

    def __init__(self) -> None:
        self.events: list[SplitEvent] = []
        # A dict keeps the first-seen order and drops repeats.
        self.fields: dict[str, None] = {}
        self.problems: list[str] = []
        self.more_problems = 0
        self.usable_parts = 0

    def problem(self, text: str) -> None:
        # A junk body can hold thousands of broken parts; the first few say enough.
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.more_problems += 1

    def entry(self, i: int, entry: object) -> None:
        if not isinstance(entry, dict):
            self.problem(f"entry[{i}]: not an object")
            return
        changes = entry.get("changes")
        if not isinstance(changes, list):
            self.problem(f"entry[{i}]: changes missing or not a list")
            return
        waba_id = entry.get("id")
        if not isinstance(waba_id, str):
            waba_id = None
        entry_time = entry.get("time")
        if not _is_timestamp(entry_time):
            entry_time = None
        for j, change in enumerate(changes):
            if isinstance(change, dict) and change.get("field") == TEMPLATE_FIELD:
                self.template_change(i, j, waba_id, entry_time, change)
                continue
            if isinstance(change, dict) and change.get("field") == PREFERENCES_FIELD:
                self.preferences_change(i, j, waba_id, change)
                continue
            self.change(i, j, waba_id, change)

    def change(self, i: int, j: int, waba_id: str | None, change: object) -> None:
        if not isinstance(change, dict):
            self.problem(f"entry[{i}].changes[{j}]: not an object")
            return
        field = change.get("field")
        if isinstance(field, str):
            self.fields[_name(field)] = None
        value = change.get("value")
        if field != "messages":
            # account_update, message_template_status_update, ...: stored with the body,
            # nothing to publish.
            if isinstance(field, str):
                self.usable_parts += 1
            else:
                self.problem(f"entry[{i}].changes[{j}]: field missing or not a string")
            return
        if not isinstance(value, dict):
            self.problem(f"entry[{i}].changes[{j}]: value missing or not an object")
            return
        messages = value.get("messages")
        statuses = value.get("statuses")
        errors = value.get("errors")
        usable = False
        if errors is not None:
            self.problem(f"entry[{i}].changes[{j}]: webhook errors {_error_codes(errors)}")
            usable = isinstance(errors, list)
        if messages is not None or statuses is not None:
            usable = self.messages_and_statuses(i, j, waba_id, value, messages, statuses) or usable
        elif errors is None:
            self.problem(f"entry[{i}].changes[{j}]: no messages, statuses or errors")
        if usable:
            self.usable_parts += 1

    def template_change(
        self, i: int, j: int, waba_id: str | None, entry_time: object, change: dict[str, Any]
    ) -> None:
        self.fields[TEMPLATE_FIELD] = None
        value = change.get("value")
        where = f"entry[{i}].changes[{j}]"
        if not isinstance(value, dict):
            self.problem(f"{where}: value missing or not an object")
            return
        event = value.get("event")
        template_id = value.get("message_template_id")
        if not isinstance(event, str) or not event:
            self.problem(f"{where}: template status without event")
            return
        if isinstance(template_id, bool) or not isinstance(template_id, int | str):
            self.problem(f"{where}: template status without message_template_id")
            return
        seconds = int(entry_time) if isinstance(entry_time, int | str) else None
        message_id = template_event_message_id(str(template_id), event, seconds)
        session_id = template_session_id(waba_id)
        if len(message_id) > MAX_BUS_ID_LENGTH or len(session_id) > MAX_BUS_ID_LENGTH:
            self.problem(f"{where}: template id or event too long for the bus")
            return
        self.usable_parts += 1
        self.events.append(
            SplitEvent(
                kind="template",
                message_id=message_id,
                session_id=session_id,
                envelope={
                    "kind": "template",
                    "waba_id": waba_id,
                    "entry_time": seconds,
                    "update": value,
                },
            )
        )

    def preferences_change(
        self, i: int, j: int, waba_id: str | None, change: dict[str, Any]
    ) -> None:
        """One event per user preference, queued in the user's session (after their messages)."""
        self.fields[PREFERENCES_FIELD] = None
        value = change.get("value")
        where = f"entry[{i}].changes[{j}]"
        if not isinstance(value, dict):
            self.problem(f"{where}: value missing or not an object")
            return
        metadata = value.get("metadata")
        phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
        if not isinstance(phone_number_id, str) or not phone_number_id:
            self.problem(f"{where}: metadata.phone_number_id missing")
            return
        display = metadata.get("display_phone_number") if isinstance(metadata, dict) else None
        preferences = value.get("user_preferences")
        if not isinstance(preferences, list):
            self.problem(f"{where}: user_preferences missing or not a list")
            return
        before = len(self.events)
        for k, preference in enumerate(preferences):
            problem = self.preference(waba_id, phone_number_id, display, preference)
            if problem is not None:
                self.problem(f"{where}.user_preferences[{k}]: {problem}")
        if len(self.events) > before:
            self.usable_parts += 1

    def preference(
        self, waba_id: str | None, phone_number_id: str, display: object, preference: object
    ) -> str | None:
        if not isinstance(preference, dict):
            return "not an object"
        wa_id = preference.get("wa_id")
        category = preference.get("category")
        state = preference.get("value")
        if not isinstance(wa_id, str) or not wa_id:
            return "preference without wa_id"
        if not isinstance(category, str) or not category or not isinstance(state, str):
            return "preference without category or value"
        timestamp = preference.get("timestamp")
        if not _is_timestamp(timestamp):
            return "preference without a unix timestamp"
        message_id = f"preference:{wa_id}:{category}:{state}:{timestamp}"
        session_id = session_id_for(phone_number_id, wa_id)
        if len(message_id) > MAX_BUS_ID_LENGTH or len(session_id) > MAX_BUS_ID_LENGTH:
            return "preference too long for the bus"
        self.events.append(
            SplitEvent(
                kind="preference",
                message_id=message_id,
                session_id=session_id,
                envelope={
                    "kind": "preference",
                    "waba_id": waba_id,
                    "phone_number_id": phone_number_id,
                    "display_phone_number": display if isinstance(display, str) else None,
                    "preference": preference,
                },
            )
        )
        return None

    def messages_and_statuses(
        self,
        i: int,
        j: int,
        waba_id: str | None,
        value: dict[str, Any],
        messages: object,
        statuses: object,
    ) -> bool:
        metadata = value.get("metadata")
        phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
        if not isinstance(phone_number_id, str) or not phone_number_id:
            self.problem(f"entry[{i}].changes[{j}]: metadata.phone_number_id missing")
            return False
        display = metadata.get("display_phone_number") if isinstance(metadata, dict) else None
        if not isinstance(display, str):
            display = None
        before = len(self.events)
        if messages is not None:
            if isinstance(messages, list):
                contacts = value.get("contacts")
                for k, message in enumerate(messages):
                    problem = self.message(waba_id, phone_number_id, display, contacts, message)
                    if problem is not None:
                        self.problem(f"entry[{i}].changes[{j}].messages[{k}]: {problem}")
            else:
                self.problem(f"entry[{i}].changes[{j}]: messages is not a list")
        if statuses is not None:
            if isinstance(statuses, list):
                for k, status in enumerate(statuses):
                    problem = self.status(waba_id, phone_number_id, display, status)
                    if problem is not None:
                        self.problem(f"entry[{i}].changes[{j}].statuses[{k}]: {problem}")
            else:
                self.problem(f"entry[{i}].changes[{j}]: statuses is not a list")
        return len(self.events) > before

    def message(
        self,
        waba_id: str | None,
        phone_number_id: str,
        display: str | None,
        contacts: object,
        message: object,
    ) -> str | None:
        if not isinstance(message, dict):
            return "not an object"
        wamid = message.get("id")
        sender = message.get("from")
        if not isinstance(wamid, str) or not wamid:
            return "message without id"
        if not isinstance(sender, str) or not sender:
            return "message without from"
        if not isinstance(message.get("type"), str):
            return "message without type"
        if not _is_timestamp(message.get("timestamp")):
            return "message without a unix timestamp"
        session_id = session_id_for(phone_number_id, sender)
        if len(wamid) > MAX_BUS_ID_LENGTH or len(session_id) > MAX_BUS_ID_LENGTH:
            return "id or sender too long for the bus"
        self.events.append(
            SplitEvent(
                kind="message",
                message_id=wamid,
                session_id=session_id,
                envelope={
                    "kind": "message",
                    "waba_id": waba_id,
                    "phone_number_id": phone_number_id,
                    "display_phone_number": display,
                    "contact": _contact_for(contacts, sender),
                    "message": message,
                },
            )
        )
        return None

    def status(
        self, waba_id: str | None, phone_number_id: str, display: str | None, status: object
    ) -> str | None:
        if not isinstance(status, dict):
            return "not an object"
        wamid = status.get("id")
        state = status.get("status")
        recipient = status.get("recipient_id")
        if not isinstance(wamid, str) or not wamid:
            return "status without id"
        if not isinstance(state, str) or not state:
            return "status without status"
        if not isinstance(recipient, str) or not recipient:
            return "status without recipient_id"
        if not _is_timestamp(status.get("timestamp")):
            return "status without a unix timestamp"
        message_id = status_message_id(wamid, state)
        session_id = session_id_for(phone_number_id, recipient)
        if len(message_id) > MAX_BUS_ID_LENGTH or len(session_id) > MAX_BUS_ID_LENGTH:
            return "id or recipient too long for the bus"
        self.events.append(
            SplitEvent(
                kind="status",
                message_id=message_id,
                session_id=session_id,
                envelope={
                    "kind": "status",
                    "waba_id": waba_id,
                    "phone_number_id": phone_number_id,
                    "display_phone_number": display,
                    "status": status,
                },
            )
        )
        return None


def _contact_for(contacts: object, sender: str) -> dict[str, Any] | None:
    """The sender's profile: the contact with the same wa_id, else the only one there is."""
    if not isinstance(contacts, list):
        return None
    for contact in contacts:
        if isinstance(contact, dict) and contact.get("wa_id") == sender:
            return contact
    # wa_id and the phone number in "from" may differ (Meta says so); one contact is the sender.
    if len(contacts) == 1 and isinstance(contacts[0], dict):
        only: dict[str, Any] = contacts[0]
        return only
    return None


def _is_timestamp(value: object) -> bool:
    # Unix seconds, as a string of digits (what Meta sends) or a number.
    if isinstance(value, str):
        return 0 < len(value) <= _MAX_TIMESTAMP_DIGITS and value.isascii() and value.isdigit()
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value < 10**_MAX_TIMESTAMP_DIGITS
    )


def _error_codes(errors: object) -> str:
    if not isinstance(errors, list):
        return "(not a list)"
    codes = []
    for error in errors[:5]:
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, int) and not isinstance(code, bool):
            codes.append(str(code))
    return f"(codes: {', '.join(codes) or 'none'})"


def _name(value: str) -> str:
    return value if len(value) <= _MAX_NAME_LENGTH else value[:_MAX_NAME_LENGTH]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
