-- A conversation's history is read newest first by id (the agent's context: "the 20 messages
-- before this one"). On (conversation_id, created_at, id) that read sorted every message of the
-- conversation: 46 ms at 20,000 messages, growing with each one (seen in the full fuzz run, where
-- a few users sent tens of thousands). On (conversation_id, id) it reads 20 index entries.
CREATE INDEX whatsapp_messages_conversation_id_idx ON whatsapp_messages (conversation_id, id);
DROP INDEX whatsapp_messages_conversation_idx;
