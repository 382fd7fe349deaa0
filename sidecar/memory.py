"""Giving freed memory back to the system after a stream ends.

glibc keeps what is freed in per-thread arenas (librdkafka's threads each allocate and free there) and returns it
to the system only when the top of an arena is free: after 20 Subscribe streams over 3 clusters ended, a sidecar
held 300-400 MiB more than when idle until malloc_trim(0) gave it back (then 55-60 MiB). So once a stream ends, a
trim runs in a worker thread (it takes the arenas' locks for a few milliseconds; never on the event loop), at most
once per TRIM_DEBOUNCE_S however many streams end. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

TRIM_DEBOUNCE_S = 1.0

_malloc_trim = None
try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):       # not glibc
    pass

_pending: asyncio.TimerHandle | None = None


def trim_now() -> None:
    """Return the free memory at the top of every arena, and free whole pages inside them, to the system."""
    if _malloc_trim is not None:
        _malloc_trim(0)


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
