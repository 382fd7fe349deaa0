"""subscribe-catchup: one Subscribe stream catching up a backlog on one cluster, 100,000 records and 400,000, and the
same backlogs read by a confluent-kafka consumer (the same librdkafka) in the same run.

What it shows: whether a backlog larger than a consumer's prefetch bound (queued.min.messages, queued.max.messages.
kbytes) is read at the same rate as one that fits, or stops and goes (each time the prefetch queue fills, librdkafka
postpones the partition's next fetch by fetch.queue.backoff.ms). The target: the rate over 400,000 at least 0.9x the
rate over 100,000. Each round is a fresh group from the earliest offset; the rate runs from the first record to the
last (the group join is left out: it is the same for both sizes), and the longest gap between two deliveries is
reported (max_gap_ms).

Run: python -m pytest benchmarks/test_subscribe_catchup.py --benchmark-only
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from benchmarks.test_sidecar_subscribe import (
    PARTITIONS,
    RUNNING,
    VALUE_BYTES,
    _consume,
    _context,
    _create_topics,
    _delete_topics,
    _direct_consumer,
    _preload,
    _read_stream,
    _Round,
    _teardown,
)
from sidecar.dev.sandbox import Sandbox
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

BACKLOGS = (100_000, 400_000)
ROUNDS = 7              # the two sizes run one after the other: enough rounds that drift between them shows less


@dataclass
class Backlogs:
    proc: SidecarProc
    bootstrap: str
    topics: dict[int, str]          # backlog size -> topic on c1


@pytest.fixture(scope="module")
def backlogs(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backlogs]:
    suffix = uuid.uuid4().hex[:8]
    topics = {n: f"catchup-{n}-{suffix}" for n in BACKLOGS}
    c1 = sandbox.clusters[0].bootstrap
    try:
        _create_topics(c1, list(topics.values()), set())
        for n, topic in topics.items():
            _preload(c1, topic, n)
        ns = new_namespace()
        apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}},
                            "consumer": {t: [{"vip": "c1"}] for t in topics.values()}})
        proc = SidecarProc(sandbox, tmp_path_factory.mktemp("bench-catchup"), ns).start()
        try:
            yield Backlogs(proc, c1, topics)
        finally:
            proc.stop()
    finally:
        _delete_topics(c1, list(topics.values()))


def _summary(rounds: list[_Round], records: int) -> dict[str, Any]:
    return {"first_to_last_rps": round(statistics.median(records / (r.last - r.first) for r in rounds)),
            "max_gap_ms": round(statistics.median(r.max_gap for r in rounds) * 1e3, 1),
            "first_record_ms": round(statistics.median(r.first - r.started for r in rounds) * 1e3, 1)}


@pytest.mark.parametrize("backlog", BACKLOGS)
def test_sidecar_catch_up(benchmark: Any, backlogs: Backlogs, backlog: int) -> None:
    rounds: list[_Round] = []
    channel = grpc.insecure_channel(backlogs.proc.target)

    def setup() -> tuple[tuple[_Round], dict[str, Any]]:
        rounds.append(_Round())
        return (rounds[-1],), {}

    def run(r: _Round) -> None:
        _read_stream(channel, [backlogs.topics[backlog]], backlog, r)
        _teardown(r)

    try:
        benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=0)
    finally:
        channel.close()
    benchmark.group = "subscribe-catchup"
    benchmark.extra_info.update({"backlog": backlog, **_summary(rounds, backlog), **_context(),
                                 "what": f"one Subscribe stream, fresh group, earliest, server defaults, over "
                                         f"{backlog} {VALUE_BYTES}-byte records in {PARTITIONS} partitions on c1",
                                 "running": RUNNING})


@pytest.mark.parametrize("backlog", BACKLOGS)
def test_confluent_kafka_catch_up(benchmark: Any, backlogs: Backlogs, backlog: int) -> None:
    rounds: list[_Round] = []

    def run() -> None:
        r = _Round()
        rounds.append(r)
        c = _direct_consumer(backlogs.bootstrap, r.group)
        c.subscribe([backlogs.topics[backlog]])
        r.begin()
        _consume(c, r, backlog)
        r.end()
        c.close()
        assert r.records == backlog
        time.sleep(0.5)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=0)
    benchmark.group = "subscribe-catchup"
    benchmark.extra_info.update({"backlog": backlog, **_summary(rounds, backlog), **_context(),
                                 "what": f"confluent-kafka Consumer, default settings, consume(1000, 1.0), over "
                                         f"{backlog} records on c1", "running": RUNNING})
