"""Prometheus metrics of a sidecar or router process: `GET /metrics` on `--metrics-listen HOST:PORT`, served by
prometheus_client's own HTTP server on a thread of its own (a scrape never waits for the event loop, nor the loop for
a scrape).

The data path only counts, in C: the producers' delivery reports add to per-cluster atomic counters (records,
bytes, failures by code, a latency bucket) with no lock and no Python object. At each scrape the collectors read those
in bulk, with the streams' and pumps' own state; nothing else runs between scrapes. The families each process
exposes are its own module's (server.py for the sidecar, router/service.py for the router); this module holds what
they share: the listener, families made from plain values, and the merging of producers' delivery counts.

Label sets are bounded by what the mapping names: clusters, router rules, and the partitions a router reads.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.errors import UsageError

log = logging.getLogger("kafka_mesh.metrics")

PREFIX = "kafka_mesh_"


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
