"""Who is calling the management API, and what they may do.

Two kinds of credential, both as ``Authorization: Bearer <credential>``:

- **Management keys** (``MANAGEMENT_API_KEYS`` full access, ``MANAGEMENT_API_READ_KEYS`` read
  only). Compared in constant time: the presented key and every configured key are hashed to the
  same length and all of them are compared, so neither the position of a match nor a shared
  prefix shows in the answer's timing.
- **Microsoft Entra ID access tokens**, when ``MANAGEMENT_ENTRA_TENANT_ID`` and
  ``MANAGEMENT_ENTRA_AUDIENCE`` are set: RS256 signature against the tenant's published keys
  (JWKS, fetched with httpx and cached), issuer, audience, expiry, and the app roles
  ``WhatsApp.Read`` / ``WhatsApp.Send`` / ``WhatsApp.Admin``.

A caller is identified in the audit log without the credential itself: ``key:<12 hex of the key's
SHA-256>`` or ``entra:<object id>``.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from shared_code.management.problems import Unauthorized, Unavailable
from shared_code.secrets import Secret

logger = logging.getLogger(__name__)

__all__ = [
    "ENTRA_ROLES",
    "Access",
    "Authenticator",
    "Caller",
    "EntraTokenVerifier",
    "actor_of_key",
]

DEFAULT_ENTRA_AUTHORITY = "https://login.microsoftonline.com"


class Access(enum.IntEnum):
    """What a caller may do; each level includes the ones below it."""

    READ = 1
    SEND = 2
    ADMIN = 3


ENTRA_ROLES: Mapping[str, Access] = {
    "WhatsApp.Read": Access.READ,
    "WhatsApp.Send": Access.SEND,
    "WhatsApp.Admin": Access.ADMIN,
}


@dataclass(frozen=True, slots=True)
class Caller:
    actor: str
    access: Access

    def may(self, needed: Access) -> bool:
        return self.access >= needed


def actor_of_key(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class _KeyRing:
    """The keys' digests, rebuilt when the keys change (a SecretList from Key Vault follows its
    rotations; see shared_code.secrets)."""

    def __init__(self, full: Iterable[Secret], read: Iterable[Secret]) -> None:
        self._full = full if isinstance(full, Sequence) else tuple(full)
        self._read = read if isinstance(read, Sequence) else tuple(read)
        self._values: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._keys: list[tuple[bytes, Caller]] = []

    def _current(self) -> list[tuple[bytes, Caller]]:
        values = (
            tuple(key.reveal() for key in self._full),
            tuple(key.reveal() for key in self._read),
        )
        if values != self._values:
            keys = []
            for access, group in ((Access.ADMIN, values[0]), (Access.READ, values[1])):
                for value in group:
                    keys.append((_digest(value), Caller(actor_of_key(value), access)))
            self._keys, self._values = keys, values
        return self._keys

    def match(self, presented: str) -> Caller | None:
        digest = _digest(presented)
        found: Caller | None = None
        # Every key is compared, whatever matched first.
        for key_digest, caller in self._current():
            if hmac.compare_digest(digest, key_digest) and found is None:
                found = caller
        return found


class EntraTokenVerifier:
    """Checks Microsoft Entra ID access tokens of one tenant and audience."""

    # Entra rotates its signing keys every few weeks and publishes new ones ahead of use; an
    # unknown key id triggers one re-fetch, at most this often (a flood of forged key ids must
    # not turn into a flood of requests to Entra).
    REFRESH_MIN_SECONDS = 300.0
    KEYS_MAX_AGE_SECONDS = 24 * 3600.0
    # After a failed fetch (Entra unreachable), try again sooner than REFRESH_MIN_SECONDS: with no
    # keys yet, every Entra caller is refused until a fetch succeeds.
    RETRY_AFTER_FAILURE_SECONDS = 15.0

    def __init__(
        self,
        *,
        tenant_id: str,
        audience: str,
        http: httpx.AsyncClient,
        authority: str = DEFAULT_ENTRA_AUTHORITY,
        leeway_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenant = tenant_id
        self._audience = audience
        self._http = http
        authority = authority.rstrip("/")
        self._jwks_url = f"{authority}/{tenant_id}/discovery/v2.0/keys"
        # v2.0 tokens name the authority; v1.0 tokens (an app registration's default) name sts.
        self._issuers = [f"{authority}/{tenant_id}/v2.0", f"https://sts.windows.net/{tenant_id}/"]
        self._leeway = leeway_seconds
        self._clock = clock
        self._keys: dict[str, Any] = {}
        # The last fetch failed: an unknown key id may be a valid token we cannot check yet.
        self._unreachable = False
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized(
                "the bearer token is not a valid JWT", code="invalid_token"
            ) from None
        if header.get("alg") != "RS256":
            raise Unauthorized("the token must be signed with RS256", code="invalid_token")
        key = await self._key(str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=["RS256"],
                audience=self._audience,
                issuer=self._issuers,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", code="token_expired") from None
        except jwt.PyJWTError as error:
            # PyJWT's messages name the failed check (audience, issuer, signature), never a value.
            raise Unauthorized(f"the token was refused: {error}", code="invalid_token") from None
        if claims.get("tid") not in (None, self._tenant):
            raise Unauthorized("the token is of another tenant", code="invalid_token")
        roles = claims.get("roles")
        granted = (
            [ENTRA_ROLES[r] for r in roles if r in ENTRA_ROLES] if isinstance(roles, list) else []
        )
        if not granted:
            raise Unauthorized(
                "the token carries none of the roles WhatsApp.Read, WhatsApp.Send, WhatsApp.Admin",
                code="no_role",
            )
        principal = claims.get("oid") or claims.get("sub") or "unknown"
        return Caller(f"entra:{principal}", max(granted))

    def _stale(self) -> bool:
        return self._clock() - self._fetched_at > self.KEYS_MAX_AGE_SECONDS

    async def _key(self, kid: str) -> Any:
        if kid not in self._keys or self._stale():
            async with self._lock:
                # Re-checked under the lock: requests that waited for a fetch must not repeat it.
                stale = self._stale()
                if (kid not in self._keys or stale) and (
                    self._clock() - self._fetched_at > self.REFRESH_MIN_SECONDS or stale
                ):
                    await self._fetch_keys()
        try:
            return self._keys[kid]
        except KeyError:
            if self._unreachable:
                # Not the caller's fault: the token may well be valid.
                raise Unavailable(
                    "Entra ID's signing keys cannot be fetched; retry later",
                    code="entra_unreachable",
                    headers={"Retry-After": str(int(self.RETRY_AFTER_FAILURE_SECONDS))},
                ) from None
            raise Unauthorized("the token's signing key is unknown", code="invalid_token") from None

    async def _fetch_keys(self) -> None:
        self._fetched_at = self._clock()
        try:
            response = await self._http.get(self._jwks_url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as error:
            logger.warning("could not fetch Entra ID signing keys: %s", type(error).__name__)
            self._fetched_at -= self.REFRESH_MIN_SECONDS - self.RETRY_AFTER_FAILURE_SECONDS
            self._unreachable = True
            return
        self._unreachable = False
        keys: dict[str, Any] = {}
        listed = document.get("keys") if isinstance(document, dict) else None
        for jwk in listed if isinstance(listed, list) else []:
            if not isinstance(jwk, dict):
                continue
            try:
                parsed = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue
            if parsed.key_id:
                keys[parsed.key_id] = parsed.key
        self._keys = keys


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Caller`, or raises 401."""

    def __init__(
        self,
        *,
        api_keys: Iterable[Secret] = (),
        read_keys: Iterable[Secret] = (),
        entra: EntraTokenVerifier | None = None,
    ) -> None:
        self._keys = _KeyRing(api_keys, read_keys)
        self._entra = entra

    async def authenticate(self, authorization: str | None) -> Caller:
        if authorization is None or not authorization.strip():
            raise Unauthorized(
                "an Authorization: Bearer header is required", code="missing_credentials"
            )
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized(
                "use Authorization: Bearer <key or token>", code="missing_credentials"
            )
        caller = self._keys.match(credential)
        if caller is not None:
            return caller
        if self._entra is not None and credential.count(".") == 2:
            return await self._entra.verify(credential)
        raise Unauthorized("the key is not valid", code="invalid_key")
