"""The OpenAPI document against the running app: valid OpenAPI 3.1, lists every HTTP function of
``function_app.app``, and schemathesis finds no operation that answers 5xx or off the document.

The dev host runs with its Cloud API simulator; a simulated user has written first, so the lists
have rows (contacts, a conversation, messages with status histories, webhook events) whose
shape is checked too. Schemathesis generates valid and invalid inputs for every operation of
the served document (new operations are covered as they are declared), sends them with the full
management key, and checks: no server error, the status code and content type documented, the
body valid against its schema, invalid input refused with 4xx, auth not ignored.

Default run: ``SCHEMATHESIS_MAX_EXAMPLES`` (25) examples per operation and generation mode.
Longer run (``make test`` skips it, being marked slow)::

    SCHEMATHESIS_MAX_EXAMPLES=500 .venv/bin/pytest -m slow tests/e2e/test_openapi_schemathesis.py
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from local.functions import index_functions
from shared_code.management.operations.docs import document as openapi_document
from tests.e2e.conftest import RunningHost
from tests.e2e.module_host import FULL_KEY, running_host

pytestmark = pytest.mark.e2e

DOCUMENT_PATH = "/api/v1/whatsapp/openapi.json"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
LONG_MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "500"))
AUTHORIZATION = {"Authorization": f"Bearer {FULL_KEY}"}
USERS = ("15550001111", "15550002222")


def _wait_for(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def api_host(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    with running_host(server_url, tmp_path_factory.mktemp("openapi")) as host:
        assert host.simulator_url is not None
        for user in USERS:
            for text in ("hello", "how are you?"):
                sent = httpx.post(
                    f"{host.simulator_url}/simulator/users/{user}/messages",
                    json={"text": text},
                    timeout=10,
                )
                assert sent.status_code == 200, sent.text

        def replies_read() -> bool:
            answer = httpx.get(
                f"{host.base_url}/api/v1/whatsapp/conversations",
                headers=AUTHORIZATION,
                timeout=10,
            )
            conversations = answer.json()["data"]
            if len(conversations) < len(USERS):
                return False
            for conversation in conversations:
                messages = httpx.get(
                    f"{host.base_url}/api/v1/whatsapp/conversations/{conversation['id']}/messages",
                    headers=AUTHORIZATION,
                    timeout=10,
                ).json()["data"]
                outbound = [m for m in messages if m["direction"] == "outbound"]
                if len(outbound) < 2 or any(not m["status_history"] for m in outbound):
                    return False
            return True

        _wait_for("the echo replies and their statuses", replies_read)
        yield host


@pytest.fixture(scope="module")
def document(api_host: RunningHost) -> dict[str, Any]:
    answer = httpx.get(f"{api_host.base_url}{DOCUMENT_PATH}", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    return dict(answer.json())


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    try:
        validate(document)
    except OpenAPIValidationError as error:
        pytest.fail(f"not a valid OpenAPI 3.1 document: {error}")


def test_the_document_lists_every_http_function_of_the_app(document: dict[str, Any]) -> None:
    import function_app

    served = set()
    for spec in index_functions(function_app.app):
        if spec.trigger_type != "httpTrigger":
            continue
        route = spec.binding["route"]
        methods = spec.binding.get("methods") or ["GET", "POST", "PUT", "PATCH", "DELETE"]
        served |= {(f"/api/{route}", str(method).lower()) for method in methods}
    documented = {
        (path, method)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served, "no HTTP function found"
    assert served == documented


def test_each_operation_documents_its_errors(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("operationId"), where
            responses = operation["responses"]
            if operation.get("security"):
                for status in ("400", "401", "503"):
                    assert status in responses, f"{where} does not document {status}"
                assert "WWW-Authenticate" in responses["401"].get("headers", {}), where
                if operation.get("x-required-access") != "read":
                    assert "403" in responses, where


def test_a_nul_in_a_query_parameter_is_a_400(
    api_host: RunningHost, document: dict[str, Any]
) -> None:
    tried = 0
    for path, operations in document["paths"].items():
        operation = operations.get("get")
        if operation is None or not operation.get("security") or "{" in path:
            continue
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "query" or parameter["schema"].get("type") != "string":
                continue
            answer = httpx.get(
                f"{api_host.base_url}{path}",
                params={parameter["name"]: "a\x00b"},
                headers=AUTHORIZATION,
                timeout=10,
            )
            assert answer.status_code == 400, (path, parameter["name"], answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            tried += 1
    assert tried >= 2


# --- schemathesis ----------------------------------------------------------------------------


# schemathesis' default statuses for refused invalid input, and 413 (a body over the size
# limit is refused unread).
REJECTIONS = [str(s) for s in (400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429)]
# The document as the app generates it, loaded at collection so that each operation is a test
# of its own; test_the_served_document_is_the_generated_one checks the host serves exactly this.
# (schemathesis.pytest.from_fixture, which would load it from the host, needs pytest < 9.)
schema = schemathesis.openapi.from_dict(
    openapi_document(),
    config=SchemathesisConfig.from_dict(
        {
            # Through the document's security scheme, so schemathesis knows which requests it
            # sent without the credential (its negative cases and the ignored_auth check).
            "auth": {"openapi": {"bearerAuth": {"bearer": FULL_KEY}}},
            "generation": {
                "database": "none",
                # No NUL in generated strings: PostgreSQL cannot store it, so a NUL is refused
                # with 400 (invalid_value), which the document does not state for every string;
                # test_a_nul_in_a_query_parameter_is_a_400 checks that 400 on its own.
                "allow-x00": False,
            },
            "checks": {
                "negative_data_rejection": {"expected-statuses": [*REJECTIONS, "5xx"]},
            },
        }
    ),
)


@pytest.fixture(autouse=True)
def _quiet_urllib3() -> None:
    # The generated URLs (random query values) are not personal data, but the scan of this
    # process's log records would read urllib3's request lines as if they were.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def test_the_served_document_is_the_generated_one(document: dict[str, Any]) -> None:
    assert document == json.loads(json.dumps(openapi_document()))


_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": list(HealthCheck),
}


# 400s for rules a schema cannot state; schemathesis' positive_data_acceptance check would call
# them schema-valid requests wrongly refused. Every other 400 to a schema-valid request fails.
RULES_BEYOND_THE_SCHEMA = {
    "invalid_cursor": "a cursor is valid only as the API issued it (signed)",
    "invalid_range": "received_from must be before received_to",
    "invalid_agent": "which agent settings apply depends on the agent's kind",
    "recipient": "exactly one of phone_number and contact_id",
    "content": "exactly one of text, interactive and media",
    "invalid_message": "the message's parts as WhatsApp accepts them",
    "invalid_phone_number": "a number that exists (the phonenumbers library)",
    "range_too_long": "an analytics range of at most so many days",
    "time_out_of_range": "a date-time in the years 1 to 9999 once in UTC (0001-01-01T00:00+01:00 is not)",
}


PROTECTED = {
    (method, path)
    for path, operations in openapi_document()["paths"].items()
    for method, operation in operations.items()
    if operation.get("security")
}


def _call_and_validate(case: Any, host: RunningHost) -> None:
    response = case.call(base_url=host.base_url, timeout=15)
    protected = (case.operation.method.lower(), case.operation.path) in PROTECTED
    if protected and case.meta is not None and case.meta.generation.mode.is_positive:
        # Else every protected operation would pass on its documented 401 alone.
        assert response.status_code != 401, "a valid case was sent without the management key"
    excluded = []
    code = _problem_code(response)
    if response.status_code == 422 or (
        response.status_code == 400 and code in RULES_BEYOND_THE_SCHEMA
    ):
        excluded.append(positive_data_acceptance)
    case.validate_response(
        response,
        excluded_checks=excluded,
        transport_kwargs={"base_url": host.base_url, "timeout": 15},
    )


def _problem_code(response: Any) -> str | None:
    content_type = response.headers.get("content-type") or response.headers.get("Content-Type")
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else None
    if not str(content_type).startswith("application/problem+json"):
        return None
    try:
        return str(response.json().get("code"))
    except ValueError:
        return None


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, **_SETTINGS)
def test_every_operation_conforms(case: Any, api_host: RunningHost) -> None:
    _call_and_validate(case, api_host)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=LONG_MAX_EXAMPLES, **_SETTINGS)
def test_every_operation_conforms_long_run(case: Any, api_host: RunningHost) -> None:
    _call_and_validate(case, api_host)
