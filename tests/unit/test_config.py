from __future__ import annotations

import pytest

from shared_code.config import ConfigurationError, Settings
from shared_code.secrets import Secret, key_vault_secret_name

COMPLETE = {
    "WHATSAPP_ACCESS_TOKEN": "EAAtoken",
    "WHATSAPP_PHONE_NUMBER_ID": "123",
    "WHATSAPP_WEBHOOK_VERIFY_TOKEN": "verify",
    "WHATSAPP_APP_SECRET": "app-secret",
    "DATABASE_URL": "postgresql://localhost/db",
    "BUS_BACKEND": "local",
}


def test_complete_environment_gives_typed_settings_with_seed_defaults() -> None:
    settings = Settings.from_environment(COMPLETE)
    assert settings.whatsapp_api_version == "v18.0"
    assert settings.whatsapp_graph_base_url == "https://graph.facebook.com"
    assert settings.whatsapp_app_secret.reveal() == "app-secret"
    assert settings.inbound_queue_name == "inbound-events"
    assert settings.outbound_queue_name == "outbound-messages"
    assert settings.bus_backend == "local"
    assert settings.whatsapp_business_account_id is None


def test_every_missing_setting_is_named_in_one_error() -> None:
    env = {k: v for k, v in COMPLETE.items() if k not in {"WHATSAPP_APP_SECRET", "DATABASE_URL"}}
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_environment(env)
    assert "WHATSAPP_APP_SECRET" in str(raised.value)
    assert "DATABASE_URL" in str(raised.value)


def test_blank_values_count_as_missing() -> None:
    with pytest.raises(ConfigurationError, match="WHATSAPP_PHONE_NUMBER_ID"):
        Settings.from_environment({**COMPLETE, "WHATSAPP_PHONE_NUMBER_ID": "  "})


def test_azure_bus_needs_a_namespace_or_connection_string() -> None:
    with pytest.raises(ConfigurationError, match="ServiceBusConnection"):
        Settings.from_environment({**COMPLETE, "BUS_BACKEND": "azure"})
    settings = Settings.from_environment(
        {
            **COMPLETE,
            "BUS_BACKEND": "azure",
            "ServiceBusConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net",
            "ServiceBusConnection__clientId": "client-id",
        }
    )
    assert settings.service_bus.fully_qualified_namespace == "ns.servicebus.windows.net"
    assert settings.service_bus.managed_identity_client_id == "client-id"


def test_malformed_values_are_reported() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_POOL_MAX_SIZE must be an integer"):
        Settings.from_environment({**COMPLETE, "DATABASE_POOL_MAX_SIZE": "ten"})
    with pytest.raises(ConfigurationError, match="BUS_BACKEND must be one of"):
        Settings.from_environment({**COMPLETE, "BUS_BACKEND": "kafka"})


def test_graph_base_url_trailing_slash_is_dropped() -> None:
    settings = Settings.from_environment({**COMPLETE, "WHATSAPP_GRAPH_BASE_URL": "http://sim:9/"})
    assert settings.whatsapp_graph_base_url == "http://sim:9"


def test_secret_never_shows_its_value() -> None:
    secret = Secret("EAAverysecret")
    assert "EAAverysecret" not in repr(secret)
    assert "EAAverysecret" not in str(secret)
    settings = Settings.from_environment(COMPLETE)
    assert "app-secret" not in repr(settings)
    assert "EAAtoken" not in repr(settings)


def test_key_vault_names_are_dashed_lower_case() -> None:
    assert key_vault_secret_name("WHATSAPP_APP_SECRET") == "whatsapp-app-secret"


# Key Vault itself (async client, TTL refresh, fallback, outage): tests/unit/test_secrets.py.


def test_reply_path_defaults_follow_the_seed() -> None:
    settings = Settings.from_environment(COMPLETE)
    limits = settings.rate_limits.for_number("123")
    assert (limits.per_second, limits.per_minute, limits.per_day) == (80, 1000, 10000)
    assert settings.agents.default_agent == "echo"
    assert settings.agent_routing_rules == ()
    assert settings.retry_policy.max_attempts == 8
    assert settings.mark_as_read is True
    assert settings.whatsapp_graph_timeout_seconds == 15.0


def test_reply_path_settings_are_read() -> None:
    settings = Settings.from_environment(
        {
            **COMPLETE,
            "WHATSAPP_DEFAULT_AGENT": "openai",
            "OPENAI_BASE_URL": "http://localhost:11434/v1",
            "OPENAI_MODEL": "llama3",
            "OPENAI_API_KEY": "sk-1",
            "AGENT_TIMEOUT_SECONDS": "2.5",
            "AGENT_ROUTING_RULES": '[{"agent": "rules", "keywords": ["menu"]}]',
            "RATE_LIMITS": '{"123": {"per_second": 1000}}',
            "SENDER_MAX_ATTEMPTS": "3",
            "SENDER_CONFIRMATION_WAIT_SECONDS": "5",
            "WHATSAPP_MARK_AS_READ": "false",
        }
    )
    assert settings.agents.default_agent == "openai"
    assert settings.agents.openai_api_key == Secret("sk-1")
    assert settings.agents.timeout_seconds == 2.5
    assert settings.agent_routing_rules[0].agent == "rules"
    assert settings.rate_limits.for_number("123").per_second == 1000
    assert settings.rate_limits.for_number("999").per_second == 80
    assert settings.retry_policy.max_attempts == 3
    assert settings.retry_policy.confirmation_wait_seconds == 5.0
    assert settings.mark_as_read is False
    assert "sk-1" not in repr(settings)


def test_malformed_reply_path_settings_are_named_together() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_environment(
            {
                **COMPLETE,
                "RATE_LIMITS": "{not json",
                "AGENT_ROUTING_RULES": '[{"agent": "x"}]',
                "WHATSAPP_MARK_AS_READ": "maybe",
                "AGENT_TIMEOUT_SECONDS": "soon",
            }
        )
    message = str(raised.value)
    for name in (
        "RATE_LIMITS",
        "AGENT_ROUTING_RULES",
        "WHATSAPP_MARK_AS_READ",
        "AGENT_TIMEOUT_SECONDS",
    ):
        assert name in message


def test_entra_database_auth_wants_a_url_without_a_password() -> None:
    entra = {
        **COMPLETE,
        "DATABASE_ENTRA_AUTH": "true",
        "DATABASE_URL": "postgresql://bridge-identity@pg.postgres.database.azure.com/app"
        "?sslmode=require",
    }
    assert Settings.from_environment(entra).database_entra_auth is True
    assert Settings.from_environment(COMPLETE).database_entra_auth is False
    with pytest.raises(ConfigurationError, match="DATABASE_URL must hold no password") as raised:
        Settings.from_environment(
            {**entra, "DATABASE_URL": "postgresql://u:hunter2@pg.postgres.database.azure.com/app"}
        )
    assert "hunter2" not in str(raised.value)
