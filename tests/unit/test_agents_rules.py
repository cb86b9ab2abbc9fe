"""The rules agent: first match wins, each criterion, the default, and load-time validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared_code.orchestrator.agents.base import (
    AgentRequest,
    Contact,
    InboundMessage,
    InteractiveReply,
    TemplateReply,
    TextReply,
)
from shared_code.orchestrator.agents.rules import (
    RulesAgent,
    RulesFileError,
    load_rules,
    parse_rules,
)

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "config" / "agent_rules.example.json"


def request_for(
    text: str | None = None, *, message_type: str = "text", reply_id: str | None = None
) -> AgentRequest:
    return AgentRequest(
        conversation_id=7,
        phone_number_id="1234567890",
        contact=Contact(wa_id="16505551234"),
        message=InboundMessage(
            wamid="wamid.1", message_type=message_type, text=text, reply_id=reply_id
        ),
    )


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": body}


def agent_for(document: dict[str, Any]) -> RulesAgent:
    return RulesAgent(parse_rules(json.dumps(document)))


RULES = {
    "rules": [
        {"name": "menu", "keywords": ["menu", "start over"], "reply": text("MENU")},
        {"name": "order", "regex": r"order\s*#?\d{4,}", "reply": text("ORDER")},
        {"name": "hours", "reply_ids": ["menu_hours", "HOURS_PAYLOAD"], "reply": text("HOURS")},
        {
            "name": "price",
            "keywords": ["price", "c++"],
            "regex": "^how much",
            "reply": text("PRICE"),
        },
        {"name": "also menu", "keywords": ["menu"], "reply": text("SECOND")},
        {"name": "thanks", "keywords": ["thanks"], "reply": {"type": "none"}},
    ],
    "default": text("DEFAULT"),
}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("menu", "MENU"),
        ("Show me the MENU please", "MENU"),
        ("menu, then order #12345", "MENU"),  # first matching rule wins, not the best one
        ("I want to START   over", "MENU"),  # a phrase matches across any run of spaces
        ("Start\nover", "MENU"),
        ("menus", "DEFAULT"),  # whole words only
        ("amenu", "DEFAULT"),
        ("where is my order 123456?", "ORDER"),
        ("ORDER#9999", "ORDER"),  # the regex ignores case
        ("order 12", "DEFAULT"),
        ("How much is it", "PRICE"),
        ("is c++ included?", "PRICE"),  # keywords with non-word characters
        ("abc++", "DEFAULT"),
        ("thanks!", None),
        ("something else", "DEFAULT"),
    ],
)
async def test_text_matching(message: str, expected: str | None) -> None:
    reply = await agent_for(RULES).reply(request_for(message))
    assert reply == (TextReply(body=expected) if expected else None)


@pytest.mark.parametrize(
    ("message_type", "reply_id", "title"),
    [
        ("interactive", "menu_hours", "Opening hours"),
        ("button", "HOURS_PAYLOAD", "Hours"),
        ("interactive", "menu_hours", "menu"),  # the id rule comes later but the title says menu
    ],
)
async def test_reply_ids_match_taps_on_buttons_and_list_rows(
    message_type: str, reply_id: str, title: str
) -> None:
    reply = await agent_for(RULES).reply(
        request_for(title, message_type=message_type, reply_id=reply_id)
    )
    expected = "MENU" if title == "menu" else "HOURS"
    assert reply == TextReply(body=expected)


async def test_reply_ids_are_compared_exactly() -> None:
    reply = await agent_for(RULES).reply(
        request_for("x", message_type="interactive", reply_id="MENU_HOURS")
    )
    assert reply == TextReply(body="DEFAULT")


async def test_captions_are_matched_like_text() -> None:
    reply = await agent_for(RULES).reply(request_for("the menu", message_type="image"))
    assert reply == TextReply(body="MENU")


async def test_no_default_means_no_reply() -> None:
    agent = agent_for({"rules": RULES["rules"]})
    assert await agent.reply(request_for("something else")) is None
    assert await agent.reply(request_for(None, message_type="location")) is None


async def test_media_without_caption_gets_the_default() -> None:
    assert await agent_for(RULES).reply(request_for(None, message_type="image")) == TextReply(
        body="DEFAULT"
    )


@pytest.mark.parametrize("message_type", ["reaction", "system"])
async def test_reactions_and_system_notices_get_no_reply(message_type: str) -> None:
    assert await agent_for(RULES).reply(request_for("menu", message_type=message_type)) is None


async def test_interactive_and_template_replies() -> None:
    buttons = {
        "type": "button",
        "body": {"text": "Pick one"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}]},
    }
    components = [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]
    template = {"name": "order_update", "language": {"code": "pt_BR"}, "components": components}
    agent = agent_for(
        {
            "rules": [
                {"keywords": ["buttons"], "reply": {"type": "interactive", "interactive": buttons}},
                {"keywords": ["template"], "reply": {"type": "template", "template": template}},
            ]
        }
    )
    assert await agent.reply(request_for("buttons")) == InteractiveReply(interactive=buttons)
    assert await agent.reply(request_for("template")) == TemplateReply(
        name="order_update", language_code="pt_BR", components=tuple(components)
    )


async def test_the_example_file_walks_through_its_menu() -> None:
    agent = RulesAgent.from_file(EXAMPLE_FILE)
    menu = await agent.reply(request_for("Hi!"))
    assert isinstance(menu, InteractiveReply)
    row_ids = [
        row["id"] for section in menu.interactive["action"]["sections"] for row in section["rows"]
    ]
    assert row_ids == ["menu_hours", "menu_order", "menu_human"]
    hours = await agent.reply(
        request_for("Opening hours", message_type="interactive", reply_id="menu_hours")
    )
    assert isinstance(hours, TextReply) and "Monday" in hours.body
    order = await agent.reply(
        request_for("Track an order", message_type="interactive", reply_id="menu_order")
    )
    assert isinstance(order, InteractiveReply) and order.interactive["type"] == "button"
    assert await agent.reply(request_for("my order #123456")) == TextReply(
        body="Thanks! We are looking up your order and will get back to you shortly."
    )
    assert await agent.reply(request_for("thank you")) is None
    fallback = await agent.reply(request_for("blah"))
    assert isinstance(fallback, TextReply) and "menu" in fallback.body


def button(identifier: str, title: str) -> dict[str, Any]:
    return {"type": "reply", "reply": {"id": identifier, "title": title}}


def interactive_rule(interactive: dict[str, Any]) -> dict[str, Any]:
    return {"keywords": ["x"], "reply": {"type": "interactive", "interactive": interactive}}


def rows(count: int, prefix: str = "r") -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "title": f"Row {i}"} for i in range(count)]


def list_menu(*sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "list",
        "body": {"text": "Choose"},
        "action": {"button": "Options", "sections": list(sections)},
    }


GOOD_RULE = {"keywords": ["ok"], "reply": text("fine")}


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("{", "truncated"),
        ('{"rules": [}', "JSON is malformed"),
        ([], "Expected `object`, got `array`"),
        ({"rule": []}, "unknown field `rule`"),
        (
            {"rules": [GOOD_RULE, {"keyword": ["hi"], "reply": text("x")}]},
            "unknown field `keyword` - at `$.rules[1]`",
        ),
        ({"rules": [{"reply": text("x")}]}, "needs keywords, regex or reply_ids - at `$.rules[0]`"),
        ({"rules": [{"keywords": ["hi"]}]}, "missing required field `reply` - at `$.rules[0]`"),
        (
            {"rules": [GOOD_RULE, {"keywords": ["hi", " "], "reply": text("x")}]},
            "empty keyword - at `$.rules[1].keywords[1]`",
        ),
        (
            {"rules": [{"keywords": "hi", "reply": text("x")}]},
            "Expected `array`, got `str` - at `$.rules[0].keywords`",
        ),
        (
            {"rules": [{"reply_ids": [""], "reply": text("x")}]},
            "empty reply id - at `$.rules[0].reply_ids[0]`",
        ),
        ({"rules": [GOOD_RULE, GOOD_RULE, {"regex": "(", "reply": text("x")}]}, "invalid regex"),
        (
            {"rules": [GOOD_RULE, GOOD_RULE, {"regex": "(", "reply": text("x")}]},
            "at `$.rules[2].regex`",
        ),
        (
            {"rules": [{"keywords": ["a"], "reply": {"type": "txt", "text": "x"}}]},
            "Invalid value 'txt' - at `$.rules[0].reply.type`",
        ),
        (
            {"rules": [{"keywords": ["a"], "reply": {"text": "x"}}]},
            "missing required field `type` - at `$.rules[0].reply`",
        ),
        (
            {"rules": [{"keywords": ["a"], "reply": text(" ")}]},
            "empty text - at `$.rules[0].reply.text`",
        ),
        (
            {"rules": [{"keywords": ["a"], "reply": text("x" * 4097)}]},
            "longer than 4096 characters - at `$.rules[0].reply.text`",
        ),
        (
            {"rules": [{"keywords": ["a"], "reply": {**text("x"), "preview": True}}]},
            "unknown field `preview` - at `$.rules[0].reply`",
        ),
        (
            {
                "rules": [
                    {"keywords": ["a"], "reply": {"type": "template", "template": {"name": "t"}}}
                ]
            },
            "missing required field `language` - at `$.rules[0].reply.template`",
        ),
        (
            {
                "rules": [
                    {
                        "keywords": ["a"],
                        "reply": {
                            "type": "template",
                            "template": {"name": "t", "language": {"code": ""}},
                        },
                    }
                ]
            },
            "at `$.rules[0].reply.template.language.code`",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        {
                            "type": "button",
                            "body": {"text": "b"},
                            "action": {"buttons": [button("a", "x" * 21)]},
                        }
                    )
                ]
            },
            "length <= 20 - at `$.rules[0].reply.interactive.action.buttons[0].reply.title`",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        {
                            "type": "button",
                            "body": {"text": "b"},
                            "action": {"buttons": [button(str(i), str(i)) for i in range(4)]},
                        }
                    )
                ]
            },
            "length <= 3 - at `$.rules[0].reply.interactive.action.buttons`",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        {
                            "type": "button",
                            "body": {"text": "b"},
                            "action": {"buttons": [button("a", "A"), button("a", "B")]},
                        }
                    )
                ]
            },
            "each reply id must be unique, repeated: ['a'] - at `$.rules[0].reply.interactive.action.buttons`",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        {
                            "type": "button",
                            "body": {"text": "b"},
                            "action": {"buttons": [button("a", "Same"), button("b", "Same")]},
                        }
                    )
                ]
            },
            "each title must be unique",
        ),
        (
            {
                "rules": [
                    interactive_rule({"type": "button", "action": {"buttons": [button("a", "A")]}})
                ]
            },
            "missing required field `body` - at `$.rules[0].reply.interactive`",
        ),
        (
            {"rules": [interactive_rule(list_menu({"rows": rows(11)}))]},
            "length <= 10 - at `$.rules[0].reply.interactive.action.sections[0].rows`",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        list_menu(
                            {"title": "A", "rows": rows(6, "a")},
                            {"title": "B", "rows": rows(5, "b")},
                        )
                    )
                ]
            },
            "at most 10 rows in all, found 11",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        list_menu({"title": "A", "rows": rows(2)}, {"rows": rows(1, "b")})
                    )
                ]
            },
            "every section needs a title",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        list_menu({"title": "A", "rows": rows(2)}, {"title": "B", "rows": rows(1)})
                    )
                ]
            },
            "each row id must be unique, repeated: ['r0']",
        ),
        (
            {
                "rules": [
                    interactive_rule(
                        {
                            "type": "cta_url",
                            "body": {"text": "b"},
                            "action": {"name": "cta_url", "parameters": {"display_text": "Open"}},
                        }
                    )
                ]
            },
            "missing required field `url` - at `$.rules[0].reply.interactive.action.parameters`",
        ),
        (
            {"rules": [interactive_rule({"type": "flow", "body": {"text": "b"}})]},
            "missing required field `action` - at `$.rules[0].reply.interactive`",
        ),
        (
            {"rules": [interactive_rule({"body": {"text": "b"}, "action": {}})]},
            "missing required field `type`",
        ),
        (
            {"rules": [GOOD_RULE], "default": {"type": "text"}},
            "missing required field `text` - at `$.default`",
        ),
    ],
)
def test_invalid_files_are_refused_with_the_json_path(document: Any, problem: str) -> None:
    raw = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(RulesFileError) as raised:
        parse_rules(raw, source="rules.json")
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith("rules.json: ")
    assert problem in str(raised.value)


def test_other_interactive_types_are_left_to_meta() -> None:
    flow = {"type": "flow", "body": {"text": "b"}, "action": {"name": "flow", "parameters": {}}}
    book = parse_rules(json.dumps({"rules": [interactive_rule(flow)]}))
    assert book.rules[0].reply == InteractiveReply(interactive=flow)


def test_a_valid_list_menu_with_ten_rows_loads() -> None:
    menu = list_menu({"title": "A", "rows": rows(6, "a")}, {"title": "B", "rows": rows(4, "b")})
    assert parse_rules(json.dumps({"rules": [interactive_rule(menu)]})).rules[0].reply == (
        InteractiveReply(interactive=menu)
    )


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(RulesFileError, match=r"nope\.json: cannot read the rules file"):
        load_rules(missing)


def test_an_empty_rules_list_with_a_default_always_answers_the_default(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"default": text("hi")}))
    book = load_rules(path)
    assert book.rules == () and book.default == TextReply(body="hi")
