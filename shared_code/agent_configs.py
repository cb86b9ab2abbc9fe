"""Agent configurations: which agents answer conversations, how, when, and for which words.

A configuration is a row of ``whatsapp_agents`` (:mod:`shared_code.db.agents`); the orchestrator
reads them through :class:`shared_code.orchestrator.agent_catalog.AgentCatalog` and the management
API changes them with the commands here. On a worker's first start against an empty table the
environment's agent settings seed it (:func:`seed_from_settings`), after which the table rules.

- ``kind``: ``echo``, ``rules``, ``openai`` or ``http``; several configurations may share a kind
  (two ``openai`` agents with their own models and prompts). Secrets are never part of one: the
  ``openai`` kind uses ``OPENAI_API_KEY`` and the ``http`` kind ``AGENT_HTTP_SECRET`` (Key Vault).
- A NULL option falls back to its environment setting: ``model`` to ``OPENAI_MODEL``,
  ``system_prompt`` to ``OPENAI_SYSTEM_PROMPT``, ``settings.base_url`` to ``OPENAI_BASE_URL``,
  ``settings.url`` to ``AGENT_HTTP_URL``, ``settings.rules_file`` to ``AGENT_RULES_FILE``,
  ``fallback_text`` to ``AGENT_FALLBACK_MESSAGE``.
- Exactly one enabled configuration is the default: it answers conversations no routing keyword
  or reply id sends elsewhere. Making another one default takes the flag from the old one; the
  default cannot be deleted, disabled or un-defaulted directly (409).
- Routing: agents are tried by ``(routing_priority, name)``; the first whose keywords (whole
  words, any case) or reply ids (exact, or a prefix ending in ``*``) match takes the message;
  with ``sticky_routing`` the conversation keeps it. Deleting or disabling an agent hands its
  conversations back to the default.
- ``greeting``: sent once per conversation, just before the first agent answer in it (key
  ``greeting:<conversation id>``); a new conversation after a close is greeted again.
- ``business_hours`` (:mod:`shared_code.business_hours`): outside them, the away message once per
  closed period and conversation, then the agent answers or stays silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from shared_code.business_hours import BusinessHours, schedule_problems
from shared_code.management.problems import InvalidRequest

if TYPE_CHECKING:
    from shared_code.orchestrator.agent_routing import AgentRoutingRule
    from shared_code.orchestrator.agents.registry import AgentSettings

__all__ = [
    "AGENT_KINDS",
    "AgentConfig",
    "AgentConfigInput",
    "AgentKind",
    "AgentKindSettings",
    "AgentList",
    "decode_agent_input",
    "seed_configurations",
    "validate_agent_input",
]

AgentKind = Literal["echo", "rules", "openai", "http"]
AGENT_KINDS: tuple[AgentKind, ...] = ("echo", "rules", "openai", "http")

AgentName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z][a-z0-9_-]{0,62}$",
        description=(
            "Unique name: lower-case letters, digits, '-' and '_', starting with a letter. "
            "Conversations and messages refer to the agent by it."
        ),
        examples=["support"],
    ),
]
_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
# Spelled out, not \S: Python's \s also matches \x1c-\x1f and \x85, JSON Schema's (ECMA-262)
# also \ufeff, so the document and the check would disagree (found by schemathesis).
_Url = Annotated[
    str, msgspec.Meta(pattern=r"^https?://[^\s\x00-\x1f\x7f-\x9f\ufeff]+$", max_length=2048)
]
_Keyword = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
_ReplyId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class AgentKindSettings(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Kind-specific options; never secrets. Each falls back to its environment setting."""

    base_url: Annotated[
        _Url | None,
        msgspec.Meta(description="openai: the chat completions base URL (OPENAI_BASE_URL)."),
    ] = None
    api_version: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | None,
        msgspec.Meta(description="openai: set for Azure OpenAI (OPENAI_API_VERSION)."),
    ] = None
    url: Annotated[
        _Url | None,
        msgspec.Meta(description="http: the external agent platform's URL (AGENT_HTTP_URL)."),
    ] = None
    rules_file: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None,
        msgspec.Meta(description="rules: path of the JSON rules file (AGENT_RULES_FILE)."),
    ] = None


_KIND_OPTIONS: dict[str, frozenset[str]] = {
    "echo": frozenset(),
    "rules": frozenset({"rules_file"}),
    "openai": frozenset({"base_url", "api_version", "model", "system_prompt"}),
    "http": frozenset({"url"}),
}


class AgentConfigInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An agent configuration as created (POST) or replaced (PUT)."""

    name: AgentName
    kind: Annotated[AgentKind, msgspec.Meta(description="Which agent implementation answers.")]
    enabled: Annotated[
        bool,
        msgspec.Meta(
            description="A disabled agent answers nothing; its conversations "
            "go to the default agent."
        ),
    ] = True
    is_default: Annotated[
        bool,
        msgspec.Meta(
            description="Answers conversations no routing rule sends elsewhere; "
            "setting it takes the flag from the current default."
        ),
    ] = False
    model: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None,
        msgspec.Meta(description="openai only: the model name (else OPENAI_MODEL)."),
    ] = None
    system_prompt: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=32768)] | None,
        msgspec.Meta(description="openai only: the system message (else OPENAI_SYSTEM_PROMPT)."),
    ] = None
    greeting: Annotated[
        _Text | None,
        msgspec.Meta(description="Sent once per conversation, just before its first answer."),
    ] = None
    fallback_text: Annotated[
        _Text | None,
        msgspec.Meta(
            description="Sent when the agent fails or times out (else AGENT_FALLBACK_MESSAGE)."
        ),
    ] = None
    routing_keywords: Annotated[
        list[_Keyword],
        msgspec.Meta(
            max_length=200,
            description="Words that route a message here (whole words, any case).",
            examples=[["price", "order"]],
        ),
    ] = []
    routing_reply_ids: Annotated[
        list[_ReplyId],
        msgspec.Meta(
            max_length=200,
            description="Interactive reply ids or template button payloads that route a message "
            "here; exact, or a prefix when ending in '*'.",
        ),
    ] = []
    sticky_routing: Annotated[
        bool,
        msgspec.Meta(description="A conversation routed here keeps this agent afterwards."),
    ] = False
    routing_priority: Annotated[
        int,
        msgspec.Meta(ge=0, le=10000, description="Routing tries lower numbers first."),
    ] = 100
    business_hours: Annotated[
        BusinessHours | None, msgspec.Meta(description="None: always open.")
    ] = None
    settings: AgentKindSettings = msgspec.field(default_factory=AgentKindSettings)


class AgentConfig(msgspec.Struct, kw_only=True):
    """An agent configuration as stored."""

    id: int
    name: str
    kind: AgentKind
    enabled: bool
    is_default: bool
    model: str | None
    system_prompt: str | None
    greeting: str | None
    fallback_text: str | None
    routing_keywords: list[str]
    routing_reply_ids: list[str]
    sticky_routing: bool
    routing_priority: int
    business_hours: BusinessHours | None
    settings: AgentKindSettings
    version: Annotated[
        int, msgspec.Meta(description="Changes on every write of this configuration.")
    ]
    created_at: datetime
    updated_at: datetime


class AgentList(msgspec.Struct, kw_only=True):
    """Every agent configuration, by routing order."""

    items: list[AgentConfig]


def decode_agent_input(body: bytes) -> AgentConfigInput:
    """The request body as a checked :class:`AgentConfigInput`; :class:`InvalidRequest` if not."""
    try:
        config = msgspec.json.decode(body, type=AgentConfigInput)
    except msgspec.DecodeError as error:
        raise InvalidRequest(str(error), code="invalid_agent") from error
    validate_agent_input(config)
    return config


def validate_agent_input(config: AgentConfigInput) -> None:
    """What the schema cannot check; raises :class:`InvalidRequest` listing every problem."""
    problems: list[str] = []
    allowed = _KIND_OPTIONS[config.kind]
    options = {
        "model": config.model,
        "system_prompt": config.system_prompt,
        **{f: getattr(config.settings, f) for f in AgentKindSettings.__struct_fields__},
    }
    for option, value in options.items():
        if value is not None and option not in allowed:
            where = option if option in ("model", "system_prompt") else f"settings.{option}"
            problems.append(f"{where}: not an option of the {config.kind} kind")
    if config.is_default and not config.enabled:
        problems.append("is_default: the default agent must be enabled")
    if any(not k.strip() for k in config.routing_keywords):
        problems.append("routing_keywords: a keyword is blank")
    if config.business_hours is not None:
        problems.extend(schedule_problems(config.business_hours))
    if problems:
        raise InvalidRequest(
            "; ".join(problems),
            code="invalid_agent",
            errors=[{"detail": problem} for problem in problems],
        )


def seed_configurations(
    settings: AgentSettings, routing_rules: tuple[AgentRoutingRule, ...]
) -> list[AgentConfigInput]:
    """The configurations the environment describes: one per agent kind it configures (echo
    always), named after the kind, the default from ``WHATSAPP_DEFAULT_AGENT`` and the routing
    from ``AGENT_ROUTING_RULES`` (the rules of one agent merged, ordered by its first rule).

    Non-secret values (model, URLs, rules file) are copied so a dashboard shows them; the system
    prompt and fallback text stay NULL, that is the environment's.
    """
    kinds: list[AgentKind] = ["echo"]
    if settings.rules_file is not None:
        kinds.append("rules")
    if settings.openai_base_url and settings.openai_model:
        kinds.append("openai")
    secret = settings.http_agent_secret
    if settings.http_agent_url and secret is not None and secret.reveal():
        kinds.append("http")
    configs = []
    for kind in kinds:
        rules = [(i, r) for i, r in enumerate(routing_rules) if r.agent == kind]
        configs.append(
            AgentConfigInput(
                name=kind,
                kind=kind,
                is_default=kind == settings.default_agent,
                model=settings.openai_model if kind == "openai" else None,
                settings=AgentKindSettings(
                    base_url=settings.openai_base_url if kind == "openai" else None,
                    api_version=settings.openai_api_version if kind == "openai" else None,
                    url=settings.http_agent_url if kind == "http" else None,
                    rules_file=(
                        str(settings.rules_file)
                        if kind == "rules" and settings.rules_file is not None
                        else None
                    ),
                ),
                routing_keywords=_merged(k for _, r in rules for k in r.keywords),
                routing_reply_ids=_merged(p for _, r in rules for p in r.reply_ids),
                sticky_routing=any(r.assign for _, r in rules),
                routing_priority=rules[0][0] if rules else 100,
            )
        )
    return configs


def _merged(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
