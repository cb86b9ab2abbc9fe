"""WhatsApp Cloud API payloads: what Meta sends us, and how it travels on our bus.

- :mod:`.signature`: verifying ``X-Hub-Signature-256`` on a webhook body.
- :mod:`.webhook`: splitting a webhook body into one bus event per message or status (fast,
  on plain dicts, in the HTTP answer).
- :mod:`.payloads`: typed models of messages, statuses and contacts, and the bus envelope the
  processor decodes.

Modules are imported directly (``from shared_code.whatsapp.webhook import split_webhook``) so
the webhook handler loads only what it uses.
"""
