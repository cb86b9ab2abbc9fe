"""The message template catalogue: Meta's templates cached in PostgreSQL, kept fresh.

Sends are checked against the cache, so a template that is unknown, not approved or given the
wrong number of parameters is refused before anything reaches Meta (which would answer 132001,
132000, 132015 or 132016 only after the message was queued). The cache is refreshed:

- by a timer (``maintenance_template_refresh``) every ``TEMPLATE_REFRESH_MINUTES``, and at once
  while it was never filled;
- by ``message_template_status_update`` webhooks, which the intake queues like messages and the
  processor applies here (an older webhook arriving late changes nothing);
- by a send naming a template the cache does not know, at most once a minute.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from shared_code.db import templates as repository
from shared_code.db.pool import Pool
from shared_code.whatsapp.errors import GraphApiError
from shared_code.whatsapp.graph_client import GraphApiClient
from shared_code.whatsapp.payloads import TemplateStatusEvent

logger = logging.getLogger(__name__)

__all__ = [
    "APPROVED",
    "MISS_REFRESH_INTERVAL",
    "RefreshReport",
    "TemplateCatalogue",
    "TemplateCatalogueUnavailable",
    "template_from_meta",
]

APPROVED: Final = "APPROVED"
# A send naming a template the cache does not know refreshes it, but not more often than this:
# a dashboard retrying a misspelt name must not list the whole catalogue from Meta each time.
MISS_REFRESH_INTERVAL: Final = timedelta(minutes=1)

# {{1}}, {{2}}... or, for templates with named parameters, {{first_name}}.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
# Webhook events that name the status the template is in now; others (FLAGGED, LOCKED,
# UNARCHIVED...) say something happened, and the next refresh reads the status from Meta.
_STATUS_OF_EVENT: Final[Mapping[str, str]] = {
    "APPROVED": "APPROVED",
    "REJECTED": "REJECTED",
    "PENDING": "PENDING",
    "PAUSED": "PAUSED",
    "DISABLED": "DISABLED",
    "IN_APPEAL": "IN_APPEAL",
    "PENDING_DELETION": "PENDING_DELETION",
    "DELETED": repository.DELETED,
    "ARCHIVED": "ARCHIVED",
    "LIMIT_EXCEEDED": "LIMIT_EXCEEDED",
    "REINSTATED": "APPROVED",
}


class TemplateCatalogueUnavailable(Exception):
    """The catalogue could not be read from Meta (no business account id, or Meta failed)."""


@dataclass(frozen=True, slots=True)
class RefreshReport:
    templates: int
    marked_deleted: int


def template_from_meta(raw: Mapping[str, Any]) -> repository.TemplateUpsert | None:
    """One template of Meta's list with what a send must fill in; None without name or language."""
    name, language = raw.get("name"), raw.get("language")
    if not isinstance(name, str) or not name or not isinstance(language, str) or not language:
        return None
    components = [dict(c) for c in raw.get("components") or () if isinstance(c, Mapping)]
    body_parameters = 0
    header_format: str | None = None
    header_parameters = 0
    buttons: list[dict[str, Any]] = []
    for component in components:
        kind = str(component.get("type", "")).upper()
        if kind == "BODY":
            body_parameters = _placeholder_count(component.get("text"))
        elif kind == "HEADER":
            header_format = str(component.get("format") or "TEXT").upper()
            # A media header always takes its media as a parameter at send time.
            header_parameters = (
                _placeholder_count(component.get("text")) if header_format == "TEXT" else 1
            )
        elif kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons") or ()):
                if isinstance(button, Mapping):
                    buttons.append(_button_info(index, button))
    meta_id = raw.get("id")
    category = raw.get("category")
    status = raw.get("status")
    return repository.TemplateUpsert(
        name=name,
        language=language,
        meta_id=None if meta_id is None else str(meta_id),
        status=str(status).upper() if isinstance(status, str) and status else "UNKNOWN",
        category=str(category).upper() if isinstance(category, str) and category else None,
        components=components,
        body_parameter_count=body_parameters,
        header_format=header_format,
        header_parameter_count=header_parameters,
        buttons=buttons,
    )


def _placeholder_count(text: object) -> int:
    return len(set(_PLACEHOLDER.findall(text))) if isinstance(text, str) else 0


def _button_info(index: int, button: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(button.get("type", "")).upper()
    if kind == "URL":
        count = _placeholder_count(button.get("url"))
    elif kind == "COPY_CODE":
        count = 1
    else:
        # Quick replies take an optional payload; phone numbers, flows and the rest nothing.
        count = 0
    return {"index": index, "type": kind, "parameter_count": count}


class TemplateCatalogue:
    """The cached catalogue of one business account."""

    def __init__(self, *, pool: Pool, graph: GraphApiClient, waba_id: str | None) -> None:
        self._pool = pool
        self._graph = graph
        self._waba_id = waba_id

    @property
    def waba_id(self) -> str | None:
        return self._waba_id

    async def refresh(self) -> RefreshReport:
        """Read every page of Meta's list and replace the cache with it."""
        if self._waba_id is None:
            raise TemplateCatalogueUnavailable("WHATSAPP_BUSINESS_ACCOUNT_ID is not set")
        try:
            listed = await self._graph.list_message_templates(self._waba_id)
        except GraphApiError as error:
            raise TemplateCatalogueUnavailable(f"listing templates failed: {error}") from error
        templates: dict[tuple[str, str], repository.TemplateUpsert] = {}
        for raw in listed:
            template = template_from_meta(raw)
            if template is not None:
                templates[(template.name, template.language)] = template
        async with self._pool.connection() as conn, conn.transaction():
            vanished = await repository.replace_catalogue(
                conn, self._waba_id, list(templates.values())
            )
        logger.info(
            "template catalogue refreshed: %d templates, %d marked deleted",
            len(templates),
            vanished,
        )
        return RefreshReport(templates=len(templates), marked_deleted=vanished)

    async def refresh_if_due(self, every: timedelta) -> RefreshReport | None:
        """Refresh when the cache was never filled or is older than ``every`` (the timer)."""
        if self._waba_id is None:
            return None
        async with self._pool.connection() as conn:
            state = await repository.catalogue_state(conn, self._waba_id)
        if state.refreshed_at is not None and state.now - state.refreshed_at < every:
            return None
        return await self.refresh()

    async def find(self, name: str, language: str) -> repository.StoredTemplate | None:
        """The cached template; when unknown, the cache is refreshed first if it is older than
        :data:`MISS_REFRESH_INTERVAL`. Raises :class:`TemplateCatalogueUnavailable` when that
        refresh fails (the template may well exist)."""
        async with self._pool.connection() as conn:
            found = await repository.find_template(conn, name, language)
            if found is not None or self._waba_id is None:
                return found
            state = await repository.catalogue_state(conn, self._waba_id)
        if state.refreshed_at is not None and state.now - state.refreshed_at < (
            MISS_REFRESH_INTERVAL
        ):
            return None
        await self.refresh()
        async with self._pool.connection() as conn:
            return await repository.find_template(conn, name, language)

    async def list(
        self, *, status: str | None = None, name: str | None = None
    ) -> tuple[list[repository.StoredTemplate], datetime | None]:
        """The cached templates (deleted ones only when asked for by status) and when the
        catalogue was last read from Meta."""
        async with self._pool.connection() as conn:
            rows = await repository.list_templates(conn, status=status, name=name)
            state = await repository.catalogue_state(conn, self._waba_id)
        return rows, state.refreshed_at

    async def apply_status_update(self, event: TemplateStatusEvent) -> bool:
        """Apply a ``message_template_status_update`` webhook; True when the cache changed.

        A template the cache does not know yet (created since the last refresh) is read from
        Meta with the whole catalogue, which carries its status too.
        """
        update = event.update
        status = _STATUS_OF_EVENT.get(update.event.upper())
        change = repository.TemplateStatusChange(
            meta_id=None if update.message_template_id is None else str(update.message_template_id),
            name=update.message_template_name,
            language=update.message_template_language,
            status=status,
            reason=update.reason,
            event_at=event.entry_time,
        )
        async with self._pool.connection() as conn:
            applied = await repository.apply_status_change(conn, change)
        logger.info(
            "template %s status event %s: %s",
            change.meta_id or "(no id)",
            update.event,
            {True: "applied", False: "older than the cached status", None: "template unknown"}[
                applied
            ],
        )
        if applied is None or (applied and status is None):
            try:
                await self.refresh()
            except TemplateCatalogueUnavailable as error:
                # The timer will try again; the webhook itself is stored.
                logger.warning("template catalogue not refreshed after a status event: %s", error)
                return False
            return True
        return applied
