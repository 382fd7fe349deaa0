"""Group consumers of a cluster of the mapping, as Subscribe streams and routers build them: librdkafka's settings
for the consuming layer, and the prefetch bounds that keep a consumer's memory in proportion to what it may hold."""

from __future__ import annotations

import meshcore
from sidecar.clientconf import at_least, client_defaults
from sidecar.mapping.model import Cluster

#: librdkafka properties of producers only: left out of a cluster's config when it builds a consumer.
PRODUCER_ONLY = frozenset({
    "acks", "request.required.acks", "linger.ms", "queue.buffering.max.ms", "batch.num.messages", "batch.size",
    "compression.type", "compression.codec", "compression.level", "enable.idempotence", "message.timeout.ms",
    "delivery.timeout.ms", "partitioner", "queue.buffering.max.messages", "queue.buffering.max.kbytes",
    "message.send.max.retries", "retries", "enable.gapless.guarantee", "transactional.id", "transaction.timeout.ms",
    "sticky.partitioning.linger.ms", "request.timeout.ms",
})


#: How soon librdkafka looks again at a partition whose consumer still holds prefetched records
#: (fetch.queue.backoff.ms, 1 s by default). With a prefetch of "fetch again once the queue is empty" the next fetch
#: goes out at most this long after the last record is taken. A stream out of credit has its partitions paused (see
#: poller.py), so only consumers being read wake this often.
PREFETCH_BACKOFF_MS = 1


def _has_fetch_backoff(version: str) -> bool:
    """fetch.queue.backoff.ms came with librdkafka 2.2."""
    return at_least(version, 2, 2)


def group_protocol(version: str | None = None) -> dict[str, str]:
    """The consumer group protocol by default: KIP-848's, production-ready from librdkafka 2.12 (assignment computed
    by the broker, per member and incremental: a member joining or leaving moves only the partitions it takes or
    gives, and nobody stops). A cluster's config may set "group.protocol": "classic" (brokers before Kafka 4.0)."""
    if at_least(version or meshcore.librdkafka_version(), 2, 12):
        return {"group.protocol": "consumer"}
    return {}


def prefetch(credit_bytes: int, fetch_backoff: bool | None = None) -> dict[str, str]:
    """librdkafka's prefetch bounds for one consumer of a stream.

    A fetch response is parsed whole the moment it arrives: each of its records becomes a queued message of about
    240 bytes besides its payload, and the response's buffer stays allocated until its last record is taken. What a
    consumer holds is therefore set by how large one response may be and by whether a second one is fetched while
    the first is still queued, not by the queue bounds alone. So: fetch again only once the queue is empty
    (queued.min.messages 1; looked at every PREFETCH_BACKOFF_MS), and a response of at most queued.max.messages.kbytes
    (a 64th of the stream's byte credit, 256 KiB-4 MiB; librdkafka caps fetch.max.bytes with it, though never below
    message.max.bytes, 1 MB by default, and a broker always sends a first record batch whole). Measured with 20
    streams x 3 clusters over 1 MB record batches, this holds about 20 MiB less than fetching again below 1,000
    queued records, at about the same catch-up rate.

    With a librdkafka older than 2.2 (a core built against the system's), which waits about a second before it looks
    again at a partition over its bounds, the payload bound is the whole byte credit (1-16 MiB) and the count bound
    librdkafka's default: smaller ones turn a catch-up into stop-and-go."""
    if fetch_backoff is None:
        fetch_backoff = _has_fetch_backoff(meshcore.librdkafka_version())
    if not fetch_backoff:
        return {"queued.max.messages.kbytes": str(max(1024, min(16384, credit_bytes // 1024)))}
    return {
        "queued.max.messages.kbytes": str(max(256, min(4096, credit_bytes // 64 // 1024))),
        "queued.min.messages": "1",
        "fetch.queue.backoff.ms": str(PREFETCH_BACKOFF_MS),
    }



def create(cluster: Cluster, group: str, reset: str, commit_interval_ms: int,
           extra: dict[str, str] | None = None) -> meshcore.Consumer:
    """A consumer of cluster in group, not subscribed yet: offsets are stored by the caller (at-least-once: only
    what was processed) and committed every commit_interval_ms, and when the consumer leaves a partition or closes.
    reset: where a partition the group never committed starts ("earliest" or "latest"). extra: the caller's own
    settings (prefetch bounds), over everything else."""
    # The registry's per-cluster config serves producers and consumers alike; producer-only properties would only
    # make librdkafka warn on every consumer.
    config = {k: v for k, v in cluster.config.items() if k not in PRODUCER_ONLY}
    # Defaults the cluster's config may change: client_defaults() (log level, metrics push), and the group protocol:
    # KIP-848's "consumer" where the core's librdkafka has it (2.12 and later), "classic" for a cluster whose
    # brokers are older than Kafka 4.0.
    return meshcore.create_consumer(cluster.name, {
        **client_defaults(), **group_protocol(), **config, "bootstrap.servers": cluster.bootstrap,
        "group.id": group,
        "auto.offset.reset": reset, "enable.auto.commit": "true", "enable.auto.offset.store": "false",
        "auto.commit.interval.ms": str(commit_interval_ms),
        **(extra or {}),
    })
