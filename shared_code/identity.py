"""The Azure credential every SDK client of a worker uses: the app's user-assigned identity.

Azure sets ``AZURE_CLIENT_ID`` to that identity's client id. Without it a credential would try the
system-assigned identity, which the deployment does not have, and fail. ``DefaultAzureCredential``
(async: it never blocks the event loop) also works on a developer's machine after ``az login``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = ["azure_credential"]


def azure_credential(client_id: str | None) -> AsyncTokenCredential:
    from azure.identity.aio import DefaultAzureCredential

    if client_id:
        return DefaultAzureCredential(managed_identity_client_id=client_id)
    return DefaultAzureCredential()
