"""Per-record errors and per-stream failures through the real sidecar: each error has its code, the other records
of the batch are unaffected, and malformed bytes end only their own stream."""

from __future__ import annotations

import random
import threading
from typing import Any

import grpc
import pytest

from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev import ports
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace, produce

E = mesh_pb2


def test_each_record_error_has_its_code_and_the_rest_of_the_batch_lands(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    dead_port = ports.allocate(1)[0]
    small, dead, ok = f"{topic}-small", f"{topic}-dead", f"{topic}-ok"
    create_topic(sandbox.clusters[0].bootstrap, ok, partitions=3)
    doc = {
        "clusters": {**clusters_doc(sandbox, c2={"message.max.bytes": "20000"}),
                     "gone": {"bootstrap": f"127.0.0.1:{dead_port}", "config": {"message.timeout.ms": "2000"}}},
        "producer": {ok: {"where": [{"sink": "c1"}]}, small: {"where": [{"sink": "c2"}]},
                     dead: {"where": [{"sink": "gone"}]}},
    }
    apply(sandbox, ns, doc)
    sc = sidecar_factory(ns)
    req = mesh_pb2.ProduceRequest(batch_id=1)
    req.records.add(topic=ok, value=b"r0")                        # 0 ok
    req.records.add(topic="not-routed", value=b"r1")              # 1 no route, no __default__
    req.records.add(topic="bad topic", value=b"r2")               # 2 invalid name
    req.records.add(topic=small, value=b"x" * 50_000)             # 3 larger than c2 accepts
    req.records.add(topic=dead, value=b"r4")                      # 4 cluster unreachable past its delivery timeout
    req.records.add(topic=ok, value=b"r5", partition=7)           # 5 the topic has 3 partitions
    req.records.add(topic=ok, value=b"r6")                        # 6 ok
    req.records.add(topic=ok, value=b"m" * 1_000_000)             # 7 ok: under Kafka's default limit (1,048,588)
    [resp] = produce(sc.target, [req]).values()
    assert resp.ok_count == 3
    assert [(e.index, e.code) for e in resp.errors] == [
        (1, E.ERROR_CODE_NO_ROUTE), (2, E.ERROR_CODE_INVALID_TOPIC), (3, E.ERROR_CODE_RECORD_TOO_LARGE),
        (4, E.ERROR_CODE_CLUSTER_UNAVAILABLE), (5, E.ERROR_CODE_UNKNOWN_PARTITION)]
    messages = {e.index: e.message for e in resp.errors}
    # Each names its subject: the topic, the cluster, the size and the limit.
    assert messages[1] == "topic 'not-routed': no producer route for it and no __default__ route (mapping revision " \
        f"{resp.mapping_revision})"
    assert messages[2].startswith("invalid topic name 'bad topic': ")
    assert messages[3] == (f"cluster 'c2': topic '{small}': the record is 50000 bytes (key, value and headers), over "
                           "the producer's message.max.bytes of 20000; raise it in the cluster's config (and the "
                           "topic's max.message.bytes on its brokers)")
    assert messages[4].startswith(f"cluster 'gone': topic '{dead}': ") and "_MSG_TIMED_OUT" in messages[4]
    assert messages[5].startswith(f"cluster 'c1': topic '{ok}': ") and "_UNKNOWN_PARTITION" in messages[5]
    assert sorted(len(m.value()) for m in read_all(sandbox.clusters[0].bootstrap, ok, 3)) == [2, 2, 1_000_000]


def _raw_call(target: str, requests: list[bytes]) -> tuple[list[bytes], grpc.RpcError | None]:
    with grpc.insecure_channel(target) as ch:
        call = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")
        out: list[bytes] = []
        try:
            for r in call(iter(requests), timeout=60):
                out.append(r)
        except grpc.RpcError as e:
            return out, e
    return out, None


def test_malformed_bytes_end_only_their_stream(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    good = [batch(i, [(topic, f"good-{i}-{j}") for j in range(50)]) for i in range(40)]
    results: dict[str, Any] = {}

    def steady() -> None:
        results["good"] = produce(sc.target, good)

    t = threading.Thread(target=steady)
    t.start()
    ok = batch(1, [(topic, "before-garbage")]).SerializeToString()
    responses, error = _raw_call(sc.target, [ok, b"\x12\x05ab", ok])
    t.join()
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("malformed request: length-delimited field runs past the end of its message "
                               "(at byte 2)")
    # the batch submitted before the garbage was still answered, and nothing after it was read
    assert [mesh_pb2.ProduceResponse.FromString(r).ok_count for r in responses] == [1]
    assert sorted(results["good"]) == list(range(40)) and all(r.ok_count == 50 for r in results["good"].values())
    assert sc.alive()
    values = sorted(m.value() for m in read_all(sandbox.clusters[0].bootstrap, topic, 40 * 50 + 1))
    assert values == sorted([b"before-garbage"] + [f"good-{i}-{j}".encode() for i in range(40) for j in range(50)])


def test_thousands_of_fuzzed_requests_never_crash_the_sidecar(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    rnd = random.Random(2024)
    sent = refused = 0
    with grpc.insecure_channel(sc.target) as ch:
        call = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")
        for _ in range(300):
            requests = []
            for i in range(10):
                raw = bytearray(batch(i, [(rnd.choice([topic, "x", ""]), str(j)) for j in range(rnd.randrange(4))])
                                .SerializeToString())
                if rnd.random() < 0.5 and raw:
                    for _ in range(rnd.randrange(1, 4)):
                        raw[rnd.randrange(len(raw))] = rnd.randrange(256)
                elif rnd.random() < 0.2:
                    raw = bytearray(rnd.randbytes(rnd.randrange(64)))
                requests.append(bytes(raw))
            sent += len(requests)
            try:
                for _ in call(iter(requests), timeout=30):
                    pass
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                refused += 1
    assert sent == 3000 and refused > 50
    assert sc.alive()
    [resp] = produce(sc.target, [batch(1, [(topic, "after-fuzz")])]).values()
    assert resp.ok_count == 1


@pytest.mark.parametrize("first", [b"", b"\x08\x01"])
def test_a_stream_with_only_valid_empty_batches_is_answered(sandbox: Sandbox, sidecar_factory: Any,
                                                            first: bytes) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    responses, error = _raw_call(sc.target, [first])
    assert error is None
    [resp] = [mesh_pb2.ProduceResponse.FromString(r) for r in responses]
    assert (resp.ok_count, list(resp.errors)) == (0, [])
