"""meshcore: kafka-mesh's native data plane (Cython over librdkafka).

It imports nothing of the control plane (the `sidecar` package); the control plane calls it through the names
exported here.
"""

from __future__ import annotations

from meshcore import _linked

if _linked.SOURCE == "wheel":
    # The core links the librdkafka of the confluent-kafka wheel (setup.py). Importing confluent_kafka first loads
    # that very file, so the core's reference to it resolves to the library already in the process whichever way
    # the core was installed, and the process holds one librdkafka.
    import confluent_kafka as _confluent_kafka

    if _confluent_kafka.__version__ != _linked.CONFLUENT_KAFKA:
        raise ImportError(
            f"meshcore was built against the librdkafka of confluent-kafka {_linked.CONFLUENT_KAFKA} "
            f"({_linked.LIBRARY}), but confluent-kafka {_confluent_kafka.__version__} is installed: rebuild the core "
            "with `make build` (or `pip install --no-build-isolation -e .`)")

from meshcore import consumer as _consumer
from meshcore import produce as _produce
from meshcore import producer as _producer
from meshcore import router as _router
from meshcore import routes as _routes
from meshcore import subscribe_wire as _subscribe_wire
from meshcore import topicrules as _topicrules
from meshcore import wire as _wire
from meshcore.conf import check_config, take_logs
from meshcore.consumer import Consumer, create_consumer
from meshcore.errors import ConfigError, CoreError, HandleClosedError, KafkaError, WireError
from meshcore.produce import (
    REQUEST_RECORDS_LIMIT,
    ProduceStream,
    error_counts,
    expire_guard,
    guard_epoch,
    guard_holds,
    oldest_revision_in_flight,
    open_stream,
    received_counts,
    renew_guard,
    set_max_timestamp_ahead_ms,
    stale_guard,
)
from meshcore.producer import LATENCY_BOUNDS_S, Producer, create_producer, librdkafka_version
from meshcore.router import RouterStream, RouterTable, build_router_table, open_router_stream
from meshcore.routes import MAX_TOPIC_SLOT, RouteTable, TopicSlots, build_route_table, build_topic_slots
from meshcore.subscribe_wire import poll_batch
from meshcore.topicrules import TopicRules, build_topic_rules
from meshcore.wire import decode_produce_request, encode_records

#: True in the debug build (KAFKA_MESH_DEBUG=1 at build time), which counts C handles.
DEBUG: bool = _producer.debug_build

#: Which librdkafka the core links: "wheel" (confluent-kafka's, the default) or "system" (KAFKA_MESH_RDKAFKA=system).
LIBRDKAFKA_SOURCE: str = _linked.SOURCE

if _linked.SOURCE == "wheel" and librdkafka_version() != _confluent_kafka.libversion()[0]:
    raise ImportError(f"meshcore runs librdkafka {librdkafka_version()} but confluent-kafka "
                      f"{_confluent_kafka.__version__} runs {_confluent_kafka.libversion()[0]}: rebuild the core with "
                      "`make build`")


def debug_counts() -> dict[str, tuple[int, int]]:
    """Created/destroyed counts per kind of C handle; all zero in the release build."""
    counts: dict[str, tuple[int, int]] = {}
    for module in (_consumer, _produce, _producer, _router, _routes, _subscribe_wire, _topicrules, _wire):
        for kind, (created, freed) in module._debug_counts().items():
            c0, f0 = counts.get(kind, (0, 0))
            counts[kind] = (c0 + created, f0 + freed)
    return counts


__all__ = [
    "ConfigError", "Consumer", "CoreError", "HandleClosedError", "KafkaError", "ProduceStream", "Producer",
    "RouteTable", "TopicRules", "WireError", "DEBUG", "LIBRDKAFKA_SOURCE", "build_route_table", "build_topic_rules",
    "create_consumer",
    "create_producer", "debug_counts", "decode_produce_request", "encode_records", "librdkafka_version",
    "set_max_timestamp_ahead_ms", "REQUEST_RECORDS_LIMIT", "guard_epoch", "guard_holds", "renew_guard",
    "expire_guard", "stale_guard", "oldest_revision_in_flight",
    "open_stream", "take_logs", "check_config", "poll_batch", "RouterStream", "RouterTable", "build_router_table",
    "open_router_stream", "error_counts", "LATENCY_BOUNDS_S", "MAX_TOPIC_SLOT", "TopicSlots", "build_topic_slots",
    "received_counts",
]
