"""The metrics listener's address and the families read at scrape time (no server)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.errors import UsageError
from sidecar.metrics import (
    DEFAULT_TOPIC,
    ClientStatistics,
    Family,
    MetricsServer,
    ProducerCounts,
    TopicLabels,
    parse_listen,
    scrape,
)

pytestmark = pytest.mark.unit


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)       # told: any address
    assert parse_listen("localhost:9464") == ("localhost", 9464)
    for bad in ("9464", "host:", "127.0.0.1:0", "127.0.0.1:70000", "example.org:9464", "127.0.0.1:x"):
        with pytest.raises(UsageError, match="invalid --metrics-listen"):
            parse_listen(bad)


def test_families_are_read_at_each_scrape_and_one_failing_spares_the_others() -> None:
    count = [0]

    def broken() -> list[tuple[tuple[str, ...], float]]:
        raise RuntimeError("boom")

    server = MetricsServer("127.0.0.1:1", [
        Family("records_delivered", "Records acknowledged.", "counter", ("cluster",),
               lambda: [(("c1",), count[0]), (("c2",), 2.0)]),
        Family("broken", "Never there.", "gauge", (), broken),
        Family("streams", "Streams open.", "gauge", (), lambda: [((), 3)]),
    ])
    count[0] = 41
    text = scrape(server.registry).decode()
    samples = {(s.name, tuple(s.labels.values())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("kafka_mesh_records_delivered_total", ("c1",))] == 41
    assert samples[("kafka_mesh_records_delivered_total", ("c2",))] == 2
    assert samples[("kafka_mesh_streams", ())] == 3
    assert not any(name.startswith("kafka_mesh_broken") for name, _ in samples)
    count[0] = 42
    assert b'kafka_mesh_records_delivered_total{cluster="c1"} 42.0' in scrape(server.registry)


def test_topic_labels_are_bounded_and_keep_their_slots() -> None:
    labels = TopicLabels(3)
    first = labels.admit(["b", "a"])
    assert [labels.name(s) for s in (2, 3)] == ["b", "a"] and len(first) == 2
    assert labels.admit(["a", "b"]) is first                        # nothing new: the same slots in force
    labels.admit(["c", "d", "e"])                                   # the limit: only c gets one
    assert (len(labels), labels.name(4), labels.name(5), labels.name(1)) == (3, "c", DEFAULT_TOPIC, DEFAULT_TOPIC)
    assert labels.admit(["a"]) is labels.slots
    assert len(TopicLabels(0).admit(["x"])) == 0                   # 0: no topic by name
    for bad in (-1, 65535, 10**9):
        with pytest.raises(UsageError, match="invalid --metrics-topics"):
            TopicLabels(bad)


class _Client:
    """What ClientStatistics reads of a producer: statistics() hands out each JSON once."""

    def __init__(self, *docs: Any) -> None:
        self.docs = list(docs)

    def statistics(self) -> bytes | None:
        return self.docs.pop(0) if self.docs else None


def test_librdkafka_statistics_become_families() -> None:
    doc = {"time": int(time.time()), "msg_cnt": 7, "msg_size": 700, "brokers": {
        "127.0.0.1:9092/bootstrap": {"nodeid": -1, "state": "UP", "rtt": {"cnt": 1, "avg": 5}},
        "127.0.0.1:9092/1": {"nodeid": 1, "state": "UP", "rtt": {"cnt": 4, "avg": 2500, "p99": 9000},
                             "waitresp_cnt": 2, "outbuf_cnt": 1},
        "127.0.0.1:9093/2": {"nodeid": 2, "state": "DOWN", "rtt": {"cnt": 0, "avg": 0, "p99": 0}}}}
    clients = {"c1": _Client(json.dumps(doc).encode()), "c2": _Client(b"{not json", None)}
    families = {f.name: f for f in ClientStatistics(lambda: clients).families()}
    assert list(families["librdkafka_queue_messages"].read()) == [(("c1",), 7.0)]
    assert list(families["librdkafka_queue_bytes"].read()) == [(("c1",), 700.0)]     # the JSON kept, read again
    assert list(families["librdkafka_broker_up"].read()) == [(("c1", "1"), 1.0), (("c1", "2"), 0.0)]
    # a window without a request has no round trip, not one of 0 s
    assert list(families["librdkafka_broker_rtt_avg_seconds"].read()) == [(("c1", "1"), 0.0025)]
    assert list(families["librdkafka_broker_rtt_p99_seconds"].read()) == [(("c1", "1"), 0.009)]
    assert list(families["librdkafka_broker_requests_waiting"].read()) == [(("c1", "1"), 2.0), (("c1", "2"), 0.0)]
    del clients["c1"]                                               # a cluster that left is forgotten
    assert list(families["librdkafka_queue_messages"].read()) == []


class _Counted:
    """What ProducerCounts reads of a producer."""

    def __init__(self, name: str, delivered: int) -> None:
        self.name, self.n = name, delivered

    def delivery_stats(self) -> dict[str, Any]:
        return {"delivered": self.n, "failed": 0, "bytes": 10 * self.n, "codes": {}, "latency": [self.n],
                "latency_sum_s": 0.0}

    def topic_stats(self) -> dict[int, tuple[int, int, int]]:
        return {2: (self.n, 10 * self.n, 0)}


def test_producer_counts_stay_monotonic_while_a_producer_closes() -> None:
    counts = ProducerCounts()
    old, new = _Counted("c1", 5), _Counted("c1", 3)
    assert counts.delivery([old])["c1"]["delivered"] == 5
    counts.closing(old)                                             # retired: read live, once even if listed twice
    assert counts.delivery([old, new])["c1"]["delivered"] == 8
    counts.closed(old)
    assert counts.delivery([new])["c1"]["delivered"] == 8
    assert counts.topics([new]) == {"c1": {2: (8, 80, 0)}}
