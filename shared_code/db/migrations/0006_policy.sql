-- Messaging policies (issue 13, shared_code/policy.py): opt-out, the customer-service window,
-- handoff to a person, conversations that close when idle, and retention.

-- A conversation is 'open' (the agent answers), in 'handoff' (a person answers; the agent stays
-- silent) or 'closed' (idle, or closed by an operator). At most one conversation per business
-- number and contact is not closed: after a close, the next message opens a new row and the
-- closed one keeps its closed_at.
ALTER TABLE whatsapp_conversations DROP CONSTRAINT whatsapp_conversations_status_check;
ALTER TABLE whatsapp_conversations ADD CONSTRAINT whatsapp_conversations_status_check
    CHECK (status IN ('open', 'handoff', 'closed'));
ALTER TABLE whatsapp_conversations
    -- Since when a person has the conversation, and who handed it over ("keyword", "agent:<name>",
    -- or a management caller such as "key:<hash>"); cleared on release.
    ADD COLUMN handoff_at   timestamptz,
    ADD COLUMN handoff_by   text,
    -- 'idle' (closed by the maintenance timer) or 'operator' (closed through the management API).
    ADD COLUMN close_reason text;
DROP INDEX whatsapp_conversations_open_key;
CREATE UNIQUE INDEX whatsapp_conversations_current_key ON whatsapp_conversations (phone_number_id, contact_id)
    WHERE status <> 'closed';
-- The idle-close timer walks the oldest activity first among conversations not closed.
CREATE INDEX whatsapp_conversations_idle_idx
    ON whatsapp_conversations ((COALESCE(last_message_at, created_at)), id)
    WHERE status <> 'closed';
-- Retention deletes closed conversations that have no messages left, oldest close first.
CREATE INDEX whatsapp_conversations_closed_idx ON whatsapp_conversations (closed_at, id)
    WHERE status = 'closed';

-- Opt-out: how the contact's state last changed ('keyword', 'api', ...) and when (opted_out_at
-- is when they opted out; it stays NULL once they opt back in). The marketing preference Meta
-- reports in user_preferences webhooks lives in preferences->'marketing_messages'.
ALTER TABLE whatsapp_contacts
    ADD COLUMN opt_out_source     text,
    ADD COLUMN opt_out_changed_at timestamptz;

ALTER TABLE whatsapp_messages
    -- Why an outbound row exists, so the policy can tell what may still go out: 'reply' (an
    -- agent's answer or the fallback; NULL on rows older than this column means the same),
    -- 'operator' (send-message), 'template' and 'marketing' (business-initiated templates; a
    -- 'marketing' one is refused to a contact who stopped marketing messages),
    -- 'opt_out_confirmation', 'opt_in_confirmation', 'handoff_notice', 'away_message'.
    ADD COLUMN purpose           text,
    -- Set when the policy refused to send the row (it is then 'failed' and never reached Meta):
    -- 'contact_opted_out', 'marketing_opted_out', 'window_closed'.
    ADD COLUMN blocked_by_policy text;

-- Retention deletes old messages; a reply that outlives the message it answered keeps its row.
ALTER TABLE whatsapp_messages DROP CONSTRAINT whatsapp_messages_reply_to_message_id_fkey;
ALTER TABLE whatsapp_messages ADD CONSTRAINT whatsapp_messages_reply_to_message_id_fkey
    FOREIGN KEY (reply_to_message_id) REFERENCES whatsapp_messages (id) ON DELETE SET NULL;
-- Without it, each deleted message would scan the table for the replies to unlink.
CREATE INDEX whatsapp_messages_reply_to_idx ON whatsapp_messages (reply_to_message_id)
    WHERE reply_to_message_id IS NOT NULL;
-- Retention of the status history, oldest first (webhook events, messages and event failures
-- already have indexes on their times).
CREATE INDEX whatsapp_message_statuses_received_idx ON whatsapp_message_statuses (received_at);
