-- The local bus: a PostgreSQL queue with the Service Bus semantics the bridge relies on. Only the
-- dev host and tests use it; in Azure the same roles are played by Service Bus itself.

-- Active and scheduled messages. A completed message is deleted; a dead-lettered one moves to
-- local_bus_dead_letters, so this table holds only what may still be delivered.
CREATE TABLE local_bus_messages (
    sequence_number        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue                  text        NOT NULL,
    message_id             text        NOT NULL,
    -- NULL: the message belongs to no session and goes to any receiver of the queue.
    session_id             text,
    body                   bytea       NOT NULL,
    content_type           text,
    subject                text,
    application_properties jsonb       NOT NULL DEFAULT '{}',
    enqueued_at            timestamptz NOT NULL DEFAULT now(),
    scheduled_enqueue_time timestamptz,
    -- greatest(enqueued_at, scheduled_enqueue_time), stored so receive filters on one column.
    visible_at             timestamptz NOT NULL,
    delivery_count         integer     NOT NULL DEFAULT 0,
    -- Peek-lock: set on receive, cleared by abandon; a lock past locked_until is void.
    lock_token             uuid,
    locked_until           timestamptz,
    -- The session lock the message was received under: the message lock only counts while that
    -- session lock is still held, as in Service Bus, where losing the session loses its messages.
    session_lock_token     uuid,
    CONSTRAINT local_bus_messages_lock_check CHECK ((lock_token IS NULL) = (locked_until IS NULL))
);

-- Next message of a queue without sessions, and the scan for the oldest session with work.
CREATE INDEX local_bus_messages_plain_idx ON local_bus_messages (queue, sequence_number)
    WHERE session_id IS NULL;
CREATE INDEX local_bus_messages_sessions_idx ON local_bus_messages (queue, sequence_number)
    WHERE session_id IS NOT NULL;
-- Next message within one session, and "is there an older message in this session".
CREATE INDEX local_bus_messages_session_order_idx
    ON local_bus_messages (queue, session_id, sequence_number)
    WHERE session_id IS NOT NULL;
-- Few rows (only messages in flight): the "one in flight per session" check and the next expiring
-- lock a waiting receiver must wake up for.
CREATE INDEX local_bus_messages_locked_idx ON local_bus_messages (queue, session_id, locked_until)
    WHERE lock_token IS NOT NULL;
-- The next scheduled message to become visible.
CREATE INDEX local_bus_messages_scheduled_idx ON local_bus_messages (queue, visible_at)
    WHERE scheduled_enqueue_time IS NOT NULL;

-- Session locks. A row exists only while a receiver holds (or last held) the session; the
-- session's messages decide whether it has work, so publishing never touches this table.
CREATE TABLE local_bus_sessions (
    queue        text        NOT NULL,
    session_id   text        NOT NULL,
    lock_token   uuid        NOT NULL,
    locked_until timestamptz NOT NULL,
    PRIMARY KEY (queue, session_id)
);
CREATE INDEX local_bus_sessions_locked_until_idx ON local_bus_sessions (queue, locked_until);

-- Duplicate detection history: a message id accepted on a queue is dropped when published again
-- before expires_at. Kept apart from the messages because it outlives them.
CREATE TABLE local_bus_duplicates (
    queue       text        NOT NULL,
    message_id  text        NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, message_id)
);
CREATE INDEX local_bus_duplicates_expires_idx ON local_bus_duplicates (expires_at);

CREATE TABLE local_bus_dead_letters (
    sequence_number         bigint      PRIMARY KEY,
    queue                   text        NOT NULL,
    message_id              text        NOT NULL,
    session_id              text,
    body                    bytea       NOT NULL,
    content_type            text,
    subject                 text,
    application_properties  jsonb       NOT NULL,
    enqueued_at             timestamptz NOT NULL,
    scheduled_enqueue_time  timestamptz,
    delivery_count          integer     NOT NULL,
    dead_letter_reason      text        NOT NULL,
    dead_letter_description text,
    dead_lettered_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX local_bus_dead_letters_queue_idx ON local_bus_dead_letters (queue, sequence_number);
