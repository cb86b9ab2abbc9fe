"""Key Vault secrets: read asynchronously at start, refreshed on a TTL, kept through an outage."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError

from shared_code import config
from shared_code.config import SECRET_SETTINGS, ConfigurationError, Settings, load_settings
from shared_code.management.auth import Authenticator, Unauthorized
from shared_code.secrets import (
    EnvironmentSecrets,
    KeyVaultSecrets,
    KeyVaultUnavailable,
    SecretList,
)
from shared_code.webhook_intake import BAD_SIGNATURE, WebhookIntake
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.signature import sign

ENV = {
    "WHATSAPP_PHONE_NUMBER_ID": "123",
    "WHATSAPP_WEBHOOK_VERIFY_TOKEN": "verify-from-env",
    "DATABASE_URL": "postgresql://localhost/db",
    "BUS_BACKEND": "local",
    "KEY_VAULT_URL": "https://kv.vault.azure.net",
}
VAULT = {
    "whatsapp-access-token": "token-v1",
    "whatsapp-app-secret": "app-secret-v1",
    "management-api-keys": "key-a,key-b",
}
TTL = 300.0


@dataclass
class FakeKeyVaultSecret:
    value: str


class FakeSecretClient:
    """Stands in for azure.keyvault.secrets.aio.SecretClient at its get_secret boundary."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = dict(secrets)
        self.calls: list[str] = []
        self.outage = False
        self.closed = False

    async def get_secret(self, name: str) -> FakeKeyVaultSecret:
        self.calls.append(name)
        await asyncio.sleep(0)
        if self.outage:
            raise ServiceRequestError("vault unreachable")
        if name not in self.secrets:
            raise ResourceNotFoundError(f"secret {name} not found")
        return FakeKeyVaultSecret(self.secrets[name])

    async def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    """Let the background refresh tasks run to their end."""
    for _ in range(5):
        await asyncio.sleep(0)


def store_with(client: FakeSecretClient, clock: FakeClock) -> KeyVaultSecrets:
    return KeyVaultSecrets(
        client, EnvironmentSecrets(ENV), ttl_seconds=TTL, clock=clock, close=client.close
    )


async def loaded_settings() -> tuple[Settings, FakeSecretClient, FakeClock]:
    client, clock = FakeSecretClient(VAULT), FakeClock()
    store = store_with(client, clock)
    await store.load(SECRET_SETTINGS)
    return Settings.from_environment(ENV, secrets=store), client, clock


async def test_every_secret_is_read_at_start_and_the_vault_wins_over_the_environment() -> None:
    settings, client, _ = await loaded_settings()
    assert sorted(client.calls) == sorted(n.lower().replace("_", "-") for n in SECRET_SETTINGS)
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v1"
    assert settings.whatsapp_access_token.reveal() == "token-v1"
    # Missing from the vault: the environment's value.
    assert settings.whatsapp_webhook_verify_token.reveal() == "verify-from-env"
    assert settings.database_url.reveal() == ENV["DATABASE_URL"]
    assert settings.secret_store is not None
    # Using a fresh secret costs no Key Vault request.
    calls = len(client.calls)
    for _ in range(10):
        settings.whatsapp_app_secret.reveal()
    await settle()
    assert len(client.calls) == calls


async def test_a_rotated_secret_is_used_once_its_ttl_ran_out() -> None:
    settings, client, clock = await loaded_settings()
    graph = GraphApiClient.from_settings(settings)
    client.secrets["whatsapp-app-secret"] = "app-secret-v2"
    client.secrets["whatsapp-access-token"] = "token-v2"

    clock.now += TTL - 1
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v1"
    await settle()
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v1"

    clock.now += 2
    # The stale value answers at once (no request waits for Key Vault)...
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v1"
    assert graph._auth_headers() == {"Authorization": "Bearer token-v1"}
    await settle()
    # ...and the refresh it started brings the new one.
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v2"
    assert graph._auth_headers() == {"Authorization": "Bearer token-v2"}
    assert client.calls.count("whatsapp-app-secret") == 2
    await graph.aclose()


async def test_a_secret_removed_from_the_vault_falls_back_to_the_environment() -> None:
    settings, client, clock = await loaded_settings()
    del client.secrets["whatsapp-access-token"]
    env_with_token = {**ENV, "WHATSAPP_ACCESS_TOKEN": "token-from-env"}
    store = KeyVaultSecrets(
        client, EnvironmentSecrets(env_with_token), ttl_seconds=TTL, clock=clock
    )
    await store.load(["WHATSAPP_ACCESS_TOKEN"])
    assert store.get("WHATSAPP_ACCESS_TOKEN") == "token-from-env"

    # And for settings built while it was there: the last value stays when the environment has
    # none, rather than an empty token.
    clock.now += TTL + 1
    settings.whatsapp_access_token.reveal()
    await settle()
    assert settings.whatsapp_access_token.reveal() == "token-v1"


async def test_an_outage_keeps_the_last_values_and_logs_names_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, client, clock = await loaded_settings()
    client.outage = True
    clock.now += TTL + 1
    with caplog.at_level(logging.WARNING, logger="shared_code.secrets"):
        assert settings.whatsapp_app_secret.reveal() == "app-secret-v1"
        await settle()
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v1"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("whatsapp-app-secret" in m and "ServiceRequestError" in m for m in warnings)
    assert not any("app-secret-v1" in r.getMessage() for r in caplog.records)

    # Not asked again on every use: next after the retry interval (30 s), then it recovers.
    calls = client.calls.count("whatsapp-app-secret")
    for _ in range(5):
        settings.whatsapp_app_secret.reveal()
    await settle()
    assert client.calls.count("whatsapp-app-secret") == calls
    client.outage = False
    client.secrets["whatsapp-app-secret"] = "app-secret-v2"
    clock.now += 31
    settings.whatsapp_app_secret.reveal()
    await settle()
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v2"


async def test_an_unreadable_vault_at_start_fails_naming_the_secret() -> None:
    client, clock = FakeSecretClient(VAULT), FakeClock()
    client.outage = True
    with pytest.raises(KeyVaultUnavailable, match="whatsapp-app-secret") as raised:
        await store_with(client, clock).load(["WHATSAPP_APP_SECRET"])
    assert "app-secret-v1" not in str(raised.value)


async def test_concurrent_uses_of_a_stale_secret_start_one_refresh() -> None:
    settings, client, clock = await loaded_settings()
    clock.now += TTL + 1
    before = client.calls.count("whatsapp-app-secret")
    for _ in range(20):
        settings.whatsapp_app_secret.reveal()
    await settle()
    assert client.calls.count("whatsapp-app-secret") == before + 1


async def test_rotated_management_keys_are_accepted_and_dropped_ones_refused() -> None:
    settings, client, clock = await loaded_settings()
    assert isinstance(settings.management.api_keys, SecretList)
    assert [k.reveal() for k in settings.management.api_keys] == ["key-a", "key-b"]
    authenticator = Authenticator(
        api_keys=settings.management.api_keys, read_keys=settings.management.read_keys
    )
    assert (await authenticator.authenticate("Bearer key-a")).actor.startswith("key:")
    client.secrets["management-api-keys"] = "key-b,key-c"
    clock.now += TTL + 1
    settings.management.api_keys[0]  # any use after the TTL starts the refresh
    await settle()
    assert (await authenticator.authenticate("Bearer key-c")).actor.startswith("key:")
    with pytest.raises(Unauthorized):
        await authenticator.authenticate("Bearer key-a")


async def test_the_webhook_signature_check_follows_a_rotated_app_secret() -> None:
    settings, client, clock = await loaded_settings()
    # The signature is checked before anything touches the pool or the bus.
    intake = WebhookIntake(
        pool=None,  # type: ignore[arg-type]
        bus=None,  # type: ignore[arg-type]
        queue="inbound-events",
        app_secret=settings.whatsapp_app_secret,
    )
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    assert await intake.receive(body, sign(body, "app-secret-v2")) == BAD_SIGNATURE
    client.secrets["whatsapp-app-secret"] = "app-secret-v2"
    clock.now += TTL + 1
    settings.whatsapp_app_secret.reveal()
    await settle()
    assert await intake.receive(body, sign(body, "app-secret-v1")) == BAD_SIGNATURE


async def test_load_settings_reads_the_vault_first_and_closes_it_when_settings_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, clock = FakeSecretClient(VAULT), FakeClock()
    created: list[tuple[str, str | None, float]] = []

    def for_vault(
        vault_url: str, *, client_id: str | None, ttl_seconds: float, fallback: object
    ) -> KeyVaultSecrets:
        created.append((vault_url, client_id, ttl_seconds))
        return store_with(client, clock)

    monkeypatch.setattr(config.KeyVaultSecrets, "for_vault", staticmethod(for_vault))
    env = {**ENV, "AZURE_CLIENT_ID": "identity-client-id", "KEY_VAULT_SECRET_TTL_SECONDS": "60"}
    settings = await load_settings(env)
    assert created == [("https://kv.vault.azure.net", "identity-client-id", 60.0)]
    assert settings.whatsapp_app_secret.reveal() == "app-secret-v1"
    assert settings.azure_client_id == "identity-client-id"
    assert settings.key_vault_secret_ttl_seconds == 60.0
    assert settings.secret_store is not None and not client.closed

    with pytest.raises(ConfigurationError, match="WHATSAPP_PHONE_NUMBER_ID"):
        await load_settings({k: v for k, v in env.items() if k != "WHATSAPP_PHONE_NUMBER_ID"})
    assert client.closed


def test_settings_with_a_vault_url_need_the_async_loader() -> None:
    with pytest.raises(ConfigurationError, match="load_settings"):
        Settings.from_environment(ENV)


async def test_closing_the_store_closes_the_client_and_pending_refreshes() -> None:
    settings, client, clock = await loaded_settings()
    clock.now += TTL + 1
    settings.whatsapp_app_secret.reveal()
    assert settings.secret_store is not None
    await settings.secret_store.aclose()
    assert client.closed
