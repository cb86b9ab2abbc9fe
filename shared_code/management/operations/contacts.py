"""Changes to a contact: erasure (the right to be forgotten) and an operator's opt-out."""

from __future__ import annotations

from typing import Any

import msgspec

from shared_code import policy
from shared_code.management import erasure
from shared_code.management.api import Call
from shared_code.management.auth import Access
from shared_code.management.registry import MANAGEMENT_ROUTE_PREFIX, IdPath, registry

PREFIX = MANAGEMENT_ROUTE_PREFIX


@registry.operation(
    method="DELETE",
    route=f"{PREFIX}/contacts/{{id}}",
    summary="Erase a contact and everything of theirs",
    tag="contacts",
    access=Access.ADMIN,
    path_model=IdPath,
    responses={200: erasure.ErasureReport},
    problems=(404,),
)
async def erase_contact(call: Call[IdPath, Any, None]) -> erasure.ErasureReport:
    """Profile, messages and their statuses, conversations and the raw webhook bodies of the
    user; queued messages are cancelled. An audit row with counts only is kept. Repeating it
    answers `already_erased`."""
    return await erasure.erase_contact(call.services.pool, call.path.id, call.caller.actor)


class OptOutState(msgspec.Struct, kw_only=True):
    contact_id: int
    opted_out: bool
    changed: bool


async def _set_opt_out(call: Call[IdPath, Any, None], opted_out: bool) -> OptOutState:
    changed = await policy.change_opt_out(
        call.services.pool, call.path.id, opted_out=opted_out, actor=call.caller.actor
    )
    return OptOutState(contact_id=call.path.id, opted_out=opted_out, changed=changed)


@registry.operation(
    method="POST",
    route=f"{PREFIX}/contacts/{{id}}/opt-out",
    summary="Opt a contact out of messages",
    tag="contacts",
    access=Access.SEND,
    path_model=IdPath,
    responses={200: OptOutState},
    problems=(404,),
)
async def opt_out_contact(call: Call[IdPath, Any, None]) -> OptOutState:
    """For a request received another way (phone, e-mail): nothing business-initiated goes out
    afterwards, no confirmation is sent. Audited."""
    return await _set_opt_out(call, True)


@registry.operation(
    method="POST",
    route=f"{PREFIX}/contacts/{{id}}/opt-in",
    summary="Opt a contact back in",
    tag="contacts",
    access=Access.SEND,
    path_model=IdPath,
    responses={200: OptOutState},
    problems=(404,),
)
async def opt_in_contact(call: Call[IdPath, Any, None]) -> OptOutState:
    """Only with the contact's consent. Audited."""
    return await _set_opt_out(call, False)
