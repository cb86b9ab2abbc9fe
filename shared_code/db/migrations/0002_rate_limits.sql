-- Outbound rate-limit state shared by every sender instance (shared_code/ratelimit.py).
-- Each limit is a GCRA bucket stored as one timestamp, its "theoretical arrival time" (TAT): the
-- bucket is full while TAT <= now, and a send is allowed while TAT - now <= its burst tolerance.
-- '-infinity' means never used.

CREATE TABLE rate_limit_numbers (
    phone_number_id text        PRIMARY KEY,
    second_tat      timestamptz NOT NULL DEFAULT '-infinity',
    minute_tat      timestamptz NOT NULL DEFAULT '-infinity',
    day_tat         timestamptz NOT NULL DEFAULT '-infinity'
-- One row takes every send of its number: free space on the page keeps its updates HOT.
) WITH (fillfactor = 50);

-- One row per (business number, recipient) messaged recently. The key is
-- sha256("<phone_number_id>:<recipient>") so this table holds no phone numbers. A row whose TAT
-- has passed is a full bucket, the same as no row: rate_limit_purge_idle() deletes those.
CREATE TABLE rate_limit_pairs (
    pair_key        bytea       PRIMARY KEY,
    phone_number_id text        NOT NULL,
    tat             timestamptz NOT NULL,
    CONSTRAINT rate_limit_pairs_key_length CHECK (octet_length(pair_key) = 32)
) WITH (fillfactor = 80);

-- Seconds to wait before a bucket with this TAT allows a send (0 when it allows one now).
CREATE FUNCTION rate_limit_wait(tat timestamptz, now_epoch float8, tolerance float8)
RETURNS float8 LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest(0.0, extract(epoch FROM tat)::float8 - now_epoch - tolerance)
$$;

-- The TAT after charging one send at now_epoch.
CREATE FUNCTION rate_limit_charge(tat timestamptz, now_epoch float8, emission_interval float8)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(greatest(extract(epoch FROM tat)::float8, now_epoch) + emission_interval)
$$;

-- Charge one send to the number's three buckets and the pair's bucket, or to none of them.
-- Intervals and tolerances are in seconds; the caller derives them from its configuration.
--
-- Locking: the pair row is locked first and the number's row last. Every send on a number
-- queues for the number's row, so it is held only for the final check, the two updates and the
-- commit; the pair row is contended only by sends to the same user. A first look without locks
-- turns most refusals away before any lock: TATs only move forward, so whatever an older view
-- refuses, the current state refuses too.
--
-- The commit is asynchronous (synchronous_commit off for this transaction only): a crash may
-- lose the last fraction of a second of charges, which costs a few sends of slack, while a
-- WAL flush under the number's row lock would cap every number at one send per flush.
-- Call it as a statement of its own (autocommit), never inside a larger transaction.
CREATE FUNCTION rate_limit_acquire(
    number_id          text,
    pair_hash          bytea,
    second_interval    float8,
    second_tolerance   float8,
    minute_interval    float8,
    minute_tolerance   float8,
    day_interval       float8,
    day_tolerance      float8,
    pair_interval      float8,
    pair_tolerance     float8,
    OUT allowed        boolean,
    OUT retry_after    float8,
    OUT refused_by     text,
    OUT decided_at     timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    now_epoch   float8 := extract(epoch FROM clock_timestamp())::float8;
    number_row  rate_limit_numbers%ROWTYPE;
    pair_tat    timestamptz;
    second_wait float8;
    minute_wait float8;
    day_wait    float8;
    pair_wait   float8;
BEGIN
    SELECT * INTO number_row FROM rate_limit_numbers WHERE phone_number_id = number_id;
    SELECT tat INTO pair_tat FROM rate_limit_pairs WHERE pair_key = pair_hash;
    second_wait := rate_limit_wait(coalesce(number_row.second_tat, '-infinity'), now_epoch, second_tolerance);
    minute_wait := rate_limit_wait(coalesce(number_row.minute_tat, '-infinity'), now_epoch, minute_tolerance);
    day_wait    := rate_limit_wait(coalesce(number_row.day_tat, '-infinity'), now_epoch, day_tolerance);
    pair_wait   := rate_limit_wait(coalesce(pair_tat, '-infinity'), now_epoch, pair_tolerance);

    IF greatest(second_wait, minute_wait, day_wait, pair_wait) = 0 THEN
        PERFORM set_config('synchronous_commit', 'off', true);

        -- A loop, because purge may delete an idle row between our insert and our lock.
        LOOP
            SELECT tat INTO pair_tat FROM rate_limit_pairs WHERE pair_key = pair_hash FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO rate_limit_pairs (pair_key, phone_number_id, tat)
            VALUES (pair_hash, number_id, '-infinity')
            ON CONFLICT (pair_key) DO NOTHING;
        END LOOP;
        pair_wait := rate_limit_wait(pair_tat, now_epoch, pair_tolerance);

        IF pair_wait = 0 THEN
            LOOP
                SELECT * INTO number_row FROM rate_limit_numbers
                WHERE phone_number_id = number_id FOR UPDATE;
                EXIT WHEN FOUND;
                INSERT INTO rate_limit_numbers (phone_number_id) VALUES (number_id)
                ON CONFLICT (phone_number_id) DO NOTHING;
            END LOOP;
            -- Sends on a number are serialised from here on, so their times are read here.
            now_epoch := extract(epoch FROM clock_timestamp())::float8;
            second_wait := rate_limit_wait(number_row.second_tat, now_epoch, second_tolerance);
            minute_wait := rate_limit_wait(number_row.minute_tat, now_epoch, minute_tolerance);
            day_wait    := rate_limit_wait(number_row.day_tat, now_epoch, day_tolerance);
            pair_wait   := 0;

            IF greatest(second_wait, minute_wait, day_wait) = 0 THEN
                UPDATE rate_limit_numbers
                SET second_tat = rate_limit_charge(second_tat, now_epoch, second_interval),
                    minute_tat = rate_limit_charge(minute_tat, now_epoch, minute_interval),
                    day_tat    = rate_limit_charge(day_tat, now_epoch, day_interval)
                WHERE phone_number_id = number_id;
                UPDATE rate_limit_pairs
                SET tat = rate_limit_charge(tat, now_epoch, pair_interval)
                WHERE pair_key = pair_hash;
                allowed := true;
                retry_after := 0;
                decided_at := to_timestamp(now_epoch);
                RETURN;
            END IF;
        END IF;
    END IF;

    -- Refused: the longest of the refusing buckets' waits, and which bucket that is.
    allowed := false;
    decided_at := to_timestamp(now_epoch);
    SELECT wait.seconds, wait.bucket INTO retry_after, refused_by
    FROM (VALUES ('day', day_wait), ('minute', minute_wait), ('second', second_wait), ('pair', pair_wait))
        AS wait (bucket, seconds)
    ORDER BY wait.seconds DESC
    LIMIT 1;
END
$$;

-- Delete up to batch_size pair rows whose bucket is full again (the same as no row); returns
-- how many went. Rows locked by a send in progress are skipped, not waited for.
CREATE FUNCTION rate_limit_purge_idle(batch_size integer) RETURNS integer
LANGUAGE sql AS $$
    WITH idle AS (
        SELECT pair_key FROM rate_limit_pairs
        WHERE tat <= clock_timestamp()
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM rate_limit_pairs AS pairs USING idle
        WHERE pairs.pair_key = idle.pair_key
        RETURNING 1
    )
    SELECT count(*)::integer FROM deleted
$$;
