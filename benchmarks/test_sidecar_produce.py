"""The sidecar's Produce path against confluent-kafka used directly, in one run on the same broker.

- throughput: 100-byte records in batches of 1,000, through the real sidecar process (Unix socket), with the app's
  cost of encoding each batch included; and the same records produced with confluent-kafka and a delivery callback
  per record;
- mapping propagation: an etcd write to the first batch routed by the new revision;
- added latency per batch at 1,000 batches/s: request to response through the sidecar, against produce() to the
  last delivery callback directly.
Figures are printed in the terminal summary; nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
import grpc
import pytest
from confluent_kafka import Producer as CKProducer

import meshcore
from benchmarks.baseline import CountingProducer
from benchmarks.procstat import CpuMeter
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev.sandbox import Sandbox
from sidecar.manage import mapping as mapping_store
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

BATCH = 1000
BATCHES = 100
VALUE = b"x" * 100
CONF = {"enable.idempotence": "true", "acks": "all", "linger.ms": "5", "partitioner": "murmur2_random"}


def _encode(batch_id: int, topic: str, keys: list[bytes]) -> bytes:
    """A ProduceRequest of 100-byte values, encoded by the client's batch path (meshcore.encode_records)."""
    return meshcore.encode_records(batch_id, topic, [VALUE] * len(keys), keys)


@pytest.fixture(scope="module")
def setup(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SidecarProc, str, str, str]]:
    ns = new_namespace()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    bootstrap = sandbox.clusters[0].bootstrap
    create_topic(bootstrap, topic, partitions=3)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    workdir = tmp_path_factory.mktemp("bench-sidecar")
    proc = SidecarProc(sandbox, workdir, ns).start()
    try:
        yield proc, topic, bootstrap, ns
    finally:
        proc.stop()


def test_sidecar_produce_throughput(benchmark: Any, setup: tuple[SidecarProc, str, str, str]) -> None:
    proc, topic, _, _ = setup
    keys = [str(i).encode() for i in range(BATCH)]
    channel = grpc.insecure_channel(proc.target)
    call = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")

    def run() -> None:
        ok = 0
        for raw in call((_encode(b, topic, keys) for b in range(BATCHES)), timeout=120):
            ok += mesh_pb2.ProduceResponse.FromString(raw).ok_count
        assert ok == BATCH * BATCHES

    benchmark.group = "produce 100B x 1000/batch"
    benchmark.extra_info["records"] = BATCH * BATCHES
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
    channel.close()


def test_confluent_kafka_produce_with_callbacks(benchmark: Any, setup: tuple[SidecarProc, str, str, str]) -> None:
    _, topic, bootstrap, _ = setup
    direct = CountingProducer({"bootstrap.servers": bootstrap, **CONF})
    keys = [str(i).encode() for i in range(BATCH)]

    def run() -> None:
        direct.produce_batches(topic, VALUE, keys, BATCHES)

    benchmark.group = "produce 100B x 1000/batch"
    benchmark.extra_info["records"] = BATCH * BATCHES
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
    direct.producer.flush(10)


def _percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(statistics.median(samples) * 1e3, 3), "p99_ms": round(qs[98] * 1e3, 3),
            "max_ms": round(max(samples) * 1e3, 3), "n": len(samples)}


def test_mapping_propagation(benchmark: Any, sandbox: Sandbox, setup: tuple[SidecarProc, str, str, str]) -> None:
    """mapping apply started -> first batch routed by the new revision, with a client sending a batch every
    millisecond."""
    proc, topic, _, ns = setup
    channel = grpc.insecure_channel(proc.target)
    call = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")
    sent_at: dict[int, float] = {}
    seen: dict[int, int] = {}
    stop = threading.Event()
    cond = threading.Condition()

    def requests() -> Iterator[bytes]:
        b = 0
        while not stop.is_set():
            sent_at[b] = time.perf_counter()
            yield _encode(b, topic, [b"k"])
            b += 1
            time.sleep(0.001)

    def responses() -> None:
        for raw in call(requests(), timeout=600):
            r = mesh_pb2.ProduceResponse.FromString(raw)
            with cond:
                seen[r.batch_id] = r.mapping_revision
                cond.notify_all()

    reader = threading.Thread(target=responses, daemon=True)
    reader.start()
    samples: list[float] = []
    sinks = ["c2", "c1"]
    # One etcd connection for the whole run, so that each sample times the write itself, not a connection setup.
    loop = asyncio.new_event_loop()
    etcd = loop.run_until_complete(Etcd(sandbox.etcd_endpoint).__aenter__())
    keys = Keys(ns)

    def switch() -> None:
        sink = sinks[len(samples) % 2]
        started = time.perf_counter()
        # The whole apply, as `kafka-mesh mapping apply` does it: read the mapping, check, write, swap the pointer.
        doc = {"producer": {topic: {"where": [{"sink": sink}]}}}
        rev = loop.run_until_complete(mapping_store.apply(etcd, keys, doc))
        with cond:
            while True:
                hits = [b for b, r in seen.items() if r == rev]
                if hits:
                    break
                cond.wait(1)
        samples.append(sent_at[min(hits)] - started)

    benchmark.group = "mapping propagation"
    benchmark.pedantic(switch, rounds=60, warmup_rounds=2)
    loop.run_until_complete(etcd.__aexit__(None, None, None))
    loop.close()
    stop.set()
    reader.join(10)
    channel.close()
    benchmark.extra_info.update(_percentiles(samples[2:] if len(samples) > 10 else samples))


def _paced(rate: float, seconds: float) -> Iterator[int]:
    """Yield at `rate` per second; sleeps rather than spins, so the pacing takes no core from the servers."""
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


def test_added_latency_per_batch_at_1000_batches_per_s(benchmark: Any,
                                                        setup: tuple[SidecarProc, str, str, str]) -> None:
    """Request to response through the sidecar vs produce() to the batch's last delivery report directly, both at
    1,000 batches of 10 records a second for 5 s."""
    proc, topic, bootstrap, _ = setup
    keys = [str(i).encode() for i in range(10)]

    def through_sidecar() -> list[float]:
        sent: dict[int, float] = {}
        lat: list[float] = []
        channel = grpc.insecure_channel(proc.target)
        call = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")
        for _ in call(iter([_encode(0, topic, keys)]), timeout=60):   # warm: connected, producer id acquired
            pass

        def reqs() -> Iterator[bytes]:
            for i in _paced(1000, 5):
                raw = _encode(i, topic, keys)
                sent[i] = time.perf_counter()
                yield raw

        for raw in call(reqs(), timeout=120):
            now = time.perf_counter()
            r = mesh_pb2.ProduceResponse.FromString(raw)
            lat.append(now - sent[r.batch_id])
        channel.close()
        return lat

    def direct() -> list[float]:
        p = CKProducer({"bootstrap.servers": bootstrap, **CONF})
        p.produce(topic, VALUE, b"warm")    # warm: connected, producer id acquired
        p.flush(30)
        lat: list[float] = []
        pending: dict[int, list[Any]] = {}

        def cb(i: int) -> Any:
            def on_delivery(err: object, msg: object) -> None:
                entry = pending[i]
                entry[1] -= 1
                if entry[1] == 0:
                    lat.append(time.perf_counter() - entry[0])
            return on_delivery

        for i in _paced(1000, 5):
            pending[i] = [time.perf_counter(), len(keys)]
            done = cb(i)
            for k in keys:
                p.produce(topic, VALUE, k, on_delivery=done)
            p.poll(0)
        p.flush(30)
        return lat

    results: dict[str, Any] = {}

    def run() -> None:
        results["direct"] = _percentiles(direct())
        results["sidecar"] = _percentiles(through_sidecar())

    benchmark.group = "added latency"
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    results["added_p50_ms"] = round(results["sidecar"]["p50_ms"] - results["direct"]["p50_ms"], 3)
    results["added_p99_ms"] = round(results["sidecar"]["p99_ms"] - results["direct"]["p99_ms"], 3)
    benchmark.extra_info.update(results)


def test_paired_rounds_sidecar_vs_direct(benchmark: Any, sandbox: Sandbox,
                                         setup: tuple[SidecarProc, str, str, str]) -> None:
    """Rounds of the two paths interleaved (sidecar, direct, sidecar, ...), so that the broker's drift over a run
    (log segments, JVM collections) weighs on both alike; reports the median of the per-pair ratios, and the CPU time
    per record of the sidecar, the broker and the app on each path (from /proc)."""
    proc, topic, bootstrap, _ = setup
    keys = [str(i).encode() for i in range(BATCH)]
    channel = grpc.insecure_channel(proc.target)
    call = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")
    direct = CountingProducer({"bootstrap.servers": bootstrap, **CONF})
    assert proc.proc is not None
    # CPU of each process group per path, over the counted rounds: the sidecar, c1's broker, and this process (the
    # app: encoding and sending batches on the sidecar path; produce() with confluent-kafka's threads on the direct
    # one).
    groups = {"sidecar": [proc.proc.pid], "broker": [b.proc.pid for b in sandbox.clusters[0].brokers],
              "app": [os.getpid()]}
    cpu: dict[str, dict[str, float]] = {"sidecar": {}, "direct": {}}

    def metered(path: str, fn: Callable[[], None]) -> float:
        meter = CpuMeter(groups)
        meter.start()
        started = time.perf_counter()
        fn()
        rate = BATCH * BATCHES / (time.perf_counter() - started)
        meter.stop()
        for name, used in meter.used.items():
            cpu[path][name] = cpu[path].get(name, 0.0) + used
        return rate

    def sidecar_batches() -> None:
        ok = 0
        for raw in call((_encode(b, topic, keys) for b in range(BATCHES)), timeout=120):
            ok += mesh_pb2.ProduceResponse.FromString(raw).ok_count
        assert ok == BATCH * BATCHES

    def direct_batches() -> None:
        direct.produce_batches(topic, VALUE, keys, BATCHES)

    pairs: list[tuple[float, float]] = []

    def run() -> None:
        for _ in range(2):          # warm both paths
            sidecar_batches()
            direct_batches()
        for _ in range(12):
            pairs.append((metered("sidecar", sidecar_batches), metered("direct", direct_batches)))

    benchmark.group = "paired"
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    channel.close()
    ratios = sorted(s / d for s, d in pairs)
    benchmark.extra_info.update({
        "sidecar_median_rps": round(statistics.median(s for s, _ in pairs)),
        "direct_median_rps": round(statistics.median(d for _, d in pairs)),
        "ratio_median": round(statistics.median(ratios), 2),
        "ratio_min": round(ratios[0], 2), "ratio_max": round(ratios[-1], 2), "pairs": len(pairs),
        "cpu_us_per_record": {path: {name: round(used / (len(pairs) * BATCH * BATCHES) * 1e6, 2)
                                     for name, used in groups_used.items()} for path, groups_used in cpu.items()},
        "librdkafka": {"sidecar": meshcore.librdkafka_version(), "direct": confluent_kafka.libversion()[0]},
    })
