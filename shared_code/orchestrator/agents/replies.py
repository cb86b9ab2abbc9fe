"""The JSON form of a reply, shared by the rules file and the external agent platform::

    {"type": "text", "text": "Hello!", "preview_url": false}
    {"type": "interactive", "interactive": {<Meta's interactive object>}}
    {"type": "template", "template": {"name": "order_update", "language": {"code": "en"},
                                      "components": [<Meta's template components>]}}
    {"type": "none"}                  (deliberately no reply)

Any of them may add ``"handoff": true``: the agent asks for a person, and the conversation goes to
``handoff`` after its reply (with ``none``, without one; see :mod:`shared_code.policy`).

``interactive`` and ``template`` are Meta's own objects from the send-message API, passed through
as written. Reply buttons (``button``), list menus (``list``) and CTA URL buttons (``cta_url``) are
checked against Meta's limits here (3 buttons, 20-character titles, 10 rows, ...), so a mistake
shows when the rules file loads or the platform answers, instead of as a failed send later. Other
interactive types (flows, products, ...) need a ``type`` and an ``action`` and are left to Meta.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec

from shared_code.orchestrator.agents.base import (
    MAX_TEXT_LENGTH,
    AgentReply,
    HandoffReply,
    InteractiveReply,
    TemplateReply,
    TextReply,
    fit_text,
)

__all__ = [
    "LenientReplySpec",
    "ReplyFormatError",
    "StrictReplySpec",
    "check_interactive",
    "decode_reply",
    "to_agent_reply",
]


class ReplyFormatError(ValueError):
    """A reply object breaks the format or Meta's limits; the message gives the JSON path."""


# Non-empty strings of at most N characters: Meta's limits on the fields below (language codes
# such as "pt_BR" and interactive type names are short; 20 and 60 leave room).
_Text20 = Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
_Text24 = Annotated[str, msgspec.Meta(min_length=1, max_length=24)]
_Text60 = Annotated[str, msgspec.Meta(min_length=1, max_length=60)]
_Text200 = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_Text256 = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Text512 = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_Text1024 = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


# --- the reply object --------------------------------------------------------------------------
# Strict variants refuse unknown fields, so a typo in the rules file fails at load; the agent
# platform's answers are read leniently, so the platform may add fields without breaking replies.


class _Language(msgspec.Struct, frozen=True):
    code: _Text20


class _Template(msgspec.Struct, frozen=True):
    name: _Text512
    language: _Language
    components: list[dict[str, Any]] = []


class _StrictText(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    text: str
    preview_url: bool = False
    handoff: bool = False


class _StrictInteractive(
    msgspec.Struct, tag="interactive", tag_field="type", forbid_unknown_fields=True
):
    interactive: dict[str, Any]
    handoff: bool = False


class _StrictTemplate(msgspec.Struct, tag="template", tag_field="type", forbid_unknown_fields=True):
    template: _Template
    handoff: bool = False


class _StrictNone(msgspec.Struct, tag="none", tag_field="type", forbid_unknown_fields=True):
    handoff: bool = False


class _LenientText(_StrictText, forbid_unknown_fields=False):
    pass


class _LenientInteractive(_StrictInteractive, forbid_unknown_fields=False):
    pass


class _LenientTemplate(_StrictTemplate, forbid_unknown_fields=False):
    pass


class _LenientNone(_StrictNone, forbid_unknown_fields=False):
    pass


StrictReplySpec = _StrictText | _StrictInteractive | _StrictTemplate | _StrictNone
LenientReplySpec = _LenientText | _LenientInteractive | _LenientTemplate | _LenientNone


def decode_reply(raw: bytes, *, trim_long_text: bool) -> AgentReply | None:
    """A reply from its JSON bytes, read leniently (unknown fields are ignored)."""
    try:
        spec = msgspec.json.decode(raw, type=LenientReplySpec)
    except msgspec.DecodeError as exc:
        raise ReplyFormatError(str(exc)) from exc
    return to_agent_reply(spec, path="$", trim_long_text=trim_long_text)


def to_agent_reply(
    spec: StrictReplySpec | LenientReplySpec, *, path: str, trim_long_text: bool
) -> AgentReply | None:
    """The reply a decoded spec stands for, after checking what msgspec's types cannot express.

    ``path`` is the spec's JSON path, for error messages. A text over WhatsApp's limit is cut
    when ``trim_long_text`` (a model's answer), else refused (a hand-written rules file).
    """
    if isinstance(spec, _StrictText):
        if not spec.text.strip():
            raise ReplyFormatError(f"empty text - at `{path}.text`")
        if len(spec.text) > MAX_TEXT_LENGTH:
            if not trim_long_text:
                raise ReplyFormatError(
                    f"text longer than {MAX_TEXT_LENGTH} characters - at `{path}.text`"
                )
            return TextReply(
                body=fit_text(spec.text), preview_url=spec.preview_url, handoff=spec.handoff
            )
        return TextReply(body=spec.text, preview_url=spec.preview_url, handoff=spec.handoff)
    if isinstance(spec, _StrictInteractive):
        check_interactive(spec.interactive, path=f"{path}.interactive")
        return InteractiveReply(interactive=spec.interactive, handoff=spec.handoff)
    if isinstance(spec, _StrictTemplate):
        return TemplateReply(
            name=spec.template.name,
            language_code=spec.template.language.code,
            components=tuple(spec.template.components),
            handoff=spec.handoff,
        )
    return HandoffReply() if spec.handoff else None


# --- Meta's interactive objects ----------------------------------------------------------------
# Limits from Meta's send-message reference (OpenAPI v23.0 InteractiveObject and the CTA URL guide).


class _Body(msgspec.Struct):
    text: _Text1024


class _Footer(msgspec.Struct):
    text: _Text60


class _Header(msgspec.Struct):
    type: Literal["text", "image", "video", "document"]
    text: _Text60 | None = None


class _ButtonReplyTarget(msgspec.Struct):
    id: _Text256
    title: _Text20


class _Button(msgspec.Struct):
    type: Literal["reply"]
    reply: _ButtonReplyTarget


class _ButtonAction(msgspec.Struct):
    buttons: Annotated[list[_Button], msgspec.Meta(min_length=1, max_length=3)]


class _ButtonInteractive(msgspec.Struct):
    body: _Body
    action: _ButtonAction
    header: _Header | None = None
    footer: _Footer | None = None


class _Row(msgspec.Struct):
    id: _Text200
    title: _Text24
    description: Annotated[str, msgspec.Meta(max_length=72)] | None = None


class _Section(msgspec.Struct):
    rows: Annotated[list[_Row], msgspec.Meta(min_length=1, max_length=10)]
    title: _Text24 | None = None


class _ListAction(msgspec.Struct):
    button: _Text20
    sections: Annotated[list[_Section], msgspec.Meta(min_length=1, max_length=10)]


class _ListInteractive(msgspec.Struct):
    body: _Body
    action: _ListAction
    header: _Header | None = None
    footer: _Footer | None = None


class _CtaParameters(msgspec.Struct):
    display_text: _Text20
    url: _NonEmpty


class _CtaAction(msgspec.Struct):
    name: Literal["cta_url"]
    parameters: _CtaParameters


class _CtaInteractive(msgspec.Struct):
    body: _Body
    action: _CtaAction
    header: _Header | None = None
    footer: _Footer | None = None


class _OtherInteractive(msgspec.Struct):
    type: _Text60
    action: dict[str, Any]


_MAX_LIST_ROWS = 10
_JSON_PATH = re.compile(r"`\$")


def check_interactive(interactive: dict[str, Any], *, path: str) -> None:
    """Raise :class:`ReplyFormatError` when ``interactive`` breaks Meta's shape or limits."""
    kind = interactive.get("type")
    try:
        if kind == "button":
            buttons = msgspec.convert(interactive, _ButtonInteractive).action.buttons
            _check_unique((b.reply.id for b in buttons), f"{path}.action.buttons", "reply id")
            _check_unique((b.reply.title for b in buttons), f"{path}.action.buttons", "title")
        elif kind == "list":
            _check_list(msgspec.convert(interactive, _ListInteractive).action, path)
        elif kind == "cta_url":
            msgspec.convert(interactive, _CtaInteractive)
        else:
            msgspec.convert(interactive, _OtherInteractive)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if "- at `$" not in message:
            message += " - at `$`"
        raise ReplyFormatError(_JSON_PATH.sub(lambda _: f"`{path}", message)) from exc


def _check_list(action: _ListAction, path: str) -> None:
    rows = [row for section in action.sections for row in section.rows]
    if len(rows) > _MAX_LIST_ROWS:
        raise ReplyFormatError(
            f"a list menu holds at most {_MAX_LIST_ROWS} rows in all, found {len(rows)}"
            f" - at `{path}.action.sections`"
        )
    if len(action.sections) > 1 and any(section.title is None for section in action.sections):
        raise ReplyFormatError(
            f"every section needs a title when there are several - at `{path}.action.sections`"
        )
    _check_unique((row.id for row in rows), f"{path}.action.sections", "row id")


def _check_unique(values: Iterable[str], path: str, what: str) -> None:
    repeated = sorted(value for value, count in Counter(values).items() if count > 1)
    if repeated:
        raise ReplyFormatError(f"each {what} must be unique, repeated: {repeated} - at `{path}`")
