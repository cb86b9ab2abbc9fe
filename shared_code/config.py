"""Typed settings, built once from the environment (and Key Vault). No other module reads os.environ.

Setting names are the seed specification's (``WHATSAPP_*``) plus the bridge's own. Secrets
(``SECRET_SETTINGS``) come through :mod:`shared_code.secrets`. A missing required setting raises
:class:`ConfigurationError` naming every missing one at once, so a deployment fails at start with
one readable message instead of a ``KeyError`` on the first webhook.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from shared_code.orchestrator.agent_routing import AgentRoutingRule, parse_routing_rules
from shared_code.orchestrator.agents import AgentSettings
from shared_code.policy import (
    DEFAULT_HANDOFF_KEYWORDS,
    DEFAULT_OPT_IN_KEYWORDS,
    DEFAULT_OPT_OUT_KEYWORDS,
    PolicySettings,
    WindowTemplate,
    parse_keywords,
)
from shared_code.ratelimit import RateLimitPolicy
from shared_code.retry_policy import RetryPolicy
from shared_code.secrets import (
    DEFAULT_SECRET_TTL_SECONDS,
    EnvironmentSecrets,
    KeyVaultSecrets,
    Secret,
    SecretList,
    SecretSource,
    split_secrets,
)
from shared_code.telemetry import TelemetrySettings

__all__ = [
    "DEFAULT_GRAPH_BASE_URL",
    "SECRET_SETTINGS",
    "ConfigurationError",
    "Settings",
    "load_settings",
]

DEFAULT_API_VERSION = "v18.0"
DEFAULT_GRAPH_BASE_URL = "https://graph.facebook.com"
DEFAULT_INBOUND_QUEUE = "inbound-events"
DEFAULT_OUTBOUND_QUEUE = "outbound-messages"
DEFAULT_DATABASE_POOL_MAX_SIZE = 4

SECRET_SETTINGS = (
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_WEBHOOK_VERIFY_TOKEN",
    "DATABASE_URL",
    "OPENAI_API_KEY",
    "AGENT_HTTP_SECRET",
    "MANAGEMENT_API_KEYS",
    "MANAGEMENT_API_READ_KEYS",
    "MANAGEMENT_CURSOR_SECRET",
)

BusBackend = Literal["azure", "local"]
T = TypeVar("T")


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceBusSettings:
    """How to reach Azure Service Bus: the same ``ServiceBusConnection`` settings the triggers use."""

    connection_string: Secret | None = None
    fully_qualified_namespace: str | None = None
    managed_identity_client_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagementSettings:
    """Who may call the management API, and how its page cursors are signed."""

    # Bearer keys: full access, and read-only (GET). None configured means no key is accepted.
    # From Key Vault they follow its rotations (a SecretList), else a tuple.
    api_keys: Sequence[Secret] = ()
    read_keys: Sequence[Secret] = ()
    # Microsoft Entra ID access tokens are accepted too when both are set.
    entra_tenant_id: str | None = None
    entra_audience: str | None = None
    # Where the tenant's signing keys and issuer live; other than Entra's only in tests.
    entra_authority: str = "https://login.microsoftonline.com"
    # Signs pagination cursors so a client cannot forge one; defaults to a key derived from the
    # app secret, so every instance of a deployment agrees without another setting.
    cursor_secret: Secret | None = None


# Meta's first business-initiated messaging tier: unique users outside the customer-service
# window in a moving 24 hours.
DEFAULT_BUSINESS_INITIATED_DAILY_LIMIT = 250


@dataclass(frozen=True, slots=True)
class BusinessInitiatedLimit:
    """Unique users a business number may start conversations with per moving 24 h."""

    default: int = DEFAULT_BUSINESS_INITIATED_DAILY_LIMIT
    per_number: Mapping[str, int] = field(default_factory=dict)

    def for_number(self, phone_number_id: str) -> int:
        return self.per_number.get(phone_number_id, self.default)

    @classmethod
    def parse(cls, raw: str | None) -> BusinessInitiatedLimit:
        """``"1000"`` for every number, or ``{"default": 250, "<phone_number_id>": 2000}``."""
        if raw is None:
            return cls()
        if raw.strip().lstrip("-").isdigit():
            return cls(default=_at_least_one(int(raw), "the limit"))
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError("must be an integer or a JSON object of integers") from None
        if not isinstance(data, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in data.values()
        ):
            raise ValueError("must be an integer or a JSON object of integers")
        default = _at_least_one(
            data.pop("default", DEFAULT_BUSINESS_INITIATED_DAILY_LIMIT), "default"
        )
        return cls(default, {str(k): _at_least_one(v, str(k)) for k, v in data.items()})


def _at_least_one(value: int, name: str) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    whatsapp_access_token: Secret
    whatsapp_phone_number_id: str
    whatsapp_business_account_id: str | None
    whatsapp_webhook_verify_token: Secret
    whatsapp_app_secret: Secret
    whatsapp_api_version: str = DEFAULT_API_VERSION
    whatsapp_graph_base_url: str = DEFAULT_GRAPH_BASE_URL
    # How long a send waits for Meta's answer; past it the send is ambiguous (see sending.py).
    whatsapp_graph_timeout_seconds: float = 15.0
    database_url: Secret
    # Connections per worker process. Async code needs few, and each one is a PostgreSQL backend:
    # with 10 per process, bench/sender's 4 workers kept 40 backends taking turns (the pool hands
    # out its least recently used connection) on a 2-core server and sent 72 to 100.3 % of a
    # 1,000/s cap (8 of 13 runs under 98 %); with 4, 98.3 to 100.4 % in every run.
    database_pool_max_size: int = DEFAULT_DATABASE_POOL_MAX_SIZE
    # The password of each database connection is a Microsoft Entra ID access token of the app's
    # identity (Azure Database for PostgreSQL); DATABASE_URL then holds none.
    database_entra_auth: bool = False
    key_vault_url: str | None = None
    # How long a secret read from Key Vault is used before it is read again (rotation).
    key_vault_secret_ttl_seconds: float = DEFAULT_SECRET_TTL_SECONDS
    # The user-assigned managed identity's client id: Key Vault and PostgreSQL tokens.
    azure_client_id: str | None = None
    # The Key Vault store behind the secrets (None without KEY_VAULT_URL); closed with the services.
    secret_store: KeyVaultSecrets | None = field(default=None, repr=False, compare=False)
    bus_backend: BusBackend = "azure"
    service_bus: ServiceBusSettings = ServiceBusSettings()
    inbound_queue_name: str = DEFAULT_INBOUND_QUEUE
    outbound_queue_name: str = DEFAULT_OUTBOUND_QUEUE
    outbox_sweep_min_age_seconds: int = 30
    # Refused publishes of one webhook event before the sweeper marks it failed (shared_code/outbox.py).
    outbox_max_publish_attempts: int = 10
    agents: AgentSettings = field(default_factory=AgentSettings)
    agent_routing_rules: tuple[AgentRoutingRule, ...] = ()
    rate_limits: RateLimitPolicy = field(default_factory=RateLimitPolicy)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    mark_as_read: bool = True
    # Opt-out, handoff, customer-service window, idle close and retention (shared_code/policy.py).
    policy: PolicySettings = field(default_factory=PolicySettings)
    business_initiated_limit: BusinessInitiatedLimit = field(default_factory=BusinessInitiatedLimit)
    # How old the cached template catalogue may grow before the timer reads it again.
    template_refresh_minutes: int = 15
    management: ManagementSettings = ManagementSettings()
    # Exporters of traces, logs and metrics (shared_code/telemetry.py); none by default.
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, secrets: SecretSource | None = None
    ) -> Settings:
        env = dict(os.environ if environ is None else environ)
        reader = _Reader(env, secrets or _secret_source(env))
        bus_backend = reader.choice("BUS_BACKEND", ("azure", "local"), default="azure")
        service_bus = ServiceBusSettings(
            connection_string=_optional_secret(env.get("ServiceBusConnection")),
            fully_qualified_namespace=_optional(
                env.get("ServiceBusConnection__fullyQualifiedNamespace")
            ),
            managed_identity_client_id=_optional(env.get("ServiceBusConnection__clientId")),
        )
        if (
            bus_backend == "azure"
            and service_bus.connection_string is None
            and service_bus.fully_qualified_namespace is None
        ):
            reader.missing.append(
                "ServiceBusConnection__fullyQualifiedNamespace (or ServiceBusConnection)"
            )
        settings = cls(
            whatsapp_access_token=reader.secret("WHATSAPP_ACCESS_TOKEN"),
            whatsapp_phone_number_id=reader.required("WHATSAPP_PHONE_NUMBER_ID"),
            whatsapp_business_account_id=reader.optional("WHATSAPP_BUSINESS_ACCOUNT_ID"),
            whatsapp_webhook_verify_token=reader.secret("WHATSAPP_WEBHOOK_VERIFY_TOKEN"),
            whatsapp_app_secret=reader.secret("WHATSAPP_APP_SECRET"),
            whatsapp_api_version=reader.optional("WHATSAPP_API_VERSION") or DEFAULT_API_VERSION,
            whatsapp_graph_base_url=(
                reader.optional("WHATSAPP_GRAPH_BASE_URL") or DEFAULT_GRAPH_BASE_URL
            ).rstrip("/"),
            whatsapp_graph_timeout_seconds=reader.number(
                "WHATSAPP_GRAPH_TIMEOUT_SECONDS", default=15.0, minimum=0.1
            ),
            database_url=reader.secret("DATABASE_URL"),
            database_pool_max_size=reader.integer(
                "DATABASE_POOL_MAX_SIZE", default=DEFAULT_DATABASE_POOL_MAX_SIZE, minimum=2
            ),
            database_entra_auth=_database_entra_auth(reader),
            key_vault_url=reader.optional("KEY_VAULT_URL"),
            key_vault_secret_ttl_seconds=_secret_ttl(reader),
            azure_client_id=reader.optional("AZURE_CLIENT_ID"),
            secret_store=reader.secret_store,
            bus_backend=bus_backend,
            service_bus=service_bus,
            inbound_queue_name=reader.optional("INBOUND_QUEUE_NAME") or DEFAULT_INBOUND_QUEUE,
            outbound_queue_name=reader.optional("OUTBOUND_QUEUE_NAME") or DEFAULT_OUTBOUND_QUEUE,
            outbox_sweep_min_age_seconds=reader.integer(
                "OUTBOX_SWEEP_MIN_AGE_SECONDS", default=30, minimum=1
            ),
            outbox_max_publish_attempts=reader.integer(
                "OUTBOX_MAX_PUBLISH_ATTEMPTS", default=10, minimum=1
            ),
            agents=_agent_settings(reader),
            agent_routing_rules=reader.parsed("AGENT_ROUTING_RULES", parse_routing_rules, ()),
            rate_limits=reader.parsed("RATE_LIMITS", RateLimitPolicy.parse, RateLimitPolicy()),
            retry_policy=RetryPolicy(
                max_attempts=reader.integer("SENDER_MAX_ATTEMPTS", default=8, minimum=1),
                backoff_base_seconds=reader.number(
                    "SENDER_BACKOFF_BASE_SECONDS", default=2.0, minimum=0.01
                ),
                backoff_max_seconds=reader.number(
                    "SENDER_BACKOFF_MAX_SECONDS", default=300.0, minimum=0.01
                ),
                confirmation_wait_seconds=reader.number(
                    "SENDER_CONFIRMATION_WAIT_SECONDS", default=60.0, minimum=0.1
                ),
                confirmation_max_wait_seconds=reader.number(
                    "SENDER_CONFIRMATION_MAX_WAIT_SECONDS", default=3600.0, minimum=0.1
                ),
            ),
            mark_as_read=reader.boolean("WHATSAPP_MARK_AS_READ", default=True),
            policy=_policy_settings(reader),
            business_initiated_limit=reader.parsed(
                "BUSINESS_INITIATED_DAILY_LIMIT",
                BusinessInitiatedLimit.parse,
                BusinessInitiatedLimit(),
            ),
            template_refresh_minutes=reader.integer(
                "TEMPLATE_REFRESH_MINUTES", default=15, minimum=1
            ),
            management=_management_settings(reader),
            telemetry=TelemetrySettings(
                connection_string=reader.optional("APPLICATIONINSIGHTS_CONNECTION_STRING"),
                authentication_string=reader.optional("APPLICATIONINSIGHTS_AUTHENTICATION_STRING"),
                client_id=reader.optional("AZURE_CLIENT_ID"),
                otlp_endpoint=reader.optional("OTEL_EXPORTER_OTLP_ENDPOINT"),
                console=reader.boolean("OTEL_TRACES_CONSOLE", default=False),
                service_name=reader.optional("OTEL_SERVICE_NAME") or "whatsapp-bridge",
            ),
        )
        reader.raise_if_incomplete()
        return settings


def _agent_settings(reader: _Reader) -> AgentSettings:
    defaults = AgentSettings()
    rules_file = reader.optional("AGENT_RULES_FILE")
    return AgentSettings(
        default_agent=reader.optional("WHATSAPP_DEFAULT_AGENT") or defaults.default_agent,
        timeout_seconds=reader.number(
            "AGENT_TIMEOUT_SECONDS", default=defaults.timeout_seconds, minimum=0.1
        ),
        fallback_message=reader.optional("AGENT_FALLBACK_MESSAGE") or defaults.fallback_message,
        history_limit=reader.integer(
            "AGENT_HISTORY_LIMIT", default=defaults.history_limit, minimum=0
        ),
        rules_file=Path(rules_file) if rules_file else None,
        openai_base_url=reader.optional("OPENAI_BASE_URL"),
        openai_model=reader.optional("OPENAI_MODEL"),
        openai_api_key=reader.optional_secret("OPENAI_API_KEY"),
        openai_api_version=reader.optional("OPENAI_API_VERSION"),
        openai_system_prompt=(
            reader.optional("OPENAI_SYSTEM_PROMPT") or defaults.openai_system_prompt
        ),
        http_agent_url=reader.optional("AGENT_HTTP_URL"),
        http_agent_secret=reader.optional_secret("AGENT_HTTP_SECRET"),
    )


def _management_settings(reader: _Reader) -> ManagementSettings:
    tenant = reader.optional("MANAGEMENT_ENTRA_TENANT_ID")
    audience = reader.optional("MANAGEMENT_ENTRA_AUDIENCE")
    if (tenant is None) != (audience is None):
        reader.malformed.append(
            "MANAGEMENT_ENTRA_TENANT_ID and MANAGEMENT_ENTRA_AUDIENCE must be set together"
        )
        tenant = audience = None
    return ManagementSettings(
        api_keys=reader.secret_list("MANAGEMENT_API_KEYS"),
        read_keys=reader.secret_list("MANAGEMENT_API_READ_KEYS"),
        entra_tenant_id=tenant,
        entra_audience=audience,
        entra_authority=(
            reader.optional("MANAGEMENT_ENTRA_AUTHORITY") or "https://login.microsoftonline.com"
        ).rstrip("/"),
        cursor_secret=reader.optional_secret("MANAGEMENT_CURSOR_SECRET"),
    )


def _policy_settings(reader: _Reader) -> PolicySettings:
    defaults = PolicySettings()

    def keywords(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        return reader.parsed(name, lambda raw: parse_keywords(raw, default), default)

    return PolicySettings(
        opt_out_keywords=keywords("OPT_OUT_KEYWORDS", DEFAULT_OPT_OUT_KEYWORDS),
        opt_in_keywords=keywords("OPT_IN_KEYWORDS", DEFAULT_OPT_IN_KEYWORDS),
        handoff_keywords=keywords("HANDOFF_KEYWORDS", DEFAULT_HANDOFF_KEYWORDS),
        opt_out_confirmation=(
            reader.optional("OPT_OUT_CONFIRMATION") or defaults.opt_out_confirmation
        ),
        opt_in_confirmation=reader.optional("OPT_IN_CONFIRMATION") or defaults.opt_in_confirmation,
        handoff_notice=reader.optional("HANDOFF_NOTICE"),
        window_closed_template=reader.parsed("WINDOW_CLOSED_TEMPLATE", WindowTemplate.parse, None),
        idle_close_hours=reader.number(
            "CONVERSATION_IDLE_CLOSE_HOURS", default=defaults.idle_close_hours, minimum=0.01
        ),
        retention_days=reader.integer(
            "WHATSAPP_RETENTION_DAYS", default=defaults.retention_days, minimum=1
        ),
    )


def _database_entra_auth(reader: _Reader) -> bool:
    enabled = reader.boolean("DATABASE_ENTRA_AUTH", default=False)
    url = reader.peek_secret("DATABASE_URL")
    if enabled and url:
        from psycopg import Error, conninfo

        try:
            has_password = bool(conninfo.conninfo_to_dict(url).get("password"))
        except Error:
            reader.malformed.append("DATABASE_URL is not a PostgreSQL connection URL")
        else:
            if has_password:
                reader.malformed.append(
                    "DATABASE_URL must hold no password when DATABASE_ENTRA_AUTH is true "
                    "(the password is an access token of the app's identity)"
                )
    return enabled


def _secret_ttl(reader: _Reader) -> float:
    return reader.number(
        "KEY_VAULT_SECRET_TTL_SECONDS", default=DEFAULT_SECRET_TTL_SECONDS, minimum=1.0
    )


async def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings, with every secret read from Key Vault first when ``KEY_VAULT_URL`` is set.

    The vault is read asynchronously, all secrets at once, before the (synchronous) settings are
    built from its cache; the returned settings own the store (``secret_store``), which keeps
    refreshing them (see :mod:`shared_code.secrets`) until the services close it.
    """
    env = dict(os.environ if environ is None else environ)
    vault_url = _optional(env.get("KEY_VAULT_URL"))
    if vault_url is None:
        return Settings.from_environment(env)
    reader = _Reader(env, EnvironmentSecrets(env))
    ttl_seconds = _secret_ttl(reader)
    reader.raise_if_incomplete()
    store = KeyVaultSecrets.for_vault(
        vault_url,
        client_id=reader.optional("AZURE_CLIENT_ID"),
        ttl_seconds=ttl_seconds,
        fallback=EnvironmentSecrets(env),
    )
    try:
        await store.load(SECRET_SETTINGS)
        return Settings.from_environment(env, secrets=store)
    except BaseException:
        await store.aclose()
        raise


def _secret_source(env: Mapping[str, str]) -> SecretSource:
    if _optional(env.get("KEY_VAULT_URL")) is not None:
        # Key Vault is read asynchronously: load_settings() does it, then passes the store.
        raise ConfigurationError("KEY_VAULT_URL is set: build the settings with load_settings()")
    return EnvironmentSecrets(env)


def _optional(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _optional_secret(value: str | None) -> Secret | None:
    value = _optional(value)
    return Secret(value) if value else None


class _Reader:
    """Collects every problem before raising, so one start-up failure names them all."""

    def __init__(self, env: Mapping[str, str], secrets: SecretSource) -> None:
        self._env = env
        self._secrets = secrets
        # Secrets of a Key Vault store follow its refreshes; others are fixed.
        self.secret_store = secrets if isinstance(secrets, KeyVaultSecrets) else None
        self.missing: list[str] = []
        self.malformed: list[str] = []

    def optional(self, name: str) -> str | None:
        return _optional(self._env.get(name))

    def required(self, name: str) -> str:
        value = self.optional(name)
        if value is None:
            self.missing.append(name)
            return ""
        return value

    def peek_secret(self, name: str) -> str | None:
        return self._secrets.get(name)

    def _secret(self, name: str, value: str) -> Secret:
        if self.secret_store is not None:
            return self.secret_store.secret(name, value)
        return Secret(value)

    def secret(self, name: str) -> Secret:
        value = self._secrets.get(name)
        if not value:
            self.missing.append(name)
            return Secret("")
        return self._secret(name, value)

    def optional_secret(self, name: str) -> Secret | None:
        value = self._secrets.get(name)
        return self._secret(name, value) if value else None

    def secret_list(self, name: str) -> Sequence[Secret]:
        """A comma-separated list of secrets (e.g. keys being rotated: old and new together)."""
        value = self._secrets.get(name) or ""
        if self.secret_store is not None:
            return SecretList(self._secret(name, value))
        return split_secrets(value)

    def number(self, name: str, *, default: float, minimum: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.malformed.append(f"{name} must be a number")
            return default
        if value < minimum:
            self.malformed.append(f"{name} must be at least {minimum}")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        self.malformed.append(f"{name} must be true or false")
        return default

    def parsed(self, name: str, parse: Callable[[str | None], T], default: T) -> T:
        try:
            return parse(self.optional(name))
        except ValueError as error:
            self.malformed.append(f"{name}: {error}")
            return default

    def integer(self, name: str, *, default: int, minimum: int) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.malformed.append(f"{name} must be an integer")
            return default
        if value < minimum:
            self.malformed.append(f"{name} must be at least {minimum}")
        return value

    def choice(self, name: str, allowed: tuple[str, ...], *, default: str) -> BusBackend:
        value = (self.optional(name) or default).lower()
        if value not in allowed:
            self.malformed.append(f"{name} must be one of {', '.join(allowed)}")
            value = default
        return "local" if value == "local" else "azure"

    def raise_if_incomplete(self) -> None:
        problems = []
        if self.missing:
            problems.append("missing required setting(s): " + ", ".join(self.missing))
        problems.extend(self.malformed)
        if problems:
            raise ConfigurationError("; ".join(problems))
