"""Microsoft Entra ID access tokens as PostgreSQL passwords (Azure Database for PostgreSQL).

With ``DATABASE_ENTRA_AUTH=true`` the ``DATABASE_URL`` names the server, the database and the
role (the managed identity's name) but no password: each new connection presents an access token
for the scope below instead. The server checks it only when the connection logs in, so an open
connection outlives its token; the token is cached until shortly before it expires, so a pool
that opens connections does not ask Entra each time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

logger = logging.getLogger(__name__)

__all__ = ["DATABASE_TOKEN_SCOPE", "DatabaseTokenProvider", "PasswordSource", "TokenCredential"]

DATABASE_TOKEN_SCOPE: Final = "https://ossrdbms-aad.database.windows.net/.default"  # noqa: S105 (a scope)
# A token this close to its expiry is replaced: a connection being set up must not present one
# that expires on the way (Entra's tokens live 60 to 90 minutes).
REFRESH_BEFORE_EXPIRY_SECONDS: Final = 300.0


class PasswordSource(Protocol):
    """What :func:`shared_code.db.pool.open_pool` and the migrations call for each connection."""

    async def __call__(self) -> str: ...


class TokenCredential(Protocol):
    """The slice of ``azure.core.credentials_async.AsyncTokenCredential`` used here."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...

    async def close(self) -> None: ...


class DatabaseTokenProvider:
    """An access token for PostgreSQL, cached until ``refresh_before_expiry_seconds`` before it
    expires; concurrent callers share one request to Entra."""

    def __init__(
        self,
        credential: TokenCredential,
        *,
        refresh_before_expiry_seconds: float = REFRESH_BEFORE_EXPIRY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self._margin = refresh_before_expiry_seconds
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        if self._token is not None and self._clock() < self._expires_on - self._margin:
            return self._token
        async with self._lock:
            token = self._token
            if token is None or self._clock() >= self._expires_on - self._margin:
                access = await self._credential.get_token(DATABASE_TOKEN_SCOPE)
                token, self._expires_on = str(access.token), float(access.expires_on)
                self._token = token
                logger.info(
                    "database access token acquired (valid for %.0f min)",
                    (self._expires_on - self._clock()) / 60,
                )
            return token

    async def aclose(self) -> None:
        await self._credential.close()
