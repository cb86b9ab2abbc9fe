"""The AI agents behind one interface: an :class:`Agent` answers an :class:`AgentRequest`.

- :mod:`.base`: the request and reply types, :class:`AgentError`, :func:`reply_or_fallback`.
- :mod:`.echo`, :mod:`.rules`, :mod:`.openai_chat`, :mod:`.http_platform`: the agents.
- :mod:`.replies`: the JSON reply form shared by the rules file and the agent platform.
- :mod:`.registry`: :class:`AgentSettings` and :func:`build_agents`.
"""

from shared_code.orchestrator.agents.base import (
    Agent,
    AgentError,
    AgentReply,
    AgentRequest,
    Contact,
    HandoffReply,
    HistoryEntry,
    InboundMessage,
    InteractiveReply,
    TemplateReply,
    TextReply,
    reply_or_fallback,
)
from shared_code.orchestrator.agents.echo import EchoAgent
from shared_code.orchestrator.agents.http_platform import HttpPlatformAgent, verify_bridge_signature
from shared_code.orchestrator.agents.openai_chat import OpenAIChatAgent
from shared_code.orchestrator.agents.registry import AgentRegistry, AgentSettings, build_agents
from shared_code.orchestrator.agents.rules import RulesAgent, RulesFileError

__all__ = [
    "Agent",
    "AgentError",
    "AgentRegistry",
    "AgentReply",
    "AgentRequest",
    "AgentSettings",
    "Contact",
    "EchoAgent",
    "HandoffReply",
    "HistoryEntry",
    "HttpPlatformAgent",
    "InboundMessage",
    "InteractiveReply",
    "OpenAIChatAgent",
    "RulesAgent",
    "RulesFileError",
    "TemplateReply",
    "TextReply",
    "build_agents",
    "reply_or_fallback",
    "verify_bridge_signature",
]
