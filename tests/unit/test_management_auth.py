"""Management API authentication: Bearer keys, and Microsoft Entra ID tokens checked offline.

Entra ID is stood in for by a key pair made here and a JWKS served through
``httpx.MockTransport``: the verifier fetches it exactly as it would from
``{authority}/{tenant}/discovery/v2.0/keys``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared_code.management.auth import (
    Access,
    Authenticator,
    Caller,
    EntraTokenVerifier,
    actor_of_key,
)
from shared_code.management.problems import Unauthorized, Unavailable
from shared_code.secrets import Secret

FULL_KEYS = ("old-full-key-0123456789", "new-full-key-9876543210")
READ_KEY = "read-key-abcdefghijklmnop"

TENANT = "11111111-2222-3333-4444-555555555555"
OTHER_TENANT = "99999999-8888-7777-6666-555555555555"
AUDIENCE = "api://whatsapp-bridge"
AUTHORITY = "https://login.entra.test"
JWKS_URL = f"{AUTHORITY}/{TENANT}/discovery/v2.0/keys"
ISSUER_V2 = f"{AUTHORITY}/{TENANT}/v2.0"
ISSUER_V1 = f"https://sts.windows.net/{TENANT}/"


def key_authenticator(entra: EntraTokenVerifier | None = None) -> Authenticator:
    return Authenticator(
        api_keys=[Secret(key) for key in FULL_KEYS],
        read_keys=[Secret(READ_KEY)],
        entra=entra,
    )


# --- management keys ------------------------------------------------------------------------


@pytest.mark.parametrize("key", FULL_KEYS)
async def test_every_full_key_of_a_rotation_list_gives_full_access(key: str) -> None:
    caller = await key_authenticator().authenticate(f"Bearer {key}")
    assert caller == Caller(actor_of_key(key), Access.ADMIN)
    assert caller.may(Access.ADMIN) and caller.may(Access.SEND) and caller.may(Access.READ)


async def test_a_read_key_gives_read_access_only() -> None:
    caller = await key_authenticator().authenticate(f"Bearer {READ_KEY}")
    assert caller.access is Access.READ
    assert caller.may(Access.READ)
    assert not caller.may(Access.SEND)
    assert not caller.may(Access.ADMIN)


@pytest.mark.parametrize(
    "header",
    [
        f"bearer {FULL_KEYS[0]}",
        f"BEARER {FULL_KEYS[0]}",
        f"  Bearer   {FULL_KEYS[0]}  ",
    ],
)
async def test_the_scheme_is_case_insensitive_and_spaces_around_are_ignored(header: str) -> None:
    caller = await key_authenticator().authenticate(header)
    assert caller.access is Access.ADMIN


@pytest.mark.parametrize(
    ("header", "code"),
    [
        pytest.param(None, "missing_credentials", id="missing header"),
        pytest.param("", "missing_credentials", id="empty header"),
        pytest.param("Bearer", "missing_credentials", id="scheme only"),
        pytest.param("Bearer ", "missing_credentials", id="empty key"),
        pytest.param("Bearer    ", "missing_credentials", id="blank key"),
        pytest.param("Bearer wrong-key", "invalid_key", id="wrong key"),
        pytest.param(f"Bearer {FULL_KEYS[0]}x", "invalid_key", id="longer key"),
        pytest.param(f"Bearer {FULL_KEYS[0][:-1]}", "invalid_key", id="shorter prefix"),
        pytest.param(f"Bearer {FULL_KEYS[0][:4]}", "invalid_key", id="short prefix"),
        pytest.param(f"Bearer {READ_KEY}{READ_KEY}", "invalid_key", id="read key twice"),
        pytest.param(f"Bearer {FULL_KEYS[0]},{FULL_KEYS[1]}", "invalid_key", id="key list"),
        pytest.param(f"Bearer {FULL_KEYS[0].upper()}", "invalid_key", id="other case"),
        pytest.param(f"Basic {FULL_KEYS[0]}", "missing_credentials", id="basic scheme"),
        pytest.param(
            "Basic " + base64.b64encode(f"user:{FULL_KEYS[0]}".encode()).decode(),
            "missing_credentials",
            id="basic credentials",
        ),
        pytest.param(FULL_KEYS[0], "missing_credentials", id="key without scheme"),
        pytest.param(f"Token {FULL_KEYS[0]}", "missing_credentials", id="other scheme"),
        pytest.param("Bearer a.b.c", "invalid_key", id="jwt shape without entra"),
    ],
)
async def test_anything_but_a_configured_key_is_401(header: str | None, code: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        await key_authenticator().authenticate(header)
    assert refused.value.status == 401
    assert refused.value.code == code
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


async def test_no_configured_keys_refuse_everything() -> None:
    authenticator = Authenticator()
    for header in ("Bearer ", "Bearer anything", f"Bearer {FULL_KEYS[0]}"):
        with pytest.raises(Unauthorized):
            await authenticator.authenticate(header)


async def test_actor_ids_name_the_key_without_holding_it() -> None:
    authenticator = key_authenticator()
    actors = set()
    for key in (*FULL_KEYS, READ_KEY):
        caller = await authenticator.authenticate(f"Bearer {key}")
        assert caller.actor.startswith("key:")
        assert key not in caller.actor
        # Not even a recognisable piece of it.
        assert not any(key[i : i + 6] in caller.actor for i in range(len(key) - 5))
        assert caller.actor == actor_of_key(key), "the same key is the same actor every time"
        actors.add(caller.actor)
    assert len(actors) == 3, "each key is a distinct actor"


async def test_a_refusal_never_quotes_the_presented_credential() -> None:
    presented = "secret-looking-but-wrong-key"
    with pytest.raises(Unauthorized) as refused:
        await key_authenticator().authenticate(f"Bearer {presented}")
    assert presented not in refused.value.to_json().decode()
    assert presented not in str(refused.value)


# --- Entra ID tokens ------------------------------------------------------------------------


def _private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNING_KEY = _private_key()
ROTATED_KEY = _private_key()
FORGER_KEY = _private_key()


def jwk_of(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "kty": "RSA"}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER_V2,
        "aud": AUDIENCE,
        "tid": TENANT,
        "oid": "6a1e1a3c-0000-4000-8000-00000000beef",
        "sub": "subject-1",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "roles": ["WhatsApp.Read"],
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def token(key: rsa.RSAPrivateKey = SIGNING_KEY, kid: str = "key-1", **claim_overrides: Any) -> str:
    return jwt.encode(claims(**claim_overrides), key, algorithm="RS256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


@dataclass
class FakeEntra:
    """The tenant's JWKS endpoint, counting its requests."""

    jwks: list[dict[str, Any]] = field(default_factory=lambda: [jwk_of(SIGNING_KEY, "key-1")])
    requests: list[str] = field(default_factory=list)
    failing: bool = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.failing:
            return httpx.Response(503)
        if str(request.url) != JWKS_URL:
            return httpx.Response(404)
        return httpx.Response(200, json={"keys": self.jwks})


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def entra() -> FakeEntra:
    return FakeEntra()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(entra: FakeEntra, clock: Clock) -> Iterator[EntraTokenVerifier]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(entra.handle))
    yield EntraTokenVerifier(
        tenant_id=TENANT, audience=AUDIENCE, http=http, authority=AUTHORITY, clock=clock
    )


@pytest.mark.parametrize(
    ("roles", "access"),
    [
        (["WhatsApp.Read"], Access.READ),
        (["WhatsApp.Send"], Access.SEND),
        (["WhatsApp.Admin"], Access.ADMIN),
        (["WhatsApp.Read", "WhatsApp.Admin"], Access.ADMIN),
        (["Other.Role", "WhatsApp.Send"], Access.SEND),
    ],
)
async def test_a_valid_token_gives_the_access_of_its_highest_role(
    verifier: EntraTokenVerifier, roles: list[str], access: Access
) -> None:
    caller = await verifier.verify(token(roles=roles))
    assert caller.access is access
    assert caller.actor == "entra:6a1e1a3c-0000-4000-8000-00000000beef"


async def test_v1_tokens_with_the_sts_issuer_are_accepted(verifier: EntraTokenVerifier) -> None:
    caller = await verifier.verify(token(iss=ISSUER_V1))
    assert caller.access is Access.READ


async def test_the_actor_falls_back_to_the_subject(verifier: EntraTokenVerifier) -> None:
    caller = await verifier.verify(token(oid=None))
    assert caller.actor == "entra:subject-1"


async def test_the_authenticator_passes_tokens_to_entra_and_keys_still_work(
    verifier: EntraTokenVerifier,
) -> None:
    authenticator = key_authenticator(verifier)
    caller = await authenticator.authenticate(f"Bearer {token(roles=['WhatsApp.Send'])}")
    assert caller.access is Access.SEND and caller.actor.startswith("entra:")
    assert (await authenticator.authenticate(f"Bearer {READ_KEY}")).access is Access.READ
    with pytest.raises(Unauthorized):
        await authenticator.authenticate("Bearer not-a-key")


def _expired() -> dict[str, Any]:
    now = int(time.time())
    # Past the verifier's 60 s of leeway.
    return {"exp": now - 120, "iat": now - 3720, "nbf": now - 3720}


@pytest.mark.parametrize(
    ("token_of", "code"),
    [
        pytest.param(lambda: token(**_expired()), "token_expired", id="expired"),
        pytest.param(lambda: token(aud="api://another-app"), "invalid_token", id="audience"),
        pytest.param(lambda: token(aud=None), "invalid_token", id="no audience"),
        pytest.param(lambda: token(iss=f"{AUTHORITY}/{TENANT}/v1.0"), "invalid_token", id="issuer"),
        pytest.param(lambda: token(iss=None), "invalid_token", id="no issuer"),
        pytest.param(lambda: token(exp=None), "invalid_token", id="no expiry"),
        pytest.param(
            lambda: token(iss=f"{AUTHORITY}/{OTHER_TENANT}/v2.0", tid=OTHER_TENANT),
            "invalid_token",
            id="other tenant",
        ),
        pytest.param(lambda: token(tid=OTHER_TENANT), "invalid_token", id="tid of other tenant"),
        pytest.param(
            lambda: token(nbf=int(time.time()) + 600), "invalid_token", id="not yet valid"
        ),
        pytest.param(lambda: token(roles=None), "no_role", id="no roles"),
        pytest.param(lambda: token(roles=[]), "no_role", id="empty roles"),
        pytest.param(lambda: token(roles=["Other.Role"]), "no_role", id="other roles"),
        pytest.param(lambda: token(roles="WhatsApp.Admin"), "no_role", id="roles not a list"),
        pytest.param(lambda: token(key=FORGER_KEY), "invalid_token", id="forged signature"),
        pytest.param(
            lambda: token(key=FORGER_KEY, kid="key-unknown"), "invalid_token", id="unknown kid"
        ),
        pytest.param(
            lambda: unsigned_token({"alg": "none", "kid": "key-1"}, claims(), None),
            "invalid_token",
            id="alg none",
        ),
        pytest.param(
            lambda: unsigned_token(
                {"alg": "HS256", "kid": "key-1", "typ": "JWT"},
                claims(roles=["WhatsApp.Admin"]),
                SIGNING_KEY.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            ),
            "invalid_token",
            id="HS256 with the public key as secret",
        ),
        pytest.param(lambda: "a.b.c", "invalid_token", id="not a jwt"),
        pytest.param(
            lambda: jwt.encode(claims(), SIGNING_KEY, algorithm="RS512", headers={"kid": "key-1"}),
            "invalid_token",
            id="RS512",
        ),
    ],
)
async def test_refused_tokens_are_401(
    verifier: EntraTokenVerifier, token_of: Any, code: str
) -> None:
    with pytest.raises(Unauthorized) as refused:
        await verifier.verify(token_of())
    assert refused.value.status == 401
    assert refused.value.code == code
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


async def test_keys_are_fetched_once_and_cached(
    verifier: EntraTokenVerifier, entra: FakeEntra
) -> None:
    for _ in range(5):
        await verifier.verify(token())
    assert entra.requests == [JWKS_URL]


async def test_an_unknown_key_id_refetches_once_and_then_is_rate_limited(
    verifier: EntraTokenVerifier, entra: FakeEntra, clock: Clock
) -> None:
    await verifier.verify(token())
    assert len(entra.requests) == 1
    # Entra publishes a new key; a token signed with it arrives before the refresh interval.
    entra.jwks.append(jwk_of(ROTATED_KEY, "key-2"))
    clock.now += 1
    with pytest.raises(Unauthorized):
        await verifier.verify(token(key=ROTATED_KEY, kid="key-2"))
    assert len(entra.requests) == 1, "within the refresh interval nothing is fetched"
    clock.now += EntraTokenVerifier.REFRESH_MIN_SECONDS
    caller = await verifier.verify(token(key=ROTATED_KEY, kid="key-2"))
    assert caller.access is Access.READ
    assert len(entra.requests) == 2, "one refetch for the new key"
    # A flood of forged key ids right after costs no request to Entra.
    for n in range(20):
        with pytest.raises(Unauthorized):
            await verifier.verify(token(key=FORGER_KEY, kid=f"forged-{n}"))
    assert len(entra.requests) == 2
    # The old key keeps working from the cache.
    assert (await verifier.verify(token())).access is Access.READ


async def test_keys_are_refetched_once_a_day(
    verifier: EntraTokenVerifier, entra: FakeEntra, clock: Clock
) -> None:
    await verifier.verify(token())
    clock.now += EntraTokenVerifier.KEYS_MAX_AGE_SECONDS + 1
    entra.jwks = [jwk_of(ROTATED_KEY, "key-2")]
    with pytest.raises(Unauthorized):
        await verifier.verify(token())
    assert len(entra.requests) == 2
    assert (await verifier.verify(token(key=ROTATED_KEY, kid="key-2"))).access is Access.READ
    assert len(entra.requests) == 2


async def test_an_unreachable_entra_is_retried_soon_not_at_every_request(
    verifier: EntraTokenVerifier, entra: FakeEntra, clock: Clock
) -> None:
    entra.failing = True
    for _ in range(3):
        # 503, not 401: the token may be valid, the service cannot tell yet.
        with pytest.raises(Unavailable) as refused:
            await verifier.verify(token())
        assert refused.value.status == 503 and "Retry-After" in refused.value.headers
    assert len(entra.requests) == 1
    entra.failing = False
    clock.now += EntraTokenVerifier.RETRY_AFTER_FAILURE_SECONDS + 1
    assert (await verifier.verify(token())).access is Access.READ
    assert len(entra.requests) == 2


@pytest.mark.parametrize(
    "document",
    [
        {"keys": "nope"},
        {"keys": ["not-a-jwk", 3, None]},
        {"keys": [{"kty": "RSA", "kid": "key-1"}]},
        ["not", "a", "document"],
    ],
)
async def test_a_malformed_jwks_refuses_tokens_without_crashing(
    entra: FakeEntra, clock: Clock, document: Any
) -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=document)

    http = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    verifier = EntraTokenVerifier(
        tenant_id=TENANT, audience=AUDIENCE, http=http, authority=AUTHORITY, clock=clock
    )
    with pytest.raises(Unauthorized):
        await verifier.verify(token())
