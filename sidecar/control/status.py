"""This sidecar's entry in etcd: status/<host-id>, under a lease, with the mapping revision it has applied, its
version, its open streams and the records it holds unacknowledged per cluster (`kafka-mesh status` shows them). The
topic move reads these entries to know when every live sidecar has switched; a sidecar that dies disappears when its
lease expires.

The entry's lease is also what lets this sidecar acknowledge a record (the lease guard, meshcore's km_batch.h): a
topic move counts a sidecar, and waits for it at each step, only while its entry lives. So the guard is renewed only
up to the moment the lease is sure to live (when the keep-alive was sent + the TTL, by this host's monotonic clock),
and only once the mapping was read after the lease was granted. A batch routed under the guard and completed after
it lapsed (the process was paused, or cut off from etcd, past its lease) is answered as not acknowledged: the app
sends it again. Before routing a request while the guard does not hold, the Produce stream waits (`routable`) for
the lease to be renewed and the mapping read anew, at most etcd_timeout_s; if etcd stays out of reach, the sidecar
then routes by the mapping it has (availability first: a topic move meanwhile stalls at its fence while this sidecar
writes the old cluster), and those batches are acknowledged until the lease is back.

Runs on the event loop: one task keeps the lease alive and rewrites the entry when the applied revision changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable

import meshcore
from sidecar import __version__
from sidecar.config import SidecarSettings
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import EtcdError
from sidecar.mapping.model import Mapping

log = logging.getLogger("kafka_mesh.status")

#: While batches routed before the applied revision are in flight, how often the entry looks whether they are done.
POLL_S = 0.05


class StatusReporter:
    def __init__(self, settings: SidecarSettings) -> None:
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._revision = -1
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.streams: Callable[[], int] = lambda: 0
        #: Records held unacknowledged, by cluster (what `kafka-mesh status` shows); refreshed with the entry.
        self.in_flight: Callable[[], dict[str, int]] = dict
        #: The oldest mapping revision with a Produce batch still in flight (None: none): a topic move waits for it
        #: to reach its producer switch's revision. The entry is rewritten as soon as it does.
        self.oldest_in_flight: Callable[[], int | None] = lambda: None
        #: Reads the mapping pointer and applies what it names (MappingSource.catch_up), once per new lease.
        self.catch_up: Callable[[Etcd], Awaitable[None]] | None = None
        self._deadline = 0.0      # until when (time.monotonic()) the lease guard is renewed
        self._reported_older = False    # the entry written last reports batches routed before its revision
        self._stale = False       # routing by the mapping in force without a lease (etcd out of reach)
        self._lapsed_at: float | None = None      # when a Produce stream first found the guard lapsed
        self._renewed = asyncio.Event()           # set (and replaced) at each renewal
        self.started = time.time()

    @property
    def key(self) -> str:
        return self._keys.status + self._settings.host_id

    def applied(self, mapping: Mapping) -> None:
        self._revision = mapping.revision
        self._changed.set()

    def document(self) -> bytes:
        oldest = self.oldest_in_flight()
        self._reported_older = oldest is not None and oldest < self._revision
        return json.dumps({
            "host": self._settings.host_id, "pid": os.getpid(), "version": __version__,
            "revision": self._revision, "streams": self.streams(), "in_flight": self.in_flight(),
            "oldest_in_flight": oldest, "at": time.time(),
            "delivery_timeout_ms": self._settings.delivery_timeout_ms,
            "started": int(self.started),
            "listen": list(self._settings.listen),
        }).encode()

    async def start(self, reachable: bool = True) -> None:
        """Register and keep the lease (with etcd, unless the mapping comes from a file). reachable: whether the
        mapping source reached etcd at start; if not, the sidecar routes by the cached mapping until it does."""
        if self._settings.etcd is not None and self._settings.mapping_file is None:
            if reachable:
                meshcore.expire_guard()     # until registered, Produce streams wait (routable)
            else:
                self._go_stale("etcd was out of reach at start")
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def routable(self) -> None:
        """Before a Produce request is routed while the guard does not hold: wait until the lease is renewed and
        the mapping read anew, at most etcd_timeout_s from the first such wait; then route by the mapping in force
        (stale). Returns at once while the guard holds, or stale."""
        if self._task is None or self._stale or meshcore.guard_holds():
            return
        now = time.monotonic()
        if self._lapsed_at is None:
            self._lapsed_at = now
            self._changed.set()         # keep the lease alive now, not at the next beat
        left = self._lapsed_at + self._settings.etcd_timeout_s - now
        if left > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._renewed.wait(), left)
        if not (self._stale or meshcore.guard_holds()):
            self._go_stale(f"no status lease for {self._settings.etcd_timeout_s:g} s")

    def _go_stale(self, why: str) -> None:
        self._stale = True
        meshcore.stale_guard()
        log.warning("%s: routing by the mapping in force revision=%d until etcd is back (a topic move stalls at its "
                    "fence while this sidecar writes the old cluster)", why, self._revision)

    def _renew(self, sent: float, ttl: int) -> None:
        """The lease (granted or kept alive by a request sent at sent) lives at least until sent + ttl."""
        now = time.monotonic()
        lapsed = now >= self._deadline
        if lapsed and self._deadline > 0 and not self._stale:
            log.warning("the status lease was renewed %.1f s late (the process paused, or etcd slow): batches "
                        "routed before are not acknowledged", now - self._deadline)
        elif self._stale:
            log.info("etcd is back: the lease renewed and the mapping read, revision=%d", self._revision)
        self._deadline = sent + ttl
        self._stale, self._lapsed_at = False, None
        meshcore.renew_guard(self._deadline, lapsed)
        renewed, self._renewed = self._renewed, asyncio.Event()
        renewed.set()

    def _older_in_flight(self) -> bool:
        oldest = self.oldest_in_flight()
        return oldest is not None and oldest < self._revision

    async def _until_changed(self, beat: float) -> None:
        """Until the entry should be written again: its revision changed, the last batches routed before it
        completed (a topic move waits for that), or the beat is due."""
        due = time.monotonic() + beat
        older = self._reported_older       # as the entry written last says (they may be done already)
        while not self._changed.is_set():
            left = due - time.monotonic()
            if left <= 0 or (older and not self._older_in_flight()):
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, POLL_S if older else left))

    def _expire(self) -> None:
        self._deadline = 0.0
        meshcore.expire_guard()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        ttl = self._settings.status_ttl_s
        while True:
            try:
                async with Etcd(self._settings.etcd or "", timeout=self._settings.etcd_timeout_s) as etcd:
                    sent = time.monotonic()
                    lease = await etcd.lease(ttl)
                    try:
                        # Registered first, then the mapping read: a move that switched a route before this read
                        # is applied by it, and one that switches after counts this sidecar and waits for it.
                        await etcd.put(self.key, self.document(), lease=lease)
                        if self.catch_up is not None:
                            await self.catch_up(etcd)
                        self._renew(sent, ttl)
                        while True:
                            self._changed.clear()
                            await etcd.put(self.key, self.document(), lease=lease)
                            await self._until_changed(ttl / 3)
                            sent = time.monotonic()
                            await etcd.refresh(lease)
                            self._renew(sent, ttl)
                    except asyncio.CancelledError:
                        # Stopping: the entry goes with its lease, and with it what let this sidecar acknowledge.
                        self._expire()
                        with contextlib.suppress(Exception):
                            await asyncio.shield(etcd.revoke(lease))
                        raise
            except asyncio.CancelledError:
                raise
            except EtcdError as e:
                # The lease lives on until its deadline (the guard with it), or is gone (the guard lapsed too).
                log.debug("status registration interrupted error=%s", e)
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):       # a Produce stream waiting wakes it sooner
                await asyncio.wait_for(self._changed.wait(), 1.0)
