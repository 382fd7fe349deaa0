"""The direct alternative the produce benchmarks compare with: confluent-kafka's produce() per record with a delivery
callback, as an application writes it (on a full queue, serve callbacks and try again), then a flush."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer


class CountingProducer:
    """A confluent-kafka Producer whose delivery callback counts the records acknowledged without error."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.producer = Producer(config)
        self.delivered = 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1

    def produce_batches(self, topic: str, value: bytes, keys: list[bytes], batches: int) -> None:
        """batches x len(keys) records, a poll(0) after each batch, then a flush; asserts every one was delivered."""
        p, before = self.producer, self.delivered
        for _ in range(batches):
            for k in keys:
                while True:
                    try:
                        p.produce(topic, value, k, on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        p.poll(0.01)
            p.poll(0)
        p.flush(60)
        assert self.delivered - before == batches * len(keys), (self.delivered - before, batches * len(keys))
