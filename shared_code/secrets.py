"""Where secret values come from: Azure Key Vault when ``KEY_VAULT_URL`` is set, else the environment.

Key Vault secret names allow only letters, digits and dashes, so each setting maps to its
lower-case, dash-separated name: ``WHATSAPP_APP_SECRET`` is read from the secret
``whatsapp-app-secret``. A secret missing from the vault falls back to the environment variable of
the same setting, so a partly filled vault still works during a migration.

Rotation without a restart: :meth:`KeyVaultSecrets.load` reads every secret before the settings
are built (the settings are built synchronously, once); after that the settings' :class:`Secret`
objects read the store's cache on every :meth:`Secret.reveal`, and a value older than the TTL is
read again in a background task while the cached one keeps answering. So no request ever waits
for Key Vault, and a rotated secret is in use within about one TTL of its first use after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, overload

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SECRET_TTL_SECONDS",
    "AsyncSecretReader",
    "EnvironmentSecrets",
    "KeyVaultSecrets",
    "KeyVaultUnavailable",
    "Secret",
    "SecretList",
    "SecretSource",
    "key_vault_secret_name",
]

DEFAULT_SECRET_TTL_SECONDS: Final = 300.0
# After a failed refresh the last value stays; Key Vault is asked again this much later (or after
# the TTL when that is shorter), so an outage costs one request per secret and interval.
RETRY_AFTER_FAILURE_SECONDS: Final = 30.0


class Secret:
    """A secret value that never shows itself in ``repr``, ``str`` or a log line.

    With ``current`` (a store's cache lookup), :meth:`reveal` gives the store's value of the
    moment, so holders of the object see a rotated secret; ``value`` answers while the store
    has none.
    """

    __slots__ = ("_current", "_value")

    def __init__(self, value: str, *, current: Callable[[], str | None] | None = None) -> None:
        self._value = value
        self._current = current

    def reveal(self) -> str:
        if self._current is not None:
            value = self._current()
            if value:
                return value
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self.reveal()

    def __hash__(self) -> int:
        return hash(self.reveal())


class SecretList(Sequence[Secret]):
    """Comma-separated secrets held in one secret (old and new keys together during a rotation),
    split again on each use so a rotation that adds or drops a key is seen too."""

    __slots__ = ("_source",)

    def __init__(self, source: Secret) -> None:
        self._source = source

    def _items(self) -> tuple[Secret, ...]:
        return split_secrets(self._source.reveal())

    @overload
    def __getitem__(self, index: int) -> Secret: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Secret]: ...

    def __getitem__(self, index: int | slice) -> Secret | Sequence[Secret]:
        return self._items()[index]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[Secret]:
        return iter(self._items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._items() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SecretList({len(self)} secret(s))"


def split_secrets(value: str) -> tuple[Secret, ...]:
    return tuple(Secret(item.strip()) for item in value.split(",") if item.strip())


class SecretSource(Protocol):
    """Looks up one secret by its setting name; ``None`` when this source does not have it."""

    def get(self, setting_name: str) -> str | None: ...


class AsyncSecretReader(Protocol):
    """The slice of ``azure.keyvault.secrets.aio.SecretClient`` we use (the fake in tests has it
    too): an awaitable ``get_secret`` returning an object with a ``value``."""

    def get_secret(self, name: str) -> Awaitable[Any]: ...


class KeyVaultUnavailable(RuntimeError):
    """Key Vault could not be read at start (no access, no network); names the secret, never
    its value."""


def key_vault_secret_name(setting_name: str) -> str:
    return setting_name.lower().replace("_", "-")


class EnvironmentSecrets:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, setting_name: str) -> str | None:
        value = self._environ.get(setting_name, "").strip()
        return value or None


@dataclass(slots=True)
class _Cached:
    value: str | None
    fresh_until: float
    from_vault: bool


class KeyVaultSecrets:
    """Secrets from Key Vault, cached for ``ttl_seconds`` and refreshed in the background.

    :meth:`get` never waits for Key Vault: it answers from the cache (filled by :meth:`load` at
    start) and, for a value past its TTL, starts one refresh task and answers with the value it
    has. A refresh that fails (Key Vault unreachable, throttled, access revoked) keeps the last
    value and logs the secret's name and the error's class; one that finds the secret gone uses
    the environment's value. Reading Key Vault on every request instead would put its latency
    and throttling on the webhook's hot path.
    """

    def __init__(
        self,
        client: AsyncSecretReader,
        fallback: SecretSource | None = None,
        *,
        ttl_seconds: float = DEFAULT_SECRET_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._fallback = fallback
        self._ttl = ttl_seconds
        self._retry = min(RETRY_AFTER_FAILURE_SECONDS, ttl_seconds)
        self._clock = clock
        self._close = close
        self._cache: dict[str, _Cached] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def for_vault(
        cls,
        vault_url: str,
        *,
        client_id: str | None,
        ttl_seconds: float = DEFAULT_SECRET_TTL_SECONDS,
        fallback: SecretSource | None = None,
    ) -> KeyVaultSecrets:
        """A store over the async Key Vault client, authenticated as the app's managed identity."""
        from azure.keyvault.secrets.aio import SecretClient

        from shared_code.identity import azure_credential

        credential = azure_credential(client_id)
        client = SecretClient(vault_url=vault_url, credential=credential)

        async def close() -> None:
            try:
                await client.close()
            finally:
                await credential.close()

        return cls(client, fallback, ttl_seconds=ttl_seconds, clock=time.monotonic, close=close)

    async def load(self, setting_names: Iterable[str]) -> None:
        """Read every named secret now, together; raises :class:`KeyVaultUnavailable` when one
        cannot be read (a secret merely absent from the vault falls back to the environment)."""
        await asyncio.gather(*(self._refresh(name, at_start=True) for name in setting_names))

    def get(self, setting_name: str) -> str | None:
        cached = self._cache.get(setting_name)
        if cached is None:
            # Not loaded at start: the environment answers until the vault has been asked.
            value = self._fallback.get(setting_name) if self._fallback else None
            self._cache[setting_name] = _Cached(value, fresh_until=0.0, from_vault=False)
            self._refresh_soon(setting_name)
            return value
        if self._clock() >= cached.fresh_until:
            self._refresh_soon(setting_name)
        return cached.value

    def secret(self, setting_name: str, value: str) -> Secret:
        """A :class:`Secret` that follows this store's value of ``setting_name``."""
        return Secret(value, current=lambda: self.get(setting_name))

    async def aclose(self) -> None:
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._close is not None:
            close, self._close = self._close, None
            await close()

    def _refresh_soon(self, setting_name: str) -> None:
        if setting_name in self._refreshing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next use within one refreshes
        task = loop.create_task(self._refresh(setting_name))
        self._refreshing[setting_name] = task
        task.add_done_callback(lambda _: self._refreshing.pop(setting_name, None))

    async def _refresh(self, setting_name: str, *, at_start: bool = False) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        name = key_vault_secret_name(setting_name)
        previous = self._cache.get(setting_name)
        try:
            secret = await self._client.get_secret(name)
        except ResourceNotFoundError:
            if previous is None or previous.from_vault:
                logger.info("Key Vault has no secret %s; using the environment", name)
            value = self._fallback.get(setting_name) if self._fallback else None
            self._cache[setting_name] = _Cached(value, self._clock() + self._ttl, from_vault=False)
            return
        except Exception as error:
            # The error's class only: the SDK's text is not ours to vouch for.
            if at_start:
                raise KeyVaultUnavailable(
                    f"Key Vault secret {name} could not be read ({type(error).__name__})"
                ) from error
            logger.warning(
                "Key Vault secret %s could not be refreshed (%s); the last value stays, "
                "next attempt in %.0f s",
                name,
                type(error).__name__,
                self._retry,
            )
            if previous is not None:
                previous.fresh_until = self._clock() + self._retry
            return
        raw = getattr(secret, "value", None)
        value = raw if isinstance(raw, str) and raw else None
        if previous is not None and previous.value is not None and value != previous.value:
            logger.info("Key Vault secret %s has a new value; it is used from now on", name)
        self._cache[setting_name] = _Cached(value, self._clock() + self._ttl, from_vault=True)
