"""The librdkafka settings the sidecar gives every client it makes, producers and consumers alike, before a cluster's
own config (from the registry) overrides them; and the version checks that decide them."""

from __future__ import annotations

import meshcore


def at_least(version: str, major: int, minor: int) -> bool:
    """Whether a librdkafka version string ("2.16.0") is major.minor or later."""
    have = tuple(int(x) for x in version.split(".")[:2])
    return have >= (major, minor)


def client_defaults(version: str | None = None) -> dict[str, str]:
    """log_level 4 (warnings and worse reach the sidecar log; a cluster's config may raise it, 7 with "debug"), and,
    from librdkafka 2.4, enable.metrics.push off: with it on (librdkafka's default, KIP-714) every client keeps
    eight HDR histograms per broker connection, about 10 KB each, whether or not the cluster asks for client
    metrics: 25 MB for 20 Subscribe streams over 3 clusters. The sidecar's own metrics are the ones to read; a
    cluster whose brokers collect client metrics may turn it back on in its config."""
    out = {"log_level": "4"}
    if at_least(version or meshcore.librdkafka_version(), 2, 4):
        out["enable.metrics.push"] = "false"
    return out


#: Every producer the mesh makes (the sidecar's, the router's), before a cluster's own config overrides it.
PRODUCER_DEFAULTS: dict[str, str] = {
    "enable.idempotence": "true",
    "acks": "all",
    # The Java client's partitioner: a key lands on the same partition whichever language produced it.
    "partitioner": "murmur2_random",
    "linger.ms": "5",
    # Kafka's own default limit (the brokers' message.max.bytes, a topic's max.message.bytes), not librdkafka's
    # 1,000,000: a 1,000,000-byte value is a record Kafka takes. A topic with a lower limit is checked per record.
    "message.max.bytes": "1048588",
    # Large enough that the per-stream in-flight bound stops reading long before a queue fills: submit then never
    # waits for Kafka on the event loop.
    "queue.buffering.max.messages": "10000000",
    "queue.buffering.max.kbytes": "2097151",
    **client_defaults(),
}
