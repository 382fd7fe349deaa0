"""Topics on the mesh's clusters: create one with balanced partitions, and describe one across every cluster of the
mapping.

The seed's rule for balance: a topic has a whole number of partitions per broker, so that every broker leads the
same number of its partitions and carries the same share of its traffic. `create` therefore takes partitions per
broker (or a total that is a multiple of the broker count) and assigns replicas itself, leaders round-robin over the
brokers and followers after them, instead of leaving the spread to chance.

Synchronous (the CLI's), through confluent-kafka's AdminClient with the cluster's registered settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.clientconf import client_defaults
from sidecar.errors import MeshError, UsageError
from sidecar.mapping.model import Cluster, Mapping, check_topic

#: How long one admin request may take before the command gives up on the cluster.
TIMEOUT_S = 30.0
#: Partitions per broker when the operator says neither --partitions-per-broker nor --partitions.
DEFAULT_PER_BROKER = 2


class TopicError(MeshError):
    """Kafka refused or did not answer a topic request; the message names the topic and cluster."""


def admin(cluster: Cluster) -> Any:
    """An AdminClient of cluster, with its registered settings."""
    from confluent_kafka.admin import AdminClient

    # A metadata request for one topic would create it on a broker that auto-creates topics (librdkafka's
    # allow.auto.create.topics is true for this kind of client): describing a topic must never create it.
    return AdminClient({**client_defaults(), **cluster.config, "bootstrap.servers": cluster.bootstrap,
                        "allow.auto.create.topics": "false"})


def _brokers(admin: Any, cluster: Cluster) -> list[int]:
    try:
        metadata = admin.list_topics(timeout=TIMEOUT_S)
    except Exception as e:
        raise TopicError(f"cluster {cluster.name} ({cluster.bootstrap}) did not answer: {e}") from None
    return sorted(metadata.brokers)


def assignment(brokers: list[int], partitions: int, replication: int) -> list[list[int]]:
    """Replicas of each partition: leaders round-robin over the brokers, each partition's followers the brokers
    after its leader, so every broker leads partitions/len(brokers) partitions and holds as many replicas as any
    other."""
    n = len(brokers)
    return [[brokers[(p + r) % n] for r in range(replication)] for p in range(partitions)]


def plan_partitions(cluster: Cluster, brokers: int, per_broker: int | None, partitions: int | None,
                    exact: bool = False) -> int:
    if partitions is not None and exact:
        return partitions
    if partitions is not None:
        if partitions < 1 or partitions % brokers:
            raise UsageError(f"--partitions {partitions} is not a multiple of cluster {cluster.name}'s {brokers} "
                             f"broker(s): only a multiple gives every broker the same share; use "
                             f"{max(1, partitions // brokers) * brokers} or --partitions-per-broker K")
        return partitions
    return (per_broker or DEFAULT_PER_BROKER) * brokers


def create(cluster: Cluster, name: str, per_broker: int | None = None, partitions: int | None = None,
           replication: int | None = None, config: dict[str, str] | None = None, exact: bool = False) -> dict[str, Any]:
    """Create topic name on cluster, balanced; returns what was created (partitions, replication, leaders per
    broker). exact: partitions as given even when not a multiple of the brokers (a moved topic keeps its count, so
    that its keys keep their partitions)."""
    from confluent_kafka.admin import NewTopic

    check_topic("topic", name)
    client = admin(cluster)
    brokers = _brokers(client, cluster)
    count = plan_partitions(cluster, len(brokers), per_broker, partitions, exact)
    factor = replication if replication is not None else min(3, len(brokers))
    if not 1 <= factor <= len(brokers):
        raise UsageError(f"--replication {factor} is out of range: cluster {cluster.name} has {len(brokers)} "
                         "broker(s)")
    replicas = assignment(brokers, count, factor)
    futures = client.create_topics([NewTopic(name, count, -1, replica_assignment=replicas, config=config or {})],
                                  request_timeout=TIMEOUT_S)
    try:
        futures[name].result(timeout=TIMEOUT_S)
    except Exception as e:
        raise TopicError(f"topic {name} on cluster {cluster.name}: {kafka_reason(e)}") from None
    leaders: dict[int, int] = {}
    for r in replicas:
        leaders[r[0]] = leaders.get(r[0], 0) + 1
    return {"topic": name, "cluster": cluster.name, "partitions": count, "replication": factor,
            "brokers": len(brokers), "leaders": {str(b): n for b, n in sorted(leaders.items())}}


def kafka_reason(e: Exception) -> str:
    """The reason a Kafka call failed: its KafkaError's own text when it has one."""
    err = e.args[0] if e.args else None
    return str(getattr(err, "str", lambda: e)()) if err is not None else str(e)


@dataclass
class OnCluster:
    """What one cluster holds of a topic."""

    cluster: str
    partitions: int = 0
    leaders: dict[int, int] = field(default_factory=dict)       # broker id -> partitions it leads
    end_offsets: dict[int, int] = field(default_factory=dict)    # partition -> its end offset
    error: str = ""                                               # when the cluster did not answer

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "partitions": self.partitions,
                "leaders": {str(b): n for b, n in sorted(self.leaders.items())},
                "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
                "records": sum(self.end_offsets.values()), **({"error": self.error} if self.error else {})}


def describe(mapping: Mapping, name: str) -> tuple[list[OnCluster], dict[str, Any]]:
    """Every cluster of the mapping that has topic name (or did not answer), and the routes that name it."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    check_topic("topic", name)
    found: list[OnCluster] = []
    for cluster in (mapping.clusters[c] for c in sorted(mapping.clusters)):
        client = admin(cluster)
        try:
            meta = client.list_topics(topic=name, timeout=TIMEOUT_S).topics.get(name)
        except Exception as e:
            found.append(OnCluster(cluster.name, error=f"did not answer: {e}"))
            continue
        if meta is None or meta.error is not None:
            continue            # the cluster does not have it
        here = OnCluster(cluster.name, partitions=len(meta.partitions))
        for p in meta.partitions.values():
            here.leaders[p.leader] = here.leaders.get(p.leader, 0) + 1
        try:
            got = client.list_offsets({TopicPartition(name, p): OffsetSpec.latest() for p in meta.partitions},
                                     request_timeout=TIMEOUT_S)
            for tp, future in got.items():
                here.end_offsets[tp.partition] = future.result(timeout=TIMEOUT_S).offset
        except Exception as e:
            here.error = f"end offsets not read: {kafka_reason(e)}"
        found.append(here)
    key = mapping.route_of(name)
    routes = {"producer": key if key is not None else ("__default__" if mapping.default_sinks else None),
              "producer_sinks": list(mapping.sinks_for(name) or ()),
              "consumer": list(mapping.consumer[name]) if name in mapping.consumer else None,
              "read_from": list(mapping.clusters_for_consumer(name) or ())}
    return found, routes
