"""Agent configurations: which agents answer, how, when (business hours) and on which keywords."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from shared_code.agent_configs import AgentConfig, AgentConfigInput, AgentList
from shared_code.management import agents
from shared_code.management.api import Call, Reply
from shared_code.management.auth import Access
from shared_code.management.problems import InvalidRequest
from shared_code.management.registry import MANAGEMENT_ROUTE_PREFIX, registry

PREFIX = MANAGEMENT_ROUTE_PREFIX


class AgentPath(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=100,
            pattern=r"^[^\x00/]+$",
            description="The agent's id, or its name.",
        ),
    ]


def _key(path: AgentPath) -> str | int:
    # isascii(): str.isdigit() is true of "²" too, which int() refuses (found by schemathesis).
    digits = path.key.isascii() and path.key.isdigit()
    return int(path.key) if digits and len(path.key) < 19 else path.key


@registry.operation(
    method="GET",
    route=f"{PREFIX}/agents",
    summary="List agent configurations",
    tag="agents",
    access=Access.READ,
    responses={200: AgentList},
)
async def list_agents(call: Call[Any, Any, None]) -> AgentList:
    async with call.services.pool.connection() as conn:
        return await agents.list_agents(conn)


@registry.operation(
    method="POST",
    route=f"{PREFIX}/agents",
    summary="Create an agent configuration",
    tag="agents",
    access=Access.ADMIN,
    body_model=AgentConfigInput,
    responses={201: AgentConfig},
    problems=(409,),
)
async def create_agent(call: Call[Any, Any, AgentConfigInput]) -> Reply:
    """Takes effect within seconds on every instance."""
    async with call.services.pool.connection() as conn:
        created = await agents.create_agent(conn, call.body, actor=call.caller.actor)
    return Reply(201, created, {"Location": f"{call.request_path}/{created.id}"})


@registry.operation(
    method="GET",
    route=f"{PREFIX}/agents/{{key}}",
    summary="Get an agent configuration",
    tag="agents",
    access=Access.READ,
    path_model=AgentPath,
    responses={200: AgentConfig},
    problems=(404,),
)
async def get_agent(call: Call[AgentPath, Any, None]) -> AgentConfig:
    async with call.services.pool.connection() as conn:
        return await agents.get_agent(conn, _key(call.path))


@registry.operation(
    method="PUT",
    route=f"{PREFIX}/agents/{{key}}",
    summary="Replace an agent configuration",
    tag="agents",
    access=Access.ADMIN,
    path_model=AgentPath,
    body_model=AgentConfigInput,
    responses={200: AgentConfig},
    problems=(404, 409),
    headers={"If-Match": "The version you read; refused with 409 if it changed since."},
)
async def replace_agent(call: Call[AgentPath, Any, AgentConfigInput]) -> AgentConfig:
    """Every field replaced; a new name moves the conversations of the old one."""
    expected = call.headers.get("if-match")
    version: int | None = None
    if expected is not None:
        cleaned = expected.strip().strip('"').removeprefix("W/").strip('"')
        if not cleaned.isdigit() or len(cleaned) > 18:
            raise InvalidRequest(
                "If-Match must be the agent's version number", code="invalid_if_match"
            )
        version = int(cleaned)
    async with call.services.pool.connection() as conn:
        return await agents.replace_agent(
            conn, _key(call.path), call.body, actor=call.caller.actor, expected_version=version
        )


@registry.operation(
    method="DELETE",
    route=f"{PREFIX}/agents/{{key}}",
    summary="Delete an agent configuration",
    tag="agents",
    access=Access.ADMIN,
    path_model=AgentPath,
    responses={204: None},
    problems=(404, 409),
)
async def delete_agent(call: Call[AgentPath, Any, None]) -> Reply:
    """Its conversations go back to the default agent; the default agent cannot be deleted."""
    async with call.services.pool.connection() as conn:
        await agents.delete_agent(conn, _key(call.path), actor=call.caller.actor)
    return Reply(204)
