"""Messaging policy: what may be sent to whom and when, and when the agent answers.

The rules (README, "Messaging policies"):

- **Opt-out.** A message that is one of ``OPT_OUT_KEYWORDS`` (the whole message, whatever its
  case, accents, surrounding spaces and punctuation) opts the contact out: one confirmation is
  sent (``OPT_OUT_CONFIRMATION``), the agent stays silent, and the sender refuses everything
  else to that contact (the row is ``failed`` with ``blocked_by_policy = 'contact_opted_out'``,
  never sent). One of ``OPT_IN_KEYWORDS`` from an opted-out contact opts them back in, with
  ``OPT_IN_CONFIRMATION``. A keyword that changes nothing (STOP when already opted out) is
  stored and gets no answer. Meta's ``user_preferences`` webhook (the user stopped or resumed
  marketing messages in WhatsApp) sets the contact's marketing preference: no marketing
  template goes out while it is ``stop``. Every change is audited.
- **Customer-service window.** Free-form messages (anything but a template) only within 24 h
  of the contact's last message to that business number. The sender checks it before every
  Graph API call: outside it a row becomes ``WINDOW_CLOSED_TEMPLATE`` when one is configured,
  else it is ``failed`` with ``blocked_by_policy = 'window_closed'``. Meta never sees a send it
  would refuse with 131047.
- **Handoff.** A message that is one of ``HANDOFF_KEYWORDS``, an agent's reply with ``handoff``
  set, or an operator (:func:`start_handoff`) puts the conversation in ``handoff``: messages are
  still stored, no agent answers, nothing automatic goes out (except ``HANDOFF_NOTICE`` once,
  when configured, for a keyword or an agent's silent handoff) until :func:`release_handoff`.
- **Idle conversations** close after ``CONVERSATION_IDLE_CLOSE_HOURS`` without a message in
  either direction (:func:`close_idle_conversations`, a timer), in handoff too: an operator who
  forgot one must not leave the user unanswered for good. The next message opens a new one.

Retention is :mod:`shared_code.retention`.
"""

from __future__ import annotations

import enum
import functools
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from shared_code.db import audit, consent, conversation_states, outbound
from shared_code.db.pool import Connection, Pool
from shared_code.management.problems import Conflict, NotFound, Unprocessable
from shared_code.routing import InboundForRouting
from shared_code.whatsapp import outbound as bodies
from shared_code.whatsapp.payloads import PreferenceEvent

logger = logging.getLogger(__name__)

__all__ = [
    "CUSTOMER_SERVICE_WINDOW",
    "DEFAULT_HANDOFF_KEYWORDS",
    "DEFAULT_OPT_IN_KEYWORDS",
    "DEFAULT_OPT_OUT_KEYWORDS",
    "POLICY_ACTOR",
    "ConversationState",
    "GateDecision",
    "Intent",
    "MessagingPolicy",
    "PolicyBlock",
    "PolicySettings",
    "Purpose",
    "WindowTemplate",
    "apply_marketing_preference",
    "change_opt_out",
    "close_conversation",
    "close_idle_conversations",
    "customer_service_window_open",
    "ensure_free_form_allowed",
    "ensure_template_allowed",
    "normalize_keyword",
    "outbound_block",
    "parse_keywords",
    "release_handoff",
    "start_handoff",
]

CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)
# The audit actor of changes the policy makes on its own (a keyword, a webhook, a timer).
POLICY_ACTOR = "system:policy"


def customer_service_window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """True while free-form messages may go to a user who last wrote at ``last_inbound_at``."""
    return last_inbound_at is not None and now - last_inbound_at < CUSTOMER_SERVICE_WINDOW


# --- keywords ----------------------------------------------------------------------------------

# Whole-message words in the languages most users of a business write in. English "cancel",
# "end" or "quit" are left out: alone in a chat they usually mean an order, not the subscription.
DEFAULT_OPT_OUT_KEYWORDS = (
    "STOP", "STOPALL", "UNSUBSCRIBE", "OPT OUT", "OPTOUT",  # en
    "ARRÊT", "ARRET", "DÉSABONNER", "DESINSCRIPTION",  # fr
    "PARAR", "BAJA", "CANCELAR", "DESUSCRIBIR",  # es, pt
    "DESCADASTRAR", "SAIR",  # pt
    "STOPP", "ABMELDEN",  # de, sv, no, da
    "ANNULLA ISCRIZIONE", "DISISCRIVITI",  # it
)  # fmt: skip
DEFAULT_OPT_IN_KEYWORDS = (
    "START", "UNSTOP", "SUBSCRIBE", "OPT IN", "OPTIN",  # en
    "REPRENDRE", "ABONNER",  # fr
    "ALTA", "SUSCRIBIR", "INICIAR",  # es, pt
    "ANMELDEN",  # de
    "ISCRIVITI",  # it
)  # fmt: skip
DEFAULT_HANDOFF_KEYWORDS = (
    "AGENT", "HUMAN", "OPERATOR", "REPRESENTATIVE",  # en
    "CONSEILLER", "HUMAIN", "OPÉRATEUR",  # fr
    "AGENTE", "HUMANO", "OPERADOR", "ASESOR", "ATENDENTE",  # es, pt
    "MITARBEITER", "MENSCH",  # de
    "OPERATORE",  # it
)  # fmt: skip
DEFAULT_OPT_OUT_CONFIRMATION = (
    "You have been unsubscribed and will get no more messages from us. "
    "Reply START to subscribe again."
)
DEFAULT_OPT_IN_CONFIRMATION = "You are subscribed again. Reply STOP to unsubscribe."

# Characters around a keyword that do not change what it says ("Stop!", "«STOP»", "*stop*").
_AROUND = " \t\r\n.,;:!?¡¿'\"«»“”\u2018\u2019()[]{}*_~-"
# Message types whose text is something the user typed or chose (a media caption is not).
_KEYWORD_TYPES = frozenset({"text", "button", "interactive"})


def normalize_keyword(text: str) -> str:
    """``text`` as keywords compare: accents dropped, case folded, surrounding punctuation and
    spaces trimmed, inner runs of spaces made one."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(bare.casefold().strip(_AROUND).split())


@functools.lru_cache(maxsize=32)
def _keyword_set(keywords: tuple[str, ...]) -> frozenset[str]:
    return frozenset(filter(None, (normalize_keyword(k) for k in keywords)))


def parse_keywords(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated setting; unset means ``default``, ``none`` means no keywords at all."""
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() == "none":
        return ()
    keywords = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keywords:
        raise ValueError("give comma-separated keywords, or none")
    return keywords


class Intent(enum.Enum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HANDOFF = "handoff"


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowTemplate:
    """The template sent instead of a free-form message once the window has closed."""

    name: str
    language_code: str

    @classmethod
    def parse(cls, raw: str | None) -> WindowTemplate | None:
        """``"name:language"``, e.g. ``"follow_up:en_US"``; unset means none."""
        if raw is None or not raw.strip():
            return None
        name, separator, language = raw.strip().partition(":")
        if not separator or not name.strip() or not language.strip():
            raise ValueError("expected <template name>:<language code>, e.g. follow_up:en_US")
        return cls(name=name.strip(), language_code=language.strip())


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySettings:
    opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT_KEYWORDS
    opt_in_keywords: tuple[str, ...] = DEFAULT_OPT_IN_KEYWORDS
    handoff_keywords: tuple[str, ...] = DEFAULT_HANDOFF_KEYWORDS
    opt_out_confirmation: str = DEFAULT_OPT_OUT_CONFIRMATION
    opt_in_confirmation: str = DEFAULT_OPT_IN_CONFIRMATION
    # Sent once when a conversation is handed to a person by keyword (or by an agent that gave
    # no answer of its own); None sends nothing.
    handoff_notice: str | None = None
    window_closed_template: WindowTemplate | None = None
    idle_close_hours: float = 24.0
    retention_days: int = 90

    def intent_of(self, message_type: str, text: str | None) -> Intent | None:
        """What a user's message asks of the policy, if it is one of the keywords (an opt-out
        word wins over the others, an opt-in word over a handoff word)."""
        if text is None or message_type not in _KEYWORD_TYPES or len(text) > _LONGEST_KEYWORD:
            return None
        said = normalize_keyword(text)
        if said in _keyword_set(self.opt_out_keywords):
            return Intent.OPT_OUT
        if said in _keyword_set(self.opt_in_keywords):
            return Intent.OPT_IN
        if said in _keyword_set(self.handoff_keywords):
            return Intent.HANDOFF
        return None


# Longer texts are sentences, not keywords: not worth normalising.
_LONGEST_KEYWORD = 64


# --- what may go out ---------------------------------------------------------------------------


class Purpose(enum.StrEnum):
    """Why an outbound row exists (``whatsapp_messages.purpose``)."""

    REPLY = "reply"
    OPERATOR = "operator"
    TEMPLATE = "template"
    MARKETING = "marketing"
    OPT_OUT_CONFIRMATION = "opt_out_confirmation"
    OPT_IN_CONFIRMATION = "opt_in_confirmation"
    HANDOFF_NOTICE = "handoff_notice"
    AWAY_MESSAGE = "away_message"


class PolicyBlock(enum.StrEnum):
    """Why the sender refused a row (``whatsapp_messages.blocked_by_policy``)."""

    CONTACT_OPTED_OUT = "contact_opted_out"
    MARKETING_OPTED_OUT = "marketing_opted_out"
    WINDOW_CLOSED = "window_closed"

    @property
    def explanation(self) -> str:
        """What ``error_title`` says of a row refused for this reason."""
        return _BLOCK_TITLES[self]


_BLOCK_TITLES = {
    PolicyBlock.CONTACT_OPTED_OUT: "not sent: the contact opted out",
    PolicyBlock.MARKETING_OPTED_OUT: "not sent: the contact stopped marketing messages",
    PolicyBlock.WINDOW_CLOSED: (
        "not sent: over 24 h since the contact's last message (customer-service window "
        "closed); a template is required"
    ),
}


def outbound_block(
    *,
    purpose: str | None,
    message_type: str,
    contact_opted_out: bool,
    marketing_stopped: bool,
    last_inbound_at: datetime | None,
    now: datetime,
) -> PolicyBlock | None:
    """Why a row may not be sent as it is, or None when it may. ``marketing_stopped``: the row
    is a marketing template and the contact stopped marketing messages."""
    if contact_opted_out and purpose != Purpose.OPT_OUT_CONFIRMATION:
        return PolicyBlock.CONTACT_OPTED_OUT
    if marketing_stopped:
        return PolicyBlock.MARKETING_OPTED_OUT
    if message_type != "template" and not customer_service_window_open(last_inbound_at, now):
        return PolicyBlock.WINDOW_CLOSED
    return None


async def ensure_free_form_allowed(
    conn: Connection, *, contact_id: int, phone_number_id: str
) -> consent.SendConsent:
    """For send-message: raise when a free-form message to the contact would be refused."""
    found = await _consent_or_not_found(conn, contact_id, phone_number_id)
    if found.opted_out:
        raise Conflict("the contact opted out of messages", code="contact_opted_out")
    if not customer_service_window_open(found.last_inbound_at, found.now):
        raise Unprocessable(
            "more than 24 hours since the contact's last message: only an approved template may "
            "be sent (POST send-proactive-message)",
            code="template_required",
        )
    return found


async def ensure_template_allowed(
    conn: Connection, *, contact_id: int, phone_number_id: str, marketing: bool
) -> consent.SendConsent:
    """For send-proactive-message: raise when the template would be refused (``marketing``: the
    template's category is MARKETING)."""
    found = await _consent_or_not_found(conn, contact_id, phone_number_id)
    if found.opted_out:
        raise Conflict("the contact opted out of messages", code="contact_opted_out")
    if marketing and found.marketing_stopped:
        raise Conflict("the contact stopped marketing messages", code="marketing_opted_out")
    return found


async def _consent_or_not_found(
    conn: Connection, contact_id: int, phone_number_id: str
) -> consent.SendConsent:
    found = await consent.send_consent(conn, contact_id, phone_number_id)
    if found is None:
        raise NotFound(f"no contact {contact_id}", code="contact_not_found")
    return found


# --- before the agent --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateDecision:
    ask_agent: bool
    # Rows the policy queued for this message (a confirmation, a handoff notice): to publish.
    queued: tuple[int, ...] = ()
    # Why the agent is not asked, for the log.
    reason: str | None = None


_ASK_AGENT = GateDecision(ask_agent=True)
_POLICY_KEY_PREFIXES = ("optout", "optin", "handoff")


class MessagingPolicy:
    """Runs on each stored user message before an agent is asked (the orchestrator's gate)."""

    def __init__(self, pool: Pool, settings: PolicySettings | None = None) -> None:
        self._pool = pool
        self.settings = settings or PolicySettings()

    async def before_agent(self, message: InboundForRouting) -> GateDecision:
        """Apply opt-out, opt-in and handoff keywords; say whether the agent may answer.

        Idempotent per message: a change and its confirmation commit together, keyed
        ``optout:<wamid>`` / ``optin:<wamid>`` / ``handoff:<wamid>``, so a redelivery finds the
        row to publish again instead of changing or sending anything twice.
        """
        if not message.first_routing:
            earlier = await self._earlier_policy_rows(message.wamid)
            if earlier:
                return GateDecision(ask_agent=False, queued=earlier, reason="redelivered")
        intent = self.settings.intent_of(message.message_type, message.text)
        async with self._pool.connection() as conn, conn.transaction():
            state = await conversation_states.gate_state(
                conn,
                message.conversation_id,
                message.contact_id,
                lock_contact=intent in (Intent.OPT_OUT, Intent.OPT_IN),
            )
            if state is None:
                return _ASK_AGENT
            if intent is Intent.OPT_OUT:
                return await self._opt_out(conn, message, already=state.contact_opted_out)
            if state.contact_opted_out:
                if intent is Intent.OPT_IN:
                    return await self._opt_in(conn, message)
                return GateDecision(ask_agent=False, reason="contact opted out")
            if state.conversation_status == "handoff":
                return GateDecision(ask_agent=False, reason="conversation in handoff")
            if intent is Intent.HANDOFF and state.conversation_status == "open":
                queued = await self._hand_off(
                    conn, message, by="keyword", actor=POLICY_ACTOR, notice=True
                )
                return GateDecision(ask_agent=False, queued=queued, reason="handoff keyword")
        return _ASK_AGENT

    async def agent_handed_off(
        self, message: InboundForRouting, agent_name: str, *, with_notice: bool
    ) -> tuple[int, ...]:
        """An agent's reply asked for a person: hand the conversation over (with the notice
        when the agent gave no answer of its own); returns the rows to publish."""
        async with self._pool.connection() as conn, conn.transaction():
            current = await conversation_states.load_conversation(
                conn, message.conversation_id, for_update=True
            )
            if current is None or current.status != "open":
                return ()
            return await self._hand_off(
                conn, message, by=f"agent:{agent_name}", actor=POLICY_ACTOR, notice=with_notice
            )

    async def _opt_out(
        self, conn: Connection, message: InboundForRouting, *, already: bool
    ) -> GateDecision:
        if already:
            return GateDecision(ask_agent=False, reason="opt-out keyword, already opted out")
        return await self._change_consent(conn, message, opted_out=True)

    async def _opt_in(self, conn: Connection, message: InboundForRouting) -> GateDecision:
        return await self._change_consent(conn, message, opted_out=False)

    async def _change_consent(
        self, conn: Connection, message: InboundForRouting, *, opted_out: bool
    ) -> GateDecision:
        """Opt the contact out (or back in) by keyword, audited, with one confirmation."""
        await consent.set_opted_out(conn, message.contact_id, opted_out, source="keyword")
        await audit.record(
            conn,
            actor=POLICY_ACTOR,
            action="contact.opt_out" if opted_out else "contact.opt_in",
            target_type="contact",
            target_id=message.contact_id,
            details={"source": "keyword", "message_id": message.message_id},
        )
        row_id = await self._queue_text(
            conn,
            message,
            self.settings.opt_out_confirmation if opted_out else self.settings.opt_in_confirmation,
            key=f"{'optout' if opted_out else 'optin'}:{message.wamid}",
            purpose=Purpose.OPT_OUT_CONFIRMATION if opted_out else Purpose.OPT_IN_CONFIRMATION,
        )
        logger.info(
            "contact %d opted %s by keyword", message.contact_id, "out" if opted_out else "back in"
        )
        reason = "opt-out keyword" if opted_out else "opt-in keyword"
        return GateDecision(ask_agent=False, queued=(row_id,), reason=reason)

    async def _hand_off(
        self, conn: Connection, message: InboundForRouting, *, by: str, actor: str, notice: bool
    ) -> tuple[int, ...]:
        await conversation_states.set_handoff(conn, message.conversation_id, by)
        await audit.record(
            conn,
            actor=actor,
            action="conversation.handoff",
            target_type="conversation",
            target_id=message.conversation_id,
            details={"by": by, "message_id": message.message_id},
        )
        logger.info("conversation %d handed off (%s)", message.conversation_id, by)
        if not notice or not self.settings.handoff_notice:
            return ()
        row_id = await self._queue_text(
            conn,
            message,
            self.settings.handoff_notice,
            key=f"handoff:{message.wamid}",
            purpose=Purpose.HANDOFF_NOTICE,
        )
        return (row_id,)

    async def _queue_text(
        self, conn: Connection, message: InboundForRouting, text: str, *, key: str, purpose: str
    ) -> int:
        row_id, _ = await outbound.insert_outbound(
            conn,
            outbound.NewOutbound(
                conversation_id=message.conversation_id,
                phone_number_id=message.phone_number_id,
                contact_wa_id=message.contact_wa_id,
                message_type="text",
                text_body=text,
                content=bodies.text_message(message.contact_wa_id, text),
                idempotency_key=key,
                reply_to_message_id=message.message_id,
                purpose=purpose,
            ),
        )
        return row_id

    async def _earlier_policy_rows(self, wamid: str) -> tuple[int, ...]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id FROM whatsapp_messages WHERE idempotency_key = ANY(%s) ORDER BY id",
                ([f"{prefix}:{wamid}" for prefix in _POLICY_KEY_PREFIXES],),
            )
            return tuple(int(row_id) for (row_id,) in await cursor.fetchall())


# --- Meta's marketing preference ---------------------------------------------------------------


async def apply_marketing_preference(pool: Pool, event: PreferenceEvent) -> bool:
    """Store what a ``user_preferences`` webhook says; True when the contact's preference
    changed (audited). Only the ``marketing_messages`` category exists today; others are kept
    in the webhook row and ignored here."""
    preference = event.preference
    if preference.category != "marketing_messages" or preference.value not in ("stop", "resume"):
        logger.info("user preference of category %r ignored", preference.category)
        return False
    async with pool.connection() as conn, conn.transaction():
        change = await consent.record_marketing_preference(
            conn, preference.wa_id, preference.value, preference.timestamp
        )
        if change.before == change.after:
            return False
        await audit.record(
            conn,
            actor=POLICY_ACTOR,
            action="contact.marketing_preference",
            target_type="contact",
            target_id=change.contact_id,
            details={
                "source": "user_preferences webhook",
                "value": change.after,
                "webhook_event_id": event.webhook_event_id,
            },
        )
    logger.info("contact %d marketing preference: %s", change.contact_id, change.after)
    return True


# --- operator commands (the management API) ----------------------------------------------------

ConversationStatus = Literal["open", "handoff", "closed"]


class ConversationState(msgspec.Struct, kw_only=True):
    """A conversation's state after a handoff, release or close."""

    id: int
    status: ConversationStatus
    contact_id: int
    phone_number_id: str
    assigned_agent: str | None = None
    handoff_at: datetime | None = None
    handoff_by: str | None = None
    closed_at: datetime | None = None
    close_reason: str | None = None
    updated_at: datetime

    @classmethod
    def of(cls, row: conversation_states.ConversationRow) -> ConversationState:
        return cls(
            id=row.id,
            status=row.status,  # type: ignore[arg-type]  # the CHECK constraint's values
            contact_id=row.contact_id,
            phone_number_id=row.phone_number_id,
            assigned_agent=row.assigned_agent,
            handoff_at=row.handoff_at,
            handoff_by=row.handoff_by,
            closed_at=row.closed_at,
            close_reason=row.close_reason,
            updated_at=row.updated_at,
        )


async def start_handoff(pool: Pool, conversation_id: int, actor: str) -> ConversationState:
    """Hand the conversation to a person: no agent answers until :func:`release_handoff`.

    Already in handoff: answered as it is (idempotent, nothing audited). Closed: Conflict
    (``conversation_closed``): the user's next message opens a new conversation.
    """
    async with pool.connection() as conn, conn.transaction():
        current = await _locked_conversation(conn, conversation_id)
        if current.status == "closed":
            raise Conflict(f"conversation {conversation_id} is closed", code="conversation_closed")
        if current.status == "handoff":
            return ConversationState.of(current)
        changed = await conversation_states.set_handoff(conn, conversation_id, actor)
        assert changed is not None
        await audit.record(
            conn,
            actor=actor,
            action="conversation.handoff",
            target_type="conversation",
            target_id=conversation_id,
            details={"from": current.status},
        )
    return ConversationState.of(changed)


async def release_handoff(pool: Pool, conversation_id: int, actor: str) -> ConversationState:
    """Give the conversation back to its agent (the next user message is answered).

    Already open: answered as it is (idempotent). Closed: Conflict (``conversation_closed``).
    """
    async with pool.connection() as conn, conn.transaction():
        current = await _locked_conversation(conn, conversation_id)
        if current.status == "closed":
            raise Conflict(f"conversation {conversation_id} is closed", code="conversation_closed")
        if current.status == "open":
            return ConversationState.of(current)
        changed = await conversation_states.set_open(conn, conversation_id)
        assert changed is not None
        await audit.record(
            conn,
            actor=actor,
            action="conversation.release",
            target_type="conversation",
            target_id=conversation_id,
            details={"handoff_by": current.handoff_by},
        )
    return ConversationState.of(changed)


async def close_conversation(pool: Pool, conversation_id: int, actor: str) -> ConversationState:
    """Close the conversation (``close_reason`` 'operator'); the next message opens a new one.

    Already closed: answered as it is (idempotent: a repeated click is not an error).
    """
    async with pool.connection() as conn, conn.transaction():
        current = await _locked_conversation(conn, conversation_id)
        if current.status == "closed":
            return ConversationState.of(current)
        changed = await conversation_states.set_closed(conn, conversation_id, "operator")
        assert changed is not None
        await audit.record(
            conn,
            actor=actor,
            action="conversation.close",
            target_type="conversation",
            target_id=conversation_id,
            details={"from": current.status},
        )
    return ConversationState.of(changed)


async def change_opt_out(pool: Pool, contact_id: int, *, opted_out: bool, actor: str) -> bool:
    """An operator opts a contact out (or back in) without a confirmation message; True when
    it changed. NotFound for an unknown contact."""
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            "SELECT 1 FROM whatsapp_contacts WHERE id = %s FOR UPDATE", (contact_id,)
        )
        if await cursor.fetchone() is None:
            raise NotFound(f"no contact {contact_id}", code="contact_not_found")
        changed = await consent.set_opted_out(conn, contact_id, opted_out, source="api")
        if changed:
            await audit.record(
                conn,
                actor=actor,
                action="contact.opt_out" if opted_out else "contact.opt_in",
                target_type="contact",
                target_id=contact_id,
                details={"source": "api"},
            )
    return changed


async def _locked_conversation(
    conn: Connection, conversation_id: int
) -> conversation_states.ConversationRow:
    current = await conversation_states.load_conversation(conn, conversation_id, for_update=True)
    if current is None:
        raise NotFound(f"no conversation {conversation_id}", code="conversation_not_found")
    return current


# --- idle conversations ------------------------------------------------------------------------


async def close_idle_conversations(
    pool: Pool, *, idle_hours: float, batch_size: int = 500, max_batches: int = 20
) -> int:
    """Close conversations idle for ``idle_hours`` in short transactions of ``batch_size``;
    returns how many were closed (the next run goes on where ``max_batches`` stopped)."""
    closed = 0
    for _ in range(max_batches):
        async with pool.connection() as conn:
            count = await conversation_states.close_idle(
                conn, idle_seconds=idle_hours * 3600, limit=batch_size
            )
        closed += count
        if count < batch_size:
            break
    if closed:
        logger.info("closed %d idle conversations", closed)
    return closed
