"""What the benchmarks read of a process from /proc: CPU time per group of processes over a window, and memory."""

from __future__ import annotations

import os
import pathlib
import time


def mib(kb: int) -> float:
    return round(kb / 1024, 1)


def cpu_s(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used, from /proc/<pid>/stat."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by named groups of processes between start() and stop(): with 2 cores shared by the brokers,
    the sidecar, the client and a producer, the CPU per record is a steadier figure than a rate, and the split says
    which process a slow run was short of."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = groups
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_s(p) for p in pids) for name, pids in self._groups.items()}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._now()

    def stop(self) -> None:
        now = self._now()
        self.wall = time.monotonic() - self._t0
        self.used = {name: now[name] - self._start[name] for name in now}

    def cores(self) -> dict[str, float]:
        """Average cores each group kept busy over the window."""
        return {name: round(used / self.wall, 2) for name, used in self.used.items()} if self.wall > 0 else {}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of a process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            out[name] = int(rest.split()[0])
    return out
