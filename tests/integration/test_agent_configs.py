"""Agent configurations on real PostgreSQL: the management commands (and each of their errors),
their audit rows, and the seeding from the environment on a first start."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from shared_code.agent_configs import AgentConfigInput, decode_agent_input
from shared_code.db.pool import Pool, open_pool
from shared_code.management.agents import (
    create_agent,
    delete_agent,
    get_agent,
    list_agents,
    replace_agent,
)
from shared_code.management.problems import Conflict, InvalidRequest, NotFound
from shared_code.orchestrator.agent_catalog import AgentCatalog
from shared_code.orchestrator.agent_routing import parse_routing_rules
from shared_code.orchestrator.agents import AgentSettings
from shared_code.secrets import Secret

pytestmark = pytest.mark.integration

ACTOR = "key:0123456789ab"
ENV = AgentSettings(
    default_agent="openai",
    openai_base_url="https://llm.test/v1",
    openai_model="env-model",
    openai_api_key=Secret("sk-test"),
)
ENV_RULES = parse_routing_rules(
    '[{"agent": "openai", "keywords": ["price", "order"], "assign": true},'
    ' {"agent": "echo", "reply_ids": ["echo_*"]},'
    ' {"agent": "openai", "keywords": ["refund"]},'
    ' {"agent": "http", "keywords": ["platform"]}]'
)


def agent(name: str, kind: str = "echo", **fields: Any) -> AgentConfigInput:
    return msgspec.convert({"name": name, "kind": kind, **fields}, AgentConfigInput)


async def audit_rows(pool: Pool) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT actor, action, target_type, details->>'name' FROM whatsapp_audit_log ORDER BY id"
        )
        return await cursor.fetchall()


async def seeded(pool: Pool, settings: AgentSettings = ENV, rules: str | None = None) -> None:
    async with httpx.AsyncClient() as http:
        catalog = AgentCatalog(
            pool=pool,
            settings=settings,
            routing_rules=ENV_RULES if rules is None else parse_routing_rules(rules),
            http=http,
        )
        await catalog.start()


async def add_conversation(pool: Pool, assigned_agent: str | None) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "WITH c AS (INSERT INTO whatsapp_contacts (wa_id) VALUES (gen_random_uuid()::text) "
            "RETURNING id) INSERT INTO whatsapp_conversations (phone_number_id, contact_id, "
            "assigned_agent) SELECT '1', id, %s FROM c RETURNING id",
            (assigned_agent,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def assigned(pool: Pool, conversation_id: int) -> str | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT assigned_agent FROM whatsapp_conversations WHERE id = %s", (conversation_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# --- seeding -------------------------------------------------------------------------------------


async def test_the_environment_seeds_an_empty_table_once_even_when_two_instances_start_together(
    database_url: str,
) -> None:
    first = await open_pool(database_url, max_size=2, name="instance-a")
    second = await open_pool(database_url, max_size=2, name="instance-b")
    try:
        await asyncio.gather(seeded(first), seeded(second))
        await seeded(second)  # a restart
        async with first.connection() as conn:
            agents = (await list_agents(conn)).items
    finally:
        await first.close()
        await second.close()

    # http is not configured (no AGENT_HTTP_URL): its rule is dropped with it.
    by_name = {a.name: a for a in agents}
    assert sorted(by_name) == ["echo", "openai"]
    openai = by_name["openai"]
    assert openai.is_default and not by_name["echo"].is_default
    assert openai.kind == "openai" and openai.model == "env-model"
    assert openai.settings.base_url == "https://llm.test/v1"
    assert openai.system_prompt is None  # the environment's prompt applies
    assert openai.routing_keywords == ["price", "order", "refund"]
    assert openai.sticky_routing and openai.routing_priority == 0
    assert by_name["echo"].routing_reply_ids == ["echo_*"]
    assert by_name["echo"].routing_priority == 1
    assert [a.name for a in agents] == ["openai", "echo"]  # routing order
    assert "sk-test" not in msgspec.json.encode(agents).decode()


async def test_seeding_is_audited_and_never_repeats_after_a_deletion(pool: Pool) -> None:
    await seeded(pool)
    async with pool.connection() as conn:
        await create_agent(conn, agent("spare", is_default=True), actor=ACTOR)
        await delete_agent(conn, "openai", actor=ACTOR)
    await seeded(pool)  # the table is not empty: the environment no longer matters
    async with pool.connection() as conn:
        assert [a.name for a in (await list_agents(conn)).items] == ["echo", "spare"]
    assert await audit_rows(pool) == [
        ("system:seed", "agent.seed", "agent", "echo"),
        ("system:seed", "agent.seed", "agent", "openai"),
        (ACTOR, "agent.create", "agent", "spare"),
        (ACTOR, "agent.delete", "agent", "openai"),
    ]


async def test_a_first_start_with_an_unusable_default_agent_fails_and_seeds_nothing(
    pool: Pool,
) -> None:
    broken = AgentSettings(default_agent="openai", openai_base_url="https://llm.test/v1")
    with pytest.raises(ValueError, match="OPENAI_MODEL"):
        await seeded(pool, broken, rules="")
    async with pool.connection() as conn:
        assert (await list_agents(conn)).items == []


# --- the commands --------------------------------------------------------------------------------


async def test_create_get_and_list(pool: Pool) -> None:
    await seeded(pool, AgentSettings(), rules="")
    async with pool.connection() as conn:
        created = await create_agent(
            conn,
            agent(
                "sales",
                "openai",
                model="gpt-test",
                system_prompt="You sell.",
                greeting="Hi, sales here.",
                routing_keywords=["price"],
                business_hours={
                    "time_zone": "Europe/Paris",
                    "weekly": {"monday": [{"open": "09:00", "close": "17:00"}]},
                    "holidays": ["2026-12-25"],
                    "away_message": "Closed.",
                },
                settings={"base_url": "https://llm.test/v1"},
            ),
            actor=ACTOR,
        )
        assert await get_agent(conn, "sales") == created
        assert await get_agent(conn, created.id) == created
        assert await get_agent(conn, str(created.id)) == created
        names = [a.name for a in (await list_agents(conn)).items]
    assert names == ["echo", "sales"]
    assert created.business_hours is not None
    assert created.business_hours.holidays[0].isoformat() == "2026-12-25"
    assert (ACTOR, "agent.create", "agent", "sales") in await audit_rows(pool)


async def test_each_command_refuses_what_it_must(pool: Pool) -> None:
    await seeded(pool, AgentSettings(), rules="")
    async with pool.connection() as conn:
        with pytest.raises(NotFound) as missing:
            await get_agent(conn, "ghost")
        assert missing.value.status == 404 and missing.value.code == "agent_not_found"
        with pytest.raises(NotFound):
            await replace_agent(conn, "ghost", agent("ghost"), actor=ACTOR)
        with pytest.raises(NotFound):
            await delete_agent(conn, 999, actor=ACTOR)

        with pytest.raises(Conflict) as taken:
            await create_agent(conn, agent("echo"), actor=ACTOR)
        assert taken.value.status == 409 and taken.value.code == "agent_name_taken"

        with pytest.raises(Conflict) as default_deleted:
            await delete_agent(conn, "echo", actor=ACTOR)
        assert default_deleted.value.code == "agent_is_default"
        with pytest.raises(Conflict) as undefaulted:
            await replace_agent(conn, "echo", agent("echo"), actor=ACTOR)
        assert undefaulted.value.code == "agent_is_default"

        other = await create_agent(conn, agent("other"), actor=ACTOR)
        with pytest.raises(Conflict) as stale:
            await replace_agent(
                conn, "other", agent("other"), actor=ACTOR, expected_version=other.version - 1
            )
        assert stale.value.code == "agent_version_mismatch"
        with pytest.raises(Conflict):  # renamed onto a taken name
            await replace_agent(conn, "other", agent("echo"), actor=ACTOR)
        assert (await get_agent(conn, "echo")).is_default  # nothing half-done

    invalid = [
        agent("a", "echo", model="gpt"),  # model is an openai option
        agent("b", "http", settings={"base_url": "https://x.test"}),
        agent("c", is_default=True, enabled=False),
        agent("d", business_hours={"time_zone": "Nowhere/Land"}),
        agent(
            "e",
            business_hours={
                "time_zone": "UTC",
                "weekly": {"monday": [{"open": "10:00", "close": "10:00"}]},
            },
        ),
        agent("f", routing_keywords=["  "]),
    ]
    async with pool.connection() as conn:
        for config in invalid:
            with pytest.raises(InvalidRequest) as refused:
                await create_agent(conn, config, actor=ACTOR)
            assert refused.value.status == 400 and refused.value.code == "invalid_agent"
        assert [a.name for a in (await list_agents(conn)).items] == ["echo", "other"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "x", "kind": "echo", "api_key": "sk-secret"}',  # no secrets, no unknown fields
        b'{"name": "X Y", "kind": "echo"}',
        b'{"name": "x", "kind": "robot"}',
        b'{"name": "x", "kind": "openai", "settings": {"base_url": "ftp://x"}}',
        b'{"name": "x", "kind": "echo", "routing_priority": -1}',
        b"not json",
    ],
)
def test_decoding_refuses_malformed_bodies(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_agent_input(body)


async def test_a_new_default_takes_the_flag_and_renames_and_removals_move_conversations(
    pool: Pool,
) -> None:
    await seeded(pool, AgentSettings(), rules="")
    kept_by_sales = await add_conversation(pool, "sales")
    kept_by_night = await add_conversation(pool, "night")
    async with pool.connection() as conn:
        await create_agent(conn, agent("sales"), actor=ACTOR)
        night = await create_agent(conn, agent("night"), actor=ACTOR)
        promoted = await replace_agent(conn, "sales", agent("sales", is_default=True), actor=ACTOR)
        assert promoted.is_default and not (await get_agent(conn, "echo")).is_default
        renamed = await replace_agent(
            conn, night.id, agent("late-night"), actor=ACTOR, expected_version=night.version
        )
        assert renamed.id == night.id and renamed.version > night.version
        assert await assigned(pool, kept_by_night) == "late-night"
        await replace_agent(conn, "late-night", agent("late-night", enabled=False), actor=ACTOR)
        assert await assigned(pool, kept_by_night) is None  # back to the default
        with pytest.raises(InvalidRequest):
            await replace_agent(
                conn, "sales", agent("sales", is_default=True, enabled=False), actor=ACTOR
            )
        await replace_agent(conn, "echo", agent("echo", is_default=True), actor=ACTOR)
        await delete_agent(conn, "sales", actor=ACTOR)
    assert await assigned(pool, kept_by_sales) is None
    replaced = [row for row in await audit_rows(pool) if row[1] == "agent.replace"]
    assert len(replaced) == 4
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT details FROM whatsapp_audit_log WHERE action = 'agent.delete'"
        )
        [(details,)] = await cursor.fetchall()
    assert details == {"name": "sales", "kind": "echo", "conversations_reassigned": 1}
