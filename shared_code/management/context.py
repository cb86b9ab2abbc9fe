"""What the management API needs besides the core services, built once per worker."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from shared_code.config import Settings
from shared_code.management.auth import Authenticator, EntraTokenVerifier
from shared_code.management.cursors import CursorSigner

__all__ = ["ManagementContext", "build_management_context"]


@dataclass(frozen=True, slots=True)
class ManagementContext:
    authenticator: Authenticator
    cursors: CursorSigner
    # Only for Entra ID's signing keys; None when Entra tokens are not accepted.
    http: httpx.AsyncClient | None

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()


def build_management_context(settings: Settings) -> ManagementContext:
    management = settings.management
    http: httpx.AsyncClient | None = None
    entra: EntraTokenVerifier | None = None
    if management.entra_tenant_id and management.entra_audience:
        http = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        entra = EntraTokenVerifier(
            tenant_id=management.entra_tenant_id,
            audience=management.entra_audience,
            http=http,
            authority=management.entra_authority,
        )
    cursor_secret = management.cursor_secret
    cursors = (
        CursorSigner(cursor_secret.reveal().encode())
        if cursor_secret is not None
        else CursorSigner.derived_from(settings.whatsapp_app_secret.reveal())
    )
    return ManagementContext(
        authenticator=Authenticator(
            api_keys=management.api_keys, read_keys=management.read_keys, entra=entra
        ),
        cursors=cursors,
        http=http,
    )
