"""The circuit breaker the intake puts in front of PostgreSQL (shared_code/circuit.py)."""

from __future__ import annotations

from shared_code.circuit import Circuit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_closed_lets_everything_through() -> None:
    circuit = Circuit("db", clock=Clock())
    assert all(circuit.allows() for _ in range(100))
    assert not circuit.is_open


def test_after_a_failure_calls_are_turned_away_but_one_probe_a_second() -> None:
    clock = Clock()
    circuit = Circuit("db", probe_interval=1.0, clock=clock)
    circuit.failed()
    assert circuit.is_open
    assert [circuit.allows() for _ in range(5)] == [False] * 5
    clock.now += 1.0
    assert [circuit.allows() for _ in range(5)] == [True, False, False, False, False]
    assert circuit.rejected == 9


def test_a_failed_probe_keeps_it_open_a_successful_one_closes_it() -> None:
    clock = Clock()
    circuit = Circuit("db", probe_interval=1.0, clock=clock)
    circuit.failed()
    clock.now += 1.0
    assert circuit.allows()
    circuit.failed()
    assert not circuit.allows()
    clock.now += 1.0
    assert circuit.allows()
    circuit.succeeded()
    assert not circuit.is_open
    assert all(circuit.allows() for _ in range(10))


def test_a_probe_that_never_reports_does_not_stop_later_probes_forever() -> None:
    clock = Clock()
    circuit = Circuit("db", probe_interval=1.0, clock=clock)
    circuit.failed()
    clock.now += 1.0
    assert circuit.allows()  # a probe that hangs and reports nothing
    assert not circuit.allows()
    clock.now += 1.0
    assert circuit.allows()
