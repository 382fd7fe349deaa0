"""Large Produce requests that end early, against the real sidecar process: apps that cancel a 15 MB request
(500,000 records, the most a request may hold, submitted in a worker thread) at any moment, and a SIGTERM while one
is being submitted. The sidecar must survive every one, keep serving other streams, and answer the batch it had read
when told to stop."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from confluent_kafka import Consumer, TopicPartition

from sidecar.api.kafkamesh.v1 import mesh_pb2, mesh_pb2_grpc
from sidecar.dev import ports
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace
from tests.produce_responses import per_record

LARGE = 500_000          # records of 10 bytes: 15 MB on the wire, past the sidecar's inline-submit size


def _large_request(batch_id: int, topic: str) -> mesh_pb2.ProduceRequest:
    """Built without a Python object per record: protobuf merges the repeated field of concatenated messages."""
    one = mesh_pb2.ProduceRequest(records=[mesh_pb2.Record(topic=topic, value=b"x" * 10)]).SerializeToString()
    raw = mesh_pb2.ProduceRequest(batch_id=batch_id).SerializeToString() + one * LARGE
    return mesh_pb2.ProduceRequest.FromString(raw)


class SteadyStream(threading.Thread):
    """An app producing small batches of ids on one stream, one at a time, until stopped or its stream ends."""

    def __init__(self, target: str, topic: str, name: str) -> None:
        super().__init__(daemon=True)
        self.target, self.topic, self.name_ = target, topic, name
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.error: grpc.RpcError | None = None
        self.answered = threading.Semaphore(0)
        self.stop = threading.Event()

    def _requests(self) -> Iterator[mesh_pb2.ProduceRequest]:
        i = 0
        while not self.stop.is_set():
            yield batch(i, [(self.topic, f"{self.name_}-{i}-{j}") for j in range(20)])
            i += 1
            while not self.answered.acquire(timeout=0.5):     # one batch in flight: every answer is timed
                if self.stop.is_set():
                    return

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as ch:
            try:
                for resp in mesh_pb2_grpc.MeshStub(ch).Produce(self._requests(), timeout=600):
                    ids = [f"{self.name_}-{resp.batch_id}-{j}" for j in range(20)]
                    failed = {i for i, _, _ in per_record(resp)}
                    self.acked += [x for j, x in enumerate(ids) if j not in failed]
                    self.failed += [x for j, x in enumerate(ids) if j in failed]
                    self.answered.release()
            except grpc.RpcError as e:
                self.error = e


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions))
    finally:
        c.close()


def test_cancelled_large_requests_and_a_sigterm_during_one_crash_nothing_and_lose_no_answer(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1, c2 = sandbox.clusters[0].bootstrap, sandbox.clusters[1].bootstrap
    steady_topic, large_topic, gone_topic = f"{topic}-steady", f"{topic}-large", f"{topic}-gone"
    create_topic(c2, steady_topic, partitions=3)
    create_topic(c1, large_topic, partitions=3)
    dead = ports.allocate(1)[0]
    ns = new_namespace()
    apply(sandbox, ns, {
        "clusters": {**clusters_doc(sandbox),
                     # Nothing listens: cancelled requests' records wait in a bounded queue, fail after 1 s, and a
                     # submit may meet the queue full when its app cancels.
                     "gone": {"bootstrap": f"127.0.0.1:{dead}",
                              "config": {"message.timeout.ms": "1000", "queue.buffering.max.messages": "1000000"}}},
        "producer": {steady_topic: {"where": [{"sink": "c2"}]}, large_topic: {"where": [{"sink": "c1"}]},
                     gone_topic: {"where": [{"sink": "gone"}]}}})
    sc = sidecar_factory(ns)
    steady = [SteadyStream(sc.target, steady_topic, f"s{i}") for i in range(2)]
    for s in steady:
        s.start()

    # 20 apps each send a 15 MB request and cancel it, from before it is read to after it was enqueued.
    doomed = _large_request(1, gone_topic)
    acked_before = sum(len(s.acked) for s in steady)
    with grpc.insecure_channel(sc.target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = mesh_pb2_grpc.MeshStub(ch)
        for i in range(20):
            call = stub.Produce(iter([doomed]), timeout=120)
            time.sleep(0.04 * i)
            call.cancel()
            assert sc.alive(), f"the sidecar died after cancel {i}:\n{sc.log.read_text()[-3000:]}"
    time.sleep(1)
    assert sc.alive()
    served = sum(len(s.acked) for s in steady) - acked_before
    assert served > 0 and all(s.error is None and not s.failed for s in steady)
    assert all(s.is_alive() for s in steady)

    # SIGTERM while a 15 MB request to a live cluster is being enqueued: its batch is still answered, whole.
    answers: list[mesh_pb2.ProduceResponse] = []
    ended: queue.Queue[grpc.StatusCode] = queue.Queue()

    def send_large() -> None:
        with grpc.insecure_channel(sc.target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            call = mesh_pb2_grpc.MeshStub(ch).Produce(iter([_large_request(77, large_topic)]), timeout=120)
            try:
                for resp in call:
                    answers.append(resp)
                ended.put(call.code())
            except grpc.RpcError as e:
                ended.put(e.code())

    sender = threading.Thread(target=send_large)
    sender.start()
    deadline = time.monotonic() + 60
    while _end_offsets(c1, large_topic, 3) == 0:      # its records are reaching c1: the submit has begun
        assert time.monotonic() < deadline, "the large request never reached c1"
        time.sleep(0.01)
    sc.proc.send_signal(signal.SIGTERM)
    code = sc.proc.wait(120)
    sender.join(60)
    log = sc.log.read_text()
    assert code == 0, f"sidecar exit code {code}:\n{log[-3000:]}"
    assert "AddressSanitizer" not in log and "Traceback" not in log, log[-3000:]
    assert [(r.batch_id, r.ok_count, len(r.errors)) for r in answers] == [(77, LARGE, 0)]
    assert ended.get(timeout=1) == grpc.StatusCode.OK
    assert _end_offsets(c1, large_topic, 3) == LARGE

    # The steady apps' streams ended with OK, and each record they had acknowledged is in c2.
    for s in steady:
        s.stop.set()
        s.join(30)
        assert s.error is None and not s.failed, s.error
    acked = {x for s in steady for x in s.acked}
    landed = {m.value().decode() for m in read_all(c2, steady_topic, len(acked))}
    assert acked <= landed
