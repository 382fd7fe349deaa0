"""The cost of metrics on the produce path: two sidecar processes on the same topic, one serving /metrics and
scraped five times a second (far harsher than Prometheus's usual 15-60 s), one without a metrics listener; rounds of
200 Produce requests of 1,000 records (100-byte values, a key each) on one gRPC stream alternate between them, and
the median of the per-pair ratios (throughput with metrics / without) is the figure. The core's per-delivery
counters (records, bytes, failures by code, a latency bucket) are compiled in and count in both: what differs is the
listener and the scrapes. Nothing here asserts a time.

Run: python -m pytest benchmarks/test_metrics_cost.py --benchmark-only -s
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request
import uuid
from typing import Any

import grpc
import pytest

import meshcore
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

BATCH = 1000
BATCHES = 200
PAIRS = 15
#: How often the sidecar with metrics is scraped: far more often than Prometheus would (15-60 s), to make any cost show.
SCRAPE_S = 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _round(target: str, requests: list[bytes]) -> float:
    with grpc.insecure_channel(target) as channel:
        produce = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")
        t0 = time.perf_counter()
        assert sum(1 for _ in produce(iter(requests))) == len(requests)
        return time.perf_counter() - t0


def test_metrics_cost(benchmark: Any, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> None:
    ns = new_namespace()
    topic = f"bench-metrics-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=3)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    port = _free_port()
    on = SidecarProc(sandbox, tmp_path_factory.mktemp("metrics-on"), ns, "--metrics-listen", f"127.0.0.1:{port}",
                     "--host-id", "metrics-on").start()
    off = SidecarProc(sandbox, tmp_path_factory.mktemp("metrics-off"), ns, "--host-id", "metrics-off").start()
    stop = threading.Event()
    scrapes = [0]

    def scraper() -> None:
        while not stop.wait(SCRAPE_S):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                r.read()
            scrapes[0] += 1

    requests = [meshcore.encode_records(b, topic, [b"x" * 100] * BATCH, [f"k{b}-{i}".encode() for i in range(BATCH)])
                for b in range(BATCHES)]
    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    pairs: list[tuple[float, float]] = []
    try:
        _round(on.target, requests)
        _round(off.target, requests)            # warm both
        for i in range(PAIRS):
            # Alternate which goes first: the broker's drift does not favour one side.
            if i % 2:
                t_off = _round(off.target, requests)
                t_on = _round(on.target, requests)
            else:
                t_on = _round(on.target, requests)
                t_off = _round(off.target, requests)
            pairs.append((t_on, t_off))
    finally:
        stop.set()
        thread.join(5)
        on.stop()
        off.stop()
    ratios = [t_off / t_on for t_on, t_off in pairs]         # throughput with metrics / without
    n = BATCH * BATCHES
    benchmark.pedantic(lambda: None, rounds=1)
    benchmark.group = "metrics-cost"
    benchmark.extra_info.update({
        "records_per_round": n, "pairs": PAIRS, "scrapes": scrapes[0],
        "with_metrics_records_per_s": round(n / statistics.median(t for t, _ in pairs)),
        "without_records_per_s": round(n / statistics.median(t for _, t in pairs)),
        "median_pair_ratio": round(statistics.median(ratios), 3),
        "pair_ratios": [round(r, 3) for r in sorted(ratios)],
        "running": "3 sandbox clusters (c1 takes the load), etcd, two sidecars, this benchmark (2 cores)",
    })
    print(f"\nmetrics cost: {benchmark.extra_info}")
