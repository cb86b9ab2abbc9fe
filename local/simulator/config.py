"""The simulator's settings: immutable values, replaced as a whole when changed at run time."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from local.settings import DEV_DEFAULTS
from local.simulator.errors import SERVER_ERRORS

__all__ = [
    "DEFAULT_DISPLAY_PHONE_NUMBER",
    "DEFAULT_PHONE_NUMBER_ID",
    "DEFAULT_WABA_ID",
    "BusinessNumber",
    "ConfigError",
    "FaultConfig",
    "SimulatorConfig",
    "apply_changes",
    "public_view",
]

# The dev host's defaults, so that `make dev` needs no settings; the display number is Meta's
# US test number format.
DEFAULT_PHONE_NUMBER_ID = DEV_DEFAULTS["WHATSAPP_PHONE_NUMBER_ID"]
DEFAULT_DISPLAY_PHONE_NUMBER = "15550783881"
DEFAULT_WABA_ID = DEV_DEFAULTS["WHATSAPP_BUSINESS_ACCOUNT_ID"]

_SECRET_FIELDS = ("app_secret", "access_token")
_MAX_RETRY_BACKOFF = 10.0


class ConfigError(ValueError):
    """A setting out of range, of the wrong type or unknown."""


@dataclass(frozen=True, kw_only=True)
class BusinessNumber:
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER

    def __post_init__(self) -> None:
        if not self.phone_number_id:
            raise ConfigError("phone_number_id must not be empty")


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Injected failures. Probabilities are per send request (or per accepted message for the
    status faults); ``*_next`` force the next N send requests to fail that way, and count down.

    Request faults, in the order they are drawn:

    - ``drop_before``: the request fails before it reaches Meta's logic. Nothing is checked,
      accepted or recorded, and the connection is closed without an HTTP answer: the client sees
      a transport error ("server disconnected") after its request went out, so for all it knows
      the message may have been sent. Drawn before the token and body checks.
    - ``server_error``: HTTP 500 with ``server_error_code`` (131000, 1 or 2); nothing is sent.
    - ``rate_limit``: Meta's 130429 (throughput), on top of the real cap; nothing is sent.
    - ``pair_limit``: Meta's 131056 (too many messages to one user), without charging the
      user's pair bucket; nothing is sent.
    - ``timeout``: after the request arrived and passed every check, the message is accepted and
      recorded (it was sent, its status webhooks follow) but the answer is held back up to
      ``hold_seconds``: the client times out without knowing.

    ``hold_seconds`` is the longest an answer is held: it is released as soon as the client
    hangs up, so it honours whatever timeout the client has (the app's
    ``WHATSAPP_GRAPH_TIMEOUT_SECONDS``) and only needs to be longer than it (the default 30 s
    is, for the app's default 15 s). Mark-as-read requests are never faulted, so a test that arms
    "next 1" knows which request it hits.

    Status faults, per accepted message: ``failed_status`` (a ``failed`` status with 131026
    instead of sent/delivered/read), ``duplicate_status`` (each status posted twice, identical
    bodies), ``out_of_order`` (``read`` posted before ``delivered``).
    """

    drop_before_probability: float = 0.0
    drop_before_next: int = 0
    server_error_probability: float = 0.0
    server_error_next: int = 0
    # 131000, 1 or 2: Meta's retryable service errors.
    server_error_code: int = 131000
    rate_limit_probability: float = 0.0
    rate_limit_next: int = 0
    pair_limit_probability: float = 0.0
    pair_limit_next: int = 0
    timeout_probability: float = 0.0
    timeout_next: int = 0
    hold_seconds: float = 30.0
    failed_status_probability: float = 0.0
    duplicate_status_probability: float = 0.0
    out_of_order_probability: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "drop_before_probability",
            "server_error_probability",
            "rate_limit_probability",
            "pair_limit_probability",
            "timeout_probability",
            "failed_status_probability",
            "duplicate_status_probability",
            "out_of_order_probability",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"faults.{name} must be between 0 and 1")
        for name in _NEXT_COUNTERS:
            if getattr(self, name) < 0:
                raise ConfigError(f"faults.{name} must not be negative")
        if self.server_error_code not in SERVER_ERRORS:
            codes = ", ".join(str(code) for code in SERVER_ERRORS)
            raise ConfigError(f"faults.server_error_code must be one of {codes}")
        _require_non_negative("faults.hold_seconds", self.hold_seconds)


_NEXT_COUNTERS = (
    "drop_before_next",
    "server_error_next",
    "rate_limit_next",
    "pair_limit_next",
    "timeout_next",
)


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    app_secret: str
    access_token: str
    # Where status and inbound-message webhooks go; None posts nothing.
    webhook_url: str | None = None
    business_numbers: tuple[BusinessNumber, ...] = (BusinessNumber(),)
    waba_id: str = DEFAULT_WABA_ID
    # Limits (see local.simulator.limits for the model).
    throughput_per_second: float = 80.0
    pair_burst: int = 45
    pair_interval_seconds: float = 6.0
    enforce_window: bool = True
    window_seconds: float = 24 * 3600.0
    # Status webhooks, each delay counted from the moment the send was accepted.
    status_webhooks: bool = True
    sent_delay_seconds: float = 0.05
    delivered_delay_seconds: float = 0.2
    read_delay_seconds: float = 1.0
    read_enabled: bool = True
    # Webhook delivery (local.simulator.webhooks): parallel posts; pending posts kept at most
    # (beyond it new ones are dropped and counted in stats); time allowed per attempt.
    # Concurrency and the timeout are read once, when the first webhook goes out.
    webhook_concurrency: int = 8
    # A pending post costs about 1.5 kB (a 600-byte status body, its timer and bookkeeping,
    # measured with tracemalloc), so the bound is ~300 MB at worst. While the app's webhook is
    # down the queue fills with simulated users' messages and the statuses of replies sent
    # meanwhile: bench/e2e at 100 conversations/s makes at most 400 posts/s (8 minutes to
    # fill), the fault suite a few per second (hours). Drops are counted (webhooks_dropped) and
    # logged.
    webhook_queue_limit: int = 200_000
    # Retries, as Meta's ("with decreasing frequency", for up to 7 days): the first pause, its
    # growth factor after each failure, its cap, ±jitter as a fraction of the pause, and how long
    # after its first attempt a post is abandoned. 0.5 s doubling to 15 min over 6 h makes about
    # 35 attempts; tests bound webhook_retry_for_seconds to seconds.
    webhook_retry_seconds: float = 0.5
    webhook_retry_backoff: float = 2.0
    webhook_retry_max_interval_seconds: float = 900.0
    webhook_retry_jitter: float = 0.2
    webhook_retry_for_seconds: float = 6 * 3600.0
    # An optional bound on attempts per post as well (None: only webhook_retry_for_seconds).
    webhook_max_attempts: int | None = None
    webhook_timeout_seconds: float = 10.0
    # Recorded sends and read receipts kept for inspection (oldest dropped first).
    max_recorded: int = 100_000
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Makes every injected fault reproducible for the same sequence of requests.
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.app_secret:
            raise ConfigError("app_secret must not be empty")
        if not self.access_token:
            raise ConfigError("access_token must not be empty")
        if not self.business_numbers:
            raise ConfigError("business_numbers must hold at least one number")
        ids = [number.phone_number_id for number in self.business_numbers]
        if len(set(ids)) != len(ids):
            raise ConfigError("business_numbers repeat a phone_number_id")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError("webhook_url must be an http(s) URL")
        _require_positive("throughput_per_second", self.throughput_per_second)
        _require_positive("pair_interval_seconds", self.pair_interval_seconds)
        _require_positive("window_seconds", self.window_seconds)
        _require_positive("webhook_timeout_seconds", self.webhook_timeout_seconds)
        _require_positive(
            "webhook_retry_max_interval_seconds", self.webhook_retry_max_interval_seconds
        )
        for name in (
            "sent_delay_seconds",
            "delivered_delay_seconds",
            "read_delay_seconds",
            "webhook_retry_seconds",
            "webhook_retry_for_seconds",
        ):
            _require_non_negative(name, getattr(self, name))
        if not 1.0 <= self.webhook_retry_backoff <= _MAX_RETRY_BACKOFF:
            raise ConfigError(f"webhook_retry_backoff must be between 1 and {_MAX_RETRY_BACKOFF:g}")
        if not 0.0 <= self.webhook_retry_jitter < 1.0:
            raise ConfigError("webhook_retry_jitter must be at least 0 and below 1")
        for name in (
            "pair_burst",
            "webhook_concurrency",
            "webhook_queue_limit",
            "max_recorded",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.webhook_max_attempts is not None and self.webhook_max_attempts < 1:
            raise ConfigError("webhook_max_attempts must be at least 1 (or null: no bound)")

    @property
    def phone_number_ids(self) -> tuple[str, ...]:
        return tuple(number.phone_number_id for number in self.business_numbers)

    def business_number(self, phone_number_id: str) -> BusinessNumber | None:
        for number in self.business_numbers:
            if number.phone_number_id == phone_number_id:
                return number
        return None


def public_view(config: SimulatorConfig) -> dict[str, Any]:
    """The settings as JSON-ready data, without the secrets."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    for name in _SECRET_FIELDS:
        data.pop(name, None)
    return data


def apply_changes(config: SimulatorConfig, changes: Mapping[str, Any]) -> SimulatorConfig:
    """``config`` with ``changes`` applied (``faults`` merged key by key); raises ConfigError."""
    known = {f.name for f in dataclasses.fields(SimulatorConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    merged: dict[str, Any] = msgspec.to_builtins(config)
    for name, value in changes.items():
        if name == "faults":
            if not isinstance(value, Mapping):
                raise ConfigError("faults must be an object")
            fault_names = {f.name for f in dataclasses.fields(FaultConfig)}
            unknown = sorted(set(value) - fault_names)
            if unknown:
                raise ConfigError(f"unknown fault settings: {', '.join(unknown)}")
            merged["faults"] = {**merged["faults"], **value}
        else:
            merged[name] = value
    try:
        return msgspec.convert(merged, SimulatorConfig)
    except msgspec.ValidationError as error:
        raise ConfigError(str(error)) from None


def _require_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number")


def _require_non_negative(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must not be negative")
