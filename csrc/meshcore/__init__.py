"""meshcore: kafka-mesh's native data plane (Cython over librdkafka).

It imports nothing of the control plane (the `sidecar` package); the control plane calls it through the names
exported here.
"""

from __future__ import annotations

from meshcore import consumer as _consumer
from meshcore import produce as _produce
from meshcore import producer as _producer
from meshcore import routes as _routes
from meshcore import wire as _wire
from meshcore.consumer import Consumer, create_consumer
from meshcore.errors import ConfigError, CoreError, HandleClosedError, KafkaError, WireError
from meshcore.produce import ProduceStream, open_stream
from meshcore.producer import Producer, create_producer, librdkafka_version
from meshcore.routes import RouteTable, build_route_table
from meshcore.wire import decode_produce_request, encode_records

#: True in the debug build (KAFKA_MESH_DEBUG=1 at build time), which counts C handles.
DEBUG: bool = _producer.debug_build


def debug_counts() -> dict[str, tuple[int, int]]:
    """Created/destroyed counts per kind of C handle; all zero in the release build."""
    counts: dict[str, tuple[int, int]] = {}
    for module in (_consumer, _produce, _producer, _routes, _wire):
        for kind, (created, freed) in module._debug_counts().items():
            c0, f0 = counts.get(kind, (0, 0))
            counts[kind] = (c0 + created, f0 + freed)
    return counts


__all__ = [
    "ConfigError", "Consumer", "CoreError", "HandleClosedError", "KafkaError", "ProduceStream", "Producer",
    "RouteTable", "WireError", "DEBUG", "build_route_table", "create_consumer", "create_producer", "debug_counts",
    "decode_produce_request", "encode_records", "librdkafka_version", "open_stream",
]
