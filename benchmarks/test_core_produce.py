"""Produce throughput: meshcore's native path vs confluent-kafka called directly, same broker, same records.

Both produce 100 batches of 1,000 records with 100-byte values to one topic and wait for every delivery report;
confluent-kafka gets a delivery callback per record, as an application that checks its writes would use.
"""

from __future__ import annotations

import uuid

import pytest

import meshcore
from benchmarks.baseline import CountingProducer
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic

BATCHES = 100
BATCH = 1000
VALUE = b"x" * 100
CONF = {"enable.idempotence": "true", "acks": "all", "linger.ms": "5"}


@pytest.fixture(scope="module")
def target(sandbox: Sandbox) -> tuple[str, str]:
    bootstrap = sandbox.clusters[0].bootstrap
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=3)
    return bootstrap, topic


@pytest.mark.benchmark(group="core: produce 100B x 1000/batch")
def test_meshcore_produce_request(benchmark: pytest.FixtureRequest, target: tuple[str, str]) -> None:
    bootstrap, topic = target
    req = mesh_pb2.ProduceRequest()
    for i in range(BATCH):
        req.records.add(topic=topic, key=str(i).encode(), value=VALUE)
    batches = []
    for b in range(BATCHES):
        req.batch_id = b
        batches.append(req.SerializeToString())
    p = meshcore.create_producer("bench", {"bootstrap.servers": bootstrap, **CONF})

    def run() -> None:
        before = p.delivered
        for raw in batches:
            p.produce_request(raw)
        p.flush(60_000)
        assert p.delivered - before == BATCHES * BATCH

    try:
        benchmark.extra_info["records"] = BATCHES * BATCH  # type: ignore[attr-defined]
        benchmark.pedantic(run, rounds=10, warmup_rounds=2)  # type: ignore[attr-defined]
    finally:
        p.close()


@pytest.mark.benchmark(group="core: produce 100B x 1000/batch")
def test_confluent_kafka_baseline_for_core(benchmark: pytest.FixtureRequest, target: tuple[str, str]) -> None:
    bootstrap, topic = target
    direct = CountingProducer({"bootstrap.servers": bootstrap, **CONF})
    keys = [str(i).encode() for i in range(BATCH)]

    def run() -> None:
        direct.produce_batches(topic, VALUE, keys, BATCHES)

    benchmark.extra_info["records"] = BATCHES * BATCH  # type: ignore[attr-defined]
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)  # type: ignore[attr-defined]
    direct.producer.flush(10)
