"""Where the sidecar's mapping comes from, and how changes reach it.

With etcd: the whole namespace is read in one consistent read and applied; then a watch on the namespace follows
every change, and each change re-reads the namespace (one read = one revision), so a revision is always applied
whole. An invalid mapping in etcd is refused with a log line and the last good one stays. When etcd is lost the
mapping in force stays and the watch reconnects by itself (with backoff), resuming after the last revision it
applied. Every applied mapping is cached on disk, so a sidecar that starts while etcd is unreachable serves the last
mapping it saw (and says so).

With --mapping FILE: that file is the mapping, read once at start; no etcd is needed.

Runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Callable
from typing import Any

from sidecar.config import SidecarSettings
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import EtcdError, MappingError, MeshError
from sidecar.manage import mapping as mapping_store
from sidecar.mapping.model import Mapping

log = logging.getLogger("kafka_mesh.mapping")


class MappingSource:
    def __init__(self, settings: SidecarSettings, apply: Callable[[Mapping], None]) -> None:
        self._settings = settings
        self._apply = apply
        self._keys = Keys(settings.namespace)
        self._task: asyncio.Task[None] | None = None
        self.applied_revision = -1
        self._last_event = 0
        self._read_revision = 0
        self._applied_doc: dict[str, object] | None = None
        self.connected = asyncio.Event()

    @property
    def cache_path(self) -> pathlib.Path:
        return self._settings.cache_dir / f"mapping-{self._settings.namespace}.json"

    def _is_mapping_key(self, key: str) -> bool:
        # status/ is the sidecars' own liveness, not mapping: writing it must neither reload nor relabel.
        return not key.startswith(self._keys.status)

    async def _load(self, etcd: Etcd) -> Mapping:
        """The namespace in one read. Its revision is that of the newest change to a mapping key: the newest
        mod_revision among them, or a newer deletion the watch has reported. So a mapping written by one
        `mapping apply` carries exactly that apply's revision, whatever else etcd stores meanwhile."""
        items, read_revision = await etcd.get_prefix_revisions(self._keys.root)
        # The watch resumes after the read, not after the newest mapping key: the store's revision moves on with
        # other writes (status/), and etcd compacts old revisions away.
        self._read_revision = max(self._read_revision, read_revision)
        mapping_items = {k: v for k, (v, _) in items.items() if self._is_mapping_key(k)}
        newest = max((rev for k, (_, rev) in items.items() if self._is_mapping_key(k)), default=0)
        return Mapping.from_etcd(mapping_items, self._keys, max(newest, self._last_event))

    async def start(self) -> None:
        """Apply the first mapping (from the file, etcd, or the on-disk cache) and start following changes."""
        if self._settings.mapping_file is not None:
            mapping = mapping_store.load_file(self._settings.mapping_file)
            self._apply(mapping)
            self.applied_revision = mapping.revision
            log.info("serving mapping from file path=%s", self._settings.mapping_file)
            return
        if self._settings.etcd is None:
            raise MappingError("no mapping source: give --etcd URL or --mapping FILE")
        try:
            async with Etcd(self._settings.etcd, timeout=self._settings.etcd_timeout_s) as etcd:
                mapping = await self._load(etcd)
            self._use(mapping)
            self.connected.set()
        except EtcdError as e:
            cached = self._read_cache()
            if cached is None:
                raise EtcdError(f"{e}; and no cached mapping at {self.cache_path} to serve meanwhile") from e
            self._apply(cached)
            self.applied_revision = cached.revision
            log.warning("etcd unreachable, serving the cached mapping revision=%d path=%s error=%s",
                        cached.revision, self.cache_path, e)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _use(self, mapping: Mapping) -> None:
        self._apply(mapping)
        self.applied_revision = mapping.revision
        self._applied_doc = mapping.to_document()
        self._write_cache(mapping)

    async def _follow(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with Etcd(self._settings.etcd or "", timeout=self._settings.etcd_timeout_s) as etcd:
                    await self._reload(etcd)          # what changed while we were away
                    self.connected.set()
                    backoff = 0.2
                    async for event in etcd.watch_prefix(self._keys.root, start_revision=self._read_revision + 1):
                        if event.revision > self.applied_revision and self._is_mapping_key(event.key):
                            self._last_event = max(self._last_event, event.revision)
                            await self._reload(etcd)
            except asyncio.CancelledError:
                raise
            except EtcdError as e:
                if self.connected.is_set():
                    log.warning("etcd lost; the mapping in force stays revision=%d error=%s",
                                self.applied_revision, e)
                self.connected.clear()
            except Exception as e:   # never let the watch die: log and reconnect
                log.exception("mapping watch failed; reconnecting: %s", e)
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _reload(self, etcd: Etcd) -> None:
        try:
            mapping = await self._load(etcd)
        except MappingError as e:
            log.error("invalid mapping in etcd; keeping revision=%d error=%s", self.applied_revision, e)
            return
        if mapping.revision <= self.applied_revision and mapping.to_document() == self._applied_doc:
            return
        try:
            self._use(mapping)
        except MeshError as e:
            log.error("mapping revision=%d cannot be applied; keeping revision=%d error=%s", mapping.revision,
                      self.applied_revision, e)

    def _write_cache(self, mapping: Mapping) -> None:
        path = self.cache_path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            # The cache holds the clusters' config, secrets included: readable by this user only, from the start.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o600)        # a .tmp left by an older version may have had a wider mode
                f.write(json.dumps({"revision": mapping.revision, "mapping": mapping.to_document()}))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write the mapping cache path=%s error=%s", path, e)

    def _read_cache(self) -> Mapping | None:
        try:
            data: Any = json.loads(self.cache_path.read_text())
            return dataclasses.replace(Mapping.from_document(data["mapping"]), revision=int(data["revision"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, MappingError) as e:
            log.warning("ignoring an unreadable mapping cache path=%s error=%s", self.cache_path, e)
            return None
