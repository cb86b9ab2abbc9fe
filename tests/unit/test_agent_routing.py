"""Choosing the agent of a conversation: assigned agent, then routing rules, then the default."""

from __future__ import annotations

import pytest

from shared_code.orchestrator.agent_routing import (
    AgentChoice,
    AgentRoutingRule,
    choose_agent,
    parse_routing_rules,
)

RULES = parse_routing_rules(
    """[
      {"agent": "rules", "keywords": ["menu", "Help"]},
      {"agent": "openai", "reply_ids": ["ask_ai", "support_*"], "assign": true},
      {"agent": "http", "keywords": ["agent"]}
    ]"""
)


def test_assigned_agent_wins_over_rules() -> None:
    choice = choose_agent(RULES, assigned_agent="http", text="menu please", reply_id=None)
    assert choice == AgentChoice("http")


@pytest.mark.parametrize(
    ("text", "reply_id", "expected"),
    [
        ("Show me the MENU!", None, AgentChoice("rules")),
        ("help", None, AgentChoice("rules")),
        ("menus are nice", None, AgentChoice(None)),  # whole words only
        (None, "ask_ai", AgentChoice("openai", assign=True)),
        ("Ask AI", "support_billing", AgentChoice("openai", assign=True)),
        (None, "support", AgentChoice(None)),  # a prefix rule needs the prefix
        ("talk to an agent", None, AgentChoice("http")),
        ("hello", None, AgentChoice(None)),
        (None, None, AgentChoice(None)),
    ],
)
def test_rules_in_order_then_default(
    text: str | None, reply_id: str | None, expected: AgentChoice
) -> None:
    assert choose_agent(RULES, assigned_agent=None, text=text, reply_id=reply_id) == expected


def test_first_matching_rule_wins() -> None:
    rules = (
        AgentRoutingRule(agent="first", keywords=("menu",)),
        AgentRoutingRule(agent="second", keywords=("menu",)),
    )
    assert choose_agent(rules, assigned_agent=None, text="menu", reply_id=None).agent == "first"


def test_no_rules_setting_means_no_rules() -> None:
    assert parse_routing_rules(None) == ()
    assert parse_routing_rules("  ") == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "not valid JSON"),
        ('{"agent": "x"}', "must be a JSON list"),
        ('["x"]', r"AGENT_ROUTING_RULES\[0\] must be an object"),
        ('[{"keywords": ["a"]}]', r"\[0\]\.agent"),
        ('[{"agent": "a"}]', "needs keywords or reply_ids"),
        ('[{"agent": "a", "keywords": "menu"}]', r"\[0\]\.keywords must be a list"),
        ('[{"agent": "a", "keywords": ["a"], "assign": "yes"}]', "assign must be true or false"),
        (
            '[{"agent": "a", "keywords": ["a"]}, {"agent": "b", "words": ["x"]}]',
            r"\[1\] has unknown keys: words",
        ),
    ],
)
def test_invalid_rules_are_named(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_routing_rules(raw)
