-- Message templates (issue 13): the WhatsApp Business Account's catalogue cached for sends, and
-- what the management API's send commands keep on outbound rows.

-- One row per template and language, as Meta lists them (GET /{waba-id}/message_templates).
-- A template that vanished from Meta's list keeps its row with status 'DELETED' (and
-- deleted_at), so a send naming it is refused for the right reason.
CREATE TABLE whatsapp_message_templates (
    name                   text        NOT NULL,
    language               text        NOT NULL,
    meta_id                text,
    -- Meta's words: APPROVED, PENDING, REJECTED, PAUSED, DISABLED, IN_APPEAL, ...; DELETED here.
    status                 text        NOT NULL,
    category               text,
    components             jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- What a send must fill in, read from the components once so each send compares numbers.
    body_parameter_count   integer     NOT NULL DEFAULT 0,
    -- NULL without a header; TEXT, IMAGE, VIDEO, DOCUMENT or LOCATION otherwise.
    header_format          text,
    header_parameter_count integer     NOT NULL DEFAULT 0,
    -- [{"index": 0, "type": "URL", "parameter_count": 1}, ...] for every button.
    buttons                jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- Why the last status change happened (Meta's "reason": NONE on approval).
    status_reason          text,
    -- The time of the status webhook that set the status: an older webhook arriving late
    -- changes nothing.
    status_event_at        timestamptz,
    -- Last time a catalogue refresh saw this template.
    refreshed_at           timestamptz NOT NULL DEFAULT now(),
    deleted_at             timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, language)
);
CREATE INDEX whatsapp_message_templates_meta_id_idx ON whatsapp_message_templates (meta_id);

-- When the whole catalogue of a business account was last read from Meta (one row per account).
CREATE TABLE whatsapp_template_catalogues (
    waba_id        text        PRIMARY KEY,
    refreshed_at   timestamptz NOT NULL,
    template_count integer     NOT NULL
);

ALTER TABLE whatsapp_messages
    -- sha256 of a management API send request: the same Idempotency-Key with another body is
    -- refused instead of answered with the first message.
    ADD COLUMN request_sha256      bytea,
    -- A template sent outside the user's customer-service window: counted against Meta's
    -- business-initiated limit (unique users in a moving 24 h).
    ADD COLUMN business_initiated  boolean NOT NULL DEFAULT false;

CREATE INDEX whatsapp_messages_business_initiated_idx
    ON whatsapp_messages (phone_number_id, created_at)
    WHERE business_initiated;
