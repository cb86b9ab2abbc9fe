"""Post a correctly signed sample webhook to the bridge, as Meta would.

    .venv/bin/python -m scripts.send_sample_webhook --text "Hello"
    .venv/bin/python -m scripts.send_sample_webhook --status read --wamid wamid.XYZ

The app secret defaults to the dev host's development value; pass --app-secret (or set
WHATSAPP_APP_SECRET) when the bridge runs with a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import httpx

from shared_code.whatsapp.signature import SIGNATURE_HEADER, sign

DEFAULT_URL = "http://127.0.0.1:7071/api/v1/whatsapp/webhook"


def text_message_webhook(
    *, phone_number_id: str, waba_id: str, sender: str, name: str, text: str
) -> dict[str, object]:
    wamid = "wamid." + uuid.uuid4().hex.upper()
    return _envelope(
        waba_id,
        phone_number_id,
        {
            "contacts": [{"profile": {"name": name}, "wa_id": sender}],
            "messages": [
                {
                    "from": sender,
                    "id": wamid,
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        },
    )


def status_webhook(
    *, phone_number_id: str, waba_id: str, recipient: str, wamid: str, status: str
) -> dict[str, object]:
    return _envelope(
        waba_id,
        phone_number_id,
        {
            "statuses": [
                {
                    "id": wamid,
                    "status": status,
                    "timestamp": str(int(time.time())),
                    "recipient_id": recipient,
                }
            ]
        },
    )


def _envelope(waba_id: str, phone_number_id: str, value: dict[str, object]) -> dict[str, object]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument(
        "--app-secret", default=os.environ.get("WHATSAPP_APP_SECRET", "dev-app-secret")
    )
    parser.add_argument(
        "--phone-number-id", default=os.environ.get("WHATSAPP_PHONE_NUMBER_ID", "100000000000001")
    )
    parser.add_argument("--waba-id", default="200000000000001")
    parser.add_argument("--from", dest="sender", default="15551234567", help="the user's wa_id")
    parser.add_argument("--name", default="Sample User")
    parser.add_argument("--text", default="Hello from WhatsApp")
    parser.add_argument("--status", help="send a status webhook (sent, delivered, read, failed)")
    parser.add_argument("--wamid", help="the outbound message a --status refers to")
    args = parser.parse_args(argv)

    if args.status:
        if not args.wamid:
            parser.error("--status needs --wamid")
        payload = status_webhook(
            phone_number_id=args.phone_number_id,
            waba_id=args.waba_id,
            recipient=args.sender,
            wamid=args.wamid,
            status=args.status,
        )
    else:
        payload = text_message_webhook(
            phone_number_id=args.phone_number_id,
            waba_id=args.waba_id,
            sender=args.sender,
            name=args.name,
            text=args.text,
        )
    body = json.dumps(payload).encode()
    response = httpx.post(
        args.url,
        content=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, args.app_secret)},
    )
    print(f"{response.status_code} {response.text}")
    return 0 if response.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
