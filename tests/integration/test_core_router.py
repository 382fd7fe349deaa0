"""The router's native data path in this process (so that the AddressSanitizer build checks it): records polled
from a real cluster go through every step to a real target; hostile records (header names that are not UTF-8, null
header values, thousands of headers, empty and null keys) are routed or dead-lettered, never crash; runs settle and
report the records a target refused."""

from __future__ import annotations

import array
import time
import uuid
from typing import Any

import pytest

import meshcore
from sidecar.clientconf import PRODUCER_DEFAULTS
from sidecar.consume import consumers
from sidecar.dev.sandbox import Sandbox
from sidecar.mapping.model import Cluster
from sidecar.router.service import ROUTER_PRODUCER
from tests.integration.kafka_helpers import create_topic, produce_raw_headers, read_all
from tests.integration.router_proc import produce_records

pytestmark = pytest.mark.integration


def _route_all(stream: Any, table: Any, consumer: Any, expected: int,
               timeout: float = 60) -> tuple[list[Any], list[Any]]:
    """Route until `expected` records were polled, then until every run settled: (runs, settled)."""
    runs: list[Any] = []
    settled: list[Any] = []
    deadline = time.monotonic() + timeout
    while sum(r[5] for r in runs) < expected and time.monotonic() < deadline:
        runs += stream.route(table, consumer, 1000, 1 << 20, 200)
        consumer.take_events()
        settled += stream.drain()
    while len(settled) < len(runs) and time.monotonic() < deadline:
        time.sleep(0.05)
        settled += stream.drain()
    assert sum(r[5] for r in runs) == expected, f"polled {sum(r[5] for r in runs)} of {expected}"
    for run in runs:        # each run carries its records' offsets, first to last
        offsets = array.array("q", run[7])
        assert len(offsets) == run[5] and (offsets[0], offsets[-1]) == (run[3], run[4])
    assert len(settled) == len(runs), "every run settles"
    return runs, settled


def _consumer(sandbox: Sandbox, topic: str) -> Any:
    c1 = sandbox.clusters[0]
    consumer = consumers.create(Cluster("c1", c1.bootstrap), f"core-router-{uuid.uuid4().hex[:8]}", "earliest",
                                1000)
    consumer.subscribe([topic])
    return consumer


def test_hostile_records_are_routed_or_dead_lettered_natively(sandbox: Sandbox, topic: str) -> None:
    c1, c2, _ = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=2)
    create_topic(c2.bootstrap, f"{topic}.out", partitions=3)
    create_topic(c2.bootstrap, f"{topic}.dl", partitions=1)
    records = [
        {"value": b"plain", "key": b"k"},
        {"value": b"bad-name", "key": b"k", "headers": [("\u00ff\u00fe", b"v"), ("c", b"cust")]},
        {"value": b"null-value", "headers": [("c", None)]},                                # rekey: no value
        {"value": b"many", "key": b"", "headers": [(f"h{i}", b"x" * 10) for i in range(2000)] + [("c", b"z")]},
        {"value": b"", "headers": [("c", b"")]},                                            # empty value and key
        {"value": b"no-header"},                                                            # rekey: no header
    ]
    produce_records(c1.bootstrap, topic, records)
    # A header name that is not UTF-8 (any Kafka producer may write one): routed as it is.
    produce_raw_headers(c1.bootstrap, topic, [(b"raw-name", [(b"\xff\xfe", b"v"), (b"c", b"cust2")])])
    producer = meshcore.create_producer("c2", {**PRODUCER_DEFAULTS, "bootstrap.servers": c2.bootstrap,
                                               "message.timeout.ms": "30000"})
    consumer = _consumer(sandbox, topic)
    stream = meshcore.open_router_stream()
    try:
        steps = [("filter", None, "c", None), ("drop_header", "h7"), ("add_header", "via", b"\x00\xff"),
                 ("rekey", "c"), ("drop_header", "c"), ("sample", 1)]
        table = meshcore.build_router_table("c1", 1, [producer], ["r"], {topic: [
            {"rule": 0, "topic": f"{topic}.out", "dead_letter": f"{topic}.dl", "sinks": [(0, 3)], "steps": steps}]})
        runs, settled = _route_all(stream, table, consumer, len(records) + 1)
        assert all(failed == 0 and first == -1 for _, failed, first, _ in settled), settled
        # in, out, filtered (plain and no-header: no header c), dead-lettered (null-value: c has no value)
        assert table.counts() == {"r": (7, 4, 2, 1)}
    finally:
        stream.close()
        consumer.close()
        assert producer.close(10000) == 0
    out = {m.value(): m for m in read_all(c2.bootstrap, f"{topic}.out", 4)}
    assert set(out) == {b"bad-name", b"many", b"", b"raw-name"}
    # (confluent-kafka's Python API cannot read a header name that is not UTF-8 back; the key says it was routed)
    assert out[b"raw-name"].key() == b"cust2"
    assert out[b"bad-name"].key() == b"cust"            # re-keyed, then the header dropped: the key was copied
    many = dict(out[b"many"].headers())
    assert "h7" not in many and "c" not in many and len(out[b"many"].headers()) == 2000 and many["via"] == b"\x00\xff"
    assert out[b""].key() == b""
    dead = {m.value(): dict(m.headers()) for m in read_all(c2.bootstrap, f"{topic}.dl", 1)}
    assert set(dead) == {b"null-value"}
    assert dead[b"null-value"]["kafka-mesh.dead-letter.reason"] == b"rekey: header 'c' has no value"
    assert dead[b"null-value"]["kafka-mesh.dead-letter.source"].startswith(f"c1/{topic}/".encode())


def test_a_run_a_target_refuses_is_reported_failed_naming_cluster_and_topic(sandbox: Sandbox, topic: str) -> None:
    c1, c2, _ = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=1)
    produce_records(c1.bootstrap, topic, [{"value": f"v{i}".encode()} for i in range(20)])
    # The target topic does not exist (and is not auto-created): every record fails, the run with it.
    # The router's own producer settings (no timeout: a target that is down is waited for), with the time a topic
    # may take to appear in metadata cut short.
    producer = meshcore.create_producer("c2", {**PRODUCER_DEFAULTS, **ROUTER_PRODUCER,
                                               "bootstrap.servers": c2.bootstrap,
                                               "topic.metadata.propagation.max.ms": "1000"})
    consumer = _consumer(sandbox, topic)
    stream = meshcore.open_router_stream()
    try:
        table = meshcore.build_router_table("c1", 1, [producer], ["r"], {topic: [
            {"rule": 0, "topic": f"{topic}.missing", "dead_letter": "x", "sinks": [(0, 0)], "steps": []}]})
        runs, settled = _route_all(stream, table, consumer, 20)
        failed = sum(f for _, f, _, _ in settled)
        assert failed == 20 and all(first == 0 for _, f, first, _ in settled if f)
        message = next(m for _, f, _, m in settled if f)
        assert message.startswith(f"cluster 'c2': topic '{topic}.missing': ") and "UNKNOWN_TOPIC" in message
    finally:
        stream.close()
        consumer.close()
        producer.close(1000)
