"""Every management operation by every kind of credential, over HTTP against the dev host.

The operations come from the registry the app serves, so an operation added later is covered
without touching this file: no credential, a wrong, empty, longer or shortened key, or another
scheme → 401 with ``WWW-Authenticate: Bearer``; the read key on anything above read → 403; the
full key gets past authentication. Then Microsoft Entra ID end to end: the host fetches a JWKS
that this test serves, and tokens signed here are accepted or refused by role and expiry.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared_code.management.api import Operation
from shared_code.management.auth import Access
from shared_code.management.operations import registry
from shared_code.management.problems import PROBLEM_CONTENT_TYPE
from tests.e2e.conftest import HostFactory, RunningHost
from tests.e2e.module_host import FULL_KEY, READ_KEY, running_host

pytestmark = pytest.mark.e2e

PROTECTED = [op for op in registry.all() if op.handler is not None and op.access is not None]
ABOVE_READ = [op for op in PROTECTED if op.access is not None and op.access > Access.READ]
READ_ONLY = [op for op in PROTECTED if op.access is Access.READ]

BAD_CREDENTIALS = {
    "no header": None,
    "wrong key": "Bearer not-the-management-key",
    "empty key": "Bearer ",
    "longer key": f"Bearer {FULL_KEY}x",
    "prefix of the key": f"Bearer {FULL_KEY[:-1]}",
    "short prefix": f"Bearer {FULL_KEY[:3]}",
    "basic scheme": f"Basic {FULL_KEY}",
    "key without scheme": FULL_KEY,
}


def op_id(operation: Operation) -> str:
    return f"{operation.method} {operation.route}"


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def call(
    host: RunningHost,
    operation: Operation,
    authorization: str | None,
    *,
    query: dict[str, str] | None = None,
) -> Answer:
    """One request with exactly this Authorization header (http.client, because httpx refuses
    to send a header value with trailing whitespace such as ``"Bearer "``)."""
    path = operation.route_path({name: "1" for name in operation.path_model.__struct_fields__})
    target = f"/api/{path}" + (f"?{urlencode(query)}" if query else "")
    headers = {} if authorization is None else {"Authorization": authorization}
    body = None
    if operation.body_model is not None:
        headers["Content-Type"] = "application/json"
        body = b"{}"
    parts = urlsplit(host.base_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=15)
    try:
        connection.request(operation.method, target, body=body, headers=headers)
        response = connection.getresponse()
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read().decode(),
        )
    finally:
        connection.close()


def assert_problem(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    problem = answer.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem.get("code")
    return dict(problem)


@pytest.fixture(scope="module")
def host(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    with running_host(server_url, tmp_path_factory.mktemp("auth-matrix")) as running:
        yield running


def test_the_registry_serves_protected_operations() -> None:
    assert {op_id(op) for op in READ_ONLY} >= {
        "GET v1/whatsapp/contacts",
        "GET v1/whatsapp/conversations",
        "GET v1/whatsapp/conversations/{id}/messages",
        "GET v1/whatsapp/webhook-events",
    }


@pytest.mark.parametrize("credential", list(BAD_CREDENTIALS), ids=str)
@pytest.mark.parametrize("operation", PROTECTED, ids=op_id)
def test_a_bad_credential_is_401(host: RunningHost, operation: Operation, credential: str) -> None:
    answer = call(host, operation, BAD_CREDENTIALS[credential])
    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert FULL_KEY not in answer.text


@pytest.mark.parametrize("operation", ABOVE_READ, ids=op_id)
def test_the_read_key_is_refused_above_read(host: RunningHost, operation: Operation) -> None:
    problem = assert_problem(call(host, operation, f"Bearer {READ_KEY}"), 403)
    assert problem["code"] == "insufficient_access"


@pytest.mark.parametrize("operation", READ_ONLY, ids=op_id)
def test_the_read_key_reads(host: RunningHost, operation: Operation) -> None:
    answer = call(host, operation, f"Bearer {READ_KEY}")
    assert answer.status_code not in (401, 403, 500), answer.text


@pytest.mark.parametrize("operation", PROTECTED, ids=op_id)
def test_the_full_key_gets_past_authentication(host: RunningHost, operation: Operation) -> None:
    answer = call(host, operation, f"Bearer {FULL_KEY}")
    assert answer.status_code not in (401, 403, 500), answer.text
    if answer.status_code >= 400:
        # Refused by the operation (no such row, an empty body): still a problem document.
        assert answer.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)


def test_raw_webhook_bodies_need_the_full_key(host: RunningHost) -> None:
    events = next(op for op in PROTECTED if op.route.endswith("/webhook-events"))
    raw = {"raw": "true"}
    assert_problem(call(host, events, f"Bearer {READ_KEY}", query=raw), 403)
    assert call(host, events, f"Bearer {FULL_KEY}", query=raw).status_code == 200
    assert call(host, events, f"Bearer {READ_KEY}").status_code == 200


def test_the_openapi_document_needs_no_credential(host: RunningHost) -> None:
    answer = httpx.get(f"{host.base_url}/api/v1/whatsapp/openapi.json", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["openapi"].startswith("3.1")


# --- Microsoft Entra ID, end to end ------------------------------------------------------------

TENANT = "0e5bd5a1-1f5c-4f7b-9a52-5d1d7c0f0a11"
AUDIENCE = "api://whatsapp-bridge-e2e"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROLES = {Access.READ: "WhatsApp.Read", Access.SEND: "WhatsApp.Send", Access.ADMIN: "WhatsApp.Admin"}


class _JwksServer:
    """The tenant's ``/discovery/v2.0/keys`` on a local port, in a thread."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        body = json.dumps(jwks).encode()
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                if self.path != f"/{TENANT}/discovery/v2.0/keys":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.authority = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def entra_token(authority: str, roles: list[str], *, expires_in: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "iss": f"{authority}/{TENANT}/v2.0",
            "aud": AUDIENCE,
            "tid": TENANT,
            "oid": "00000000-0000-4000-8000-0000000e2e01",
            "iat": now - 10,
            "nbf": now - 10,
            "exp": now + expires_in,
            "roles": roles,
        },
        SIGNING_KEY,
        algorithm="RS256",
        headers={"kid": "e2e-key"},
    )


def test_entra_id_tokens_end_to_end(start_dev_host: HostFactory, tmp_path: Path) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
    with _JwksServer({"keys": [{**jwk, "kid": "e2e-key", "use": "sig"}]}) as entra:
        host = start_dev_host(
            MANAGEMENT_ENTRA_TENANT_ID=TENANT,
            MANAGEMENT_ENTRA_AUDIENCE=AUDIENCE,
            MANAGEMENT_ENTRA_AUTHORITY=entra.authority,
        )
        contacts = next(op for op in PROTECTED if op.route.endswith("/contacts"))
        events = next(op for op in PROTECTED if op.route.endswith("/webhook-events"))
        reader = f"Bearer {entra_token(entra.authority, ['WhatsApp.Read'])}"
        admin = f"Bearer {entra_token(entra.authority, ['WhatsApp.Admin'])}"

        listed = call(host, contacts, reader)
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"data": [], "next": None}
        # A reader is refused what needs more: raw bodies, and every operation above read.
        assert_problem(call(host, events, reader, query={"raw": "true"}), 403)
        for operation in ABOVE_READ:
            assert_problem(call(host, operation, reader), 403)
        assert call(host, events, admin, query={"raw": "true"}).status_code == 200
        # Each role reaches what its level allows, and is refused what needs more.
        for operation in ABOVE_READ:
            assert operation.access is not None
            role = f"Bearer {entra_token(entra.authority, [ROLES[operation.access]])}"
            answer = call(host, operation, role)
            assert answer.status_code not in (401, 403, 500), (op_id(operation), answer.text)
            if operation.access is Access.ADMIN:
                sender = f"Bearer {entra_token(entra.authority, ['WhatsApp.Send'])}"
                assert_problem(call(host, operation, sender), 403)

        expired = entra_token(entra.authority, ["WhatsApp.Admin"], expires_in=-300)
        refused = assert_problem(call(host, contacts, f"Bearer {expired}"), 401)
        assert refused["code"] == "token_expired"
        assert call(host, contacts, "Bearer ").status_code == 401
        # The management keys still work beside Entra ID.
        assert call(host, contacts, f"Bearer {FULL_KEY}").status_code == 200
        # Fetched once, then cached.
        assert entra.requests == [f"/{TENANT}/discovery/v2.0/keys"]
