"""Prometheus metrics of a sidecar or router process: `GET /metrics` on `--metrics-listen HOST:PORT`, served by
prometheus_client's own HTTP server on a thread of its own (a scrape never waits for the event loop, nor the loop for
a scrape).

Nothing is counted on the data path for this: at each scrape the collectors read what the process keeps anyway, in
bulk (the core's atomic counters per producer, the streams' and pumps' own state), so metrics cost nothing between
scrapes. The families each process exposes are its own module's (server.py for the sidecar, router/service.py for
the router); this module holds what they share: the listener, and families made from plain values.

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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
    """One metric family, from values read at scrape time: samples are (label values, value)."""

    name: str
    help: str
    kind: str                                   # "counter" or "gauge"
    labels: tuple[str, ...]
    read: Callable[[], Iterable[tuple[tuple[str, ...], float]]]

    def collect(self) -> Metric:
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
