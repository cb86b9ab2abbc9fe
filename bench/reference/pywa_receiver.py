"""pywa's webhook receiver: FastAPI + uvicorn, signature check and parse, storing nothing.

The reference of ``bench.ingest``: the same signed bodies, posted by the same wrk connections,
are answered by this process and by the bridge's webhook host in the same run.

    .venv/bin/python -m bench.reference.pywa_receiver --port 7090 --app-secret SECRET

pywa 4.5 registers ``POST <webhook_endpoint>`` on the FastAPI app (``_helpers.
register_routes_fastapi``): the route reads the body, checks ``X-Hub-Signature-256`` (HMAC-SHA256
with the app secret, ``hmac.compare_digest``) on the event loop, answers 403 when it does not
match, otherwise adds ``wa.webhook_update_handler`` as a FastAPI background task and answers 200.
After the answer, Starlette runs that (synchronous) handler in anyio's thread pool
(``run_in_threadpool``): ``json.loads`` of the body, a blake2s hash to skip duplicate updates,
the handler type is resolved, the typed update (``types.Message`` / ``types.MessageStatus``) is
built and the matching handlers are called, inline in that thread. A 200 therefore means "signed
correctly", not "parsed"; ``GET /bench/stats`` counts what the handlers received, so the bench
can check that every answered body was parsed.

No Graph API call may leave this process: no ``callback_url``, no ``app_id``, and the client's
httpx session has a transport that only counts (and refuses) requests.
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

import fastapi
import httpx
import uvicorn
from pywa.client import WhatsApp
from pywa.handlers import MessageHandler, MessageStatusHandler
from pywa.types.message import Message
from pywa.types.message_status import MessageStatus

WEBHOOK_PATH = "/api/v1/whatsapp/webhook"
PHONE_NUMBER_ID = "100000000000001"  # the bench bodies' metadata.phone_number_id
WABA_ID = "200000000000001"  # and their entry id
VERIFY_TOKEN = "bench-verify-token"  # noqa: S105 - a throwaway benchmark value


class _Counts:
    """What the handlers saw; updated from anyio's worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"messages": 0, "statuses": 0, "log_warnings": 0, "outgoing_requests": 0}

    def add(self, name: str) -> None:
        with self.lock:
            self.values[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


class _CountingLogHandler(logging.Handler):
    """pywa logs a refused signature, a body it cannot read and a failed parse at WARNING+."""

    def __init__(self, counts: _Counts) -> None:
        super().__init__(level=logging.WARNING)
        self._counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self._counts.add("log_warnings")


def build_app(app_secret: str) -> tuple[fastapi.FastAPI, _Counts]:
    counts = _Counts()
    logging.getLogger("pywa").addHandler(_CountingLogHandler(counts))

    def refuse(request: httpx.Request) -> httpx.Response:
        counts.add("outgoing_requests")
        return httpx.Response(503, json={"error": {"message": "no network in bench"}})

    app = fastapi.FastAPI()
    wa = WhatsApp(
        phone_id=PHONE_NUMBER_ID,
        token="bench-token",  # noqa: S106 - never sent: see the transport above
        session=httpx.Client(transport=httpx.MockTransport(refuse)),
        server=app,
        webhook_endpoint=WEBHOOK_PATH,
        verify_token=VERIFY_TOKEN,
        app_secret=app_secret,
        validate_updates=True,
        waba_id=WABA_ID,
    )

    def on_message(_: WhatsApp, message: Message) -> None:
        counts.add("messages")

    def on_status(_: WhatsApp, status: MessageStatus[Any]) -> None:
        counts.add("statuses")

    wa.add_handlers(MessageHandler(on_message), MessageStatusHandler(on_status))

    @app.get("/bench/stats")
    def stats() -> dict[str, Any]:
        return counts.snapshot()

    return app, counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app-secret", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app, _ = build_app(args.app_secret)
    # uvicorn's defaults (loop "auto" = uvloop, http "auto" = httptools when installed, one
    # process); no access log, as the bridge's dev host runs without one.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
