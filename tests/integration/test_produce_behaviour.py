"""What an app relies on beyond routing: discoverability (reflection, health), the Java client's partitioning of
keyed records, and backpressure when a cluster is slow."""

from __future__ import annotations

import time
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2, mesh_pb2_grpc
from sidecar.dev import ports
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace, produce


def test_reflection_lists_the_mesh_service_and_health(sandbox: Sandbox, sidecar_factory: Any) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    with grpc.insecure_channel(sc.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        [resp] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        [desc] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="kafkamesh.v1.Mesh")])))
    assert {"kafkamesh.v1.Mesh", "grpc.health.v1.Health"} <= names
    assert desc.file_descriptor_response.file_descriptor_proto   # a client can build its stubs from this


def _murmur2(data: bytes) -> int:
    """Kafka's Java client partitioner hash (org.apache.kafka.common.utils.Utils.murmur2)."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = length % 4
    tail = data[length - rest:]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def test_keyed_records_land_on_the_java_clients_partition(sandbox: Sandbox, sidecar_factory: Any,
                                                          topic: str) -> None:
    ns = new_namespace()
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=6)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    [resp] = produce(sc.target, [batch(1, [(topic, f"user-{i}") for i in range(300)])]).values()
    assert resp.ok_count == 300
    got = read_all(sandbox.clusters[0].bootstrap, topic, 300)
    assert len(got) == 300
    for m in got:
        assert m.partition() == (_murmur2(m.key()) & 0x7FFFFFFF) % 6, m.key()


def test_a_stream_over_its_inflight_bound_is_not_read_until_acks_free_room(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    """With room for one batch in flight, batches to a cluster that takes 1.5 s to fail each are read, and so
    answered, one at a time."""
    ns = new_namespace()
    dead = ports.allocate(1)[0]
    apply(sandbox, ns, {"clusters": {"slow": {"bootstrap": f"127.0.0.1:{dead}",
                                              "config": {"message.timeout.ms": "1500"}}},
                        "producer": {topic: {"where": [{"sink": "slow"}]}}})
    sc = sidecar_factory(ns, "--max-inflight-bytes", "2000")
    arrivals: list[float] = []
    started = time.monotonic()

    def requests() -> Any:
        for b in range(3):
            yield batch(b, [(topic, "x" * 1500)])

    with grpc.insecure_channel(sc.target) as ch:
        for r in mesh_pb2_grpc.MeshStub(ch).Produce(requests(), timeout=60):
            arrivals.append(time.monotonic() - started)
            assert [e.code for e in r.errors] == [mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE]
    assert len(arrivals) == 3
    # one at a time: each answer comes a delivery timeout after the previous one
    assert arrivals[1] - arrivals[0] > 1.2 and arrivals[2] - arrivals[1] > 1.2, arrivals
