"""How the sidecar's memory is held by glibc: few arenas, and freed memory given back after a stream ends.

glibc gives each thread that allocates its own arena, up to 8 per core, and an arena keeps what was freed in it for
later. The sidecar runs a few hundred librdkafka threads (several per client), each parsing fetch responses and
freeing records other threads took: with 20 Subscribe streams over 3 clusters, 2 arenas instead of 16 held 45-55 MiB
less at the peak (317-328 MiB against 367-382). limit_arenas() sets that before any thread starts, unless the
environment already says (MALLOC_ARENA_MAX, or arena_max in GLIBC_TUNABLES).

An arena returns freed memory to the system only when its top is free: after 20 Subscribe streams over 3 clusters
ended, a sidecar held 300-400 MiB more than when idle until malloc_trim(0) gave it back (then 55-60 MiB). So once a
stream ends, a trim runs in a worker thread (it takes the arenas' locks for a few milliseconds; never on the event
loop), at most once per TRIM_DEBOUNCE_S however many streams end. Streams that end while librdkafka still holds
their records free most of their memory later, when Kafka acknowledges them: trim_after_load() trims again once the
sidecar has gone idle (50 cancelled Produce streams of 64 KB records: 386 MiB held 10 s after the load without it,
against 50 MiB before the load). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable, Mapping

TRIM_DEBOUNCE_S = 1.0

_malloc_trim = None
_mallopt = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _malloc_trim = _libc.malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
    _mallopt = _libc.mallopt
    _mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _mallopt.restype = ctypes.c_int
except (OSError, AttributeError):       # not glibc
    pass

_pending: asyncio.TimerHandle | None = None

#: glibc's arenas for the whole process. Threads contend for them: see README's produce figures for the cost.
ARENA_MAX = 2
_M_ARENA_MAX = -8       # mallopt's parameter number, from glibc's malloc.h


def limit_arenas(env: Mapping[str, str] | None = None) -> bool:
    """Cap glibc's arenas at ARENA_MAX, unless the environment sets them. Call before any thread starts. Returns
    whether it did."""
    given = os.environ if env is None else env
    if "MALLOC_ARENA_MAX" in given or "arena_max" in given.get("GLIBC_TUNABLES", ""):
        return False
    if _mallopt is None:
        return False
    return bool(_mallopt(_M_ARENA_MAX, ARENA_MAX))


def trim_now() -> None:
    """Return the free memory at the top of every arena, and free whole pages inside them, to the system."""
    if _malloc_trim is not None:
        _malloc_trim(0)


#: How often trim_after_load() looks whether the sidecar went idle.
IDLE_CHECK_S = 2.0


async def trim_after_load(idle: Callable[[], bool], every_s: float = IDLE_CHECK_S) -> None:
    """For the process's life: trim once each time idle() turns true after having been false at a check (no
    Produce request in flight, no record waiting in a producer's queue). Cancel it to stop."""
    loop = asyncio.get_running_loop()
    busy = False
    while True:
        await asyncio.sleep(every_s)
        if not idle():
            busy = True
        elif busy:
            busy = False
            await loop.run_in_executor(None, trim_now)


def release_soon() -> None:
    """On the event loop: a stream ended; trim once, TRIM_DEBOUNCE_S from now, in a worker thread."""
    global _pending
    if _malloc_trim is None or _pending is not None:
        return
    loop = asyncio.get_running_loop()

    def fire() -> None:
        global _pending
        _pending = None
        loop.run_in_executor(None, trim_now)

    _pending = loop.call_later(TRIM_DEBOUNCE_S, fire)
