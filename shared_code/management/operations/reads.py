"""The seed's read endpoints: contacts, conversations, a conversation's messages, webhook events."""

from __future__ import annotations

from typing import Any

from shared_code.db import audit
from shared_code.management import queries
from shared_code.management.api import Call
from shared_code.management.auth import Access
from shared_code.management.problems import Forbidden
from shared_code.management.registry import MANAGEMENT_ROUTE_PREFIX, IdPath, registry

PREFIX = MANAGEMENT_ROUTE_PREFIX


@registry.operation(
    method="GET",
    route=f"{PREFIX}/contacts",
    summary="List contacts",
    tag="contacts",
    access=Access.READ,
    query_model=queries.ContactsQuery,
    responses={200: queries.ContactPage},
)
async def list_contacts(call: Call[Any, queries.ContactsQuery, None]) -> queries.ContactPage:
    """Contacts newest first; `search` matches a name fragment or the first digits of a number."""
    services = call.services
    return await queries.list_contacts(
        services.pool, services.management.cursors, call.query, call.request_path
    )


@registry.operation(
    method="GET",
    route=f"{PREFIX}/conversations",
    summary="List conversations",
    tag="conversations",
    access=Access.READ,
    query_model=queries.ConversationsQuery,
    responses={200: queries.ConversationPage},
)
async def list_conversations(
    call: Call[Any, queries.ConversationsQuery, None],
) -> queries.ConversationPage:
    """Conversations newest first, by status, assigned agent, contact or last change."""
    services = call.services
    return await queries.list_conversations(
        services.pool, services.management.cursors, call.query, call.request_path
    )


@registry.operation(
    method="GET",
    route=f"{PREFIX}/conversations/{{id}}/messages",
    summary="List a conversation's messages",
    tag="conversations",
    access=Access.READ,
    path_model=IdPath,
    query_model=queries.MessagesQuery,
    responses={200: queries.MessagePage},
    problems=(404,),
)
async def list_conversation_messages(
    call: Call[IdPath, queries.MessagesQuery, None],
) -> queries.MessagePage:
    """Messages newest first, each with its delivery status history and error code."""
    services = call.services
    return await queries.list_conversation_messages(
        services.pool, services.management.cursors, call.path.id, call.query, call.request_path
    )


@registry.operation(
    method="GET",
    route=f"{PREFIX}/webhook-events",
    summary="List received webhooks (debugging)",
    tag="webhooks",
    access=Access.READ,
    query_model=queries.WebhookEventsQuery,
    responses={200: queries.WebhookEventPage},
    problems=(403,),
)
async def list_webhook_events(
    call: Call[Any, queries.WebhookEventsQuery, None],
) -> queries.WebhookEventPage:
    """Stored webhook deliveries newest first, with how they were processed. Bodies come with
    phone numbers, names, texts and wamids redacted; `raw=true` needs full access."""
    if call.query.raw and not call.caller.may(Access.ADMIN):
        raise Forbidden("raw bodies need a full-access credential", code="insufficient_access")
    services = call.services
    page = await queries.list_webhook_events(
        services.pool, services.management.cursors, call.query, call.request_path
    )
    if call.query.raw and page.data:
        # Unredacted bodies hold users' numbers and texts: who read which is on record.
        async with services.pool.connection() as conn:
            await audit.record(
                conn,
                actor=call.caller.actor,
                action="read_raw_webhook_events",
                target_type="webhook_event",
                target_id=None,
                details={"ids": [event.id for event in page.data]},
            )
    return page
