"""What a queue trigger does with a failure: is it worth a redelivery, and when.

Python functions settle by outcome: an exception abandons the message, which comes back at once
with its delivery count raised and is dead-lettered after the queue's maximum. An outage (the
database restarting, the broker throttling) would burn all of a message's deliveries in seconds,
so before re-raising a transient failure the trigger waits, longer with each delivery:
1, 2, 4 … up to 30 s, which carries a message through about three minutes of outage. Poison
(:func:`is_transient` is False) is not retried at all by the processor: it records it instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import psycopg

from shared_code.bus.port import PublishError

logger = logging.getLogger(__name__)

__all__ = ["DeadLetterRequest", "is_transient", "pause_before_redelivery", "redelivery_pause"]

FIRST_PAUSE_SECONDS: Final = 1.0
MAX_PAUSE_SECONDS: Final = 30.0


class DeadLetterRequest(Exception):
    """Raised on every delivery of a message that must go to the dead-letter queue (Python
    functions cannot dead-letter directly): neither a redelivery nor a pause can help it."""


def is_transient(error: BaseException) -> bool:
    """Whether a redelivery may succeed: the database, the broker or the network failed, not
    the event. Unknown errors count as transient (the bus dead-letters them in the end);
    errors on the event's own values do not."""
    if isinstance(error, PublishError):
        return not error.permanent
    return not isinstance(error, (*_POISON_ERRORS, DeadLetterRequest))


# Data exceptions (class 22: a value PostgreSQL refuses) and Python's own errors on a value.
_POISON_ERRORS = (
    psycopg.DataError,
    psycopg.NotSupportedError,
    ValueError,  # PayloadError, UnicodeError and msgspec's decode errors among them
    TypeError,
    LookupError,
    AttributeError,
    RecursionError,
)


def redelivery_pause(delivery_count: int) -> float:
    """Seconds to wait before giving back the ``delivery_count``-th delivery (1 = the first)."""
    exponent = max(delivery_count, 1) - 1
    return min(FIRST_PAUSE_SECONDS * (1 << min(exponent, 16)), MAX_PAUSE_SECONDS)


async def pause_before_redelivery(error: BaseException, delivery_count: int) -> None:
    """Wait before a transient failure is re-raised; return at once for anything else."""
    if not isinstance(error, Exception) or not is_transient(error):
        return
    pause = redelivery_pause(delivery_count)
    logger.warning(
        "delivery %d failed (%s); giving it back in %.0f s",
        delivery_count,
        type(error).__name__,
        pause,
    )
    await asyncio.sleep(pause)
