"""The sidecar with mappings of 10, 1,000 and 100,000 topics (producer and consumer routes over the sandbox's three
clusters) kept in the sandbox's etcd (default request limits), in the same run for each size:

- `kafka-mesh mapping apply` of the whole mapping (the command's wall time), the sidecar's time to SERVING and its RSS;
- produce throughput to one of the topics (the same records for each size: the cost per record must not grow with
  the mapping);
- a one-route change (the benchmark topic's producer and consumer routes switched between c1 and c2): from the
  pointer swap (the change's revision) to the first batch the sidecar routes by it, with a client sending a batch
  every millisecond, and to the clusters_changed event on a Subscribe stream of the topic; and at 100,000
  topics, a whole new mapping (every route's sinks changed) the same way; RSS after those changes.

Run: python -m pytest benchmarks/test_mapping_scale.py --benchmark-only
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import meshcore
from benchmarks.procstat import mib, proc_status
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.control import mapstore
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev.sandbox import Sandbox
from sidecar.mapping.model import Mapping
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, clusters_doc, new_namespace
from tests.integration.subscribe_stream import SubStream

SIZES = (10, 1_000, 100_000)
BATCH = 1000
BATCHES = 100
VALUE = b"x" * 100
SINKS = ("c1", "c2", "c3")


def _document(sandbox: Sandbox, topic: str, size: int, shift: int = 0) -> dict[str, Any]:
    others = [f"scale-{i:06d}" for i in range(size - 1)]
    producer = {t: {"where": [{"sink": SINKS[(i + shift) % 3]}]} for i, t in enumerate(others)}
    consumer = {t: [{"vip": SINKS[(i + shift) % 3]}] for i, t in enumerate(others)}
    producer[topic] = {"where": [{"sink": "c1"}]}
    consumer[topic] = [{"vip": "c1"}]
    return {"clusters": clusters_doc(sandbox), "producer": producer, "consumer": consumer}


@dataclass
class Setup:
    proc: SidecarProc
    size: int
    keys: Keys
    doc: dict[str, Any]
    figures: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def bench_topic(sandbox: Sandbox) -> str:
    name = f"scale-bench-{uuid.uuid4().hex[:8]}"
    for cluster in sandbox.clusters[:2]:
        create_topic(cluster.bootstrap, name, partitions=3)
    return name


@pytest.fixture(scope="module", params=SIZES, ids=[f"{n}-topics" for n in SIZES])
def setup(request: pytest.FixtureRequest, sandbox: Sandbox, bench_topic: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    size = request.param
    workdir = tmp_path_factory.mktemp(f"scale-{size}")
    ns = new_namespace()
    doc = _document(sandbox, bench_topic, size)
    path = workdir / "mapping.json"
    path.write_text(json.dumps(doc))
    t0 = time.monotonic()
    subprocess.run(["kafka-mesh", "mapping", "apply", str(path), "--etcd", sandbox.etcd_endpoint, "--namespace", ns],
                   check=True, capture_output=True, env=dict(os.environ), timeout=300)
    apply_s = time.monotonic() - t0
    proc = SidecarProc(sandbox, workdir, ns)
    t0 = time.monotonic()
    proc.start(timeout=120)
    serving_s = time.monotonic() - t0
    time.sleep(2)
    assert proc.proc is not None
    figures = {"cli_apply_s": round(apply_s, 2), "serving_s": round(serving_s, 2),
               "rss_mib": mib(proc_status(proc.proc.pid)["VmRSS"]),
               "file_mib": round(path.stat().st_size / 2**20, 1)}
    try:
        yield Setup(proc, size, Keys(ns), doc, figures)
    finally:
        proc.stop()


def test_produce_throughput_by_mapping_size(benchmark: Any, setup: Setup, bench_topic: str) -> None:
    keys = [str(i).encode() for i in range(BATCH)]
    channel = grpc.insecure_channel(setup.proc.target)
    call = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")

    def run() -> None:
        ok = 0
        requests = (meshcore.encode_records(b, bench_topic, [VALUE] * BATCH, keys) for b in range(BATCHES))
        for raw in call(requests, timeout=120):
            ok += mesh_pb2.ProduceResponse.FromString(raw).ok_count
        assert ok == BATCH * BATCHES

    benchmark.group = "produce by mapping size"
    benchmark.extra_info["records"] = BATCH * BATCHES
    benchmark.extra_info.update({"topics": setup.size, **setup.figures})
    benchmark.pedantic(run, rounds=8, warmup_rounds=2)
    channel.close()


class _Pacer:
    """A Produce stream sending a one-record batch every millisecond; records when each batch was sent and the
    mapping revision each was routed by."""

    def __init__(self, target: str, topic: str) -> None:
        self.sent_at: dict[int, float] = {}
        self.revision: dict[int, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(target)
        call = self._channel.stream_stream("/kafkamesh.v1.Mesh/Produce")
        self._responses = call(self._requests(topic), timeout=1800)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self, topic: str) -> Iterator[bytes]:
        b = 0
        while not self._stop.is_set():
            self.sent_at[b] = time.perf_counter()
            yield meshcore.encode_records(b, topic, [VALUE], [b"k"])
            b += 1
            time.sleep(0.001)

    def _read(self) -> None:
        for raw in self._responses:
            r = mesh_pb2.ProduceResponse.FromString(raw)
            with self._cond:
                self.revision[r.batch_id] = r.mapping_revision
                self._cond.notify_all()

    def first_sent_by(self, revision: int, timeout: float = 60) -> float:
        """When the first batch routed by revision was sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [b for b, r in self.revision.items() if r == revision]
                if hits:
                    return self.sent_at[min(hits)]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no batch routed by revision {revision} within {timeout} s")
                self._cond.wait(1)

    def close(self) -> None:
        self._stop.set()
        self._reader.join(30)
        self._channel.close()


def _percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 1 else samples * 99
    return {"p50_ms": round(statistics.median(samples) * 1e3, 1), "p99_ms": round(qs[98] * 1e3, 1),
            "max_ms": round(max(samples) * 1e3, 1), "n": len(samples)}


def _switching(sandbox: Sandbox, setup: Setup, topic: str, docs: list[dict[str, Any]], benchmark: Any,
               rounds: int, subscribe: bool) -> None:
    """Alternate the mapping in force between docs (stored as `mapping apply` stores them), each change timed from
    the pointer swap to the first batch the sidecar routes by it and, with subscribe, to the clusters_changed event
    a Subscribe stream of the topic gets (the topic's consumer route changes too)."""
    pacer = _Pacer(setup.proc.target, topic)
    sub = SubStream(setup.proc.target, f"bench-{uuid.uuid4().hex[:8]}", [topic], start=M.START_POSITION_LATEST)
    sub.wait(lambda s: "assigned" in s.event_kinds(), 60, "the stream's first assignment")
    loop = asyncio.new_event_loop()
    etcd = loop.run_until_complete(Etcd(sandbox.etcd_endpoint).__aenter__())
    stored = [mapstore.split(d) for d in docs]
    _, revision = loop.run_until_complete(mapstore.read(etcd, setup.keys))
    samples: list[float] = []
    subscribed: list[float] = []

    def clusters_changed_at(revision: int) -> float | None:
        for event, at in sub.timed_events():
            if event.WhichOneof("kind") == "clusters_changed" and event.clusters_changed.mapping_revision == revision:
                return at
        return None

    def change() -> None:
        nonlocal revision
        target = stored[(len(samples) + 1) % len(stored)]
        prepared = loop.run_until_complete(mapstore.prepare(etcd, setup.keys, target, revision))
        swapped_at = time.perf_counter()
        revision = loop.run_until_complete(mapstore.commit(etcd, setup.keys, target, prepared))
        samples.append(pacer.first_sent_by(revision) - swapped_at)
        if subscribe:
            sub.wait(lambda _: clusters_changed_at(revision) is not None, 60, f"clusters_changed of {revision}")
            subscribed.append((clusters_changed_at(revision) or 0.0) - swapped_at)

    try:
        benchmark.pedantic(change, rounds=rounds, warmup_rounds=1)
    finally:
        loop.run_until_complete(etcd.__aexit__(None, None, None))
        loop.close()
        pacer.close()
        sub.close()
    assert setup.proc.proc is not None
    benchmark.extra_info.update({"topics": setup.size, **_percentiles(samples),
                                 "rss_after_mib": mib(proc_status(setup.proc.proc.pid)["VmRSS"])})
    if subscribe:
        benchmark.extra_info["subscribe"] = _percentiles(subscribed)


def _normal(doc: dict[str, Any]) -> dict[str, Any]:
    # What `mapping apply` stores: the document as the model prints it (the same blobs, so only changed parts differ).
    return Mapping.from_document(doc).to_document()


def test_one_route_change_reaches_the_routing_table(benchmark: Any, sandbox: Sandbox, setup: Setup,
                                                     bench_topic: str) -> None:
    a = _normal(setup.doc)
    b = copy.deepcopy(a)
    b["producer"][bench_topic] = {"where": [{"sink": "c2"}]}
    b["consumer"][bench_topic] = [{"vip": "c2"}]
    benchmark.group = "one-route change: swap -> first batch routed by it"
    _switching(sandbox, setup, bench_topic, [a, b], benchmark, rounds=40, subscribe=True)


def test_whole_new_mapping_reaches_the_routing_table(benchmark: Any, sandbox: Sandbox, setup: Setup,
                                                     bench_topic: str) -> None:
    if setup.size != SIZES[-1]:
        pytest.skip("measured at the largest size only")
    a = _normal(setup.doc)
    b = _normal(_document(sandbox, bench_topic, setup.size, shift=1))
    b["producer"][bench_topic] = {"where": [{"sink": "c2"}]}
    benchmark.group = "whole new mapping: swap -> first batch routed by it"
    _switching(sandbox, setup, bench_topic, [a, b], benchmark, rounds=6, subscribe=False)
