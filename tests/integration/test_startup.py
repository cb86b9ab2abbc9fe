"""Start-up against the real PostgreSQL: the configuration is checked before anything opens, a
start that fails part way closes what it opened, and Entra ID tokens are database passwords."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from psycopg import OperationalError

from shared_code import identity, runtime
from shared_code.config import ConfigurationError, Settings
from shared_code.db.entra import DATABASE_TOKEN_SCOPE, DatabaseTokenProvider
from shared_code.db.migrations import apply_migrations
from shared_code.db.pool import Pool, open_pool
from shared_code.orchestrator.agent_catalog import AgentCatalog

pytestmark = pytest.mark.integration

TOKEN_LIFETIME = 3600.0


def environment(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "WHATSAPP_ACCESS_TOKEN": "token",
        "WHATSAPP_PHONE_NUMBER_ID": "100000000000001",
        "WHATSAPP_WEBHOOK_VERIFY_TOKEN": "verify",
        "WHATSAPP_APP_SECRET": "test-app-secret",
        "WHATSAPP_GRAPH_BASE_URL": "http://127.0.0.1:9",
        "DATABASE_URL": database_url,
        "BUS_BACKEND": "local",
        **extra,
    }


@dataclass
class OpenedPools:
    pools: list[Pool]
    migrations: list[str]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> OpenedPools:
    """Counts what build_services opens: pools (the app's and the local bus's) and migrations."""
    record = OpenedPools([], [])

    async def counting_open_pool(database_url: str, **kwargs: Any) -> Pool:
        pool = await open_pool(database_url, **kwargs)
        record.pools.append(pool)
        return pool

    async def counting_migrations(database_url: str, *args: Any, **kwargs: Any) -> list[str]:
        record.migrations.append(kwargs.get("set_name", "app"))
        return await apply_migrations(database_url, *args, **kwargs)

    monkeypatch.setattr(runtime, "open_pool", counting_open_pool)
    monkeypatch.setattr(runtime, "apply_migrations", counting_migrations)
    return record


async def test_a_bad_agent_setting_fails_before_any_connection(
    database_url: str, opened: OpenedPools
) -> None:
    # Valid settings on their own; the default agent they name cannot be built.
    settings = Settings.from_environment(
        environment(database_url, WHATSAPP_DEFAULT_AGENT="openai", OPENAI_MODEL="gpt-4o-mini")
    )
    with pytest.raises(ConfigurationError, match="OPENAI_BASE_URL"):
        await runtime.build_services(settings)
    assert opened.pools == [] and opened.migrations == []


async def test_an_unreadable_rules_file_fails_before_any_connection(
    database_url: str, opened: OpenedPools, tmp_path: Any
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text("{not json", encoding="utf-8")
    settings = Settings.from_environment(environment(database_url, AGENT_RULES_FILE=str(rules)))
    with pytest.raises(ConfigurationError):
        await runtime.build_services(settings)
    assert opened.pools == []


async def test_a_start_failing_after_the_pools_opened_closes_them(
    database_url: str, opened: OpenedPools, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    original_close = runtime.GraphApiClient.aclose

    async def failing_catalog_start(self: AgentCatalog) -> list[Any]:
        raise OSError("the catalogue could not be read")

    async def recording_close(self: runtime.GraphApiClient) -> None:
        closed.append("graph")
        await original_close(self)

    monkeypatch.setattr(AgentCatalog, "start", failing_catalog_start)
    monkeypatch.setattr(runtime.GraphApiClient, "aclose", recording_close)
    with pytest.raises(OSError, match="catalogue"):
        await runtime.build_services(Settings.from_environment(environment(database_url)))
    assert len(opened.pools) == 2  # the app's and the local bus's
    assert all(pool.closed for pool in opened.pools)
    assert closed == ["graph"]


async def test_a_good_start_still_opens_everything(database_url: str, opened: OpenedPools) -> None:
    services = await runtime.build_services(Settings.from_environment(environment(database_url)))
    try:
        assert opened.migrations == ["app", "local_bus"]
        assert len(opened.pools) == 2 and not any(pool.closed for pool in opened.pools)
    finally:
        await services.close()
    assert all(pool.closed for pool in opened.pools)


# --- Entra ID access tokens as passwords ----------------------------------------------------------


@dataclass
class FakeAccessToken:
    token: str
    expires_on: int


class FakeCredential:
    """Stands in for the managed identity's async credential."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False
        self._clock = clock or time.time

    async def get_token(self, *scopes: str, **kwargs: Any) -> FakeAccessToken:
        self.scopes.append(scopes)
        await asyncio.sleep(0)
        return FakeAccessToken(
            f"entra-token-{len(self.scopes)}", int(self._clock() + TOKEN_LIFETIME)
        )

    async def close(self) -> None:
        self.closed = True


async def test_tokens_are_cached_until_shortly_before_they_expire() -> None:
    now = [1_000_000.0]
    credential = FakeCredential(lambda: now[0])
    provider = DatabaseTokenProvider(credential, clock=lambda: now[0])
    # Concurrent connections share one request.
    tokens = await asyncio.gather(*(provider() for _ in range(5)))
    assert tokens == ["entra-token-1"] * 5
    assert credential.scopes == [(DATABASE_TOKEN_SCOPE,)]
    now[0] += TOKEN_LIFETIME - 301
    assert await provider() == "entra-token-1"
    now[0] += 2  # within five minutes of the expiry
    assert await provider() == "entra-token-2"


class PasswordDemandingServer:
    """Just enough of PostgreSQL's wire protocol to ask for a cleartext password and keep it:
    the local server trusts every connection and would never see the token."""

    def __init__(self, *, accept: bool) -> None:
        self.accept = accept
        self.passwords: list[str] = []
        self.users: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PasswordDemandingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, user: str = "bridge-identity") -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"postgresql://{user}@127.0.0.1:{port}/app?sslmode=disable&gssencmode=disable"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                if code in (80877103, 80877104):  # SSL / GSS encryption requests: no
                    writer.write(b"N")
                    continue
                startup = await reader.readexactly(length - 8)
                parts = startup.split(b"\0")
                self.users.append(parts[parts.index(b"user") + 1].decode())
                break
            writer.write(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            await writer.drain()
            kind, length = struct.unpack("!ci", await reader.readexactly(5))
            assert kind == b"p"
            self.passwords.append((await reader.readexactly(length - 4)).rstrip(b"\0").decode())
            if not self.accept:
                fields = b"SFATAL\0C28P01\0Mtoken refused by the test server\0\0"
                writer.write(b"E" + struct.pack("!i", 4 + len(fields)) + fields)
                await writer.drain()
                return
            writer.write(b"R" + struct.pack("!ii", 8, 0))  # AuthenticationOk
            for name, value in (
                (b"server_version", b"15.0"),
                (b"client_encoding", b"UTF8"),
                (b"standard_conforming_strings", b"on"),
                (b"integer_datetimes", b"on"),
            ):
                body = name + b"\0" + value + b"\0"
                writer.write(b"S" + struct.pack("!i", 4 + len(body)) + body)
            writer.write(b"K" + struct.pack("!iii", 12, 1, 2))
            writer.write(b"Z" + struct.pack("!ic", 5, b"I"))
            await writer.drain()
            await reader.read()  # until the client terminates
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_migrations_log_in_with_the_token_as_password() -> None:
    credential = FakeCredential()
    provider = DatabaseTokenProvider(credential)
    async with PasswordDemandingServer(accept=False) as server:
        with pytest.raises(OperationalError):
            await apply_migrations(server.url(), password=provider)
    assert server.users == ["bridge-identity"]
    assert server.passwords == ["entra-token-1"]
    assert credential.scopes == [(DATABASE_TOKEN_SCOPE,)]


async def test_each_pool_connection_logs_in_with_the_cached_token() -> None:
    credential = FakeCredential()
    provider = DatabaseTokenProvider(credential)
    async with PasswordDemandingServer(accept=True) as server:
        pool = await open_pool(server.url(), max_size=2, password=provider)
        try:
            # The pool's kwargs are the async callable psycopg_pool awaits per connection.
            kwargs = cast(Callable[[], Awaitable[dict[str, Any]]], pool.kwargs)
            assert callable(kwargs)
            assert (await kwargs())["password"] == "entra-token-1"
            assert (await kwargs())["application_name"] == "whatsapp-bridge-bridge"
        finally:
            await pool.close(timeout=2)
    assert server.passwords and set(server.passwords) == {"entra-token-1"}
    assert len(credential.scopes) == 1


async def test_services_start_with_entra_auth_against_the_real_server(
    database_url: str, opened: OpenedPools, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The local server trusts every connection: this shows the token path runs end to end and
    # the pools work with it; the password itself is checked by the tests above.
    credential = FakeCredential()
    client_ids: list[str | None] = []

    def fake_credential(client_id: str | None) -> FakeCredential:
        client_ids.append(client_id)
        return credential

    monkeypatch.setattr(identity, "azure_credential", fake_credential)
    settings = Settings.from_environment(
        environment(database_url, DATABASE_ENTRA_AUTH="true", AZURE_CLIENT_ID="identity-id")
    )
    services = await runtime.build_services(settings)
    try:
        assert client_ids == ["identity-id"]
        assert credential.scopes == [(DATABASE_TOKEN_SCOPE,)]
        async with services.pool.connection() as conn:
            await conn.execute("SELECT 1")
    finally:
        await services.close()
    assert credential.closed
