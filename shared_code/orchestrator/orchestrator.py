"""The orchestrator: from a stored inbound message to a queued reply.

For each message the processor stored, it marks the message read and shows typing, picks the
conversation's agent (see :mod:`agent_routing`), gives it the contact and recent history, and
turns the answer into an outbound row keyed ``reply:<inbound wamid>`` published to the outbound
queue in the conversation's session. Running it twice for one message (a redelivery) finds the
row by its key and only makes sure it is queued, so the user gets one reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from shared_code import telemetry
from shared_code.agent_configs import AgentConfig
from shared_code.bus.port import MessageBus
from shared_code.business_hours import away_message_key, closed_period
from shared_code.db import agent_turns, conversations, outbound
from shared_code.db.pool import Pool
from shared_code.orchestrator.agent_catalog import LineupSource, StaticLineup
from shared_code.orchestrator.agent_routing import AgentRoutingRule, choose_agent
from shared_code.orchestrator.agents import (
    AgentRegistry,
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
from shared_code.policy import MessagingPolicy
from shared_code.routing import InboundForRouting
from shared_code.sending import outbound_bus_message
from shared_code.whatsapp import outbound as bodies
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.json_body import storable, text_for_postgres

logger = logging.getLogger(__name__)

__all__ = ["Orchestrator", "reply_body"]


class Orchestrator:
    """Implements :class:`shared_code.routing.Router`."""

    def __init__(
        self,
        *,
        pool: Pool,
        bus: MessageBus,
        outbound_queue: str,
        graph: GraphApiClient,
        agents: AgentRegistry | None = None,
        routing_rules: Sequence[AgentRoutingRule] = (),
        # The agent configurations table (AgentCatalog); without it, ``agents`` and
        # ``routing_rules`` built from settings never change.
        catalog: LineupSource | None = None,
        timeout_seconds: float,
        fallback: TextReply,
        history_limit: int,
        mark_as_read: bool = True,
        # Opt-out, opt-in and handoff before any agent is asked (default settings when None).
        policy: MessagingPolicy | None = None,
    ) -> None:
        self._pool = pool
        self._policy = policy or MessagingPolicy(pool)
        self._bus = bus
        self._queue = outbound_queue
        self._graph = graph
        if catalog is None:
            if agents is None:
                raise ValueError("an Orchestrator needs agents or a catalog")
            catalog = StaticLineup(agents, routing_rules)
        self._lineup = catalog
        self._timeout = timeout_seconds
        self._fallback = fallback
        self._history_limit = history_limit
        self._mark_as_read = mark_as_read

    async def route(self, message: InboundForRouting) -> None:
        key = f"reply:{message.wamid}"
        if not message.first_routing:
            async with self._pool.connection() as conn:
                existing = await outbound.find_by_idempotency_key(conn, key)
            if existing is not None:
                await self._publish(existing, message)
                return
        gate = await self._policy.before_agent(message)
        if not gate.ask_agent:
            for row_id in gate.queued:
                await self._publish(row_id, message)
            logger.info(
                "conversation %d: no agent answer (%s)", message.conversation_id, gate.reason
            )
            return
        # Blue ticks and the typing bubble go out while the agent works, not before it starts.
        courtesy = (
            asyncio.create_task(self._show_read_and_typing(message)) if self._mark_as_read else None
        )
        try:
            await self._answer(message, key)
        finally:
            if courtesy is not None:
                await courtesy

    async def _answer(self, message: InboundForRouting, key: str) -> None:
        if message.fallback_only:
            await self._queue_reply(message, key, self._fallback, agent_name=None)
            return
        async with self._pool.connection() as conn:
            context = await conversations.load_agent_context(
                conn, message.conversation_id, message.message_id, self._history_limit
            )
        lineup = await self._lineup.current()
        choice = choose_agent(
            lineup.rules,
            assigned_agent=context.assigned_agent,
            text=message.text,
            reply_id=message.reply_id,
        )
        agent = lineup.registry.get(choice.agent)
        if choice.assign and choice.agent is not None:
            async with self._pool.connection() as conn:
                await conversations.assign_agent(conn, message.conversation_id, agent.name)
        config = lineup.configs.get(agent.name)
        turn = None
        if config is not None and (config.business_hours or config.greeting):
            async with self._pool.connection() as conn:
                turn = await agent_turns.load_turn(conn, message.message_id)
            if await self._stays_silent_outside_hours(message, agent.name, config, turn):
                return
        fallback = self._fallback
        if config is not None and config.fallback_text:
            fallback = TextReply(body=config.fallback_text)
        request = AgentRequest(
            conversation_id=message.conversation_id,
            phone_number_id=message.phone_number_id,
            contact=Contact(wa_id=message.contact_wa_id, profile_name=context.profile_name),
            message=InboundMessage(
                wamid=message.wamid,
                message_type=message.message_type,
                text=message.text,
                reply_id=message.reply_id,
            ),
            history=[
                HistoryEntry(
                    direction="inbound" if row.direction == "inbound" else "outbound",
                    message_type=row.message_type,
                    text=row.text_body,
                    at=row.at,
                )
                for row in context.history
            ],
        )
        with telemetry.agent_call(agent.name, message.conversation_id):
            reply = await reply_or_fallback(
                agent, request, timeout_seconds=self._timeout, fallback=fallback
            )
        reply = await self._hand_off_if_asked(message, reply, agent.name)
        if reply is None:
            logger.info(
                "agent %s chose not to reply in conversation %d",
                agent.name,
                message.conversation_id,
            )
            return
        if config is not None and config.greeting and turn is not None and not turn.answered_before:
            # Just before the conversation's first answer; once, whatever the redeliveries.
            greeting = f"greeting:{message.conversation_id}"
            await self._queue_text(message, greeting, config.greeting, agent.name, "reply")
        await self._queue_reply(message, key, reply, agent_name=agent.name)

    async def _hand_off_if_asked(
        self, message: InboundForRouting, reply: AgentReply | None, agent_name: str
    ) -> AgentReply | None:
        """Put the conversation in handoff when the reply asks for a person; the reply to send
        (None for a handoff without an answer of the agent's own, which gets the notice)."""
        if reply is None or not reply.handoff:
            return reply
        silent = isinstance(reply, HandoffReply)
        queued = await self._policy.agent_handed_off(message, agent_name, with_notice=silent)
        for row_id in queued:
            await self._publish(row_id, message)
        return None if silent else reply

    async def _stays_silent_outside_hours(
        self,
        message: InboundForRouting,
        agent_name: str,
        config: AgentConfig,
        turn: agent_turns.Turn,
    ) -> bool:
        """Outside the configuration's business hours: the away message once per closed period
        (and conversation), then True when the agent must stay silent."""
        hours = config.business_hours
        period = None if hours is None else closed_period(hours, turn.written_at)
        if hours is None or period is None:
            return False
        already_sent = period.start is not None and period.start == turn.away_message_period_start
        if hours.away_message and not already_sent:
            key = away_message_key(message.conversation_id, period)
            await self._queue_text(
                message, key, hours.away_message, agent_name, "away_message", republish=False
            )
            if period.start is not None:
                async with self._pool.connection() as conn:
                    await agent_turns.note_away_message(conn, message.conversation_id, period.start)
        return hours.outside_hours == "silent"

    async def _queue_text(
        self,
        message: InboundForRouting,
        key: str,
        text: str,
        agent_name: str,
        purpose: str,
        *,
        republish: bool = True,
    ) -> None:
        """Queue a configured text (greeting, away message) once per ``key``. A row found
        already is published again only on a redelivery or with ``republish``: an earlier
        delivery may have stopped between insert and publish."""
        async with self._pool.connection() as conn:
            row_id, created = await outbound.insert_outbound(
                conn,
                outbound.NewOutbound(
                    conversation_id=message.conversation_id,
                    phone_number_id=message.phone_number_id,
                    contact_wa_id=message.contact_wa_id,
                    message_type="text",
                    text_body=text_for_postgres(text),
                    content=bodies.text_message(message.contact_wa_id, text),
                    idempotency_key=key,
                    agent=agent_name,
                    reply_to_message_id=message.message_id,
                    purpose=purpose,
                ),
            )
        if created or republish or not message.first_routing:
            await self._publish(row_id, message)

    async def _queue_reply(
        self, message: InboundForRouting, key: str, reply: AgentReply, *, agent_name: str | None
    ) -> None:
        # An agent's text is anyone's text: NUL or a lone surrogate must not fail the insert.
        body = storable(reply_body(reply, to=message.contact_wa_id))
        text = _text_of(reply)
        async with self._pool.connection() as conn:
            row_id, _ = await outbound.insert_outbound(
                conn,
                outbound.NewOutbound(
                    conversation_id=message.conversation_id,
                    phone_number_id=message.phone_number_id,
                    contact_wa_id=message.contact_wa_id,
                    message_type=str(body["type"]),
                    text_body=None if text is None else text_for_postgres(text),
                    content=body,
                    idempotency_key=key,
                    agent=agent_name,
                    reply_to_message_id=message.message_id,
                ),
            )
        await self._publish(row_id, message)

    async def _publish(self, row_id: int, message: InboundForRouting) -> None:
        # A failure raises: the processor's delivery is retried and lands in the branch above.
        await self._bus.publish(
            self._queue,
            [
                outbound_bus_message(
                    row_id,
                    phone_number_id=message.phone_number_id,
                    contact_wa_id=message.contact_wa_id,
                )
            ],
        )

    async def _show_read_and_typing(self, message: InboundForRouting) -> None:
        try:
            await self._graph.mark_as_read(
                message.wamid, typing_indicator=True, phone_number_id=message.phone_number_id
            )
        except Exception as error:
            # Blue ticks and the typing bubble are courtesy: the reply matters more.
            logger.warning(
                "could not mark message %d as read: %s", message.message_id, type(error).__name__
            )


def reply_body(reply: AgentReply, *, to: str) -> dict[str, Any]:
    """The Graph API request body for an agent's answer."""
    if isinstance(reply, TextReply):
        return bodies.text_message(to, reply.body, preview_url=reply.preview_url)
    if isinstance(reply, InteractiveReply):
        return bodies.interactive_message(to, reply.interactive)
    assert isinstance(reply, TemplateReply)
    return bodies.template_message(
        to, reply.name, reply.language_code, components=list(reply.components)
    )


def _text_of(reply: AgentReply) -> str | None:
    """What the conversation history shows of a reply: its text, or an interactive's body."""
    if isinstance(reply, TextReply):
        return reply.body
    if isinstance(reply, InteractiveReply):
        body = reply.interactive.get("body")
        text = body.get("text") if isinstance(body, Mapping) else None
        return text if isinstance(text, str) else None
    return None
