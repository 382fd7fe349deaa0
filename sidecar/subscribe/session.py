"""One Subscribe stream on the event loop: its consumers (one per cluster), at-least-once offsets, events, and the
mapping changes it follows live.

Threads: everything here runs on the event loop, except what the poll thread (poller.py) does with the consumers in
its rotation, and the blocking librdkafka calls (close, probe) sent to worker threads. A consumer is closed only once
the poll thread has let go of it (Removed, or stop()) and no probe runs on it.

Life of a cluster in a stream:
  open/added  -> consumer created and subscribed, handed to the poll thread (a cluster added by a mapping change is
                 read from its earliest offset where the group has none, so nothing written before is missed)
  removed     -> the poll thread stops reading it; the session waits (drain_timeout_s at most) for the acks of what
                 it sent, then closes the consumer, which commits the acked offsets and leaves the group
  redefined   -> (bootstrap servers or settings changed) removed as above, then added again from the new definition
Events tell the application about each step: assigned/revoked, clusters_changed, cluster_state, acks_ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2 as _pb
from sidecar.consume import consumers
from sidecar.consume.consumers import prefetch
from sidecar.consume.offsets import PartitionOffsets
from sidecar.mapping.model import Cluster, Mapping
from sidecar.subscribe.poller import (
    MAX_CREDIT_BYTES,
    MAX_CREDIT_RECORDS,
    Credit,
    Failed,
    Item,
    Lost,
    Poller,
    Rebalanced,
    Records,
    Removed,
    StateChanged,
)

log = logging.getLogger("kafka_mesh.subscribe")

DEFAULT_MAX_RECORDS = 2000
#: Most records in one batch, whatever the subscription asks (the core allocates this many slots per poll).
MAX_RECORDS = 10_000
# Records are cheap to have in flight (the byte credit bounds memory); a window of several batches keeps the sidecar
# and the application working at once instead of taking turns (3x the rate of a 1,000-record window, measured).
DEFAULT_CREDIT_RECORDS = 10_000
DEFAULT_CREDIT_BYTES = 16 << 20
#: The most bytes of one response of records: under the 4 MiB (4,194,304 bytes) that gRPC clients in every language
#: accept by default, whatever the credit. A subscription may choose 1 KiB-64 MiB (max_response_bytes).
DEFAULT_MAX_RESPONSE_BYTES = (4 << 20) - 1024
MIN_RESPONSE_BYTES = 1024
MAX_RESPONSE_BYTES = 64 << 20
#: While a cluster is down, how often the session asks it for metadata to notice that it is back.
PROBE_INTERVAL_S = 1.0


class PlanError(Exception):
    """A subscribed topic has no route to read it from."""


def clusters_by_topic(mapping: Mapping, topics: list[str]) -> dict[str, list[str]]:
    """cluster -> the subscribed topics read there (consumer route, else the producer route's sinks)."""
    out: dict[str, list[str]] = {}
    for topic in topics:
        clusters = mapping.clusters_for_consumer(topic)
        if not clusters:
            raise PlanError(f"topic {topic!r} has no consumer route, no producer route and no __default__")
        for cluster in clusters:
            out.setdefault(cluster, []).append(topic)
    return out


@dataclass(frozen=True)
class StreamSettings:
    commit_interval_ms: int = 1000
    drain_timeout_s: float = 10.0


class Session:
    """The consumers, offsets and events of one stream. Output (encoded SubscribeResponses, then None at the end)
    goes to `out`, which the servicer writes to the stream."""

    def __init__(self, sub: _pb.Subscription, settings: StreamSettings, listeners: set[Callable[[Mapping], None]],
                 ) -> None:
        self._sub = sub
        self._topics = list(sub.topics)
        self._settings = settings
        self._listeners = listeners
        self._loop = asyncio.get_running_loop()
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue()
        # A credit of up to 2^64 - 1 is the app's "no limit": held within what the poll thread's counters take.
        self.credit = Credit(min(sub.credit.records or DEFAULT_CREDIT_RECORDS, MAX_CREDIT_RECORDS),
                             min(sub.credit.bytes or DEFAULT_CREDIT_BYTES, MAX_CREDIT_BYTES))
        self._poller = Poller(self.credit, min(sub.max_records or DEFAULT_MAX_RECORDS, MAX_RECORDS), self._from_thread,
                              sub.max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES)
        self._prefetch = prefetch(self.credit.bytes)
        self.offsets: dict[tuple[str, str, int], PartitionOffsets] = {}
        self.consumers: dict[str, meshcore.Consumer] = {}        # every open consumer, draining ones too
        self._plan: dict[str, list[str]] = {}                     # clusters read now -> their topics
        self._assigned: dict[str, set[tuple[str, int]]] = {}
        self._earliest: dict[str, set[str]] = {}                  # topics added to a cluster's running consumer
        self._built: dict[str, Cluster] = {}                      # the definition each open consumer was built from
        self._mapping: Mapping | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._acked = asyncio.Event()
        self._reset = "latest"
        self._down: set[str] = set()                              # clusters last reported unavailable to the app
        self._lost: dict[str, float] = {}                         # clusters whose consumer failed -> next backoff
        self._rebuilding: set[asyncio.Task[None]] = set()
        self._ended = False
        self.error: str | None = None       # why the stream failed, when it did

    # -- start and stop -------------------------------------------------------------------------------------------

    def open(self, mapping: Mapping) -> None:
        """Create and subscribe a consumer per cluster of the subscribed topics, and start polling. Raises PlanError
        or meshcore.ConfigError (nothing is left open then)."""
        plan = clusters_by_topic(mapping, self._topics)
        reset = self._reset = "earliest" if self._sub.start == _pb.START_POSITION_EARLIEST else "latest"
        try:
            for cluster, topics in plan.items():
                self._add(mapping, cluster, topics, reset)
        except BaseException:
            for c in self._poller.stop().values():
                c.close()
            self._poller.release()
            raise
        self._plan = plan
        self._mapping = mapping
        self._listeners.add(self.on_mapping)
        self._poller.start()

    def _add(self, mapping: Mapping, cluster_name: str, topics: list[str], reset: str) -> None:
        cluster = mapping.clusters[cluster_name]
        c = consumers.create(cluster, self._sub.group, reset, self._settings.commit_interval_ms,
                             self._prefetch)
        try:
            c.subscribe(topics)
            self._poller.add(cluster_name, c)
        except BaseException:
            c.close()
            raise
        self.consumers[cluster_name] = c
        self._built[cluster_name] = cluster

    async def close(self) -> None:
        """Stop polling, close every consumer (each commits what was acked and leaves the group)."""
        self._listeners.discard(self.on_mapping)
        self._ended = True
        self._acked.set()                       # drains waiting for acks finish now
        for task in self._rebuilding:
            task.cancel()                       # a failed consumer waiting out its backoff: nothing to rebuild
        held = await asyncio.to_thread(self._poller.stop)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._probing.values(), return_exceptions=True)
        closing = list(self.consumers.values())
        for c in held.values():
            if all(c is not x for x in closing):
                closing.append(c)
        self.consumers.clear()
        await asyncio.gather(*(asyncio.to_thread(c.close) for c in closing))
        self._poller.release()                  # no consumer is left to write to the eventfd

    def finish(self) -> None:
        """The application half-closed its side: send nothing more, and end the stream (close() commits)."""
        self._ended = True
        self.out.put_nowait(None)

    # -- from the poll thread -------------------------------------------------------------------------------------

    def _from_thread(self, item: Item | None) -> None:
        self._loop.call_soon_threadsafe(self._on_item, item)

    def _on_item(self, item: Item | None) -> None:
        if item is None:
            self.out.put_nowait(None)
        elif isinstance(item, Records):
            self._delivered(item)
        elif isinstance(item, Rebalanced):
            self._rebalanced(item)
        elif isinstance(item, StateChanged):
            self._state_changed(item.cluster, item.available, item.reason)
        elif isinstance(item, Removed):
            self._spawn(self._drain(item.cluster, item.consumer))
        elif isinstance(item, Lost):
            task = self._loop.create_task(self._rebuild(item.cluster, item.consumer, item.error))
            self._rebuilding.add(task)
            task.add_done_callback(self._rebuilding.discard)
        elif isinstance(item, Failed):
            self.error = f"cluster {item.cluster}: {item.error}"

    def _send(self, encoded: bytes) -> None:
        if not self._ended:
            self.out.put_nowait(encoded)

    def _event(self, event: _pb.Event) -> None:
        self._send(_pb.SubscribeResponse(event=event).SerializeToString())

    def _delivered(self, item: Records) -> None:
        if self._ended:
            return          # never sent: not tracked, delivered again to the group
        for cluster, topic, partition, first, last in item.runs:
            key = (cluster, topic, partition)
            p = self.offsets.get(key)
            if p is None:
                p = self.offsets[key] = PartitionOffsets(start=first)
            elif first < p.delivered_end:
                log.warning("partition %s/%s/%d delivered again from %d without a revocation", cluster, topic,
                            partition, first)
                p.rewind(first)
            p.delivered(first, last)
        self._send(item.encoded)

    def _rebalanced(self, item: Rebalanced) -> None:
        owned = self._assigned.setdefault(item.cluster, set())
        by_topic: dict[str, list[int]] = {}
        for topic, partition in item.partitions:
            by_topic.setdefault(topic, []).append(partition)
            if item.assigned:
                owned.add((topic, partition))
            else:
                owned.discard((topic, partition))
                # Acks for what was sent before are ignored from now on: the partition's next owner (maybe this
                # stream again) starts at the committed offset.
                self.offsets.pop((item.cluster, topic, partition), None)
        kind = "assigned" if item.assigned else "revoked"
        log.info("partitions %s cluster=%s group=%s %s", kind, item.cluster, self._sub.group,
                 " ".join(f"{t}:{sorted(ps)}" for t, ps in sorted(by_topic.items())))
        for topic, partitions in sorted(by_topic.items()):
            ps = _pb.PartitionSet(cluster=item.cluster, topic=topic, partitions=sorted(partitions))
            self._event(_pb.Event(assigned=ps) if item.assigned else _pb.Event(revoked=ps))

    def _state_changed(self, cluster: str, available: bool, reason: str) -> None:
        if available:
            self._down.discard(cluster)
        else:
            self._down.add(cluster)
        if available:
            log.info("cluster available again cluster=%s", cluster)
        else:
            log.warning("cluster unavailable cluster=%s reason=%s", cluster, reason)
            if cluster not in self._probing and cluster in self.consumers:
                self._probing[cluster] = self._loop.create_task(self._probe(cluster, self.consumers[cluster]))
        self._event(_pb.Event(cluster_state=_pb.ClusterState(cluster=cluster, available=available, reason=reason)))

    async def _probe(self, cluster: str, consumer: meshcore.Consumer) -> None:
        """Ask a down cluster for metadata until it answers; the poll thread then reports it available."""
        try:
            await self._probe_until_up(cluster, consumer)
        finally:
            if self._probing.get(cluster) is asyncio.current_task():
                del self._probing[cluster]

    async def _probe_until_up(self, cluster: str, consumer: meshcore.Consumer) -> None:
        while self._reads(cluster, consumer) and consumer.down:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if not self._reads(cluster, consumer):
                return
            if await asyncio.to_thread(consumer.probe, 1000):
                self._poller.wake()
                return

    def _reads(self, cluster: str, consumer: meshcore.Consumer) -> bool:
        return not self._ended and self.consumers.get(cluster) is consumer

    # -- from the application -------------------------------------------------------------------------------------

    def grant(self, records: int, nbytes: int) -> None:
        self._poller.grant(records, nbytes)

    def ack(self, acks: _pb.Acks) -> None:
        """Apply acks: store for commit each partition's new contiguous end; report what cannot be acked."""
        ignored: list[_pb.AckRange] = []
        stores: dict[str, list[tuple[str, int, int]]] = {}
        for r in acks.ranges:
            p = self.offsets.get((r.cluster, r.topic, r.partition))
            if p is None:
                ignored.append(r)
                continue
            before = p.committable()
            for lo, hi in p.ack(r.first_offset, r.last_offset):
                ignored.append(_pb.AckRange(cluster=r.cluster, topic=r.topic, partition=r.partition,
                                            first_offset=lo, last_offset=hi))
            after = p.committable()
            if after > before:
                stores.setdefault(r.cluster, []).append((r.topic, r.partition, after))
        for cluster, offsets in stores.items():
            consumer = self.consumers.get(cluster)
            refused = {(t, p) for t, p, _ in offsets} if consumer is None else set(consumer.store_offsets(offsets))
            if refused:
                # the partitions moved away before the loop heard of it: their next owner reads them again
                ignored += [_pb.AckRange(cluster=cluster, topic=r.topic, partition=r.partition,
                                         first_offset=r.first_offset, last_offset=r.last_offset)
                            for r in acks.ranges if r.cluster == cluster and (r.topic, r.partition) in refused]
        if ignored:
            log.info("acks ignored group=%s ranges=%d (never delivered on this stream, or revoked since)",
                     self._sub.group, len(ignored))
            self._event(_pb.Event(acks_ignored=_pb.Acks(ranges=ignored)))
        self._acked.set()

    # -- mapping changes ------------------------------------------------------------------------------------------

    def on_mapping(self, mapping: Mapping) -> None:
        """Follow a new mapping revision: start reading added clusters, drain and close dropped ones."""
        if self._ended:
            return
        try:
            plan = clusters_by_topic(mapping, self._topics)
        except PlanError as e:
            log.warning("mapping revision %d leaves a subscribed topic unreadable; the stream keeps its clusters: "
                        "%s", mapping.revision, e)
            return
        self._mapping = mapping
        old = self._plan
        for cluster in sorted(c for c in plan if c in old and self._built.get(c) not in (None, mapping.clusters[c])):
            # Its bootstrap servers or settings changed: drained and closed like a cluster that left, then read
            # again, with a consumer built from the new definition, once closed (_drain applies the mapping again).
            log.info("cluster definition changed: its consumer is rebuilt cluster=%s revision=%d", cluster,
                     mapping.revision)
            plan.pop(cluster)
        for cluster in sorted(set(old) - set(plan)):
            log.info("cluster leaves the stream cluster=%s group=%s revision=%d", cluster, self._sub.group,
                     mapping.revision)
            self._poller.remove(cluster)
        for cluster in sorted(plan):
            if cluster in old and cluster in self.consumers:
                if sorted(plan[cluster]) != sorted(old[cluster]):
                    consumer = self.consumers[cluster]
                    added = sorted(set(plan[cluster]) - set(old[cluster]))
                    self._earliest.setdefault(cluster, set()).update(added)
                    # Nothing written to a topic before this stream read it on this cluster may be missed.
                    consumer.read_from_earliest(sorted(self._earliest[cluster]))
                    consumer.subscribe(plan[cluster])
                continue
            if cluster in self.consumers:
                # still draining from an earlier revision: _drain applies the mapping again once it is closed
                log.info("cluster %s returns to the stream while it drains: read again once drained", cluster)
                plan.pop(cluster)
                continue
            try:
                # Nothing written to a newly listed cluster before this stream joined it may be missed.
                self._add(mapping, cluster, plan[cluster], "earliest")
            except meshcore.CoreError as e:
                log.error("cannot read cluster %s for the stream: %s", cluster, e)
                plan.pop(cluster)
                continue
            log.info("cluster joins the stream cluster=%s group=%s revision=%d", cluster, self._sub.group,
                     mapping.revision)
        for topic in self._topics:
            before = sorted(c for c, ts in old.items() if topic in ts)
            after = sorted(c for c, ts in plan.items() if topic in ts)
            if before != after:
                self._event(_pb.Event(clusters_changed=_pb.ClustersChanged(
                    topic=topic, clusters=after, mapping_revision=mapping.revision)))
        self._plan = plan

    async def _drain(self, cluster: str, consumer: meshcore.Consumer) -> None:
        """Wait for the acks of what the cluster sent (drain_timeout_s at most), then close its consumer: it
        commits the acked offsets and leaves the group."""
        deadline = self._loop.time() + self._settings.drain_timeout_s
        while not self._ended and self._unacked(cluster) and self._loop.time() < deadline:
            self._acked.clear()
            try:
                await asyncio.wait_for(self._acked.wait(), max(0.0, deadline - self._loop.time()))
            except TimeoutError:
                break
        unacked = self._unacked(cluster)
        if self.consumers.get(cluster) is consumer:
            del self.consumers[cluster]         # a probe of it stops at its next step
        probe = self._probing.get(cluster)
        if probe is not None:
            await asyncio.gather(probe, return_exceptions=True)
        await asyncio.to_thread(consumer.close)
        owned = self._forget(cluster)
        self._earliest.pop(cluster, None)
        if self._built.get(cluster) is not None and cluster not in self.consumers:
            del self._built[cluster]
        log.info("cluster closed for the stream cluster=%s group=%s unacked=%d", cluster, self._sub.group, unacked)
        self._revoke(cluster, owned)
        if self._mapping is not None and not self._ended:
            self.on_mapping(self._mapping)      # the cluster may have come back while it drained

    async def _rebuild(self, cluster: str, consumer: meshcore.Consumer, error: str) -> None:
        """A consumer failed for good (a fatal librdkafka error): close it, revoke its partitions (acks of what it
        sent are ignored: the group reads them again from the committed offsets), and after a backoff (1 s,
        doubling to 30 s while new consumers keep failing) read the cluster with a new consumer."""
        backoff = self._lost.get(cluster, 1.0)
        self._lost[cluster] = min(backoff * 2, 30.0)
        if self.consumers.get(cluster) is consumer:
            del self.consumers[cluster]         # a probe of it stops at its next step
        if cluster not in self._down:
            self._state_changed(cluster, False, f"its consumer failed: {error}")
        self._revoke(cluster, self._forget(cluster))
        await asyncio.to_thread(consumer.close)
        await asyncio.sleep(backoff)
        mapping = self._mapping
        if self._ended or mapping is None or cluster not in self._plan or cluster in self.consumers:
            return
        try:
            self._add(mapping, cluster, self._plan[cluster], self._reset)
        except meshcore.CoreError as e:
            log.error("cannot read cluster %s for the stream: %s", cluster, e)
            return
        log.info("cluster read again with a new consumer cluster=%s group=%s", cluster, self._sub.group)
        fresh = self.consumers[cluster]
        while self._reads(cluster, fresh):
            if await asyncio.to_thread(fresh.probe, 1000):
                if self._reads(cluster, fresh):
                    self._lost.pop(cluster, None)       # it answers: a later failure backs off from 1 s again
                    if cluster in self._down:
                        self._state_changed(cluster, True, "a new consumer reads the cluster")
                return
            await asyncio.sleep(PROBE_INTERVAL_S)

    def _forget(self, cluster: str) -> set[tuple[str, int]]:
        """Drop what the stream tracks of a cluster whose consumer is gone (acks of what it sent are ignored from
        now on); returns the partitions it owned."""
        for key in [k for k in self.offsets if k[0] == cluster]:
            del self.offsets[key]
        return self._assigned.pop(cluster, set())

    def _revoke(self, cluster: str, owned: set[tuple[str, int]]) -> None:
        if owned:
            self._rebalanced(Rebalanced(cluster, False, sorted(owned)))

    @property
    def group(self) -> str:
        return str(self._sub.group)

    def out_of_credit(self) -> bool:
        """Whether the application granted no more credit than the stream has used (it waits for the app)."""
        records, nbytes = self.credit.take()
        return records <= 0 or nbytes <= 0

    def lag(self) -> list[tuple[tuple[str, str, str, str], int]]:
        """((group, cluster, topic, partition), records not yet acked and committed) for every partition the stream
        reads: the end offset as its consumer last fetched it, minus the committable offset. On the loop: the
        consumers listed here are never the ones being closed (they leave the list first)."""
        out = []
        for cluster, consumer in list(self.consumers.items()):
            parts = [(t, p) for (c, t, p) in list(self.offsets) if c == cluster]
            for topic, partition, high in consumer.watermarks(parts):
                tracked = self.offsets.get((cluster, topic, partition))
                if tracked is not None and high >= 0:
                    out.append(((self.group, cluster, topic, str(partition)), max(0, high - tracked.committable())))
        return out

    def _unacked(self, cluster: str) -> int:
        return sum(p.unacked for (c, _, _), p in self.offsets.items() if c == cluster)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
