"""Operators taking over a conversation from the agents, handing it back, and closing it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from shared_code import policy
from shared_code.db.pool import Pool
from shared_code.management.api import Call
from shared_code.management.auth import Access
from shared_code.management.registry import MANAGEMENT_ROUTE_PREFIX, IdPath, registry

PREFIX = MANAGEMENT_ROUTE_PREFIX
Command = Callable[[Pool, int, str], Awaitable[policy.ConversationState]]


async def _run(command: Command, call: Call[IdPath, Any, None]) -> policy.ConversationState:
    return await command(call.services.pool, call.path.id, call.caller.actor)


@registry.operation(
    method="POST",
    route=f"{PREFIX}/conversations/{{id}}/handoff",
    summary="Hand a conversation to a person",
    tag="conversations",
    access=Access.SEND,
    path_model=IdPath,
    responses={200: policy.ConversationState},
    problems=(404, 409),
)
async def handoff_conversation(call: Call[IdPath, Any, None]) -> policy.ConversationState:
    """No agent answers until it is released; operators send with send-message meanwhile.
    Repeating it changes nothing; a closed conversation cannot be handed off (409)."""
    return await _run(policy.start_handoff, call)


@registry.operation(
    method="POST",
    route=f"{PREFIX}/conversations/{{id}}/release",
    summary="Give a conversation back to its agent",
    tag="conversations",
    access=Access.SEND,
    path_model=IdPath,
    responses={200: policy.ConversationState},
    problems=(404, 409),
)
async def release_conversation(call: Call[IdPath, Any, None]) -> policy.ConversationState:
    """The agent answers the next message again."""
    return await _run(policy.release_handoff, call)


@registry.operation(
    method="POST",
    route=f"{PREFIX}/conversations/{{id}}/close",
    summary="Close a conversation",
    tag="conversations",
    access=Access.SEND,
    path_model=IdPath,
    responses={200: policy.ConversationState},
    problems=(404,),
)
async def close_conversation(call: Call[IdPath, Any, None]) -> policy.ConversationState:
    """The contact's next message opens a new conversation."""
    return await _run(policy.close_conversation, call)
