-- Agent configurations (issue 13): which agents answer, how, when, and for which words.
-- Secrets (OPENAI_API_KEY, AGENT_HTTP_SECRET) never live here: they stay in settings / Key Vault.

-- Every write takes a new number from this sequence, so "SELECT count(*), max(version)" changes
-- after any insert, update or delete: the orchestrator's cheap check for a changed catalogue.
CREATE SEQUENCE whatsapp_agents_version_seq;

CREATE TABLE whatsapp_agents (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- What conversations (assigned_agent) and outbound rows (agent) name it by.
    name              text        NOT NULL,
    kind              text        NOT NULL,
    enabled           boolean     NOT NULL DEFAULT true,
    -- openai only; NULL falls back to OPENAI_MODEL / OPENAI_SYSTEM_PROMPT.
    model             text,
    system_prompt     text,
    -- Sent once per conversation, just before its first agent answer.
    greeting          text,
    -- Sent when the agent fails or times out; NULL falls back to AGENT_FALLBACK_MESSAGE.
    fallback_text     text,
    routing_keywords  text[]      NOT NULL DEFAULT '{}',
    routing_reply_ids text[]      NOT NULL DEFAULT '{}',
    -- A conversation routed here by a keyword or reply id keeps this agent.
    sticky_routing    boolean     NOT NULL DEFAULT false,
    -- Routing tries agents by (routing_priority, name): lower first.
    routing_priority  integer     NOT NULL DEFAULT 100,
    is_default        boolean     NOT NULL DEFAULT false,
    -- shared_code/business_hours.py BusinessHours; NULL: always open.
    business_hours    jsonb,
    -- Kind-specific, non-secret options (base_url, api_version, url, rules_file).
    settings          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    version           bigint      NOT NULL DEFAULT nextval('whatsapp_agents_version_seq'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT whatsapp_agents_name_key UNIQUE (name),
    CONSTRAINT whatsapp_agents_name_check CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    CONSTRAINT whatsapp_agents_kind_check CHECK (kind IN ('echo', 'rules', 'openai', 'http')),
    CONSTRAINT whatsapp_agents_default_enabled_check CHECK (enabled OR NOT is_default)
);
ALTER SEQUENCE whatsapp_agents_version_seq OWNED BY whatsapp_agents.version;
-- At most one default agent (the application keeps exactly one once seeded).
CREATE UNIQUE INDEX whatsapp_agents_one_default ON whatsapp_agents (is_default) WHERE is_default;

-- The start of the closed period (business hours) the conversation's last away message was sent
-- for: a second message in that period gets none (the outbound row's idempotency key
-- "away:<conversation>:<period start>" guards redeliveries).
ALTER TABLE whatsapp_conversations ADD COLUMN away_message_period_start timestamptz;
