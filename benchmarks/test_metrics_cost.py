"""The cost of metrics on the produce path, with an A/A control.

Three sidecar processes on the same topic (one the mapping names, so it is counted under a label of its own): "on"
serves /metrics (--metrics-listen: per-topic counting in the core, librdkafka's statistics every 15 s) and is scraped
every second (Prometheus scrapes every 15-60 s); "off" and "off2" run without metrics, identical to each other. Rounds
of 500 Produce requests of 1,000 records (100-byte values, a key each) on one gRPC stream go to each in turn, in an
order that rotates from one trio to the next, so the brokers' drift favours none.

Figures per side, each as a ratio to "off", with "off2"/"off" as the A/A control (the spread a ratio shows with no
difference at all): records/s of the best round and of the first quartile of rounds (on two cores shared with the
brokers a round is only ever slowed by whatever else runs, so the fastest rounds are the least disturbed ones; the
median swings with the brokers), the median of the per-trio ratios, and the sidecar's own CPU seconds per million
records (from /proc) in its cheapest quartile. The core's per-cluster delivery counters are compiled in and count in
all three. Nothing here asserts a time.

The second test isolates the data path's part in one process: the same ProduceStream and producer, blocks of 20,000
records alternating between a route table with per-topic slots (what --metrics-listen turns on) and two without
(A/A); each block's process CPU (every thread: routing, librdkafka, the delivery reports that count) and its routing
thread's, per million records, median block. Alternating small blocks cancels the drift whole rounds see.

Run: python -m pytest benchmarks/test_metrics_cost.py --benchmark-only -s
"""

from __future__ import annotations

import select
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
from benchmarks.procstat import cpu_s
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

BATCH = 1000
BATCHES = 500
TRIOS = 30
#: The in-process test: blocks of this many requests, and how many blocks (a third with each table).
CORE_BLOCK = 20
CORE_BLOCKS = 600
#: How often the sidecar with metrics is scraped: more often than Prometheus would, to make any cost show.
SCRAPE_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _round(side: SidecarProc, requests: list[bytes]) -> tuple[float, float]:
    """(wall seconds, the sidecar's CPU seconds) of one round on one stream."""
    assert side.proc is not None
    with grpc.insecure_channel(side.target) as channel:
        produce = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")
        cpu0, t0 = cpu_s(side.proc.pid), time.perf_counter()
        assert sum(1 for _ in produce(iter(requests))) == len(requests)
        return time.perf_counter() - t0, cpu_s(side.proc.pid) - cpu0


def _spread(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4)
    return {"median": round(statistics.median(values), 3), "q1": round(q[0], 3), "q3": round(q[2], 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def test_metrics_cost(benchmark: Any, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> None:
    ns = new_namespace()
    topic = f"bench-metrics-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=3)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    port = _free_port()
    sides = {
        "on": SidecarProc(sandbox, tmp_path_factory.mktemp("metrics-on"), ns, "--metrics-listen",
                          f"127.0.0.1:{port}", "--host-id", "metrics-on").start(),
        "off": SidecarProc(sandbox, tmp_path_factory.mktemp("metrics-off"), ns, "--host-id", "metrics-off").start(),
        "off2": SidecarProc(sandbox, tmp_path_factory.mktemp("metrics-off2"), ns, "--host-id",
                            "metrics-off2").start(),
    }
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
    names = list(sides)
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    try:
        for name in names:
            _round(sides[name], requests)                               # warm each
        for i in range(TRIOS):
            order = names[i % 3:] + names[:i % 3]
            for name in (order if i % 2 else order[::-1]):
                rounds[name].append(_round(sides[name], requests))
    finally:
        stop.set()
        thread.join(5)
        for side in sides.values():
            side.stop()
    n = BATCH * BATCHES

    def rate_ratios(name: str) -> list[float]:         # per trio: records/s of name / records/s of "off"
        return [off[0] / mine[0] for mine, off in zip(rounds[name], rounds["off"], strict=True)]

    def best(name: str, which: int) -> float:         # which=0: the fastest round's wall; 1: the first quartile's
        walls = sorted(w for w, _ in rounds[name])
        return walls[0] if which == 0 else statistics.quantiles(walls, n=4)[0]

    def cpu_q1(name: str) -> float:                     # CPU s per million records, first quartile
        return statistics.quantiles([cpu / n * 1e6 for _, cpu in rounds[name]], n=4)[0]

    def vs_off(read: Any, name: str, inverse: bool = True) -> float:
        return round(read("off") / read(name) if inverse else read(name) / read("off"), 3)

    benchmark.pedantic(lambda: None, rounds=1)
    benchmark.group = "metrics-cost"
    benchmark.extra_info.update({
        "records_per_round": n, "trios": TRIOS, "scrapes": scrapes[0],
        "records_per_s_best": {name: round(n / best(name, 0)) for name in names},
        "records_per_s_q1": {name: round(n / best(name, 1)) for name in names},
        "records_per_s_median": {name: round(n / statistics.median(w for w, _ in rounds[name])) for name in names},
        "best_round_ratio": {"on": vs_off(lambda x: best(x, 0), "on"), "off2 (A/A)": vs_off(lambda x: best(x, 0),
                                                                                             "off2")},
        "q1_round_ratio": {"on": vs_off(lambda x: best(x, 1), "on"), "off2 (A/A)": vs_off(lambda x: best(x, 1),
                                                                                          "off2")},
        "per_trio_ratio_on": _spread(rate_ratios("on")),
        "per_trio_ratio_off2 (A/A)": _spread(rate_ratios("off2")),
        "sidecar_cpu_s_per_million_q1": {name: round(cpu_q1(name), 3) for name in names},
        "cpu_ratio": {"on": vs_off(cpu_q1, "on", False), "off2 (A/A)": vs_off(cpu_q1, "off2", False)},
        "running": "3 sandbox clusters (c1 takes the load), etcd, three sidecars (one busy at a time), this "
                   "benchmark (2 cores)",
    })
    print(f"\nmetrics cost: {benchmark.extra_info}")


def test_per_topic_counting_cost_in_the_core(benchmark: Any, sandbox: Sandbox) -> None:
    bootstrap = sandbox.clusters[0].bootstrap
    topic = f"bench-slots-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=3)
    producer = meshcore.create_producer("c1", {"bootstrap.servers": bootstrap, "enable.idempotence": "true",
                                               "acks": "all", "linger.ms": "5"})
    tables = {
        "slots": meshcore.build_route_table(1, [producer], [([topic], [0])],
                                            slots=meshcore.build_topic_slots({topic: 2})),
        "none": meshcore.build_route_table(1, [producer], [([topic], [0])]),
        "none2": meshcore.build_route_table(1, [producer], [([topic], [0])]),
    }
    requests = [meshcore.encode_records(b, topic, [b"x" * 100] * BATCH, [f"k{b}-{i}".encode() for i in range(BATCH)])
                for b in range(CORE_BLOCK)]
    stream = meshcore.open_stream()
    names = list(tables)
    # Per block: the process's CPU (every thread: routing, librdkafka, the delivery reports that count), and the
    # CPU of the thread that routes and enqueues (where a record's slot is found and what was received is counted).
    block_ns: dict[str, list[int]] = {name: [] for name in names}
    submit_ns: dict[str, list[int]] = {name: [] for name in names}

    def block(name: str) -> None:
        cpu0, submitted = time.process_time_ns(), 0
        answered = 0
        for raw in requests:
            t0 = time.thread_time_ns()
            stream.submit(tables[name], raw)
            submitted += time.thread_time_ns() - t0
            answered += len(stream.drain())
        while answered < len(requests):
            select.select([stream.fileno()], [], [], 1)
            answered += len(stream.drain())
        block_ns[name].append(time.process_time_ns() - cpu0)
        submit_ns[name].append(submitted)

    try:
        for name in names:
            block(name)                                                 # warm
        for name in names:
            block_ns[name].clear()
            submit_ns[name].clear()
        for i in range(CORE_BLOCKS):
            block(names[(i + i // 3) % 3])                              # each table in each position in turn
    finally:
        stream.close()
        producer.close()
    counted = producer.topic_stats()[2][0]
    assert counted == (1 + len(block_ns["slots"])) * CORE_BLOCK * BATCH      # every record the slots routed

    def per_m(values: list[int]) -> float:                      # CPU seconds per million records, median block
        return statistics.median(values) / 1e9 / (CORE_BLOCK * BATCH) * 1e6

    benchmark.pedantic(lambda: None, rounds=1)
    benchmark.group = "metrics-cost"
    benchmark.extra_info.update({
        "records_per_block": CORE_BLOCK * BATCH, "blocks_each": len(block_ns["slots"]),
        "process_cpu_s_per_million": {name: round(per_m(block_ns[name]), 4) for name in names},
        "process_cpu_ratio": {name: round(per_m(block_ns[name]) / per_m(block_ns["none"]), 4)
                              for name in ("slots", "none2")},
        "submit_cpu_s_per_million": {name: round(per_m(submit_ns[name]), 4) for name in names},
        "submit_cpu_ratio": {name: round(per_m(submit_ns[name]) / per_m(submit_ns["none"]), 4)
                             for name in ("slots", "none2")},
        "running": "3 sandbox clusters (c1 takes the load), etcd, this benchmark (2 cores)",
    })
    print(f"\nper-topic counting in the core: {benchmark.extra_info}")
