"""The rules agent: ordered keyword / regex / reply-id rules from a JSON file, first match wins.

File format (see ``config/agent_rules.example.json``)::

    {
      "description": "optional, for the people who edit the file",
      "rules": [
        {"name": "menu", "keywords": ["menu", "start over"], "reply": {<reply>}},
        {"name": "order", "regex": "\\border\\s*#?\\d+", "reply": {<reply>}},
        {"name": "hours", "reply_ids": ["menu_hours"], "reply": {<reply>}}
      ],
      "default": {<reply>}
    }

A rule matches when any of its criteria does:

- ``keywords``: words or phrases found as whole words in the message text, ignoring case
  (a phrase matches across any run of spaces);
- ``regex``: a Python regular expression found anywhere in the text, ignoring case;
- ``reply_ids``: the id of the reply button or list row the user tapped, or a template
  quick-reply button's payload, compared exactly.

The text is the message body, a media caption, or the title of the tapped button. Replies use
the format of :mod:`.replies`; ``default`` (optional) answers when no rule matches, and without
it such messages get no reply. Reactions and system notices are never answered. The file is
checked completely at load: a problem raises :class:`RulesFileError` with its JSON path
(``$.rules[2].regex``), so a broken file stops the worker at start, not on a user's message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from shared_code.orchestrator.agents.base import (
    SILENT_MESSAGE_TYPES,
    AgentReply,
    AgentRequest,
    InboundMessage,
)
from shared_code.orchestrator.agents.replies import (
    ReplyFormatError,
    StrictReplySpec,
    to_agent_reply,
)

logger = logging.getLogger(__name__)

__all__ = ["Rule", "RuleBook", "RulesAgent", "RulesFileError", "load_rules", "parse_rules"]


class RulesFileError(ValueError):
    """The rules file cannot be used; the message names the file and the JSON path."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    index: int
    name: str | None
    keywords: re.Pattern[str] | None
    regex: re.Pattern[str] | None
    reply_ids: frozenset[str]
    reply: AgentReply | None

    @property
    def label(self) -> str:
        return f"{self.index} ({self.name})" if self.name else str(self.index)

    def matches(self, message: InboundMessage) -> bool:
        if message.reply_id is not None and message.reply_id in self.reply_ids:
            return True
        text = message.text
        if not text:
            return False
        return bool(
            (self.keywords is not None and self.keywords.search(text))
            or (self.regex is not None and self.regex.search(text))
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleBook:
    rules: Sequence[Rule]
    default: AgentReply | None


class RulesAgent:
    name = "rules"

    def __init__(self, book: RuleBook) -> None:
        self._book = book

    @classmethod
    def from_file(cls, path: Path) -> RulesAgent:
        return cls(load_rules(path))

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        message = request.message
        if message.message_type in SILENT_MESSAGE_TYPES:
            return None
        for rule in self._book.rules:
            if rule.matches(message):
                logger.debug(
                    "Rule %s matched on conversation %s", rule.label, request.conversation_id
                )
                return rule.reply
        return self._book.default


# --- the file ---------------------------------------------------------------------------------


class _RuleSpec(msgspec.Struct, forbid_unknown_fields=True):
    reply: StrictReplySpec
    name: str | None = None
    keywords: list[str] = []
    regex: str | None = None
    reply_ids: list[str] = []


class _RulesFileSpec(msgspec.Struct, forbid_unknown_fields=True):
    rules: list[_RuleSpec] = []
    default: StrictReplySpec | None = None
    description: str | None = None


def load_rules(path: Path) -> RuleBook:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesFileError(f"{path}: cannot read the rules file ({exc.strerror})") from exc
    return parse_rules(raw, source=str(path))


def parse_rules(raw: bytes | str, *, source: str = "rules") -> RuleBook:
    """Rules from the JSON text of a rules file; ``source`` names it in error messages."""
    try:
        spec = msgspec.json.decode(raw, type=_RulesFileSpec)
    except msgspec.DecodeError as exc:
        raise RulesFileError(f"{source}: {exc}") from exc
    try:
        rules = [_compile(index, rule) for index, rule in enumerate(spec.rules)]
        default = (
            None
            if spec.default is None
            else to_agent_reply(spec.default, path="$.default", trim_long_text=False)
        )
    except ReplyFormatError as exc:
        raise RulesFileError(f"{source}: {exc}") from exc
    return RuleBook(rules=tuple(rules), default=default)


def _compile(index: int, spec: _RuleSpec) -> Rule:
    path = f"$.rules[{index}]"
    if not (spec.keywords or spec.regex or spec.reply_ids):
        raise ReplyFormatError(f"a rule needs keywords, regex or reply_ids - at `{path}`")
    for position, keyword in enumerate(spec.keywords):
        if not keyword.strip():
            raise ReplyFormatError(f"empty keyword - at `{path}.keywords[{position}]`")
    for position, reply_id in enumerate(spec.reply_ids):
        if not reply_id:
            raise ReplyFormatError(f"empty reply id - at `{path}.reply_ids[{position}]`")
    regex = None
    if spec.regex is not None:
        try:
            regex = re.compile(spec.regex, re.IGNORECASE)
        except re.error as exc:
            raise ReplyFormatError(f"invalid regex ({exc}) - at `{path}.regex`") from exc
    return Rule(
        index=index,
        name=spec.name,
        keywords=_keyword_pattern(spec.keywords),
        regex=regex,
        reply_ids=frozenset(spec.reply_ids),
        reply=to_agent_reply(spec.reply, path=f"{path}.reply", trim_long_text=False),
    )


def _keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    phrases = (r"\s+".join(map(re.escape, keyword.split())) for keyword in keywords)
    # Lookarounds rather than \b: a keyword may start or end with a non-word character ("c++").
    return re.compile(r"(?<!\w)(?:" + "|".join(phrases) + r")(?!\w)", re.IGNORECASE)
