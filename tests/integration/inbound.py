"""Storing a user's text message as the processor does, for tests that route it themselves."""

from __future__ import annotations

from datetime import UTC, datetime

from shared_code.db import conversations
from shared_code.db.pool import Pool
from shared_code.routing import InboundForRouting

BUSINESS_NUMBER = "100000000000001"


async def store_text(
    pool: Pool,
    wamid: str,
    text: str,
    *,
    user: str,
    written_at: datetime | None = None,
    profile_name: str | None = "Ana",
    first_routing: bool = True,
) -> InboundForRouting:
    """The message stored with its contact and conversation, ready for ``route``."""
    async with pool.connection() as conn:
        stored = await conversations.store_inbound(
            conn,
            conversations.InboundMessageRow(
                wamid=wamid,
                phone_number_id=BUSINESS_NUMBER,
                contact_wa_id=user,
                profile_name=profile_name,
                message_type="text",
                text_body=text,
                content={},
                context_wamid=None,
                whatsapp_timestamp=written_at or datetime.now(UTC),
            ),
        )
    assert stored is not None
    return InboundForRouting(
        message_id=stored.message_id,
        conversation_id=stored.conversation_id,
        contact_id=stored.contact_id,
        wamid=wamid,
        phone_number_id=BUSINESS_NUMBER,
        contact_wa_id=user,
        message_type="text",
        text=text,
        reply_id=None,
        first_routing=first_routing,
    )
