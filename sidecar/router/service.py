"""`kafka-mesh router`: copies topics from source (fronting) clusters to sink (consumer) clusters by the mapping's
router rules, live.

The process supervises; the records never pass through Python. It follows the mapping (etcd, or a file) with the
sidecar's MappingSource; at each revision it compiles the rules of its name (plan.py) into one native table per source
cluster, keeps one producer per sink cluster and one pump (pump.py: a consumer in the router's group, a thread) per
source cluster, and swaps each pump's table at its next poll. Several processes of one name share the source
partitions through the group; each publishes what it does under routers/NAME/INSTANCE in etcd, under a lease, for
`kafka-mesh status`.

Threads: everything here runs on the event loop, except the pumps' threads and the blocking librdkafka calls (a
pump's stop, a producer's close, metadata requests) sent to worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

import meshcore
from sidecar import __version__
from sidecar.clientconf import PRODUCER_DEFAULTS
from sidecar.config import RouterSettings
from sidecar.consume import consumers
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.control.source import MappingSource
from sidecar.errors import EtcdError, MappingError
from sidecar.mapping.model import Cluster, Mapping
from sidecar.metrics import ClientStatistics, Family, MetricsServer, ProducerCounts
from sidecar.router import plan as plan_mod
from sidecar.router.pump import Pump, PumpSettings

log = logging.getLogger("kafka_mesh.router")

#: The router's producers, over the mesh's defaults: a record waits for a target for as long as the target is down
#: (message.timeout.ms 0: its source partition pauses meanwhile, and nothing is dropped), in larger batches than an
#: app's (throughput over latency), and never to a topic the router made by writing to it: a target topic is the
#: operator's to create (`kafka-mesh topic create`, partitions balanced), and one created by a broker's
#: auto.create.topics.enable would get the broker's default partition count, which decides where keys go.
ROUTER_PRODUCER = {"message.timeout.ms": "0", "linger.ms": "20", "allow.auto.create.topics": "false",
                   # What a sink's producer holds for every source at once: past it a run fails at once and is read
                   # again after a backoff (a pump never waits on a full queue), so a sink that is down holds at
                   # most this much of the router's memory.
                   "queue.buffering.max.kbytes": "262144", "queue.buffering.max.messages": "1000000"}
#: The router's consumers: a topic a rule starts reading is copied from its beginning where the group has no offset,
#: and each consumer prefetches at most 16 MiB (librdkafka's default: 64 MiB), fetching again as soon as it is under
#: that (librdkafka waits fetch.queue.backoff.ms, 1 s by default, which turns a copy into stop-and-go).
ROUTER_CONSUMER_RESET = "earliest"
ROUTER_PREFETCH = {"queued.max.messages.kbytes": "16384", "fetch.queue.backoff.ms": "1"}
#: How often the partition counts of the target topics are read again (a keyless record keeps its source partition
#: where the target has it), and how long a cluster has to answer.
PARTITIONS_EVERY_S = 30.0
METADATA_TIMEOUT_S = 3.0
#: How often the status entry is rewritten, and a failed pump rebuilt.
STATUS_EVERY_S = 2.0
REBUILD_AFTER_S = 2.0


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._pump_settings = PumpSettings(settings.max_inflight_records, settings.max_inflight_bytes,
                                           settings.drain_timeout_s)
        self._mapping: Mapping | None = None
        self._plan: plan_mod.Plan | None = None
        self._producers: dict[str, tuple[Cluster, meshcore.Producer]] = {}
        #: librdkafka's statistics for the metrics (a cluster's own config may still set another interval)
        self._statistics = ({"statistics.interval.ms": str(settings.statistics_interval_ms)}
                            if settings.metrics_listen and settings.statistics_interval_ms else {})
        self._pumps: dict[str, tuple[Cluster, Pump]] = {}
        self._partitions: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty = False         # the last reconcile failed: the upkeep tries again
        self._counts = ProducerCounts()                         # metrics stay monotonic across producers closed
        self.started = time.time()

    # -- the mapping ---------------------------------------------------------------------------------------------

    def apply(self, mapping: Mapping) -> None:
        """Follow a mapping revision (called on the loop by the mapping source). Raises MappingError when a cluster's
        settings cannot make a client: the mapping in force stays."""
        rules = mapping.rules_for(self._settings.name)
        missing = {(s, t) for s, t in plan_mod.plan(mapping, self._settings.name, {}).targets()
                   if (s, t) not in self._partitions}
        if missing:
            # Blocks the loop for a moment (the loop has nothing else to do meanwhile): keyless records are placed by
            # these counts from their first record on.
            self._partitions.update(self._read_partitions(mapping, missing))
        self._reconcile(mapping)
        if not rules:
            named = sorted({r.router for r in mapping.router.values()})
            log.warning("the mapping has no router rule for router %r (its rules name: %s): nothing to copy",
                        self._settings.name, ", ".join(named) or "no router")
        log.info("mapping applied revision=%d router=%s rules=%d sources=%d sinks=%d", mapping.revision,
                 self._settings.name, len(rules), len(self._plan.sources) if self._plan else 0,
                 len(self._plan.sinks) if self._plan else 0)

    def _read_partitions(self, mapping: Mapping, targets: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        from sidecar.manage.topics import admin

        out: dict[tuple[str, str], int] = {}
        for sink in sorted({s for s, _ in targets}):
            cluster = mapping.clusters.get(sink)
            if cluster is None:
                continue
            try:
                topics = admin(cluster).list_topics(timeout=METADATA_TIMEOUT_S).topics
            except Exception as e:          # unreachable: placed by the producer until the next read
                log.warning("cannot read the target topics' partition counts sink=%s error=%s", sink, e)
                continue
            for s, topic in targets:
                meta = topics.get(topic) if s == sink else None
                if meta is not None and meta.error is None:
                    out[(sink, topic)] = len(meta.partitions)
        return out

    def _reconcile(self, mapping: Mapping) -> None:
        """Make producers, tables and pumps what mapping's rules need. The producers are made first: a cluster whose
        settings are refused leaves everything as it was."""
        plan = plan_mod.plan(mapping, self._settings.name, self._partitions)
        made: dict[str, tuple[Cluster, meshcore.Producer]] = {}
        try:
            for sink in plan.sinks:
                cluster = mapping.clusters[sink]
                have = self._producers.get(sink)
                if have is None or have[0] != cluster:
                    config = {**PRODUCER_DEFAULTS, **ROUTER_PRODUCER, **self._statistics, **cluster.config,
                              "bootstrap.servers": cluster.bootstrap}
                    try:
                        made[sink] = (cluster, meshcore.create_producer(sink, config))
                    except meshcore.ConfigError as e:
                        raise MappingError(f"clusters.{sink}: {e}") from e
        except BaseException:
            for _, producer in made.values():
                producer.close(0)
            raise
        retired = [self._producers[s][1] for s in self._producers if s in made or s not in plan.sinks]
        for sink in [s for s in self._producers if s not in plan.sinks]:
            del self._producers[sink]
        self._producers.update(made)
        producers = [self._producers[sink][1] for sink in plan.sinks]
        self._mapping = mapping
        try:
            self._follow(mapping, plan, producers)
        finally:
            for producer in retired:
                # After the pumps took their new tables: a record still routed to it fails and is read again.
                self._spawn(self._close_producer(producer))

    def _follow(self, mapping: Mapping, plan: plan_mod.Plan, producers: list[meshcore.Producer]) -> None:
        """Give each source's pump its new table (a new pump for a new or redefined source), stop the others."""
        for source, sp in plan.sources.items():
            table = meshcore.build_router_table(source, plan.revision, producers, list(sp.rules), sp.programs)
            cluster = mapping.clusters[source]
            have_pump = self._pumps.get(source)
            if have_pump is not None and have_pump[0] == cluster and have_pump[1].alive:
                have_pump[1].set_table(table, sp.topics)
                continue
            if have_pump is not None:
                self._retire_pump(have_pump[1])
            self._start_pump(cluster, table, sp.topics)
        for source in [s for s in self._pumps if s not in plan.sources]:
            self._retire_pump(self._pumps.pop(source)[1])
        self._plan = plan

    def _start_pump(self, cluster: Cluster, table: meshcore.RouterTable, topics: list[str]) -> None:
        consumer = consumers.create(cluster, self._settings.group, ROUTER_CONSUMER_RESET,
                                    self._settings.commit_interval_ms, ROUTER_PREFETCH)
        try:
            pump = Pump(cluster.name, consumer, table, topics, self._pump_settings)
        except BaseException:
            consumer.close()
            raise
        pump.start()
        self._pumps[cluster.name] = (cluster, pump)
        log.info("reading source cluster=%s group=%s topics=%d", cluster.name, self._settings.group, len(topics))

    def _retire_pump(self, pump: Pump) -> None:
        self._spawn(asyncio.to_thread(pump.stop))

    async def _close_producer(self, producer: meshcore.Producer) -> None:
        self._counts.closing(producer)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(producer.close, int(self._settings.drain_timeout_s * 1000))
        self._counts.closed(producer)

    def delivery_stats(self) -> dict[str, dict[str, Any]]:
        """Per sink cluster, what its producers' delivery reports counted since the start."""
        return self._counts.delivery([p for _, p in list(self._producers.values())])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- upkeep --------------------------------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        """Rebuild a pump that failed (a fatal consumer error), and read the target partition counts again."""
        next_partitions = time.monotonic() + PARTITIONS_EVERY_S
        while True:
            await asyncio.sleep(REBUILD_AFTER_S)
            failed = [source for source, (_, pump) in self._pumps.items() if not pump.alive]
            for source in failed:
                _, pump = self._pumps.pop(source)
                log.warning("router pump stopped, reading the source again with a new consumer source=%s error=%s",
                            source, pump.error)
                await asyncio.to_thread(pump.stop)
            changed = bool(failed)
            if time.monotonic() >= next_partitions and self._mapping is not None and self._plan is not None:
                next_partitions = time.monotonic() + PARTITIONS_EVERY_S
                counts = await asyncio.to_thread(self._read_partitions, self._mapping, self._plan.targets())
                if any(self._partitions.get(k) != v for k, v in counts.items()):
                    self._partitions.update(counts)
                    changed = True
            if (changed or self._dirty) and self._mapping is not None:
                try:
                    self._reconcile(self._mapping)
                    self._dirty = False
                except Exception as e:      # never let the upkeep die: it rebuilds failed pumps
                    self._dirty = True
                    log.error("router cannot apply the mapping in force (retrying in %.0f s): %s", REBUILD_AFTER_S, e)

    def document(self) -> dict[str, Any]:
        rules: dict[str, dict[str, int]] = {}
        sources: dict[str, Any] = {}
        for source, (_, pump) in sorted(self._pumps.items()):
            for rule, (n_in, n_out, filtered, dead) in pump.counts().items():
                r = rules.setdefault(rule, {"in": 0, "out": 0, "filtered": 0, "dead_lettered": 0})
                r["in"] += n_in
                r["out"] += n_out
                r["filtered"] += filtered
                r["dead_lettered"] += dead
            sources[source] = {**pump.snapshot, "error": pump.error}
        plan = self._plan
        return {
            "router": self._settings.name, "instance": self._settings.instance, "pid": os.getpid(),
            "version": __version__, "revision": self._mapping.revision if self._mapping else -1,
            "group": self._settings.group, "started": int(self.started), "at": time.time(),
            "rules": {r.name: {"topics": list(r.topics), "from": list(r.sources), "where": list(r.sinks),
                               **rules.get(r.name, {"in": 0, "out": 0, "filtered": 0, "dead_lettered": 0})}
                      for r in (plan.rules if plan else ())},
            "sources": sources,
        }

    async def _report(self) -> None:
        """Keep routers/NAME/INSTANCE in etcd under a lease, rewritten every STATUS_EVERY_S."""
        ttl = self._settings.status_ttl_s
        key = self._keys.router(self._settings.name, self._settings.instance)
        while True:
            try:
                async with Etcd(self._settings.etcd or "", timeout=self._settings.etcd_timeout_s) as etcd:
                    lease = await etcd.lease(ttl)
                    try:
                        while True:
                            await etcd.put(key, json.dumps(self.document()).encode(), lease=lease)
                            await asyncio.sleep(min(STATUS_EVERY_S, ttl / 3))
                            await etcd.refresh(lease)
                    except asyncio.CancelledError:
                        with contextlib.suppress(Exception):
                            await asyncio.shield(etcd.revoke(lease))
                        raise
            except asyncio.CancelledError:
                raise
            except EtcdError as e:
                log.debug("router status registration interrupted error=%s", e)
            await asyncio.sleep(1.0)

    def families(self, source: MappingSource) -> list[Family]:
        """The router's metrics (README, "Metrics"): per rule, and per source partition it reads."""
        def rules(index: int) -> list[tuple[tuple[str, ...], float]]:
            totals: dict[str, float] = {}
            for _, pump in list(self._pumps.values()):
                for rule, counts in pump.counts().items():
                    totals[rule] = totals.get(rule, 0) + counts[index]
            return [((rule,), n) for rule, n in sorted(totals.items())]

        def per_source(key: str) -> list[tuple[tuple[str, ...], float]]:
            return [((name,), float(len(p.snapshot.get(key) or ()) if key != "skipped" else p.snapshot.get(key, 0)))
                    for name, (_, p) in sorted(self._pumps.items())]

        def lag() -> list[tuple[tuple[str, ...], float]]:
            out: list[tuple[tuple[str, ...], float]] = []
            for name, (_, pump) in sorted(self._pumps.items()):
                for part, n in (pump.snapshot.get("lag") or {}).items():
                    topic, _, rest = part.rpartition("[")
                    out.append(((name, topic, rest.rstrip("]")), float(n)))
            return out

        return [
            Family("mapping_revision", "The mapping revision in force (0: from a file).", "gauge", (),
                   lambda: [((), self._mapping.revision if self._mapping else -1)]),
            Family("etcd_connected", "1 while the mapping watch is connected to etcd (0 with a mapping file).",
                   "gauge", (), lambda: [((), float(source.connected.is_set()))]),
            Family("records_delivered", "Records a sink cluster acknowledged.", "counter", ("cluster",),
                   lambda: [((c,), s["delivered"]) for c, s in sorted(self.delivery_stats().items())]),
            Family("records_failed", "Records a sink cluster did not acknowledge (their runs are read again).",
                   "counter", ("cluster",),
                   lambda: [((c,), s["failed"]) for c, s in sorted(self.delivery_stats().items())]),
            Family("delivery_latency_seconds", "From a run routed to each record's acknowledgement, by sink.",
                   "histogram", ("cluster",),
                   lambda: [((c,), (s["latency"], s["latency_sum_s"]))
                            for c, s in sorted(self.delivery_stats().items())],
                   meshcore.LATENCY_BOUNDS_S),
            Family("router_records_in", "Records a rule read (each record once per rule that reads its topic).",
                   "counter", ("rule",), lambda: rules(0)),
            Family("router_records_out", "Records a rule sent to its sinks (again when a partition is read again).",
                   "counter", ("rule",), lambda: rules(1)),
            Family("router_records_filtered", "Records a rule's filter or sample left out.", "counter", ("rule",),
                   lambda: rules(2)),
            Family("router_records_dead_lettered", "Records a rule's steps could not process, sent to its "
                   "dead-letter topic.", "counter", ("rule",), lambda: rules(3)),
            Family("router_lag", "Records of a source partition not yet copied and committed (end offset as last "
                   "fetched, minus the committable offset).", "gauge", ("source", "topic", "partition"), lag),
            Family("router_partitions_paused", "Source partitions paused: a target holds their records back.",
                   "gauge", ("source",), lambda: per_source("paused")),
            Family("router_partitions_retrying", "Source partitions read again because a target refused a record.",
                   "gauge", ("source",), lambda: per_source("failing")),
            Family("router_records_skipped", "Errors the source gave instead of records (a batch that does not "
                   "decode): their records were not copied.", "counter", ("source",),
                   lambda: per_source("skipped")),
            *ClientStatistics(lambda: {n: p for n, (_, p) in list(self._producers.items())}).families(),
        ]

    # -- run -----------------------------------------------------------------------------------------------------

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        source = MappingSource(self._settings, self.apply)
        await source.start()
        metrics = None
        if self._settings.metrics_listen:
            metrics = MetricsServer(self._settings.metrics_listen, self.families(source))
            metrics.start()
        background = [loop.create_task(self._upkeep())]
        if self._settings.etcd is not None and self._settings.mapping_file is None:
            background.append(loop.create_task(self._report()))
        log.info("router serving name=%s instance=%s group=%s revision=%d", self._settings.name,
                 self._settings.instance, self._settings.group, source.applied_revision)
        await stop.wait()
        log.info("router stopping name=%s instance=%s", self._settings.name, self._settings.instance)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await source.stop()
        pumps = [pump for _, pump in self._pumps.values()]
        self._pumps.clear()
        # Each pump waits for its records in flight (drain_timeout_s), then commits and leaves the group.
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in pumps))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        producers = [p for _, p in self._producers.values()]
        self._producers.clear()
        await asyncio.gather(*(asyncio.to_thread(p.close, int(self._settings.drain_timeout_s * 1000))
                               for p in producers))
        if metrics is not None:
            metrics.stop()
        return 0


def run(settings: RouterSettings) -> int:
    return asyncio.run(Router(settings).serve())
