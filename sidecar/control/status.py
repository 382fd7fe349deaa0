"""This sidecar's entry in etcd: status/<host-id>, under a lease, with the mapping revision it has applied, its
version, its open streams and the records it holds unacknowledged per cluster (`kafka-mesh status` shows them). The
topic move reads these entries to know when every live sidecar has switched; a sidecar that dies disappears when its
lease expires.

Runs on the event loop: one task keeps the lease alive and rewrites the entry when the applied revision changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable

from sidecar import __version__
from sidecar.config import SidecarSettings
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import EtcdError
from sidecar.mapping.model import Mapping

log = logging.getLogger("kafka_mesh.status")


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
        self.started = time.time()

    @property
    def key(self) -> str:
        return self._keys.status + self._settings.host_id

    def applied(self, mapping: Mapping) -> None:
        self._revision = mapping.revision
        self._changed.set()

    def document(self) -> bytes:
        return json.dumps({
            "host": self._settings.host_id, "pid": os.getpid(), "version": __version__,
            "revision": self._revision, "streams": self.streams(), "in_flight": self.in_flight(), "at": time.time(),
            "delivery_timeout_ms": self._settings.delivery_timeout_ms,
            "started": int(self.started),
            "listen": list(self._settings.listen),
        }).encode()

    async def start(self) -> None:
        if self._settings.etcd is not None and self._settings.mapping_file is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

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
                    lease = await etcd.lease(ttl)
                    try:
                        while True:
                            self._changed.clear()
                            await etcd.put(self.key, self.document(), lease=lease)
                            with contextlib.suppress(asyncio.TimeoutError):
                                await asyncio.wait_for(self._changed.wait(), timeout=ttl / 3)
                            await etcd.refresh(lease)
                    finally:
                        with contextlib.suppress(Exception):
                            await asyncio.shield(etcd.revoke(lease))
            except asyncio.CancelledError:
                raise
            except EtcdError as e:
                log.debug("status registration interrupted error=%s", e)
            await asyncio.sleep(1.0)
