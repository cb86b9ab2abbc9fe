"""Every management operation, declared on :data:`shared_code.management.registry.registry`.

Importing this package declares them all; each module is one area of the API.
"""

from shared_code.management.operations import (
    agents,
    contacts,
    conversations,
    docs,
    insight,
    reads,
    sending,
)
from shared_code.management.registry import registry

__all__ = [
    "agents",
    "contacts",
    "conversations",
    "docs",
    "insight",
    "reads",
    "registry",
    "sending",
]
