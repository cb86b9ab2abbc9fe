"""Which agent answers a conversation: its assigned agent, else the first matching rule, else the
default.

Rules come from the ``AGENT_ROUTING_RULES`` setting, a JSON list tried in order::

    [{"agent": "rules",  "keywords": ["menu", "help"]},
     {"agent": "openai", "reply_ids": ["ask_ai", "support_*"], "assign": true}]

``keywords`` match whole words of the message text, case-insensitively; ``reply_ids`` match the id
of an interactive reply or a template button payload exactly, or by prefix when they end in
``*``. With ``assign`` the conversation keeps that agent for its later messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AgentChoice", "AgentRoutingRule", "choose_agent", "parse_routing_rules"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRoutingRule:
    agent: str
    keywords: tuple[str, ...] = ()
    reply_ids: tuple[str, ...] = ()
    assign: bool = False

    def matches(self, text: str | None, reply_id: str | None) -> bool:
        if reply_id is not None and any(_id_matches(p, reply_id) for p in self.reply_ids):
            return True
        if text and self.keywords:
            words = set(_WORD.findall(text.casefold()))
            return any(keyword.casefold() in words for keyword in self.keywords)
        return False


@dataclass(frozen=True, slots=True)
class AgentChoice:
    agent: str | None  # None: the registry's default
    assign: bool = False


def choose_agent(
    rules: Sequence[AgentRoutingRule],
    *,
    assigned_agent: str | None,
    text: str | None,
    reply_id: str | None,
) -> AgentChoice:
    if assigned_agent:
        return AgentChoice(assigned_agent)
    for rule in rules:
        if rule.matches(text, reply_id):
            return AgentChoice(rule.agent, rule.assign)
    return AgentChoice(None)


def parse_routing_rules(raw: str | None) -> tuple[AgentRoutingRule, ...]:
    """Parse ``AGENT_ROUTING_RULES``; raises ValueError naming the faulty rule."""
    if raw is None or not raw.strip():
        return ()
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"AGENT_ROUTING_RULES is not valid JSON: {error}") from error
    if not isinstance(items, list):
        raise ValueError("AGENT_ROUTING_RULES must be a JSON list of rules")
    return tuple(_rule(index, item) for index, item in enumerate(items))


def _rule(index: int, item: object) -> AgentRoutingRule:
    where = f"AGENT_ROUTING_RULES[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object")
    unknown = set(item) - {"agent", "keywords", "reply_ids", "assign"}
    if unknown:
        raise ValueError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    agent = item.get("agent")
    if not isinstance(agent, str) or not agent:
        raise ValueError(f"{where}.agent must be a non-empty string")
    keywords = _strings(item.get("keywords", []), f"{where}.keywords")
    reply_ids = _strings(item.get("reply_ids", []), f"{where}.reply_ids")
    if not keywords and not reply_ids:
        raise ValueError(f"{where} needs keywords or reply_ids")
    assign = item.get("assign", False)
    if not isinstance(assign, bool):
        raise ValueError(f"{where}.assign must be true or false")
    return AgentRoutingRule(agent=agent, keywords=keywords, reply_ids=reply_ids, assign=assign)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    return tuple(value)


def _id_matches(pattern: str, reply_id: str) -> bool:
    if pattern.endswith("*"):
        return reply_id.startswith(pattern[:-1])
    return reply_id == pattern


_WORD = re.compile(r"\w+")
