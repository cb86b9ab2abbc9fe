"""RATE_LIMITS parsing and the limits' own validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared_code.ratelimit import RateLimitPolicy, RateLimits

NUMBER = "100000000000001"
OTHER_NUMBER = "100000000000002"


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_or_empty_means_the_seed_defaults(raw: str | None) -> None:
    policy = RateLimitPolicy.parse(raw)

    assert policy.default == RateLimits(
        per_second=80, per_minute=1000, per_day=10000, pair_burst=45, pair_interval_seconds=6.0
    )
    assert dict(policy.per_number) == {}
    assert policy.for_number(NUMBER) == policy.default


def test_a_partial_default_keeps_the_other_built_in_values() -> None:
    policy = RateLimitPolicy.parse('{"default": {"per_second": 20}}')

    assert policy.default == RateLimits(per_second=20)
    assert policy.default.per_day == 10000


def test_a_number_overrides_inherit_the_configured_default() -> None:
    raw = json.dumps(
        {
            "default": {"per_second": 20, "per_day": 500},
            NUMBER: {"per_second": 1000},
        }
    )
    policy = RateLimitPolicy.parse(raw)

    assert policy.for_number(NUMBER) == RateLimits(per_second=1000, per_day=500)
    assert policy.for_number(OTHER_NUMBER) == RateLimits(per_second=20, per_day=500)


def test_numbers_without_a_default_entry_inherit_the_built_in_defaults() -> None:
    policy = RateLimitPolicy.parse(json.dumps({NUMBER: {"pair_burst": 10}}))

    assert policy.default == RateLimits()
    assert policy.for_number(NUMBER) == RateLimits(pair_burst=10)


def test_every_field_can_be_set_and_integers_are_accepted_for_float_fields() -> None:
    fields: dict[str, Any] = {
        "per_second": 1000,
        "per_minute": 30000,
        "per_day": 100000,
        "pair_burst": 10,
        "pair_interval_seconds": 3,
    }
    policy = RateLimitPolicy.parse(json.dumps({"default": fields}))

    assert policy.default == RateLimits(**fields)
    assert isinstance(policy.default.pair_interval_seconds, float)


def test_fractional_rates_per_second_are_allowed() -> None:
    assert RateLimitPolicy.parse('{"default": {"per_second": 0.5}}').default.per_second == 0.5


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("not json", "JSON"),
        ("[1, 2]", "object"),
        ('{"default": 80}', "default"),
        ('{"default": {"per_sec": 80}}', "per_sec"),
        ('{"default": {"per_second": "80"}}', "per_second"),
        ('{"default": {"per_second": 0}}', "per_second"),
        ('{"default": {"per_second": -5}}', "per_second"),
        ('{"default": {"per_minute": 10.5}}', "per_minute"),
        ('{"default": {"per_minute": true}}', "per_minute"),
        ('{"default": {"per_day": 0}}', "per_day"),
        ('{"default": {"pair_burst": 0}}', "pair_burst"),
        ('{"default": {"pair_interval_seconds": 0}}', "pair_interval_seconds"),
        ('{"100000000000001": {"per_day": -1}}', "100000000000001"),
        ('{"defualt": {"per_second": 80}}', "defualt"),
        ('{"": {"per_second": 80}}', "phone number id"),
    ],
)
def test_invalid_settings_raise_a_value_error_naming_the_problem(raw: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RateLimitPolicy.parse(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"per_second": 0},
        {"per_second": float("inf")},
        {"per_second": float("nan")},
        {"per_minute": 0},
        {"per_day": 2.5},
        {"pair_burst": False},
        {"pair_interval_seconds": -1.0},
    ],
)
def test_limits_refuse_impossible_values(changes: dict[str, Any]) -> None:
    (name,) = changes
    with pytest.raises(ValueError, match=name):
        RateLimits(**changes)


def test_the_policy_does_not_follow_later_changes_to_the_mapping_it_was_given() -> None:
    overrides = {NUMBER: RateLimits(per_second=1000)}
    policy = RateLimitPolicy(per_number=overrides)
    overrides[OTHER_NUMBER] = RateLimits(per_second=1)

    assert policy.for_number(OTHER_NUMBER) == RateLimits()
    with pytest.raises(TypeError):
        policy.per_number[OTHER_NUMBER] = RateLimits()  # type: ignore[index]
