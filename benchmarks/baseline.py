"""The direct alternative the produce benchmarks compare with: confluent-kafka's produce() per record with a delivery
callback, as an application writes it (on a full queue, serve callbacks and try again), then a flush."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer


def produce_batches(p: Producer, topic: str, value: bytes, keys: list[bytes], batches: int,
                    on_delivery: Callable[[Any, Any], None]) -> None:
    """batches x len(keys) records, a poll(0) after each batch, then a flush (up to 60 s)."""
    for _ in range(batches):
        for k in keys:
            while True:
                try:
                    p.produce(topic, value, k, on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.01)
        p.poll(0)
    p.flush(60)
