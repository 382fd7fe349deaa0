"""The core consumer's native batch: records polled and encoded as a SubscribeResponse with no Python object per
record, grouped by partition, within a byte budget."""

from __future__ import annotations

import time

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic


def _produce(bootstrap: str, topic: str, requests: list[mesh_pb2.ProduceRequest]) -> None:
    p = meshcore.create_producer("p", {"bootstrap.servers": bootstrap, "linger.ms": "1"})
    try:
        for r in requests:
            p.produce_request(r.SerializeToString())
        assert p.flush(30_000) == 0 and p.failed == 0
    finally:
        p.close()


def _consumer(bootstrap: str, topic: str) -> meshcore.Consumer:
    c = meshcore.create_consumer("c", {"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                                       "auto.offset.reset": "earliest", "enable.auto.commit": "false"})
    c.subscribe([topic])
    return c


def test_poll_batch_encodes_every_field_grouped_by_partition(sandbox: Sandbox, topic: str) -> None:
    bootstrap = sandbox.clusters[0].bootstrap
    create_topic(bootstrap, topic, partitions=3)
    req = mesh_pb2.ProduceRequest(batch_id=1)
    for i in range(90):
        rec = req.records.add(topic=topic, value=f"v{i}".encode(), partition=i % 3, timestamp_ms=1_700_000_000_000 + i)
        if i % 2:
            rec.key = f"k{i}".encode()
        if i % 10 == 0:
            rec.headers.add(key="h", value=b"x")
            rec.headers.add(key="null")
    req.records.add(topic=topic, partition=0)                       # null key, null value
    _produce(bootstrap, topic, [req])
    c = _consumer(bootstrap, topic)
    seen: dict[tuple[int, int], mesh_pb2.ConsumedRecord] = {}
    try:
        deadline = time.monotonic() + 60
        while len(seen) < 91 and time.monotonic() < deadline:
            encoded, runs, n = meshcore.poll_batch(c, "c1", 500, 1 << 20, 500)
            if encoded is None:
                continue
            resp = mesh_pb2.SubscribeResponse.FromString(encoded)
            groups = resp.records.partitions
            assert n == sum(len(g.records) for g in groups)
            assert [(g.topic, g.partition, g.records[0].offset, g.records[-1].offset) for g in groups] == runs
            for g in groups:
                assert (g.cluster, g.topic) == ("c1", topic)
                offsets = [r.offset for r in g.records]
                assert offsets == sorted(offsets)
                for r in g.records:
                    seen[(g.partition, r.offset)] = r
    finally:
        c.close()
    assert len(seen) == 91
    by_value = {r.value: r for r in seen.values() if r.HasField("value")}
    assert sorted(by_value) == sorted(f"v{i}".encode() for i in range(90))
    assert by_value[b"v3"].key == b"k3" and not by_value[b"v4"].HasField("key")
    assert by_value[b"v7"].timestamp_ms == 1_700_000_000_007
    assert [(h.key, h.value if h.HasField("value") else None) for h in by_value[b"v10"].headers] == [
        ("h", b"x"), ("null", None)]
    [null] = [r for r in seen.values() if not r.HasField("value")]
    assert not null.HasField("key")


def test_a_record_over_the_byte_budget_waits_for_the_next_call(sandbox: Sandbox, topic: str) -> None:
    bootstrap = sandbox.clusters[0].bootstrap
    create_topic(bootstrap, topic, partitions=1)
    req = mesh_pb2.ProduceRequest(batch_id=1)
    for i in range(5):
        req.records.add(topic=topic, value=bytes([i]) * 100)
    _produce(bootstrap, topic, [req])
    c = _consumer(bootstrap, topic)
    got: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < 5 and time.monotonic() < deadline:
            encoded, runs, n = meshcore.poll_batch(c, "c1", 500, 250, 500)       # room for two 100-byte values a call
            if encoded is None:
                continue
            assert n <= 2
            resp = mesh_pb2.SubscribeResponse.FromString(encoded)
            got += [r.value[0] for g in resp.records.partitions for r in g.records]
    finally:
        c.close()
    assert got == [0, 1, 2, 3, 4]       # nothing lost or reordered by holding a record back


def test_a_record_larger_than_the_whole_budget_is_sent_alone(sandbox: Sandbox, topic: str) -> None:
    bootstrap = sandbox.clusters[0].bootstrap
    create_topic(bootstrap, topic, partitions=1)
    req = mesh_pb2.ProduceRequest(batch_id=1)
    req.records.add(topic=topic, value=b"B" * 1000)
    req.records.add(topic=topic, value=b"s")
    _produce(bootstrap, topic, [req])
    c = _consumer(bootstrap, topic)
    sizes: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(sizes) < 2 and time.monotonic() < deadline:
            encoded, runs, n = meshcore.poll_batch(c, "c1", 500, 100, 500)
            if encoded is not None:
                resp = mesh_pb2.SubscribeResponse.FromString(encoded)
                sizes += [len(r.value) for g in resp.records.partitions for r in g.records]
                assert n == 1
    finally:
        c.close()
    assert sizes == [1000, 1]        # never stuck behind a budget it can never fit
