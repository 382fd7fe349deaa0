"""Apps that share a sidecar cannot hurt each other through it, with the real sidecar process and real clusters: a
cluster that is down, its librdkafka queue full, does not slow the streams of a healthy cluster; however many
streams push, the Produce requests in flight stay within the process's memory budget, and the memory is given back
once the load ends; and a SIGTERM while a cluster is down still answers every batch read, within the grace."""

from __future__ import annotations

import pathlib
import queue
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.dev import ports
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace
from tests.produce_responses import per_record


def _rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _request(batch_id: int, topic: str, records: int, size: int) -> bytes:
    one = M.ProduceRequest(records=[M.Record(topic=topic, value=b"v" * size)]).SerializeToString()
    return M.ProduceRequest(batch_id=batch_id).SerializeToString() + one * records


class Pusher(threading.Thread):
    """One app's Produce stream sending the same request over and over, as fast as the sidecar reads them."""

    def __init__(self, target: str, raw: bytes) -> None:
        super().__init__(daemon=True)
        self.target, self.raw = target, raw
        self.stop = threading.Event()
        self.answers = 0
        self.error: grpc.RpcError | None = None
        self.call: Any = None

    def _requests(self) -> Iterator[bytes]:
        while not self.stop.is_set():
            yield self.raw

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as ch:
            self.call = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")(self._requests())
            try:
                for _ in self.call:
                    self.answers += 1
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    self.error = e

    def end(self) -> None:
        self.stop.set()
        if self.call is not None:
            self.call.cancel()
        self.join(30)


def test_a_down_cluster_with_a_full_queue_does_not_slow_a_healthy_one(sandbox: Sandbox, sidecar_factory: Any,
                                                                     topic: str) -> None:
    ns = new_namespace()
    down, healthy = f"{topic}-down", f"{topic}-ok"
    create_topic(sandbox.clusters[1].bootstrap, healthy, partitions=3)
    dead_port = ports.allocate(1)[0]
    apply(sandbox, ns, {
        "clusters": {**clusters_doc(sandbox),
                     # a small queue, full after two requests; records wait there for 60 s before they fail
                     "gone": {"bootstrap": f"127.0.0.1:{dead_port}",
                              "config": {"queue.buffering.max.kbytes": "4096", "message.timeout.ms": "60000"}}},
        "producer": {down: {"where": [{"sink": "gone"}]}, healthy: {"where": [{"sink": "c2"}]}}})
    sc = sidecar_factory(ns)
    stuck = [Pusher(sc.target, _request(i, down, 2048, 1000)) for i in range(10)]       # 2 MiB each
    for p in stuck:
        p.start()
    time.sleep(3)                          # every stuck stream has a submit waiting for room in gone's queue
    latencies = []
    try:
        with grpc.insecure_channel(sc.target) as ch:
            call = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")
            for i in range(20):
                started = time.monotonic()
                [raw] = list(call(iter([_request(i, healthy, 2048, 1000)]), timeout=30))
                latencies.append(time.monotonic() - started)
                resp = M.ProduceResponse.FromString(raw)
                assert resp.ok_count == 2048 and not resp.errors
    finally:
        for p in stuck:
            p.end()
    assert all(p.answers == 0 and p.error is None for p in stuck)    # gone never acked anything, nor failed yet
    assert max(latencies) < 1.0, latencies                          # 20 requests: their p99 is the max
    assert statistics.median(latencies) < 0.5, latencies


def test_many_streams_stay_within_the_memory_budget_and_give_it_back(sandbox: Sandbox, sidecar_factory: Any,
                                                                     topic: str) -> None:
    # The worst case for memory: a cluster that acknowledges nothing, so that every record the sidecar takes stays
    # (until it fails after message.timeout.ms) and 50 streams push as hard as they are let; a live cluster would
    # also fill the sandbox's disk with gigabytes.
    ns = new_namespace()
    dead_port = ports.allocate(1)[0]
    apply(sandbox, ns, {"clusters": {"gone": {"bootstrap": f"127.0.0.1:{dead_port}",
                                              "config": {"message.timeout.ms": "8000"}}},
                        "producer": {topic: {"where": [{"sink": "gone"}]}}})
    budget_mib = 600
    sc = sidecar_factory(ns, "--memory-budget-bytes", str(budget_mib << 20))
    assert sc.proc is not None
    pid = sc.proc.pid
    time.sleep(1)
    before = _rss_mib(pid)
    pushers = [Pusher(sc.target, _request(i, topic, 16, 64_000)) for i in range(50)]      # 1 MB of 64 KB records
    for p in pushers:
        p.start()
    peak = 0.0
    started = time.monotonic()
    while time.monotonic() - started < 30:
        time.sleep(0.25)
        peak = max(peak, _rss_mib(pid))
    for p in pushers:
        p.end()
    assert all(p.error is None for p in pushers), [p.error for p in pushers if p.error]
    assert sum(p.answers for p in pushers) > 100          # requests were taken, and failed after the timeout
    assert peak < budget_mib, (before, peak, budget_mib)
    time.sleep(15)                                         # the last records fail 8 s after they were taken
    after = _rss_mib(pid)
    assert after < 2 * before, (before, peak, after)


def test_sigterm_with_a_cluster_down_answers_every_batch_read_and_exits_within_the_grace(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    down, healthy = f"{topic}-down", f"{topic}-ok"
    create_topic(sandbox.clusters[0].bootstrap, healthy, partitions=1)
    dead_port = ports.allocate(1)[0]
    apply(sandbox, ns, {"clusters": {**clusters_doc(sandbox), "gone": {"bootstrap": f"127.0.0.1:{dead_port}"}},
                        "producer": {down: {"where": [{"sink": "gone"}]}, healthy: {"where": [{"sink": "c1"}]}}})
    grace = 3.0
    sc = sidecar_factory(ns, "--shutdown-grace-s", str(grace))      # records wait 60 s (delivery timeout)
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (raw := outbox.get()) is not None:
            yield raw

    answers: list[M.ProduceResponse] = []
    with grpc.insecure_channel(sc.target) as ch:
        call = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")(requests(), timeout=60)
        outbox.put(_request(1, down, 10, 100))
        outbox.put(_request(2, healthy, 10, 100))
        answers.append(M.ProduceResponse.FromString(next(call)))          # the healthy batch
        assert (answers[0].batch_id, answers[0].ok_count) == (2, 10)
        stopping = time.monotonic()
        sc.proc.send_signal(signal.SIGTERM)
        answers += [M.ProduceResponse.FromString(raw) for raw in call]    # until the sidecar ends the call
        status = call.code()
        outbox.put(None)
    rc = sc.proc.wait(30)
    took = time.monotonic() - stopping
    assert status == grpc.StatusCode.OK
    assert [a.batch_id for a in answers] == [2, 1]
    failed = per_record(answers[1])
    assert answers[1].ok_count == 0 and [i for i, _, _ in failed] == list(range(10))
    assert {code for _, code, _ in failed} == {M.ERROR_CODE_CLUSTER_UNAVAILABLE}
    assert "the sidecar stopped before the cluster took it (its shutdown grace ran out)" in failed[0][2]
    assert rc == 1                                   # records were undelivered
    assert grace <= took < grace + 2.5, took
