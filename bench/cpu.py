"""Where the CPU went during a benchmark's measured window, per group of processes.

Reads utime + stime from /proc at the window's start and end. On this 2-core machine the bridge,
PostgreSQL, the simulator and the load driver share the cores, so a figure without this split
says little about which of them to make cheaper.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

__all__ = ["CpuWindow", "describe", "is_postgres", "parent_pid", "process_tree"]

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def is_postgres(command_line: str) -> bool:
    return command_line.startswith("postgres")


def _processes() -> Iterator[tuple[int, str, int]]:
    """(pid, command line, CPU ticks used so far) of every process we may read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the fields start after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        yield int(entry.name), command_line, int(fields[11]) + int(fields[12])


class CpuWindow:
    """``start()``, then ``stop()``: percent of one core per group over the window.

    ``groups`` maps a group name to a test on a process's (pid, command line).
    """

    def __init__(self, groups: Mapping[str, Callable[[int, str], bool]]) -> None:
        self._groups = groups
        self._start: dict[int, tuple[str, int]] = {}
        self._started_at = 0.0

    def _snapshot(self) -> dict[int, tuple[str, int]]:
        return {pid: (command, ticks) for pid, command, ticks in _processes()}

    def start(self) -> None:
        self._start = self._snapshot()
        self._started_at = time.monotonic()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        seconds = max(time.monotonic() - self._started_at, 1e-9)
        used = dict.fromkeys(self._groups, 0.0)
        for pid, (command, ticks) in end.items():
            ticks -= self._start.get(pid, (command, 0))[1]
            for name, belongs in self._groups.items():
                if belongs(pid, command):
                    used[name] += ticks
                    break
        return {name: 100.0 * ticks / _TICKS_PER_SECOND / seconds for name, ticks in used.items()}

    def seconds(self) -> dict[str, float]:
        """CPU seconds per group used since ``start()`` (``stop()`` gives percent of a core)."""
        end = self._snapshot()
        used = dict.fromkeys(self._groups, 0.0)
        for pid, (command, ticks) in end.items():
            ticks -= self._start.get(pid, (command, 0))[1]
            for name, belongs in self._groups.items():
                if belongs(pid, command):
                    used[name] += ticks
                    break
        return {name: ticks / _TICKS_PER_SECOND for name, ticks in used.items()}


def describe(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {share:.0f} %" for name, share in shares.items())


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` from /proc (-1 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_tree(root: int) -> Callable[[int, str], bool]:
    """A group test for ``root`` and its direct children (a postmaster and its backends)."""

    def belongs(pid: int, command_line: str) -> bool:
        return pid == root or parent_pid(pid) == root

    return belongs
