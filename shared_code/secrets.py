"""Where secret values come from: Azure Key Vault when ``KEY_VAULT_URL`` is set, else the environment.

Key Vault secret names allow only letters, digits and dashes, so each setting maps to its
lower-case, dash-separated name: ``WHATSAPP_APP_SECRET`` is read from the secret
``whatsapp-app-secret``. A secret missing from the vault falls back to the environment variable of
the same setting, so a partly filled vault still works during a migration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Protocol

logger = logging.getLogger(__name__)

__all__ = [
    "EnvironmentSecrets",
    "KeyVaultSecrets",
    "Secret",
    "SecretReader",
    "SecretSource",
    "key_vault_secret_name",
]


class Secret:
    """A secret value that never shows itself in ``repr``, ``str`` or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretSource(Protocol):
    """Looks up one secret by its setting name; ``None`` when this source does not have it."""

    def get(self, setting_name: str) -> str | None: ...


class SecretReader(Protocol):
    """The slice of ``azure.keyvault.secrets.SecretClient`` we use (the fake in tests has it too)."""

    def get_secret(self, name: str) -> object: ...


def key_vault_secret_name(setting_name: str) -> str:
    return setting_name.lower().replace("_", "-")


class EnvironmentSecrets:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, setting_name: str) -> str | None:
        value = self._environ.get(setting_name, "").strip()
        return value or None


class KeyVaultSecrets:
    """Reads secrets from Key Vault once each and keeps them for the life of the worker.

    Settings are built once per worker, so a rotated secret is picked up when the worker restarts
    (a deployment, or the platform recycling it); reading on every request would put Key Vault's
    latency and throttling on the webhook's hot path.
    """

    def __init__(self, client: SecretReader, fallback: SecretSource | None = None) -> None:
        self._client = client
        self._fallback = fallback
        self._cache: dict[str, str | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_vault(cls, vault_url: str, fallback: SecretSource | None = None) -> KeyVaultSecrets:
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.secrets import SecretClient

        client = SecretClient(vault_url=vault_url, credential=DefaultAzureCredential())
        return cls(client, fallback)

    def get(self, setting_name: str) -> str | None:
        with self._lock:
            if setting_name in self._cache:
                return self._cache[setting_name]
        value = self._read(setting_name)
        with self._lock:
            self._cache[setting_name] = value
        return value

    def _read(self, setting_name: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        name = key_vault_secret_name(setting_name)
        try:
            secret = self._client.get_secret(name)
        except ResourceNotFoundError:
            logger.info("Key Vault has no secret %s; using the environment", name)
            return self._fallback.get(setting_name) if self._fallback else None
        value = getattr(secret, "value", None)
        return value if isinstance(value, str) and value else None
