"""The native core against real Kafka clusters: produce through librdkafka with the GIL released, read back, and
the idempotent producer and consumer group of the system librdkafka against the sandbox's Kafka release."""

from __future__ import annotations

import threading
import time

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import committed, create_topic, read_all, request

PRODUCER = {"enable.idempotence": "true", "acks": "all", "linger.ms": "5"}


def test_core_producer_writes_every_record_to_each_of_two_clusters(sandbox: Sandbox, topic: str) -> None:
    for cluster in sandbox.clusters[:2]:
        create_topic(cluster.bootstrap, topic)
        p = meshcore.create_producer(cluster.name, {"bootstrap.servers": cluster.bootstrap, **PRODUCER})
        try:
            for batch in range(4):
                ids = range(batch * 250, (batch + 1) * 250)
                assert p.produce_request(request(batch, topic, ids, timestamp_ms=1_700_000_000_000)) == (batch, 250, 0)
            assert p.flush(30_000) == 0
            assert (p.delivered, p.failed) == (1000, 0)
        finally:
            p.close()
        got = read_all(cluster.bootstrap, topic, 1000)
        assert sorted(m.value() for m in got) == sorted(f"id-{i}".encode() for i in range(1000))
        assert all(m.key() == b"k" + m.value()[3:] for m in got)
        assert {m.timestamp()[1] for m in got} == {1_700_000_000_000}


def test_headers_null_keys_and_explicit_partitions_survive_the_round_trip(sandbox: Sandbox, topic: str) -> None:
    cluster = sandbox.clusters[0]
    create_topic(cluster.bootstrap, topic, partitions=3)
    req = mesh_pb2.ProduceRequest(batch_id=9)
    rec = req.records.add(topic=topic, value=b"with-headers", partition=2)
    rec.headers.add(key="trace", value=b"abc")
    rec.headers.add(key="empty")
    rec.headers.add(key="trace", value=b"def")
    req.records.add(topic=topic, partition=1)                    # null key, null value
    req.records.add(topic=topic, key=b"", value=b"empty-key", partition=0)
    p = meshcore.create_producer("c1", {"bootstrap.servers": cluster.bootstrap, **PRODUCER})
    try:
        assert p.produce_request(req.SerializeToString()) == (9, 3, 0)
        assert p.flush(30_000) == 0 and p.delivered == 3
    finally:
        p.close()
    got = {m.partition(): m for m in read_all(cluster.bootstrap, topic, 3)}
    assert got[2].value() == b"with-headers"
    assert got[2].headers() == [("trace", b"abc"), ("empty", None), ("trace", b"def")]
    assert (got[1].key(), got[1].value()) == (None, None)
    assert (got[0].key(), got[0].value()) == (b"", b"empty-key")


def test_produce_loop_releases_the_gil(sandbox: Sandbox, topic: str) -> None:
    """While one thread is inside produce_request (held up by a small librdkafka queue, so it must wait for
    deliveries), another Python thread keeps running."""
    cluster = sandbox.clusters[0]
    create_topic(cluster.bootstrap, topic)
    p = meshcore.create_producer("c1", {"bootstrap.servers": cluster.bootstrap, **PRODUCER,
                                        "queue.buffering.max.messages": "500"})
    raw = request(1, topic, range(20_000))
    result: list[object] = []
    done = threading.Event()

    def produce() -> None:
        result.append(p.produce_request(raw))
        done.set()

    try:
        t = threading.Thread(target=produce)
        started = time.monotonic()
        t.start()
        ticks = 0
        while not done.is_set():
            ticks += 1
            time.sleep(0)
        elapsed = time.monotonic() - started
        t.join()
        assert result == [(1, 20_000, 0)]
        assert p.flush(30_000) == 0 and p.delivered == 20_000
    finally:
        p.close()
    # The call waited on the broker for a while; the other thread ran throughout.
    assert elapsed > 0.05, f"produce_request returned too fast ({elapsed:.3f}s) for this check to mean anything"
    assert ticks > 1000, f"the main thread ran only {ticks} times in {elapsed:.2f}s: the GIL was held"


def test_idempotent_producer_and_consumer_group_work_on_this_kafka(sandbox: Sandbox, topic: str) -> None:
    """The system librdkafka's idempotent producer and a consumer group, on the sandbox's Kafka: a group member
    commits what it read, and the next member of the group resumes exactly after it."""
    cluster = sandbox.clusters[1]
    create_topic(cluster.bootstrap, topic, partitions=3)
    p = meshcore.create_producer("c2", {"bootstrap.servers": cluster.bootstrap, **PRODUCER})
    try:
        p.produce_request(request(1, topic, range(600)))
        assert p.flush(30_000) == 0 and (p.delivered, p.failed) == (600, 0)
    finally:
        p.close()
    group = f"g-{topic}"
    conf = {"bootstrap.servers": cluster.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": "false"}
    first = meshcore.create_consumer("first", conf)
    seen: list[tuple[int, int, bytes]] = []
    try:
        first.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(seen) < 300 and time.monotonic() < deadline:
            seen += [(r[1], r[2], r[4]) for r in first.poll_records(300 - len(seen), 500)]
        assert len(seen) == 300
        first.commit()
    finally:
        first.close()
    offsets = committed(cluster.bootstrap, group, topic, 3)
    assert sum(max(o, 0) for o in offsets.values()) == 300
    second = meshcore.create_consumer("second", conf)
    rest: list[tuple[int, int, bytes]] = []
    try:
        second.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(rest) < 300 and time.monotonic() < deadline:
            rest += [(r[1], r[2], r[4]) for r in second.poll_records(500, 500)]
        rest += [(r[1], r[2], r[4]) for r in second.poll_records(500, 1000)]
    finally:
        second.close()
    values = sorted(v for _, _, v in seen + rest)
    assert values == sorted(f"id-{i}".encode() for i in range(600))   # every id once: nothing lost, nothing again
