-- Poison is isolated, explained and counted instead of retried forever in front of the rest
-- (issue 12): a webhook event whose events the bus refuses for good is marked 'failed', and every
-- event the outbox or the processor gave up on gets a row here saying why.

ALTER TABLE whatsapp_webhook_events DROP CONSTRAINT whatsapp_webhook_events_status_check;
-- failed: some of its events could not be published for good (see whatsapp_event_failures);
-- the others were published.
ALTER TABLE whatsapp_webhook_events ADD CONSTRAINT whatsapp_webhook_events_status_check
    CHECK (status IN ('pending', 'published', 'ignored', 'invalid', 'failed'));

CREATE TABLE whatsapp_event_failures (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key: this is a record of what happened, written when something already went
    -- wrong; it must not fail for a webhook row erased since (or a hand-published event).
    webhook_event_id bigint,
    -- publish: the outbox could not queue it; process: the processor could not handle it.
    stage            text        NOT NULL,
    kind             text,
    -- Its bus message id (the wamid, or "<wamid>:<status>"), when it has one.
    event_key        text,
    reason           text        NOT NULL,
    -- The user was sent the fallback text instead of an answer.
    fallback_queued  boolean     NOT NULL DEFAULT false,
    attempts         integer     NOT NULL DEFAULT 1,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT whatsapp_event_failures_stage_check CHECK (stage IN ('publish', 'process'))
);
-- A redelivered poison event updates its row instead of adding one.
CREATE UNIQUE INDEX whatsapp_event_failures_key ON whatsapp_event_failures (stage, event_key);
CREATE INDEX whatsapp_event_failures_recent_idx ON whatsapp_event_failures (last_failed_at DESC);
