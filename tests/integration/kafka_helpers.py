"""Helpers for integration tests: build requests with the protobuf runtime, read topics back with confluent-kafka."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sidecar.api.kafkamesh.v1 import mesh_pb2


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=30)


def request(batch_id: int, topic: str, ids: range, **extra: Any) -> bytes:
    req = mesh_pb2.ProduceRequest(batch_id=batch_id)
    for i in ids:
        req.records.add(topic=topic, key=f"k{i}".encode(), value=f"id-{i}".encode(), **extra)
    return req.SerializeToString()


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """Every record of topic, read from the beginning by a fresh group, until `expected` arrived or timeout."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    out.append(m)
        # A short extra wait catches records beyond the expected count (duplicates, strays).
        out.extend(m for m in c.consume(500, 1.0) if m.error() is None)
    finally:
        c.close()
    return out


def group_type(bootstrap: str, group: str) -> str:
    """The protocol a consumer group runs, as the broker describes it: "CONSUMER" (KIP-848) or "CLASSIC"."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return str(description.type.name)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in tps}


def produce_direct(bootstrap: str, topic: str, values: list[str]) -> None:
    """Write values (each also the key) to topic with confluent-kafka, and wait until every one is acknowledged."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failed: list[Any] = []
    for v in values:
        p.produce(topic, key=v.encode(), value=v.encode(), on_delivery=lambda err, _m: err and failed.append(err))
    assert p.flush(30) == 0 and not failed, failed
