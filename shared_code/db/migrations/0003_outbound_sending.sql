-- What the sender needs on outbound rows to send each one once, in order, within the limits.

ALTER TABLE whatsapp_messages
    -- Which agent wrote the reply, and the inbound message it answers.
    ADD COLUMN agent               text,
    ADD COLUMN reply_to_message_id bigint REFERENCES whatsapp_messages (id),
    -- Graph API requests made for this row so far.
    ADD COLUMN send_attempts       integer NOT NULL DEFAULT 0,
    -- Set just before a request leaves and cleared once its outcome is known. Still set after a
    -- crash or a timeout means the request may have reached Meta: the sender then waits for a
    -- status webhook carrying this row's biz_opaque_callback_data before sending again.
    ADD COLUMN send_started_at     timestamptz,
    -- When the sender will look at the row again (after a back-off or a wait); also what a later
    -- reply in the same conversation waits for, so replies leave in order.
    ADD COLUMN next_attempt_at     timestamptz,
    -- Each re-queue gets a new bus message id (the bus drops repeated ids).
    ADD COLUMN requeue_count       integer NOT NULL DEFAULT 0,
    -- Set when the sender gave up after its maximum attempts: every later delivery of the row's
    -- bus message is refused, so the broker dead-letters it (Python functions cannot do it).
    ADD COLUMN gave_up_at          timestamptz;

-- Outbound rows not yet accepted by Meta, per conversation in creation order.
CREATE INDEX whatsapp_messages_unsent_idx ON whatsapp_messages (conversation_id, id)
    WHERE direction = 'outbound' AND wamid IS NULL AND status = 'pending';

-- Finding the status webhook of an ambiguous send by the callback data it echoes.
CREATE INDEX whatsapp_message_statuses_callback_idx ON whatsapp_message_statuses (biz_opaque_callback_data)
    WHERE biz_opaque_callback_data IS NOT NULL;
