"""The Kafka side of a move against a real cluster: low and end offsets, every group's committed offsets for a topic
(from Kafka, whatever the group's protocol), and the lag to a fence."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from sidecar.dev.sandbox import Sandbox
from sidecar.manage import drain
from sidecar.mapping.model import Cluster
from tests.integration.kafka_helpers import create_topic


def test_offsets_committed_offsets_and_lag_to_the_fence(sandbox: Sandbox) -> None:
    boot = sandbox.clusters[0].bootstrap
    cluster = Cluster("c1", boot)
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    create_topic(boot, topic, partitions=3)
    p = Producer({"bootstrap.servers": boot})
    for i in range(30):
        p.produce(topic, value=str(i).encode(), partition=0 if i < 20 else 1)     # partition 2 stays empty
    assert p.flush(30) == 0
    fence = drain.offsets(cluster, topic)
    assert (fence.low, fence.end) == ({0: 0, 1: 0, 2: 0}, {0: 20, 1: 10, 2: 0})

    done, half = f"done-{uuid.uuid4().hex[:6]}", f"half-{uuid.uuid4().hex[:6]}"
    reader = Consumer({"bootstrap.servers": boot, "group.id": done, "group.protocol": "consumer",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False})
    reader.subscribe([topic])
    got = 0
    while got < 30:
        got += sum(1 for m in reader.consume(100, 1.0) if m.error() is None)
    reader.commit(asynchronous=False)
    reader.close()
    partial = Consumer({"bootstrap.servers": boot, "group.id": half, "enable.auto.commit": False})
    partial.commit(offsets=[TopicPartition(topic, 0, 15)], asynchronous=False)
    partial.close()

    groups = drain.committed(cluster, topic)
    assert groups[done] == {0: 20, 1: 10} and groups[half] == {0: 15}
    assert {g: v for g, v in drain.lag(fence.end, fence.low, groups).items() if g in (done, half)} == {
        half: {0: 5, 1: 10}}
