"""The messaging policy's pure rules: keywords, the customer-service window, what may go out,
its settings, and how a user_preferences webhook is split and decoded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from shared_code.config import ConfigurationError, Settings
from shared_code.orchestrator.agents import (
    AgentRequest,
    Contact,
    HandoffReply,
    HttpPlatformAgent,
    InboundMessage,
    TextReply,
)
from shared_code.orchestrator.agents.replies import decode_reply
from shared_code.policy import (
    Intent,
    PolicyBlock,
    PolicySettings,
    WindowTemplate,
    customer_service_window_open,
    normalize_keyword,
    outbound_block,
    parse_keywords,
)
from shared_code.secrets import Secret
from shared_code.whatsapp.payloads import PreferenceEvent, decode_event
from shared_code.whatsapp.webhook import split_webhook

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = PolicySettings()


@pytest.mark.parametrize(
    "text",
    ["STOP", "stop", " Stop! ", "«STOP»", "arrêt", "ARRET", "Parar.", "baja", "Cancelar",
     "unsubscribe", "opt   out", "STOPP", "*stop*"],
)  # fmt: skip
def test_opt_out_words_match_whatever_case_accents_and_punctuation(text: str) -> None:
    assert POLICY.intent_of("text", text) is Intent.OPT_OUT


@pytest.mark.parametrize(
    "text", ["stop it please", "don't stop", "STOPPED", "cancel", "stop\nsending", ""]
)
def test_a_keyword_must_be_the_whole_message(text: str) -> None:
    # "stop\nsending" normalises to "stop sending": two words, not the keyword.
    assert POLICY.intent_of("text", text) is None


@pytest.mark.parametrize(
    ("text", "intent"),
    [("START", Intent.OPT_IN), ("unstop", Intent.OPT_IN), ("Human", Intent.HANDOFF),
     ("agent", Intent.HANDOFF), ("Opérateur", Intent.HANDOFF), ("hello", None)],
)  # fmt: skip
def test_opt_in_and_handoff_words(text: str, intent: Intent | None) -> None:
    assert POLICY.intent_of("text", text) is intent


def test_keywords_count_in_texts_buttons_and_interactive_replies_not_in_captions() -> None:
    assert POLICY.intent_of("button", "STOP") is Intent.OPT_OUT
    assert POLICY.intent_of("interactive", "Stop") is Intent.OPT_OUT
    assert POLICY.intent_of("image", "stop") is None
    assert POLICY.intent_of("text", None) is None


def test_an_opt_out_word_wins_over_the_other_lists() -> None:
    settings = PolicySettings(opt_out_keywords=("halt",), handoff_keywords=("halt", "help"))
    assert settings.intent_of("text", "HALT") is Intent.OPT_OUT
    assert settings.intent_of("text", "help") is Intent.HANDOFF
    assert settings.intent_of("text", "stop") is None  # the defaults were replaced


def test_normalize_keyword() -> None:
    assert normalize_keyword("  Désabonner!! ") == "desabonner"
    assert normalize_keyword("Opt\tOut") == "opt out"
    assert normalize_keyword("STRASSE") == normalize_keyword("straße")


def test_parse_keywords() -> None:
    assert parse_keywords(None, ("A",)) == ("A",)
    assert parse_keywords("  ", ("A",)) == ("A",)
    assert parse_keywords("none", ("A",)) == ()
    assert parse_keywords("halt, quit ,", ("A",)) == ("halt", "quit")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_keywords(" , ,", ("A",))


def test_the_window_is_open_for_24_hours_after_the_last_inbound_message() -> None:
    assert customer_service_window_open(NOW - timedelta(hours=23, minutes=59), NOW)
    assert not customer_service_window_open(NOW - timedelta(hours=24), NOW)
    assert not customer_service_window_open(NOW - timedelta(hours=25), NOW)
    assert not customer_service_window_open(None, NOW)


def block(**changes: object) -> PolicyBlock | None:
    facts: dict[str, object] = {
        "purpose": "reply",
        "message_type": "text",
        "contact_opted_out": False,
        "marketing_stopped": False,
        "last_inbound_at": NOW - timedelta(hours=1),
        "now": NOW,
    }
    facts.update(changes)
    return outbound_block(**facts)  # type: ignore[arg-type]


def test_what_may_go_out() -> None:
    assert block() is None
    assert block(purpose=None) is None  # rows from before the purpose column
    assert block(contact_opted_out=True) is PolicyBlock.CONTACT_OPTED_OUT
    assert block(contact_opted_out=True, message_type="template") is PolicyBlock.CONTACT_OPTED_OUT
    assert block(contact_opted_out=True, purpose="opt_out_confirmation") is None
    assert block(contact_opted_out=True, purpose="operator") is PolicyBlock.CONTACT_OPTED_OUT
    assert block(marketing_stopped=True, message_type="template") is (
        PolicyBlock.MARKETING_OPTED_OUT
    )
    late = NOW - timedelta(hours=25)
    assert block(last_inbound_at=late) is PolicyBlock.WINDOW_CLOSED
    assert block(last_inbound_at=None, purpose="operator") is PolicyBlock.WINDOW_CLOSED
    assert block(last_inbound_at=late, message_type="template") is None
    assert "template" in PolicyBlock.WINDOW_CLOSED.explanation


def test_window_template_setting() -> None:
    assert WindowTemplate.parse(None) is None
    assert WindowTemplate.parse("follow_up:en_US") == WindowTemplate(
        name="follow_up", language_code="en_US"
    )
    for bad in ("follow_up", ":en", "name:"):
        with pytest.raises(ValueError, match="template name"):
            WindowTemplate.parse(bad)


BASE_ENV = {
    "WHATSAPP_ACCESS_TOKEN": "t",
    "WHATSAPP_PHONE_NUMBER_ID": "1",
    "WHATSAPP_WEBHOOK_VERIFY_TOKEN": "v",
    "WHATSAPP_APP_SECRET": "s",
    "DATABASE_URL": "postgresql://x",
    "BUS_BACKEND": "local",
}


def test_settings_read_from_the_environment() -> None:
    settings = Settings.from_environment(
        {
            **BASE_ENV,
            "OPT_OUT_KEYWORDS": "halt,basta",
            "HANDOFF_KEYWORDS": "none",
            "HANDOFF_NOTICE": "A person will answer you soon.",
            "WINDOW_CLOSED_TEMPLATE": "follow_up:en",
            "CONVERSATION_IDLE_CLOSE_HOURS": "2",
            "WHATSAPP_RETENTION_DAYS": "30",
        }
    ).policy
    assert settings.opt_out_keywords == ("halt", "basta")
    assert settings.handoff_keywords == ()
    assert settings.opt_in_keywords == PolicySettings().opt_in_keywords
    assert settings.handoff_notice == "A person will answer you soon."
    assert settings.window_closed_template == WindowTemplate(name="follow_up", language_code="en")
    assert settings.idle_close_hours == 2
    assert settings.retention_days == 30
    defaults = Settings.from_environment(BASE_ENV).policy
    assert defaults == PolicySettings()
    assert defaults.handoff_notice is None and defaults.retention_days == 90


def test_malformed_policy_settings_are_named() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_environment(
            {**BASE_ENV, "WINDOW_CLOSED_TEMPLATE": "nolanguage", "WHATSAPP_RETENTION_DAYS": "0"}
        )
    assert "WINDOW_CLOSED_TEMPLATE" in str(raised.value)
    assert "WHATSAPP_RETENTION_DAYS" in str(raised.value)


def user_preferences_webhook(
    value: str = "stop", timestamp: str = "1767225600"
) -> dict[str, object]:
    """Meta's user_preferences webhook (developers.facebook.com, webhooks reference)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "200000000000001",
                "changes": [
                    {
                        "field": "user_preferences",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": "100000000000001",
                            },
                            "contacts": [{"profile": {"name": "Ana"}, "wa_id": "15551230001"}],
                            "user_preferences": [
                                {
                                    "wa_id": "15551230001",
                                    "detail": "User requested to stop marketing messages",
                                    "category": "marketing_messages",
                                    "value": value,
                                    "timestamp": timestamp,
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


def test_a_user_preferences_webhook_becomes_one_queued_event_in_the_users_session() -> None:
    result = split_webhook(user_preferences_webhook())
    assert result.status == "pending"
    assert result.fields == ("user_preferences",)
    [event] = result.events
    assert event.kind == "preference"
    assert event.session_id == "100000000000001:15551230001"
    assert event.message_id == "preference:15551230001:marketing_messages:stop:1767225600"
    decoded = decode_event(msgspec.json.encode({**event.envelope, "webhook_event_id": 7}))
    assert isinstance(decoded, PreferenceEvent)
    assert decoded.preference.value == "stop"
    assert decoded.preference.category == "marketing_messages"
    assert decoded.preference.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert decoded.webhook_event_id == 7


def test_a_broken_user_preference_is_a_problem_not_an_event() -> None:
    body = user_preferences_webhook()
    body["entry"][0]["changes"][0]["value"]["user_preferences"][0].pop("wa_id")  # type: ignore[index]
    result = split_webhook(body)
    assert result.events == ()
    assert result.status == "invalid"
    assert "preference without wa_id" in (result.reason or "")


def test_an_agent_reply_may_ask_for_a_person() -> None:
    reply = decode_reply(b'{"type": "text", "text": "A colleague takes over", "handoff": true}',
                         trim_long_text=True)  # fmt: skip
    assert reply == TextReply(body="A colleague takes over", handoff=True)
    assert decode_reply(b'{"type": "none", "handoff": true}', trim_long_text=True) == (
        HandoffReply()
    )
    assert decode_reply(b'{"type": "none"}', trim_long_text=True) is None
    plain = decode_reply(b'{"type": "text", "text": "hi"}', trim_long_text=True)
    assert isinstance(plain, TextReply) and not plain.handoff


async def test_the_agent_platforms_answer_may_hand_the_conversation_over() -> None:
    answers = iter(
        [
            {"type": "text", "text": "A colleague takes over", "handoff": True},
            {"type": "none", "handoff": True},
        ]
    )

    def platform(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(answers))

    async with httpx.AsyncClient(transport=httpx.MockTransport(platform)) as http:
        agent = HttpPlatformAgent(http=http, url="https://agents.example", secret=Secret("s"))
        request = AgentRequest(
            conversation_id=1,
            phone_number_id="1",
            contact=Contact(wa_id="15551230001"),
            message=InboundMessage(wamid="wamid.x", message_type="text", text="refund"),
        )
        assert await agent.reply(request) == TextReply(body="A colleague takes over", handoff=True)
        assert await agent.reply(request) == HandoffReply()
