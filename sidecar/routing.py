"""Producer routing: one meshcore Producer per Kafka cluster, and the compilation of a Mapping into the core's
immutable RouteTable, swapped in whole for each mapping revision.

Runs on the event loop thread: compiling is quick (it builds C arrays) and a new producer connects in librdkafka's
own threads. A producer whose cluster left the mapping (or whose definition changed) is retired, and closed (with a
flush, in a worker thread) only once no RouteTable that names it is alive: a batch holds its table for as long as it
is being enqueued, so no batch can reach a closed handle.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import meshcore
from sidecar.clientconf import PRODUCER_DEFAULTS
from sidecar.errors import MappingError
from sidecar.mapping.model import DEFAULT_ROUTE, Cluster, Mapping, ProducerRoute
from sidecar.metrics import ProducerCounts, TopicLabels
from sidecar.topic_rules import TopicRulesKeeper

log = logging.getLogger("kafka_mesh.routing")

#: An overlay table holds the topics changed since the last whole table; past this many (or an eighth of the whole
#: table's topics, if more) the next change compiles the table whole again.
OVERLAY_MAX = 4096

@dataclass
class _Entry:
    cluster: Cluster
    producer: meshcore.Producer
    tables: weakref.WeakSet[meshcore.RouteTable] = field(default_factory=weakref.WeakSet)


class RouteState:
    """The routing table in force, and the producers behind it."""

    def __init__(self, delivery_timeout_ms: int, on_change: Callable[[Mapping], None] | None = None,
                 topic_rules: TopicRulesKeeper | None = None, topic_labels: TopicLabels | None = None,
                 statistics_interval_ms: int = 0) -> None:
        self._topic_rules = topic_rules
        #: The topics the core counts under a slot of their own (None: no per-topic counting, metrics off).
        self.topic_labels = topic_labels
        self._defaults = dict(PRODUCER_DEFAULTS, **{"message.timeout.ms": str(delivery_timeout_ms)})
        if statistics_interval_ms:      # a cluster's own config may still set another
            self._defaults["statistics.interval.ms"] = str(statistics_interval_ms)
        self._live: dict[str, _Entry] = {}
        self._retired: list[_Entry] = []
        #: what the delivery reports of each cluster's producers counted (monotonic across producers closed)
        self._counts = ProducerCounts()
        self._on_change = on_change
        self.mapping: Mapping | None = None
        self.table: meshcore.RouteTable | None = None
        # The last table compiled whole, what its sink indices are, and the topics changed since (an overlay's).
        self._whole: meshcore.RouteTable | None = None
        self._producers: list[meshcore.Producer] = []
        self._index: dict[str, int] = {}
        self._delta: dict[str, tuple[int, ...]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: topic -> the clusters its consumer route reads that its producers do not write yet (a move under way)
        self._read_ahead: dict[str, tuple[str, ...]] = {}
        #: Called (on the loop) with every mapping applied after the first: Subscribe streams follow it live.
        self.listeners: set[Callable[[Mapping], None]] = set()

    @property
    def revision(self) -> int:
        return -1 if self.mapping is None else self.mapping.revision

    def apply(self, mapping: Mapping) -> None:
        """Compile mapping and make it the table in force. Raises MappingError (the table in force stays) when a
        producer cannot be created from a cluster's settings.

        A mapping made from the one in force by a change of routes (Mapping.change) is compiled as an overlay of the
        topics changed since the last whole table, so a change of one route costs the same in a mapping of 10 topics
        or 100,000; the table is compiled whole again once the overlay grows past OVERLAY_MAX topics."""
        change = mapping.change
        if (change is not None and not change.default and self.mapping is not None and self._whole is not None
                and change.base == self.mapping.revision and mapping.clusters is self.mapping.clusters):
            delta = dict(self._delta)
            for topic, sinks in change.topics.items():
                delta[topic] = () if sinks is None else tuple(self._index[s] for s in sinks)
            if len(delta) <= max(OVERLAY_MAX, self._whole.topic_count // 8):
                self._overlay(mapping, delta, change.topics)
                return
        self._compile(mapping)

    def _overlay(self, mapping: Mapping, delta: dict[str, tuple[int, ...]],
                 changed: dict[str, tuple[str, ...] | None]) -> None:
        assert self._whole is not None
        groups: dict[tuple[int, ...], list[str]] = {}
        for topic, sinks in delta.items():
            groups.setdefault(sinks, []).append(topic)
        default = mapping.default_sinks
        slots = self._slots(sorted(t for t, sinks in changed.items() if sinks))
        try:
            table = meshcore.build_route_table(mapping.revision, self._producers,
                                               [(topics, list(sinks)) for sinks, topics in groups.items()],
                                               [self._index[s] for s in default] if default else None,
                                               base=self._whole, slots=slots)
        except meshcore.CoreError as e:
            raise MappingError(f"producer: {e}") from e
        routed: dict[str, list[str]] = {}
        for topic, names in changed.items():
            for sink in names or ():
                routed.setdefault(sink, []).append(topic)
        self._delta = delta
        self._install(mapping, self._live, table, routed)
        log.info("mapping applied revision=%d changed_topics=%d overlay_topics=%d", mapping.revision, len(changed),
                 len(delta))

    def _compile(self, mapping: Mapping) -> None:
        # A producer for every registered cluster, used or not, so that a route switched to another cluster (a
        # topic move) finds its producer connected and its idempotent producer id acquired.
        used = sorted(set(mapping.clusters) | {s for sinks in mapping.routes.values() for s in sinks})
        created: dict[str, _Entry] = {}
        try:
            for name in used:
                cluster = mapping.clusters[name]
                entry = self._live.get(name)
                if entry is None or entry.cluster != cluster:
                    config = {**self._defaults, **cluster.config, "bootstrap.servers": cluster.bootstrap}
                    try:
                        created[name] = _Entry(cluster, meshcore.create_producer(name, config))
                    except meshcore.ConfigError as e:
                        raise MappingError(f"clusters.{name}.config: {e}") from e
            entries = {name: created.get(name) or self._live[name] for name in used}
            index = {name: i for i, name in enumerate(used)}
            groups: dict[tuple[str, ...], list[str]] = {}
            for key, sinks in mapping.routes.items():
                if key != DEFAULT_ROUTE:
                    groups.setdefault(sinks, []).extend(ProducerRoute.topics_of(key))
            default = mapping.default_sinks
            producers = [entries[n].producer for n in used]
            slots = self._slots(sorted(t for topics in groups.values() for t in topics))
            try:
                table = meshcore.build_route_table(mapping.revision, producers,
                                                   [(topics, [index[s] for s in sinks])
                                                    for sinks, topics in groups.items()],
                                                   [index[s] for s in default] if default else None, slots=slots)
            except meshcore.CoreError as e:
                raise MappingError(f"producer: {e}") from e
        except BaseException:
            for entry in created.values():
                entry.producer.close(flush_timeout_ms=0)
            raise
        for name, entry in self._live.items():
            if entries.get(name) is not entry:
                self._retired.append(entry)
        self._whole, self._delta, self._index, self._producers = table, {}, index, producers
        routed: dict[str, list[str]] = {}
        for sinks, topics in groups.items():
            for sink in sinks:
                routed.setdefault(sink, []).extend(topics)
        self._install(mapping, entries, table, routed)
        log.info("mapping applied revision=%d clusters=%d routes=%d default=%s", mapping.revision, len(used),
                 len(mapping.routes), ",".join(default) if default else "-")

    def _slots(self, named: list[str]) -> meshcore.TopicSlots | None:
        """The per-topic counters' slots, the topics the mapping names admitted (while the limit allows)."""
        if self.topic_labels is None:
            return None
        if len(self.topic_labels) >= self.topic_labels.limit:
            return self.topic_labels.slots
        return self.topic_labels.admit(named)

    def _install(self, mapping: Mapping, entries: dict[str, _Entry], table: meshcore.RouteTable,
                 routed: dict[str, list[str]]) -> None:
        # When the last batch routed by this table is done with it, retired producers it named may close.
        weakref.finalize(table, self._table_freed)
        for entry in entries.values():
            entry.tables.add(table)
        self._live = entries
        if self._topic_rules is not None:
            self._topic_rules.follow({name: (e.cluster, e.producer) for name, e in entries.items()}, routed)
        previous = self.mapping
        self.table = table
        self.mapping = mapping
        self._hold_targets(mapping, previous)
        self.reap()
        for listener in ([self._on_change] if self._on_change is not None else []) + list(self.listeners):
            try:
                listener(mapping)
            except Exception:       # one stream's trouble must not stop the mapping reaching the others
                log.exception("a mapping listener failed")

    def _hold_targets(self, mapping: Mapping, previous: Mapping | None) -> None:
        """Each producer keeps the handles of the topics a move is bringing to its cluster (Mapping.read_ahead),
        from the move's first step on, so that their first records after the producer switch do not wait for
        librdkafka to look up the topic's partition leaders."""
        change = mapping.change
        if change is not None and previous is not None and change.base == previous.revision:
            topics = change.consumer | change.topics.keys()
            if not topics and not change.default:
                return
            ahead = dict(self._read_ahead)
            for topic in (ahead.keys() | topics) if change.default else topics:
                clusters = mapping.read_ahead(topic)
                if clusters:
                    ahead[topic] = clusters
                else:
                    ahead.pop(topic, None)
            if ahead == self._read_ahead:
                return
        else:       # compiled whole: a producer may be new
            ahead = {t: c for t in mapping.consumer if (c := mapping.read_ahead(t))}
        self._read_ahead = ahead
        held: dict[str, list[str]] = {}
        for topic, clusters in ahead.items():
            for cluster in clusters:
                held.setdefault(cluster, []).append(topic)
        for name, entry in self._live.items():
            try:
                entry.producer.hold_topics(held.get(name, ()))
            except meshcore.HandleClosedError:
                pass            # closed at shutdown meanwhile

    def producers(self) -> dict[str, meshcore.Producer]:
        """The producer in use for each cluster."""
        return {name: entry.producer for name, entry in list(self._live.items())}

    def outstanding(self) -> dict[str, int]:
        """Records each cluster's producer holds unacknowledged (queued or in flight), by cluster."""
        out: dict[str, int] = {}
        for name, entry in sorted(self._live.items()):
            try:
                out[name] = entry.producer.outstanding
            except meshcore.HandleClosedError:
                pass            # closed at shutdown meanwhile
        return out

    def _table_freed(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return      # freed outside the loop (at exit): nothing to schedule
        loop.call_soon(self.reap)

    def reap(self) -> None:
        """Close every retired producer that no live table names any more (in a worker thread: close flushes)."""
        keep = []
        for entry in self._retired:
            if len(entry.tables):
                keep.append(entry)
                continue
            self._counts.closing(entry.producer)
            task = asyncio.get_running_loop().create_task(self._close(entry))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._retired = keep

    async def _close(self, entry: _Entry) -> None:
        lost = await asyncio.to_thread(entry.producer.close, int(self._defaults["message.timeout.ms"]))
        self._counts.closed(entry.producer)
        log.info("producer closed cluster=%s undelivered=%d", entry.cluster.name, lost)

    def delivery_stats(self) -> dict[str, dict[str, Any]]:
        """Per cluster, what the delivery reports of its producers counted since the start (Producer.
        delivery_stats: acknowledged, failed, bytes, failures by code, latency buckets). Read from the core's
        counters in bulk."""
        return self._counts.delivery([e.producer for e in list(self._live.values()) + self._retired])

    def topic_stats(self) -> dict[str, dict[int, tuple[int, int, int]]]:
        """Per cluster, per topic slot (topic_labels), what its producers' delivery reports counted since the start:
        (records delivered, bytes delivered, records failed)."""
        return self._counts.topics([e.producer for e in list(self._live.values()) + self._retired])

    async def close(self, flush_timeout_ms: int) -> int:
        """Flush and close every producer; returns the records still undelivered (lost)."""
        self.table = self._whole = None
        entries = list(self._live.values()) + self._retired
        self._live, self._retired = {}, []
        await asyncio.gather(*self._closing, return_exceptions=True)
        lost = await asyncio.gather(*(asyncio.to_thread(e.producer.close, flush_timeout_ms) for e in entries))
        return sum(lost)
