"""Where the sidecar's mapping comes from, and how changes reach it.

With etcd: the pointer key names the blobs that hold the mapping in force (sidecar/control/mapstore.py). The source
reads the pointer and its blobs, then watches the pointer alone. Each new pointer is a whole mapping revision: the
source reads only the blobs it does not hold yet (a one-route change: one blob of a few kilobytes) and, when only
route parts changed, applies just the routes of those parts (Mapping.updated), which the routing table then takes
topic by topic. A change of the clusters or of the router rules, or of many parts at once, is parsed whole, in a
worker thread, so that the loop keeps serving meanwhile. Either way a revision is applied whole or not at all. An
invalid mapping in etcd is refused with a log line and the last good one stays. When etcd is lost the mapping in
force stays and the watch reconnects by itself (with backoff), resuming after the last revision it read. Every
applied mapping is cached on disk (its pointer and blobs, written in a worker thread), so a sidecar that starts while
etcd is unreachable serves the last mapping it saw (and says so).

With --mapping FILE: that file is the mapping, read once at start; no etcd is needed.

Runs on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import threading
from collections.abc import Callable, Iterator
from collections.abc import Mapping as ReadOnly
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.control import mapstore
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import EtcdError, MappingError, MeshError
from sidecar.mapping.document import load_file
from sidecar.mapping.model import REMOVE, Mapping

log = logging.getLogger("kafka_mesh.mapping")

#: A new pointer that changes more parts than this (of 513: clusters and 256 buckets a route section) is parsed
#: whole: past this point the routing table is rebuilt anyway.
FULL_PARTS = 32
#: Up to this many changed parts are applied on the event loop; more, in a worker thread.
LOOP_PARTS = 4
#: How long after applying a mapping the sidecar writes it to its on-disk cache.
CACHE_DELAY_S = 1.0


class SourceSettings(Protocol):
    """What the source reads of a process's settings (the sidecar's, a router's)."""

    @property
    def etcd(self) -> str | None: ...
    @property
    def namespace(self) -> str: ...
    @property
    def mapping_file(self) -> pathlib.Path | None: ...
    @property
    def cache_dir(self) -> pathlib.Path: ...
    @property
    def etcd_timeout_s(self) -> float: ...


@dataclass(frozen=True)
class InForce:
    """The mapping applied, and what it was read from: the pointer's parts and their blobs (compressed: about 5 bytes
    a route), from which a part that changes tells which of its routes it no longer has."""

    parts: dict[str, list[str]]
    blobs: dict[str, bytes]
    mapping: Mapping


def parse_whole(parts: dict[str, list[str]], blobs: ReadOnly[str, bytes], revision: int, where: str) -> InForce:
    """The mapping parts hold, checked whole, one part decoded at a time, producer routes first (pure: runs in a
    worker thread)."""
    def pieces() -> Iterator[tuple[str, dict[str, Any]]]:
        for name in sorted(parts, key=lambda n: (not n.startswith("producer/"), n)):
            if name != "clusters":
                yield mapstore.section_of(name, where), mapstore.decode_part(name, parts[name], blobs, where)

    clusters = mapstore.decode_part("clusters", parts["clusters"], blobs, where) if "clusters" in parts else {}
    try:
        mapping = Mapping.from_parts(clusters, pieces())
    except MappingError as e:
        raise MappingError(f"{where}: {e}") from None
    named = {i: blobs[i] for ids in parts.values() for i in ids}
    return InForce(parts, named, dataclasses.replace(mapping, revision=revision))


def parse_changes(old: InForce, parts: dict[str, list[str]], blobs: ReadOnly[str, bytes], revision: int,
                  where: str) -> InForce | None:
    """old with the parts that changed applied route by route; None when the change is one to parse whole (the
    clusters or the router rules changed, or more than FULL_PARTS parts)."""
    changed = [n for n in parts.keys() | old.parts.keys() if parts.get(n) != old.parts.get(n)]
    # Router rules are checked together (cycles across rules) and are few: a change of them is parsed whole.
    if any(n in mapstore.WHOLE for n in changed) or len(changed) > FULL_PARTS:
        return None
    edits: dict[str, dict[str, Any]] = {"producer": {}, "consumer": {}}
    for name in changed:
        section = mapstore.section_of(name, where)
        if section not in edits:
            return None
        part = mapstore.decode_part(name, parts[name], blobs, where) if name in parts else {}
        before = mapstore.decode_part(name, old.parts[name], old.blobs, where) if name in old.parts else {}
        edits[section].update((key, REMOVE) for key in before if key not in part)
        edits[section].update(part)
    try:
        mapping = old.mapping.updated(edits["producer"], edits["consumer"], revision)
    except MappingError as e:
        raise MappingError(f"{where}: {e}") from None
    named = {i: blobs[i] for ids in parts.values() for i in ids}
    return InForce(parts, named, mapping)


class MappingSource:
    def __init__(self, settings: SourceSettings, apply: Callable[[Mapping], None]) -> None:
        self._settings = settings
        self._apply = apply
        self._keys = Keys(settings.namespace)
        self._task: asyncio.Task[None] | None = None
        self.applied_revision = -1
        self._read_revision = 0
        self._state: InForce | None = None
        self._cache_next: InForce | None = None
        self._cache_task: asyncio.Task[None] | None = None
        self._cache_lock = threading.Lock()
        self._cached_revision = -1
        #: Why the last mapping read from etcd was not applied.
        self._refused = "its blobs kept vanishing under every read"
        self.connected = asyncio.Event()

    @property
    def cache_path(self) -> pathlib.Path:
        return self._settings.cache_dir / f"mapping-{self._settings.namespace}.json"

    async def start(self) -> None:
        """Apply the first mapping (from the file, etcd, or the on-disk cache) and start following changes."""
        if self._settings.mapping_file is not None:
            mapping = load_file(self._settings.mapping_file)
            self._apply(mapping)
            self.applied_revision = mapping.revision
            log.info("serving mapping from file path=%s", self._settings.mapping_file)
            return
        if self._settings.etcd is None:
            raise MappingError("no mapping source: give --etcd URL or --mapping FILE")
        failure: MeshError | None = None
        try:
            async with Etcd(self._settings.etcd, timeout=self._settings.etcd_timeout_s) as etcd:
                await self._catch_up(etcd)
            self.connected.set()
            if self.applied_revision < 0:
                # Read, but refused (invalid, its blobs gone, a cluster's settings this host cannot take): never
                # serve with no routes while a cached mapping could be served.
                failure = MappingError(f"the mapping in etcd cannot be served: {self._refused}")
        except EtcdError as e:
            failure = e
        if failure is not None:
            cached = self._read_cache()
            if cached is None:
                raise type(failure)(f"{failure}; and no cached mapping at {self.cache_path} to serve meanwhile")
            self._apply(cached.mapping)
            self._state = cached
            self.applied_revision = cached.mapping.revision
            log.warning("serving the cached mapping revision=%d path=%s (%s)", cached.mapping.revision,
                        self.cache_path, failure)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        for task in (self._task, self._cache_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._cache_next is not None:        # applied within the last CACHE_DELAY_S: cache it before leaving
            await asyncio.to_thread(self._write_cache, self._cache_next)
            self._cache_next = None

    async def _follow(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with Etcd(self._settings.etcd or "", timeout=self._settings.etcd_timeout_s) as etcd:
                    await self._catch_up(etcd)          # what changed while we were away
                    self.connected.set()
                    backoff = 0.2
                    async for event in etcd.watch_prefix(self._keys.pointer, start_revision=self._read_revision + 1):
                        if event.key != self._keys.pointer:
                            continue
                        self._read_revision = max(self._read_revision, event.revision)
                        if event.kind == "DELETE":
                            log.error("the mapping pointer %s was deleted; keeping revision=%d", self._keys.pointer,
                                      self.applied_revision)
                        elif await self._advance(etcd, event.value, event.revision) is None:
                            await self._catch_up(etcd)
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

    async def catch_up(self, etcd: Etcd) -> None:
        """Read the pointer now and apply the mapping it names, if newer than the one applied (the status reporter
        does, once it holds a new lease). Nothing with a mapping from a file."""
        if self._settings.mapping_file is None:
            await self._catch_up(etcd)

    async def _catch_up(self, etcd: Etcd) -> None:
        """Read the pointer and apply the mapping it names, if newer than the one applied."""
        for _ in range(mapstore.READ_ATTEMPTS):
            items, read_revision = await etcd.get_prefix_revisions(self._keys.pointer)
            # The watch resumes after this read, not after the pointer's own revision: etcd's revision moves on with
            # other writes (status/, blobs), and etcd compacts old revisions away.
            self._read_revision = max(self._read_revision, read_revision)
            got = items.get(self._keys.pointer)
            if got is None:
                if self.applied_revision < 0:
                    self._use(InForce({}, {}, Mapping()))     # nothing applied yet: an empty mapping
                elif self._state is not None and self._state.parts:
                    log.error("the mapping pointer %s is gone; keeping revision=%d", self._keys.pointer,
                              self.applied_revision)
                return
            if await self._advance(etcd, *got) is not None:
                return
        log.error("the blobs of mapping pointer %s kept vanishing under %d reads; keeping revision=%d",
                  self._keys.pointer, mapstore.READ_ATTEMPTS, self.applied_revision)

    async def _advance(self, etcd: Etcd, raw: bytes, revision: int) -> bool | None:
        """Apply the mapping of pointer value raw (written at revision): True when applied, False when refused (the
        one in force stays), None when its blobs are gone (a newer pointer replaced it: read that one)."""
        if revision <= self.applied_revision:
            return False
        where = f"{self._keys.pointer} at revision {revision}"
        old = self._state
        try:
            parts = mapstore.parse_pointer(raw, where)
            blobs = await mapstore.blobs_for(etcd, self._keys, parts, old.blobs if old else {})
            if blobs is None:
                return None
            state = None
            if old is not None:
                changed = sum(parts.get(n) != old.parts.get(n) for n in parts.keys() | old.parts.keys())
                # A few parts are parsed at once, on the loop (a few milliseconds); more, in a worker thread.
                state = (parse_changes(old, parts, blobs, revision, where) if changed <= LOOP_PARTS else
                         await asyncio.to_thread(parse_changes, old, parts, blobs, revision, where))
            if state is None:
                state = await asyncio.to_thread(parse_whole, parts, blobs, revision, where)
        except MappingError as e:
            log.error("invalid mapping in etcd; keeping revision=%d error=%s", self.applied_revision, e)
            self._refused = str(e)
            return False
        if self._state is not old or revision <= self.applied_revision:
            return False        # applied meanwhile (by a catch-up during the parse)
        try:
            self._use(state)
        except MeshError as e:
            log.error("mapping revision=%d cannot be applied; keeping revision=%d error=%s", revision,
                      self.applied_revision, e)
            self._refused = f"revision {revision} cannot be applied: {e}"
            return False
        return True

    def _use(self, state: InForce) -> None:
        self._apply(state.mapping)
        self._state = state
        self.applied_revision = state.mapping.revision
        self._cache_next = state
        if self._cache_task is None or self._cache_task.done():
            self._cache_task = asyncio.get_running_loop().create_task(self._write_caches())

    async def _write_caches(self) -> None:
        # One write at a time, of the newest mapping, a moment after it was applied: a burst of changes costs one
        # write or two, and the write (which holds the GIL for milliseconds at 100,000 topics) stays out of the way
        # of the streams that are following the change just applied.
        await asyncio.sleep(CACHE_DELAY_S)
        while self._cache_next is not None:
            state, self._cache_next = self._cache_next, None
            await asyncio.to_thread(self._write_cache, state)

    def _write_cache(self, state: InForce) -> None:
        # One writer at a time (a write cancelled at stop may still run in its thread), never an older over a newer.
        with self._cache_lock:
            if state.mapping.revision > self._cached_revision:
                self._write_cache_file(state)
                self._cached_revision = state.mapping.revision

    def _write_cache_file(self, state: InForce) -> None:
        path = self.cache_path
        doc = {"revision": state.mapping.revision, "parts": state.parts,
               "blobs": {i: base64.b64encode(b).decode() for i, b in state.blobs.items()}}
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            # The cache holds the clusters' config, secrets included: readable by this user only, from the start.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o600)        # a .tmp left by an older version may have had a wider mode
                f.write(json.dumps(doc))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write the mapping cache path=%s error=%s", path, e)

    def _read_cache(self) -> InForce | None:
        try:
            data: Any = json.loads(self.cache_path.read_text())
            revision = int(data["revision"])
            parts = mapstore.parse_pointer(json.dumps({"format": mapstore.FORMAT, "parts": data["parts"]}).encode(),
                                           str(self.cache_path))
            blobs = {str(i): base64.b64decode(b, validate=True) for i, b in data["blobs"].items()}
            if any(mapstore.blob_id(b) != i for i, b in blobs.items()):
                raise MappingError("a blob does not match its id")
            return parse_whole(parts, blobs, revision, str(self.cache_path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error, MappingError) as e:
            log.warning("ignoring an unreadable mapping cache path=%s error=%s", self.cache_path, e)
            return None
