"""Draws the injected faults: seeded, so a run with the same seed and the same requests fails
the same way; "next N" counters win over probabilities."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from local.simulator.config import FaultConfig
from local.simulator.errors import SERVER_ERRORS, GraphError

__all__ = ["FaultInjector", "StatusFaults"]


@dataclass(frozen=True, slots=True)
class StatusFaults:
    """How the status webhooks of one accepted message go wrong."""

    failed: bool = False
    out_of_order: bool = False
    # Statuses posted twice.
    duplicated: frozenset[str] = frozenset()


_NO_STATUS_FAULTS = StatusFaults()


class FaultInjector:
    def __init__(self, faults: FaultConfig, seed: int | None) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - test faults, not security
        self.configure(faults)

    def configure(self, faults: FaultConfig) -> None:
        """New settings; the ``*_next`` values become the remaining counts."""
        self._faults = faults
        self._drop_before_next = faults.drop_before_next
        self._server_error_next = faults.server_error_next
        self._rate_limit_next = faults.rate_limit_next
        self._pair_limit_next = faults.pair_limit_next
        self._timeout_next = faults.timeout_next

    def reseed(self, seed: int | None) -> None:
        self._rng.seed(seed)

    @property
    def current(self) -> FaultConfig:
        """The settings with the counts still to come."""
        return dataclasses.replace(
            self._faults,
            drop_before_next=self._drop_before_next,
            server_error_next=self._server_error_next,
            rate_limit_next=self._rate_limit_next,
            pair_limit_next=self._pair_limit_next,
            timeout_next=self._timeout_next,
        )

    def drop_before(self) -> bool:
        """Whether this send request fails before Meta's logic: no answer, nothing sent."""
        if self._drop_before_next > 0:
            self._drop_before_next -= 1
            return True
        return self._draw(self._faults.drop_before_probability)

    def server_error(self) -> GraphError | None:
        if self._server_error_next > 0:
            self._server_error_next -= 1
        elif not self._draw(self._faults.server_error_probability):
            return None
        return SERVER_ERRORS[self._faults.server_error_code]

    def rate_limit(self) -> bool:
        if self._rate_limit_next > 0:
            self._rate_limit_next -= 1
            return True
        return self._draw(self._faults.rate_limit_probability)

    def pair_limit(self) -> bool:
        if self._pair_limit_next > 0:
            self._pair_limit_next -= 1
            return True
        return self._draw(self._faults.pair_limit_probability)

    def timeout(self) -> float | None:
        """Seconds to hold the answer of an accepted send, or None to answer at once."""
        if self._timeout_next > 0:
            self._timeout_next -= 1
        elif not self._draw(self._faults.timeout_probability):
            return None
        return self._faults.hold_seconds

    def status_faults(self, statuses: tuple[str, ...]) -> StatusFaults:
        faults = self._faults
        if (
            faults.failed_status_probability == 0.0
            and faults.out_of_order_probability == 0.0
            and faults.duplicate_status_probability == 0.0
        ):
            return _NO_STATUS_FAULTS
        if self._draw(faults.failed_status_probability):
            return StatusFaults(failed=True)
        out_of_order = self._draw(faults.out_of_order_probability)
        duplicated = frozenset(
            status for status in statuses if self._draw(faults.duplicate_status_probability)
        )
        return StatusFaults(out_of_order=out_of_order, duplicated=duplicated)

    def _draw(self, probability: float) -> bool:
        # No draw for a disabled fault: turning one fault on leaves the others' sequence alone.
        if probability <= 0.0:
            return False
        return probability >= 1.0 or self._rng.random() < probability
