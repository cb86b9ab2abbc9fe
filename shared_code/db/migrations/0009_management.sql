-- The management API (issue 13): who did what through it.

-- One row per change made on behalf of a caller (a management key or an Entra ID principal).
-- It names what was touched by id, never by phone number or text: an erased contact's audit
-- rows stay, and must hold nothing of theirs.
CREATE TABLE whatsapp_audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- "key:<first 12 hex of the key's sha256>", "entra:<object id>", or "system:<component>".
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target_type text        NOT NULL,
    target_id   text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX whatsapp_audit_log_at_idx ON whatsapp_audit_log (at DESC, id DESC);
CREATE INDEX whatsapp_audit_log_target_idx ON whatsapp_audit_log (target_type, target_id);
