"""Reading a native Produce stream's answers in a test, as the servicer does: wait on its eventfd, then drain."""

from __future__ import annotations

import select
import time

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2


def responses(stream: meshcore.ProduceStream, count: int, timeout: float = 10) -> list[mesh_pb2.ProduceResponse]:
    """Up to count decoded responses, or what arrived within timeout seconds."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        select.select([stream.fileno()], [], [], 0.2)
        out += stream.drain()
    return [mesh_pb2.ProduceResponse.FromString(raw) for raw in out]
