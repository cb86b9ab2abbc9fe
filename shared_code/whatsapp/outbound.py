"""Request bodies for the Cloud API's ``/messages`` endpoint, as plain dicts (what goes on the wire).

Each builder checks Meta's documented limits (text ≤4,096 characters, ≤3 reply buttons with
titles ≤20, ≤10 list rows, ...) and raises :class:`ValueError` naming the broken rule, so a bad
reply fails here, before a request is made, instead of as Meta's error 100 or 131009. Error
messages name fields and limits, never the values (they can be a user's text).

Message builders (``text_message``, ``template_message``, ``interactive_message``,
``media_message``, ``reaction_message``) take the recipient first and accept ``reply_to`` (the
wamid to quote, sent as ``context.message_id``) and ``callback_data`` (``biz_opaque_callback_data``,
echoed back in status webhooks). The ``*_interactive`` and ``template_*`` helpers build the parts
those builders take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "MAX_TEXT_BODY",
    "ListRow",
    "ListSection",
    "MediaKind",
    "ReplyButton",
    "cta_url_interactive",
    "interactive_message",
    "list_interactive",
    "mark_read_body",
    "media_message",
    "reaction_message",
    "reply_buttons_interactive",
    "template_body_component",
    "template_header_media",
    "template_header_text",
    "template_message",
    "template_quick_reply_button",
    "template_url_button",
    "text_message",
]

MAX_TEXT_BODY: Final = 4096
MAX_CALLBACK_DATA: Final = 512
MAX_CAPTION: Final = 1024
MAX_INTERACTIVE_BODY: Final = 1024
MAX_HEADER_TEXT: Final = 60
MAX_FOOTER_TEXT: Final = 60
MAX_REPLY_BUTTONS: Final = 3
MAX_BUTTON_TITLE: Final = 20
MAX_BUTTON_ID: Final = 256
MAX_LIST_BUTTON_LABEL: Final = 20
MAX_LIST_SECTIONS: Final = 10
MAX_LIST_ROWS: Final = 10
MAX_SECTION_TITLE: Final = 24
MAX_ROW_ID: Final = 200
MAX_ROW_TITLE: Final = 24
MAX_ROW_DESCRIPTION: Final = 72
MAX_CTA_DISPLAY_TEXT: Final = 20
MAX_TEMPLATE_BUTTON_INDEX: Final = 9

MediaKind = Literal["image", "video", "audio", "document", "sticker"]
_CAPTIONED_MEDIA: Final = frozenset({"image", "video", "document"})
_TEMPLATE_HEADER_MEDIA: Final = frozenset({"image", "video", "document"})


@dataclass(frozen=True, slots=True)
class ReplyButton:
    id: str
    title: str


@dataclass(frozen=True, slots=True)
class ListRow:
    id: str
    title: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ListSection:
    rows: Sequence[ListRow]
    title: str | None = None


# --- messages -------------------------------------------------------------------------------------


def text_message(
    to: str,
    body: str,
    *,
    preview_url: bool = False,
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> dict[str, Any]:
    _check_text("text.body", body, MAX_TEXT_BODY)
    return _message(
        to,
        "text",
        {"body": body, "preview_url": preview_url},
        reply_to=reply_to,
        callback_data=callback_data,
    )


def template_message(
    to: str,
    template_name: str,
    language_code: str,
    *,
    parameters: Sequence[str] = (),
    components: Sequence[Mapping[str, Any]] = (),
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> dict[str, Any]:
    """An approved template; ``parameters`` is the seed's shorthand for body text parameters.

    ``parameters`` and a ``body`` entry in ``components`` are two ways of saying the same thing,
    so giving both is an error.
    """
    _check_text("template.name", template_name)
    _check_text("template.language.code", language_code)
    all_components = [dict(component) for component in components]
    if parameters:
        if any(component.get("type") == "body" for component in all_components):
            raise ValueError("template: give body parameters either as parameters or components")
        all_components.insert(0, template_body_component(parameters))
    template: dict[str, Any] = {"name": template_name, "language": {"code": language_code}}
    if all_components:
        template["components"] = all_components
    return _message(to, "template", template, reply_to=reply_to, callback_data=callback_data)


def interactive_message(
    to: str,
    interactive: Mapping[str, Any],
    *,
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> dict[str, Any]:
    """An ``interactive`` object (from the ``*_interactive`` helpers, or an agent) as a message.

    Reply buttons, lists and CTA URL buttons are checked against Meta's limits; other types
    (flows, products) are passed on as given.
    """
    _check_interactive(interactive)
    return _message(
        to, "interactive", dict(interactive), reply_to=reply_to, callback_data=callback_data
    )


def media_message(
    to: str,
    kind: MediaKind,
    *,
    media_id: str | None = None,
    link: str | None = None,
    caption: str | None = None,
    filename: str | None = None,
    reply_to: str | None = None,
    callback_data: str | None = None,
) -> dict[str, Any]:
    """An image, video, audio, document or sticker, by uploaded media id or by public link."""
    media = _media_object(kind, media_id=media_id, link=link, filename=filename)
    if caption is not None:
        if kind not in _CAPTIONED_MEDIA:
            raise ValueError(f"{kind}: {kind} messages take no caption")
        _check_text(f"{kind}.caption", caption, MAX_CAPTION)
        media["caption"] = caption
    return _message(to, kind, media, reply_to=reply_to, callback_data=callback_data)


def reaction_message(
    to: str, message_id: str, emoji: str, *, callback_data: str | None = None
) -> dict[str, Any]:
    """A reaction to ``message_id``; an empty ``emoji`` removes our earlier reaction."""
    _check_text("reaction.message_id", message_id)
    if len(emoji) > 10:  # one emoji, possibly several code points (skin tone, ZWJ sequences)
        raise ValueError("reaction.emoji: must be a single emoji")
    return _message(
        to,
        "reaction",
        {"message_id": message_id, "emoji": emoji},
        reply_to=None,
        callback_data=callback_data,
    )


def mark_read_body(wamid: str, *, typing_indicator: bool = False) -> dict[str, Any]:
    """Marks an inbound message read (blue ticks); optionally shows "typing…" to the user.

    Meta hides the typing indicator when our reply arrives or after 25 seconds.
    """
    _check_text("message_id", wamid)
    body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    if typing_indicator:
        body["typing_indicator"] = {"type": "text"}
    return body


# --- interactive objects --------------------------------------------------------------------------


def reply_buttons_interactive(
    body: str,
    buttons: Sequence[ReplyButton],
    *,
    header: str | Mapping[str, Any] | None = None,
    footer: str | None = None,
) -> dict[str, Any]:
    """Up to three quick-reply buttons; a tap comes back as ``button_reply`` with the ``id``.

    ``header`` is a text, or a media header object such as ``{"type": "image", "image":
    {"link": ...}}``.
    """
    action = {
        "buttons": [
            {"type": "reply", "reply": {"id": button.id, "title": button.title}}
            for button in buttons
        ]
    }
    return _interactive("button", body, action, header=header, footer=footer)


def list_interactive(
    body: str,
    button_label: str,
    sections: Sequence[ListSection],
    *,
    header: str | None = None,
    footer: str | None = None,
) -> dict[str, Any]:
    """A menu opened by ``button_label``: up to ten rows in total, grouped in sections."""
    action = {
        "button": button_label,
        "sections": [_section(section) for section in sections],
    }
    return _interactive("list", body, action, header=header, footer=footer)


def cta_url_interactive(
    body: str,
    display_text: str,
    url: str,
    *,
    header: str | Mapping[str, Any] | None = None,
    footer: str | None = None,
) -> dict[str, Any]:
    """A button that opens ``url``, so a long link need not appear in the text."""
    action = {"name": "cta_url", "parameters": {"display_text": display_text, "url": url}}
    return _interactive("cta_url", body, action, header=header, footer=footer)


# --- template components --------------------------------------------------------------------------


def template_body_component(parameters: Sequence[str | Mapping[str, Any]]) -> dict[str, Any]:
    """Values for ``{{1}}``, ``{{2}}``...; strings become text parameters, mappings are kept
    (currency or date_time parameters)."""
    return {"type": "body", "parameters": [_template_parameter(value) for value in parameters]}


def template_header_text(text: str) -> dict[str, Any]:
    _check_text("header parameter", text, MAX_HEADER_TEXT)
    return {"type": "header", "parameters": [{"type": "text", "text": text}]}


def template_header_media(
    kind: Literal["image", "video", "document"],
    *,
    media_id: str | None = None,
    link: str | None = None,
    filename: str | None = None,
) -> dict[str, Any]:
    if kind not in _TEMPLATE_HEADER_MEDIA:
        raise ValueError(f"template header: media must be image, video or document, not {kind}")
    media = _media_object(kind, media_id=media_id, link=link, filename=filename)
    return {"type": "header", "parameters": [{"type": kind, kind: media}]}


def template_quick_reply_button(index: int, payload: str) -> dict[str, Any]:
    """The payload returned (as a ``button`` message) when the user taps button ``index``."""
    _check_text("quick_reply payload", payload)
    return _template_button("quick_reply", index, {"type": "payload", "payload": payload})


def template_url_button(index: int, url_suffix: str) -> dict[str, Any]:
    """The variable end of a dynamic URL button (the template holds ``https://.../{{1}}``)."""
    _check_text("url button suffix", url_suffix)
    return _template_button("url", index, {"type": "text", "text": url_suffix})


# --- internals ------------------------------------------------------------------------------------


def _message(
    to: str,
    message_type: str,
    content: dict[str, Any],
    *,
    reply_to: str | None,
    callback_data: str | None,
) -> dict[str, Any]:
    _check_text("to", to)
    message: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": message_type,
        message_type: content,
    }
    if reply_to is not None:
        _check_text("context.message_id", reply_to)
        message["context"] = {"message_id": reply_to}
    if callback_data is not None:
        _check_text("biz_opaque_callback_data", callback_data, MAX_CALLBACK_DATA)
        message["biz_opaque_callback_data"] = callback_data
    return message


def _media_object(
    kind: str, *, media_id: str | None, link: str | None, filename: str | None
) -> dict[str, Any]:
    if (media_id is None) == (link is None):
        raise ValueError(f"{kind}: give exactly one of media_id and link")
    if media_id is not None:
        _check_text(f"{kind}.id", media_id)
        media: dict[str, Any] = {"id": media_id}
    else:
        assert link is not None
        if not link.startswith(("https://", "http://")):
            raise ValueError(f"{kind}.link: must be an http(s) URL")
        media = {"link": link}
    if filename is not None:
        if kind != "document":
            raise ValueError(f"{kind}: only documents take a filename")
        _check_text("document.filename", filename)
        media["filename"] = filename
    return media


def _interactive(
    kind: str,
    body: str,
    action: dict[str, Any],
    *,
    header: str | Mapping[str, Any] | None,
    footer: str | None,
) -> dict[str, Any]:
    interactive: dict[str, Any] = {"type": kind}
    if header is not None:
        interactive["header"] = (
            {"type": "text", "text": header} if isinstance(header, str) else dict(header)
        )
    interactive["body"] = {"text": body}
    if footer is not None:
        interactive["footer"] = {"text": footer}
    interactive["action"] = action
    _check_interactive(interactive)
    return interactive


def _section(section: ListSection) -> dict[str, Any]:
    rows = []
    for row in section.rows:
        entry = {"id": row.id, "title": row.title}
        if row.description is not None:
            entry["description"] = row.description
        rows.append(entry)
    built: dict[str, Any] = {"rows": rows}
    if section.title is not None:
        built["title"] = section.title
    return built


def _template_parameter(value: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, str):
        _check_text("template text parameter", value)
        return {"type": "text", "text": value}
    if "type" not in value:
        raise ValueError("template parameter: needs a 'type'")
    return dict(value)


def _template_button(sub_type: str, index: int, parameter: dict[str, Any]) -> dict[str, Any]:
    if not 0 <= index <= MAX_TEMPLATE_BUTTON_INDEX:
        raise ValueError(f"template button index: must be 0 to {MAX_TEMPLATE_BUTTON_INDEX}")
    return {"type": "button", "sub_type": sub_type, "index": str(index), "parameters": [parameter]}


def _check_interactive(interactive: Mapping[str, Any]) -> None:
    kind = interactive.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError("interactive.type: is required")
    action = interactive.get("action")
    if not isinstance(action, Mapping):
        raise ValueError("interactive.action: is required")
    if kind not in ("button", "list", "cta_url"):
        return
    body = interactive.get("body")
    _check_text(
        "interactive.body.text", _field(body, "interactive.body.text"), MAX_INTERACTIVE_BODY
    )
    _check_header(interactive.get("header"), text_only=kind == "list")
    if "footer" in interactive:
        footer = _field(interactive["footer"], "interactive.footer.text")
        _check_text("interactive.footer.text", footer, MAX_FOOTER_TEXT)
    if kind == "button":
        _check_reply_buttons(action)
    elif kind == "list":
        _check_list(action)
    else:
        _check_cta_url(action)


def _check_header(header: object, *, text_only: bool) -> None:
    if header is None:
        return
    if not isinstance(header, Mapping):
        raise ValueError("interactive.header: must be an object")
    if header.get("type") == "text":
        _check_text("interactive.header.text", header.get("text"), MAX_HEADER_TEXT)
    elif text_only:
        raise ValueError("interactive.header: a list message takes a text header only")
    elif header.get("type") not in _TEMPLATE_HEADER_MEDIA:
        raise ValueError("interactive.header.type: must be text, image, video or document")


def _check_reply_buttons(action: Mapping[str, Any]) -> None:
    buttons = action.get("buttons")
    if not isinstance(buttons, Sequence) or not 1 <= len(buttons) <= MAX_REPLY_BUTTONS:
        raise ValueError(f"interactive.action.buttons: must hold 1 to {MAX_REPLY_BUTTONS} buttons")
    ids = []
    for index, button in enumerate(buttons):
        path = f"interactive.action.buttons[{index}].reply"
        reply = _field(button, path)
        _check_text(f"{path}.id", _field(reply, f"{path}.id"), MAX_BUTTON_ID)
        _check_text(f"{path}.title", _field(reply, f"{path}.title"), MAX_BUTTON_TITLE)
        ids.append(reply["id"])
    if len(set(ids)) != len(ids):
        raise ValueError("interactive.action.buttons: ids must be unique")


def _check_list(action: Mapping[str, Any]) -> None:
    _check_text("interactive.action.button", action.get("button"), MAX_LIST_BUTTON_LABEL)
    sections = action.get("sections")
    if not isinstance(sections, Sequence) or not 1 <= len(sections) <= MAX_LIST_SECTIONS:
        raise ValueError(
            f"interactive.action.sections: must hold 1 to {MAX_LIST_SECTIONS} sections"
        )
    ids: list[str] = []
    for index, section in enumerate(sections):
        path = f"interactive.action.sections[{index}]"
        title = _field(section, f"{path}.title", required=False)
        if title is not None or len(sections) > 1:
            _check_text(f"{path}.title", title, MAX_SECTION_TITLE)
        rows = _field(section, f"{path}.rows")
        if not isinstance(rows, Sequence) or not rows:
            raise ValueError(f"{path}.rows: must hold at least one row")
        for row_index, row in enumerate(rows):
            row_path = f"{path}.rows[{row_index}]"
            _check_text(f"{row_path}.id", _field(row, f"{row_path}.id"), MAX_ROW_ID)
            _check_text(f"{row_path}.title", _field(row, f"{row_path}.title"), MAX_ROW_TITLE)
            description = _field(row, f"{row_path}.description", required=False)
            if description is not None:
                _check_text(f"{row_path}.description", description, MAX_ROW_DESCRIPTION)
            ids.append(row["id"])
    if len(ids) > MAX_LIST_ROWS:
        raise ValueError(
            f"interactive.action.sections: must hold at most {MAX_LIST_ROWS} rows in total "
            f"(got {len(ids)})"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("interactive.action.sections: row ids must be unique")


def _check_cta_url(action: Mapping[str, Any]) -> None:
    if action.get("name") != "cta_url":
        raise ValueError("interactive.action.name: must be 'cta_url'")
    path = "interactive.action.parameters"
    parameters = _field(action, path)
    display_text = _field(parameters, f"{path}.display_text")
    _check_text(f"{path}.display_text", display_text, MAX_CTA_DISPLAY_TEXT)
    url = _field(parameters, f"{path}.url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ValueError("interactive.action.parameters.url: must be an http(s) URL")


def _field(container: object, path: str, *, required: bool = True) -> Any:
    """The value at ``path`` (whose last segment is the key) in ``container``."""
    parent, _, name = path.rpartition(".")
    if not isinstance(container, Mapping):
        raise ValueError(f"{parent or path}: must be an object")
    if required and name not in container:
        raise ValueError(f"{path}: is required")
    return container.get(name)


def _check_text(field: str, value: object, max_length: int | None = None) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: must be a non-empty string")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{field}: must be at most {max_length} characters (got {len(value)})")
