"""Prometheus metrics of a sidecar or router process: `GET /metrics` on `--metrics-listen HOST:PORT`, served by
prometheus_client's own HTTP server on a thread of its own (a scrape never waits for the event loop, nor the loop for
a scrape).

The data path only counts, in C: the producers' delivery reports add to per-cluster atomic counters (records,
bytes, failures by code, a latency bucket) with no lock and no Python object. At each scrape the collectors read those
in bulk, with the streams' and pumps' own state; nothing else runs between scrapes. The families each process
exposes are its own module's (server.py for the sidecar, router/service.py for the router); this module holds what
they share: the listener, families made from plain values, and the merging of producers' delivery counts.

Label sets are bounded by what the mapping names: clusters, router rules, the partitions a router reads, and topics
the mapping's producer routes name (TopicLabels: up to a limit, the rest under __default__).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

import meshcore
from sidecar.errors import UsageError

log = logging.getLogger("kafka_mesh.metrics")

PREFIX = "kafka_mesh_"

#: The topic label of every topic without one of its own: routed by the default route, not named by the mapping, or
#: named past the limit.
DEFAULT_TOPIC = "__default__"


def parse_listen(spec: str, flag: str = "--metrics-listen") -> tuple[str, int]:
    """HOST:PORT (or :PORT, meaning 127.0.0.1) of a listener (metrics, HTTP produce): loopback by default, any other
    address when given on purpose. flag names the setting in refusals."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"invalid {flag} {spec!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UsageError(f"invalid {flag} {spec!r}: the host must be an IP address or localhost") from None
    return host, int(port)


@dataclass
class Family:
    """One metric family, from values read at scrape time: samples are (label values, value); for a histogram the
    value is (counts per bucket, the last above every bound, sum), over bounds."""

    name: str
    help: str
    kind: str                                   # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    read: Callable[[], Iterable[tuple[tuple[str, ...], Any]]]
    bounds: tuple[float, ...] = ()

    def collect(self) -> Metric:
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(PREFIX + self.name, self.help, labels=list(self.labels))
            for values, (counts, total) in self.read():
                running, buckets = 0, []
                for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                    running += count
                    buckets.append((bound, running))
                histogram.add_metric(list(values), buckets, total)
            return histogram
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(PREFIX + self.name, self.help, labels=list(self.labels))
        for values, value in self.read():
            family.add_metric(list(values), value)
        return family


class _Families(Collector):
    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            try:
                yield family.collect()
            except Exception:           # one family's trouble must not fail the scrape of the others
                log.exception("metrics family %s failed", family.name)


class MetricsServer:
    """The /metrics listener of one process."""

    def __init__(self, spec: str, families: list[Family]) -> None:
        self.host, self.port = parse_listen(spec)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(families))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, self.host, registry=self.registry)
        except OSError as e:
            raise UsageError(f"cannot serve metrics on {self.host}:{self.port}: {e.strerror}") from e
        log.info("metrics served url=http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TopicLabels:
    """Which topics the metrics name: those the mapping's producer routes name, the first `limit` of them (in the
    order mappings named them: sorted within one), each under a slot of the core's per-topic counters that it keeps
    for the life of the process, so its counters stay monotonic when it leaves the mapping and comes back. Every other
    topic counts under DEFAULT_TOPIC. The series a topic family can have are thus at most (limit + 1), times the
    clusters for the per-cluster ones, however many topics the apps write."""

    def __init__(self, limit: int) -> None:
        if not 0 <= limit < meshcore.MAX_TOPIC_SLOT:
            raise UsageError(f"invalid --metrics-topics {limit}: 0 to {meshcore.MAX_TOPIC_SLOT - 1}")
        self.limit = limit
        self._slots: dict[str, int] = {}
        self._names: dict[int, str] = {1: DEFAULT_TOPIC}
        self.slots = meshcore.build_topic_slots({})

    def admit(self, topics: Iterable[str]) -> meshcore.TopicSlots:
        """Give the topics not yet named a slot each, while the limit allows; returns the slots now in force."""
        added = False
        for topic in topics:
            if len(self._slots) >= self.limit:
                break
            if topic not in self._slots:
                self._slots[topic] = slot = len(self._slots) + 2       # 0: not counted, 1: DEFAULT_TOPIC
                self._names[slot] = topic
                added = True
        if added:
            self.slots = meshcore.build_topic_slots(self._slots)
        return self.slots

    def name(self, slot: int) -> str:
        return self._names.get(slot, DEFAULT_TOPIC)

    def __len__(self) -> int:
        return len(self._slots)


class ProducerCounts:
    """What the delivery reports of a process's producers counted, per cluster, monotonic across producers retired
    and closed (a cluster's definition changed, a sink left): a producer being closed is read live until its counts
    are merged with those of the closed ones, under a lock the scrape thread shares, so a scrape counts it once,
    never twice or not at all. Producers are named by their cluster."""

    def __init__(self) -> None:
        self._closed: dict[str, dict[str, Any]] = {}
        self._closed_topics: dict[str, dict[int, tuple[int, int, int]]] = {}
        self._closing: list[Any] = []
        self._lock = threading.Lock()

    def closing(self, producer: Any) -> None:
        """producer is leaving use: it is read live until closed() merges it."""
        with self._lock:
            self._closing.append(producer)

    def closed(self, producer: Any) -> None:
        with self._lock:
            name = producer.name
            self._closed[name] = merge_stats(self._closed.get(name), producer.delivery_stats())
            self._closed_topics[name] = merge_topic_stats(self._closed_topics.get(name, {}), producer.topic_stats())
            if producer in self._closing:
                self._closing.remove(producer)

    def delivery(self, live: list[Any]) -> dict[str, dict[str, Any]]:
        """Per cluster, Producer.delivery_stats() of the closed, closing and live producers added up."""
        with self._lock:
            out = dict(self._closed)
            for producer in _each(live + self._closing):
                out[producer.name] = merge_stats(out.get(producer.name), producer.delivery_stats())
        return out

    def topics(self, live: list[Any]) -> dict[str, dict[int, tuple[int, int, int]]]:
        """Per cluster, Producer.topic_stats() of the closed, closing and live producers added up, slot by slot."""
        with self._lock:
            out = dict(self._closed_topics)
            for producer in _each(live + self._closing):
                out[producer.name] = merge_topic_stats(out.get(producer.name, {}), producer.topic_stats())
        return out


def _each(producers: list[Any]) -> list[Any]:
    """Each producer once: one moving from retired to closing may be listed in both for a moment."""
    return list({id(p): p for p in producers}.values())


def merge_topic_stats(a: dict[int, tuple[int, int, int]], b: dict[int, tuple[int, int, int]]
                      ) -> dict[int, tuple[int, int, int]]:
    """Two Producer.topic_stats() added up, slot by slot."""
    out = dict(a)
    for slot, (x, y, z) in b.items():
        p, q, r = out.get(slot, (0, 0, 0))
        out[slot] = (p + x, q + y, r + z)
    return out


class ClientStatistics:
    """librdkafka's statistics of each producer (statistics.interval.ms), as metrics families: the last each handed
    out (Producer.statistics()), parsed at scrape time, never on the data path. producers() gives the producers in
    use by cluster name; a cluster that left is forgotten."""

    def __init__(self, producers: Callable[[], dict[str, Any]]) -> None:
        self._producers = producers
        self._last: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def read(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            producers = self._producers()
            for name in list(self._last):
                if name not in producers:
                    del self._last[name]
            for name, producer in producers.items():
                try:
                    raw = producer.statistics()
                except Exception:       # closed meanwhile
                    continue
                if raw:
                    try:
                        self._last[name] = json.loads(raw)
                    except ValueError:
                        log.warning("librdkafka statistics of cluster %s do not parse as JSON", name)
            return dict(self._last)

    def _per_client(self, key: str, scale: float = 1.0) -> list[tuple[tuple[str, ...], float]]:
        return [((name,), float(stats.get(key, 0)) * scale) for name, stats in sorted(self.read().items())]

    def _per_broker(self, read: Callable[[dict[str, Any]], float | None]) -> list[tuple[tuple[str, ...], float]]:
        out: list[tuple[tuple[str, ...], float]] = []
        for name, stats in sorted(self.read().items()):
            for broker in (stats.get("brokers") or {}).values():
                value = read(broker)
                if broker.get("nodeid", -1) >= 0 and value is not None:     # not the bootstrap servers' own entries
                    out.append(((name, str(broker["nodeid"])), float(value)))
        return out

    def families(self) -> list[Family]:
        def rtt(quantile: str) -> Callable[[dict[str, Any]], float | None]:
            def read(broker: dict[str, Any]) -> float | None:
                window = broker.get("rtt") or {}
                # Over the last interval (microseconds); none when no request went out in it (not a 0 s trip).
                return float(window.get(quantile, 0)) / 1e6 if window.get("cnt") else None
            return read

        return [
            Family("librdkafka_queue_messages", "Records a cluster's producer holds (queued or in flight), as "
                   "librdkafka's last statistics counted them (msg_cnt).", "gauge", ("cluster",),
                   lambda: self._per_client("msg_cnt")),
            Family("librdkafka_queue_bytes", "Bytes of those records (msg_size).", "gauge", ("cluster",),
                   lambda: self._per_client("msg_size")),
            Family("librdkafka_statistics_age_seconds", "How old librdkafka's last statistics of a cluster's producer "
                   "are.", "gauge", ("cluster",),
                   lambda: [((n,), max(0.0, time.time() - float(s.get("time", 0))))
                            for n, s in sorted(self.read().items())]),
            Family("librdkafka_broker_up", "1 while the producer's connection to a broker is up.", "gauge",
                   ("cluster", "broker"), lambda: self._per_broker(lambda b: float(b.get("state") == "UP"))),
            Family("librdkafka_broker_rtt_avg_seconds", "A broker's round-trip time, averaged over the last "
                   "statistics interval (absent when no request went out in it).", "gauge", ("cluster", "broker"),
                   lambda: self._per_broker(rtt("avg"))),
            Family("librdkafka_broker_rtt_p99_seconds", "A broker's round-trip time, 99th percentile over the last "
                   "statistics interval.", "gauge", ("cluster", "broker"), lambda: self._per_broker(rtt("p99"))),
            Family("librdkafka_broker_requests_waiting", "Requests sent to a broker and awaiting its response "
                   "(waitresp_cnt).", "gauge", ("cluster", "broker"),
                   lambda: self._per_broker(lambda b: b.get("waitresp_cnt", 0))),
            Family("librdkafka_broker_requests_queued", "Requests queued for a broker, not yet sent (outbuf_cnt).",
                   "gauge", ("cluster", "broker"), lambda: self._per_broker(lambda b: b.get("outbuf_cnt", 0))),
        ]


def scrape(registry: CollectorRegistry) -> bytes:
    """The text a scrape returns (for tests and tools)."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry))


def merge_stats(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """Two Producer.delivery_stats() added up (either may be None)."""
    if a is None or b is None:
        return dict(a or b or {})
    return {"delivered": a["delivered"] + b["delivered"], "failed": a["failed"] + b["failed"],
            "bytes": a["bytes"] + b["bytes"],
            "codes": {k: a["codes"].get(k, 0) + b["codes"].get(k, 0) for k in a["codes"].keys() | b["codes"].keys()},
            "latency": [x + y for x, y in zip(a["latency"], b["latency"], strict=True)],
            "latency_sum_s": a["latency_sum_s"] + b["latency_sum_s"]}
