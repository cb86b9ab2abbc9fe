"""The `openai` and `http` agents behind the dev host, against small local servers standing in for
an OpenAI-compatible endpoint and an external agent platform."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared_code.orchestrator.agents import verify_bridge_signature
from tests.e2e.conftest import HostFactory
from tests.e2e.test_reply_path import replies_to, user_writes, wait_for

pytestmark = pytest.mark.e2e

PLATFORM_SECRET = "platform-secret"


class Upstream:
    """A JSON endpoint on 127.0.0.1 answering with ``respond(path, headers, body)``."""

    def __init__(self, respond: Callable[[str, dict[str, str], bytes], tuple[int, object]]) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                upstream.requests.append((self.path, headers, body))
                status, answer = respond(self.path, headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    started: list[Upstream] = []
    yield started
    for upstream in started:
        upstream.close()


def test_the_openai_agent_answers_with_the_models_reply(
    start_dev_host: HostFactory, upstreams: list[Upstream]
) -> None:
    def chat(path: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        request = json.loads(body)
        question = request["messages"][-1]["content"]
        return 200, {"choices": [{"message": {"role": "assistant", "content": f"AI: {question}"}}]}

    model = Upstream(chat)
    upstreams.append(model)
    host = start_dev_host(
        WHATSAPP_DEFAULT_AGENT="openai",
        OPENAI_BASE_URL=f"{model.url}/v1",
        OPENAI_MODEL="tiny-test-model",
        OPENAI_API_KEY="sk-test",
    )
    user_writes(host, "15558880001", "what is the weather?")
    [reply] = wait_for("the model's reply", lambda: replies_to(host, "15558880001"))
    assert reply["body"]["text"]["body"] == "AI: what is the weather?"
    path, headers, body = model.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-test"
    sent = json.loads(body)
    assert sent["model"] == "tiny-test-model"
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


def test_the_http_agent_signs_its_request_and_relays_an_interactive_reply(
    start_dev_host: HostFactory, upstreams: list[Upstream]
) -> None:
    def platform(path: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        if not verify_bridge_signature(
            PLATFORM_SECRET,
            headers.get("x-bridge-timestamp", ""),
            body,
            headers.get("x-bridge-signature", ""),
        ):
            return 401, {"error": "bad signature"}
        return 200, {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Pick one"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]},
            },
        }

    agent_platform = Upstream(platform)
    upstreams.append(agent_platform)
    host = start_dev_host(
        WHATSAPP_DEFAULT_AGENT="http",
        AGENT_HTTP_URL=f"{agent_platform.url}/agent",
        AGENT_HTTP_SECRET=PLATFORM_SECRET,
    )
    user_writes(host, "15558880002", "menu")
    [reply] = wait_for("the platform's reply", lambda: replies_to(host, "15558880002"))
    assert reply["body"]["type"] == "interactive"
    assert reply["body"]["interactive"]["action"]["buttons"][0]["reply"]["id"] == "yes"
    sent = json.loads(agent_platform.requests[0][2])
    assert sent["message"]["text"] == "menu"


def test_a_failing_agent_yields_the_fallback_message(
    start_dev_host: HostFactory, upstreams: list[Upstream]
) -> None:
    broken = Upstream(lambda path, headers, body: (500, {"error": "down"}))
    upstreams.append(broken)
    host = start_dev_host(
        WHATSAPP_DEFAULT_AGENT="openai",
        OPENAI_BASE_URL=broken.url,
        OPENAI_MODEL="m",
        AGENT_FALLBACK_MESSAGE="We will get back to you.",
    )
    user_writes(host, "15558880003", "hello?")
    [reply] = wait_for("the fallback", lambda: replies_to(host, "15558880003"))
    assert reply["body"]["text"]["body"] == "We will get back to you."
    time.sleep(0.5)
    assert len(replies_to(host, "15558880003")) == 1
