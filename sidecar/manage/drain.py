"""The Kafka side of a topic move: where a topic's partitions end on a cluster, which consumer groups have offsets
for it there (from Kafka's own group offsets, not only the groups sidecars report), and how far each group is from
a fence: the end offsets taken once nothing writes to the cluster any more.

A group has drained a partition when its committed offset reached the fence, or when the partition holds nothing
below the fence (empty, or only records deleted by retention); a committed offset past a compaction gap counts as
what it is: consumers commit their position, which moves over gaps.

Synchronous (the CLI's), through confluent-kafka's AdminClient with the cluster's registered settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.manage.topics import TIMEOUT_S, TopicError, admin, kafka_reason
from sidecar.mapping.model import Cluster


@dataclass(frozen=True)
class Offsets:
    """Each partition's low and end offsets on one cluster."""

    low: dict[int, int]
    end: dict[int, int]


def offsets(cluster: Cluster, topic: str) -> Offsets:
    """The low (earliest) and end offsets of every partition of topic on cluster."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    client = admin(cluster)
    try:
        meta = client.list_topics(topic=topic, timeout=TIMEOUT_S).topics.get(topic)
    except Exception as e:
        raise TopicError(f"cluster {cluster.name} ({cluster.bootstrap}) did not answer: {e}") from None
    if meta is None or meta.error is not None:
        raise TopicError(f"topic {topic} is not on cluster {cluster.name}")
    out: dict[str, dict[int, int]] = {"low": {}, "end": {}}
    for name, spec in (("low", OffsetSpec.earliest()), ("end", OffsetSpec.latest())):
        try:
            got = client.list_offsets({TopicPartition(topic, p): spec for p in meta.partitions},
                                     request_timeout=TIMEOUT_S)
            for tp, future in got.items():
                out[name][tp.partition] = future.result(timeout=TIMEOUT_S).offset
        except Exception as e:
            raise TopicError(f"topic {topic} on cluster {cluster.name}: {name} offsets not read: "
                             f"{kafka_reason(e)}") from None
    return Offsets(out["low"], out["end"])


def committed(cluster: Cluster, topic: str) -> dict[str, dict[int, int]]:
    """group -> partition -> committed offset, for every consumer group of cluster with an offset for topic (classic
    and KIP-848 groups alike)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    client = admin(cluster)
    try:
        listing = client.list_consumer_groups(request_timeout=TIMEOUT_S).result(timeout=TIMEOUT_S)
    except Exception as e:
        raise TopicError(f"cluster {cluster.name}: consumer groups not listed: {kafka_reason(e)}") from None
    out: dict[str, dict[int, int]] = {}
    for group in sorted(g.group_id for g in listing.valid):
        try:
            futures = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                        request_timeout=TIMEOUT_S)
            result = futures[group].result(timeout=TIMEOUT_S)
        except Exception as e:
            raise TopicError(f"cluster {cluster.name}: offsets of group {group} not read: {kafka_reason(e)}") from None
        mine = {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic and tp.offset >= 0}
        if mine:
            out[group] = mine
    return out


def lag(fence: dict[int, int], low: dict[int, int], groups: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    """group -> partition -> records still to commit before the fence, for the partitions not drained yet (a group
    absent from the result has drained every partition)."""
    out: dict[str, dict[int, int]] = {}
    for group, offsets_ in groups.items():
        left = {}
        for partition, end in fence.items():
            start = max(offsets_.get(partition, 0), low.get(partition, 0))
            if start < end:
                left[partition] = end - start
        if left:
            out[group] = left
    return out
