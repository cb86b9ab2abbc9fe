-- Indexes for GET analytics and for the management API's lists (issue 13), and the daily
-- analytics rollup (the one table: plain SQL over 30 days of 10 M messages took 1.0-2.1 s).
--
-- Each one is named after the query shape it serves; bench/management measures them on 10 M
-- messages, 1 M contacts and 100,000 conversations. These are plain CREATE INDEX statements (the
-- migration runs in one transaction): they block writes to their tables while they build (9 s
-- for this whole file over 10 M messages here).

-- Analytics, one pass: messages created in [from, to) grouped by UTC day, direction, status and
-- error code. Every column the pass reads is in the index, so it is an index-only range scan and
-- never touches the message rows (sent_at says "accepted by Meta", phone_number_id the filter).
CREATE INDEX whatsapp_messages_analytics_idx ON whatsapp_messages (created_at)
    INCLUDE (direction, status, error_code, sent_at, phone_number_id);

-- Analytics, first-response time: the conversations created in the range (then two probes each
-- on whatsapp_messages_conversation_id_idx).
CREATE INDEX whatsapp_conversations_created_idx ON whatsapp_conversations (created_at, id);

-- Analytics, opt-outs in the range; and GET contacts?opted_out=true, newest id first.
CREATE INDEX whatsapp_contacts_opted_out_at_idx ON whatsapp_contacts (opted_out_at)
    WHERE opted_out_at IS NOT NULL;
CREATE INDEX whatsapp_contacts_opted_out_idx ON whatsapp_contacts (id) WHERE opted_out;

-- GET contacts?search=: queries.list_contacts reads "wa_id LIKE '<digits>%'" and
-- "profile_name ILIKE '%<text>%'", newest id first. A "C"-collation index makes the LIKE prefix
-- an index range in any database locale (the unique index on wa_id uses the default collation).
CREATE INDEX whatsapp_contacts_wa_id_prefix_idx ON whatsapp_contacts ((wa_id COLLATE "C"), id);
-- A substring of the name needs trigrams (pg_trgm, a trusted extension: any user who may create
-- in the database can add it). On Azure Database for PostgreSQL it must first be allow-listed
-- (server parameter azure.extensions = PG_TRGM); where it cannot be created the bridge still
-- starts, and a name search scans the contacts (0.2 s at 1 M contacts for a name no one has).
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX whatsapp_contacts_name_trgm_idx
        ON whatsapp_contacts USING gin (profile_name gin_trgm_ops);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pg_trgm is not available (%): contact name search will scan the table', SQLERRM;
END
$$;

-- GET conversations?status= and ?agent=, newest id first ("handoff" is rare: without an index
-- a page of it would read most of the table). ?updated_since= ranges over updated_at.
CREATE INDEX whatsapp_conversations_status_idx ON whatsapp_conversations (status, id DESC);
CREATE INDEX whatsapp_conversations_agent_idx ON whatsapp_conversations (assigned_agent, id DESC)
    WHERE assigned_agent IS NOT NULL;
CREATE INDEX whatsapp_conversations_updated_idx ON whatsapp_conversations (updated_at);

-- GET webhook-events?status=, newest id first (without a status filter the primary key serves,
-- a time range whatsapp_webhook_events_received_idx).
CREATE INDEX whatsapp_webhook_events_status_idx ON whatsapp_webhook_events (status, id DESC);

-- GET analytics over long ranges: one row per UTC day and business number (and one per day with
-- phone_number_id '*' for all numbers, whose presence says "this day is computed"), holding what
-- the live queries would give for that day. A day is written once it ended SEAL_AFTER ago
-- (shared_code/management/analytics.py), by the first analytics call that needs it, and
-- rewritten by refresh_rollup() (a daily timer) for late statuses. Counts only, no ids: an
-- erased contact's messages stay counted, as in any aggregate.
CREATE TABLE whatsapp_analytics_days (
    day                  date        NOT NULL,
    phone_number_id      text        NOT NULL,
    -- [[direction, status, error_code, accepted, count], ...] of the messages created that day.
    message_groups       jsonb       NOT NULL,
    -- Conversations created that day with an inbound message, and for the answered ones the
    -- seconds from their first inbound message to the first outbound one after it.
    conversations_opened integer     NOT NULL,
    response_seconds     real[]      NOT NULL,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, phone_number_id)
);
