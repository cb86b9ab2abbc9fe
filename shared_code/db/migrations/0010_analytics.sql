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

-- GET contacts?search=<digits>: "wa_id COLLATE "C" LIKE '<digits>%'", newest id first. A "C"
-- collation index makes the prefix an index range in any database locale (the unique index on
-- wa_id uses the database's default collation).
CREATE INDEX whatsapp_contacts_wa_id_prefix_idx ON whatsapp_contacts ((wa_id COLLATE "C"), id);

-- GET contacts?search=<name>: every word of the search is a word of the name (the last one may
-- be the start of a word), newest contact first. Each word of each name is a row here, kept by
-- the triggers below, so a search is a merge of (word, contact_id) ranges read backwards: it
-- stops after one page however many contacts share a first name (0.5 ms for a full name shared
-- by 800 of 1 M contacts, where a trigram index took 20 ms to fetch and sort all 800). Erasing a
-- contact erases its words (ON DELETE CASCADE).
CREATE TABLE whatsapp_contact_name_words (
    word       text   COLLATE "C" NOT NULL,
    contact_id bigint NOT NULL REFERENCES whatsapp_contacts (id) ON DELETE CASCADE,
    PRIMARY KEY (word, contact_id)
);
CREATE INDEX whatsapp_contact_name_words_contact_idx ON whatsapp_contact_name_words (contact_id);

-- The words of a name, in order: lower case, split at anything that is not a letter or digit,
-- each at most 100 characters. Searches split their text with the same function.
CREATE FUNCTION whatsapp_name_words(name text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(left(word, 100) ORDER BY position), '{}')
    FROM regexp_split_to_table(lower(coalesce(name, '')), '\W+') WITH ORDINALITY AS t(word, position)
    WHERE word <> ''
$$;

CREATE FUNCTION whatsapp_contacts_index_name() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM whatsapp_contact_name_words WHERE contact_id = NEW.id;
    END IF;
    INSERT INTO whatsapp_contact_name_words (word, contact_id)
    SELECT DISTINCT word, NEW.id FROM unnest(whatsapp_name_words(NEW.profile_name)) AS word;
    RETURN NULL;
END
$$;
CREATE TRIGGER whatsapp_contacts_name_words_insert AFTER INSERT ON whatsapp_contacts
    FOR EACH ROW WHEN (NEW.profile_name IS NOT NULL)
    EXECUTE FUNCTION whatsapp_contacts_index_name();
-- Every inbound message upserts its contact: only a name that really changed costs anything.
CREATE TRIGGER whatsapp_contacts_name_words_update AFTER UPDATE OF profile_name ON whatsapp_contacts
    FOR EACH ROW WHEN (OLD.profile_name IS DISTINCT FROM NEW.profile_name)
    EXECUTE FUNCTION whatsapp_contacts_index_name();

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
