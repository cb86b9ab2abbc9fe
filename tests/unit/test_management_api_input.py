"""How the management API reads query values and bodies: exactly what the OpenAPI document says.

Each case here was found by schemathesis against the dev host (tests/e2e/test_openapi_schemathesis.py)
and is pinned here without a host.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from shared_code.management.api import ApiRequest, Operation, _convert, _decode_body
from shared_code.management.problems import InvalidRequest
from shared_code.management.queries import ConversationsQuery, WebhookEventsQuery


def convert(query: dict[str, str], model: type[msgspec.Struct] = ConversationsQuery) -> Any:
    return _convert(query, model, "query")


def refused(query: dict[str, str], code: str = "invalid_parameter") -> None:
    with pytest.raises(InvalidRequest) as error:
        convert(query)
    assert error.value.status == 400
    assert error.value.code == code


def test_query_values_are_read_from_strings() -> None:
    query = convert({"limit": "20", "status": "open", "updated_since": "2026-01-31T12:00:00Z"})
    assert query.limit == 20
    assert query.status == "open"
    assert query.updated_since == datetime(2026, 1, 31, 12, tzinfo=UTC)


@pytest.mark.parametrize("name", ["status", "updated_since", "contact_id"])
def test_the_text_null_is_not_an_absent_parameter(name: str) -> None:
    refused({name: "null"})


def test_a_text_parameter_may_be_the_word_null() -> None:
    assert convert({"agent": "null"}).agent == "null"
    assert convert({"received_from": "2026-01-01T00:00:00+02:00"}, WebhookEventsQuery)


@pytest.mark.parametrize("value", ["0.5", "1700000000", "1e3", "2026-01-31T12:00:00", "2026-01-31"])
def test_a_time_is_rfc_3339_with_an_offset(value: str) -> None:
    refused({"updated_since": value})


def test_a_time_outside_utc_years_is_a_400_not_a_crash() -> None:
    refused({"updated_since": "0001-01-01T00:04:00+20:01"}, code="time_out_of_range")
    refused({"updated_since": "9999-12-31T23:00:00-05:00"}, code="time_out_of_range")


class Body(msgspec.Struct, forbid_unknown_fields=True):
    count: int
    ratio: float = 0.0
    extra: dict[str, Any] = {}


OPERATION = Operation(
    operation_id="test",
    method="POST",
    route="v1/test",
    summary="test",
    tag="test",
    access=None,
    body_model=Body,
    responses={},
    handler=None,
)


def decode(body: bytes) -> Any:
    return _decode_body(OPERATION, ApiRequest("POST", {}, {}, {}, body, "/api/v1/test"))


def test_an_integral_float_is_an_integer_as_in_json_schema() -> None:
    assert decode(b'{"count": 5.0, "ratio": 2}') == Body(count=5, ratio=2.0)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"count": 5.5}', "invalid_body"),
        (b'{"count": "5"}', "invalid_body"),
        (b'{"count": 1, "other": 2}', "invalid_body"),
        (b"[\xff", "invalid_body"),
        (b"\xff", "invalid_json"),
        (b'{"count":', "invalid_json"),
        (b"", "body_required"),
        (b'{"count": 1, "extra": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_body"),
    ],
    ids=[
        "fraction",
        "string",
        "unknown field",
        "array then bytes",
        "bytes",
        "cut",
        "empty",
        "deep inside",
        "deep",
    ],
)
def test_bad_bodies_are_400(body: bytes, code: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        decode(body)
    assert error.value.status == 400
    assert error.value.code == code
