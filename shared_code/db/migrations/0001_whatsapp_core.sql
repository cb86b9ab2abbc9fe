-- The seed specification's four tables, plus the status history that makes status order irrelevant.

-- Monotonic delivery state: sent < failed < delivered < read. "failed" outranks "sent", but a
-- later delivered/read proves the message arrived after all, so they outrank "failed".
CREATE FUNCTION whatsapp_status_rank(status text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'received'  THEN 0
        WHEN 'pending'   THEN 0
        WHEN 'accepted'  THEN 1
        WHEN 'sent'      THEN 2
        WHEN 'failed'    THEN 3
        WHEN 'delivered' THEN 4
        WHEN 'read'      THEN 5
        WHEN 'played'    THEN 6
        WHEN 'deleted'   THEN 7
        ELSE -1
    END::smallint
$$;

CREATE TABLE whatsapp_webhook_events (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at        timestamptz NOT NULL DEFAULT now(),
    -- The exact bytes Meta signed, so an event can be re-verified, re-split and replayed.
    body               bytea       NOT NULL,
    body_sha256        bytea       NOT NULL,
    object             text,
    fields             text[]      NOT NULL DEFAULT '{}',
    -- pending: stored, bus messages not yet published (the outbox sweeper retries these)
    -- published: every bus message accepted by the broker
    -- ignored: valid, but nothing for the bridge to do (other webhook fields)
    -- invalid: signed by Meta but unreadable or of an unknown shape; kept with the reason
    status             text        NOT NULL,
    reason             text,
    event_count        integer     NOT NULL DEFAULT 0,
    duplicate_count    integer     NOT NULL DEFAULT 0,
    last_received_at   timestamptz NOT NULL DEFAULT now(),
    published_at       timestamptz,
    publish_attempts   integer     NOT NULL DEFAULT 0,
    last_publish_error text,
    CONSTRAINT whatsapp_webhook_events_body_sha256_key UNIQUE (body_sha256),
    CONSTRAINT whatsapp_webhook_events_status_check
        CHECK (status IN ('pending', 'published', 'ignored', 'invalid')),
    CONSTRAINT whatsapp_webhook_events_sha256_length CHECK (octet_length(body_sha256) = 32)
);
CREATE INDEX whatsapp_webhook_events_received_idx ON whatsapp_webhook_events (received_at DESC, id DESC);
CREATE INDEX whatsapp_webhook_events_pending_idx ON whatsapp_webhook_events (received_at, id)
    WHERE status = 'pending';

CREATE TABLE whatsapp_contacts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wa_id           text        NOT NULL,
    profile_name    text,
    opted_out       boolean     NOT NULL DEFAULT false,
    opted_out_at    timestamptz,
    preferences     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_inbound_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT whatsapp_contacts_wa_id_key UNIQUE (wa_id)
);
CREATE INDEX whatsapp_contacts_created_idx ON whatsapp_contacts (created_at DESC, id DESC);

CREATE TABLE whatsapp_conversations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone_number_id text        NOT NULL,
    contact_id      bigint      NOT NULL REFERENCES whatsapp_contacts (id),
    status          text        NOT NULL DEFAULT 'open',
    assigned_agent  text,
    last_message_at timestamptz,
    -- The customer-service window is 24 h from the user's last message.
    last_inbound_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    CONSTRAINT whatsapp_conversations_status_check CHECK (status IN ('open', 'closed'))
);
-- One open conversation per business number and contact.
CREATE UNIQUE INDEX whatsapp_conversations_open_key ON whatsapp_conversations (phone_number_id, contact_id)
    WHERE status = 'open';
CREATE INDEX whatsapp_conversations_activity_idx
    ON whatsapp_conversations (last_message_at DESC NULLS LAST, id DESC);
CREATE INDEX whatsapp_conversations_contact_idx ON whatsapp_conversations (contact_id);

CREATE TABLE whatsapp_messages (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id          bigint      NOT NULL REFERENCES whatsapp_conversations (id),
    direction                text        NOT NULL,
    -- NULL only for an outbound message not yet accepted by Meta.
    wamid                    text,
    phone_number_id          text        NOT NULL,
    contact_wa_id            text        NOT NULL,
    message_type             text        NOT NULL,
    text_body                text,
    -- The message as Meta sent it (inbound) or as we will send it (outbound).
    content                  jsonb       NOT NULL,
    context_wamid            text,
    status                   text        NOT NULL,
    error_code               integer,
    error_title              text,
    error_details            text,
    whatsapp_timestamp       timestamptz,
    sent_at                  timestamptz,
    delivered_at             timestamptz,
    read_at                  timestamptz,
    failed_at                timestamptz,
    idempotency_key          text,
    biz_opaque_callback_data text,
    routed_at                timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT whatsapp_messages_wamid_key UNIQUE (wamid),
    CONSTRAINT whatsapp_messages_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT whatsapp_messages_direction_check CHECK (direction IN ('inbound', 'outbound')),
    CONSTRAINT whatsapp_messages_status_check CHECK (whatsapp_status_rank(status) >= 0)
);
CREATE INDEX whatsapp_messages_conversation_idx ON whatsapp_messages (conversation_id, created_at, id);
CREATE INDEX whatsapp_messages_created_idx ON whatsapp_messages (created_at DESC, id DESC);

-- Every status webhook once per (wamid, status). The message row shows the furthest of them, so a
-- status that arrives before its message (or before the sender recorded the wamid) is not lost.
CREATE TABLE whatsapp_message_statuses (
    wamid                    text        NOT NULL,
    status                   text        NOT NULL,
    status_timestamp         timestamptz,
    recipient_id             text,
    error_code               integer,
    error_title              text,
    error_details            text,
    biz_opaque_callback_data text,
    payload                  jsonb       NOT NULL,
    received_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wamid, status)
);
