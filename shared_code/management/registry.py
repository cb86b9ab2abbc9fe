"""The one registry every management operation is declared in (see api.py), and shared types."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared_code.management.api import OperationRegistry

__all__ = ["MANAGEMENT_ROUTE_PREFIX", "Id", "IdPath", "registry"]

registry = OperationRegistry()

MANAGEMENT_ROUTE_PREFIX = "v1/whatsapp"

# PostgreSQL's bigint: a larger number is no row of ours, and must be a 400, not a query error.
Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class IdPath(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
