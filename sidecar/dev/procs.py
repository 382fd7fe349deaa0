"""Starting and stopping the sandbox's server processes.

A process is remembered by (pid, start time) so that a recycled pid is never signalled by mistake. Servers started
for a test session die with the test process (PR_SET_PDEATHSIG), even when pytest itself is killed; servers started
by `kafka-mesh dev up` are detached and outlive the command.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass
class Proc:
    """A server process that the sandbox started."""

    name: str
    pid: int
    started: int
    log: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def server_env() -> dict[str, str]:
    """The environment for the servers (Kafka's JVM, etcd, Maven): this process's, without a library preloaded
    into it. A preload is meant for the Python process (the core's AddressSanitizer build needs its runtime
    preloaded, see the Makefile's test-asan), and breaks the JVM."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(name: str, argv: Sequence[str], log: pathlib.Path, cwd: pathlib.Path, *,
          detach: bool) -> tuple[Proc, subprocess.Popen[bytes]]:
    """Start argv with stdout and stderr appended to log. detach=False ties its life to this process."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv), cwd=cwd, env=server_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=None if detach else _die_with_parent,
        )
    started = _start_time(popen.pid)
    if started is None:
        popen.wait()
        raise RuntimeError(f"{name} exited at once (code {popen.returncode}); log: {log}")
    return Proc(name, popen.pid, started, str(log)), popen


def stop_all(procs: Sequence[Proc], timeout: float = 20.0) -> list[str]:
    """SIGTERM every live process, wait up to timeout for all, then SIGKILL the rest. Returns the names killed."""
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        _reap()
        time.sleep(0.1)
    killed = [p.name for p in procs if p.alive()]
    for p in procs:
        p.signal(signal.SIGKILL)
    while any(p.alive() for p in procs) and time.monotonic() < deadline + 5:
        _reap()
        time.sleep(0.05)
    return killed


def _reap() -> None:
    """Collect exited children of this process (when it started them) so that they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
