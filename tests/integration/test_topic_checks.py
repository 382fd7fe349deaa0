"""Records a topic's config makes the broker refuse fail alone, before they reach a Kafka batch: a broker refuses
the whole batch librdkafka built for a partition, so without the sidecar's checks one app's keyless record on a
compacted topic (or a timestamp outside the topic's bounds, or a record over its max.message.bytes) would fail the
other apps' records of that partition. The sidecar learns each topic's config with DescribeConfigs: for the topics
the mapping routes, as soon as the mapping is applied; for any other, from its first record on."""

from __future__ import annotations

import time
from typing import Any

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace, produce_paced, two_apps
from tests.produce_responses import per_record

DAY_MS = 86_400_000


def _wait_until_checked(target: str, probe: M.Record, expect: str, timeout: float = 30.0) -> None:
    """Send probe alone until the sidecar refuses it with a message containing expect: the topic's config is known.
    (Until then the broker refuses it, alone in its batch.)"""
    deadline = time.monotonic() + timeout
    last: list[tuple[int, int, str]] = []
    while time.monotonic() < deadline:
        [resp] = produce_paced(target, [M.ProduceRequest(batch_id=1, records=[probe]).SerializeToString()])
        last = per_record(resp)
        if last and expect in last[0][2]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the sidecar did not learn the topic's config within {timeout}s: last answer {last}")


def test_keyless_and_stale_records_on_a_compacted_topic_never_fail_another_apps_records(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    # One partition: both apps' records share librdkafka's batches, which the broker would refuse whole.
    c1 = sandbox.clusters[0].bootstrap
    create_topic(c1, topic, partitions=1, config={"cleanup.policy": "compact",
                                                  "message.timestamp.before.max.ms": str(DAY_MS)})
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    _wait_until_checked(sc.target, M.Record(topic=topic, value=b"probe"), "cleanup.policy=compact")

    good = [M.ProduceRequest(batch_id=b, records=[M.Record(topic=topic, key=f"k{b}-{j}".encode(),
                                                           value=f"good-{b}-{j}".encode())
                                                  for j in range(40)]).SerializeToString() for b in range(150)]
    two_days_ago = int(time.time() * 1000) - 2 * DAY_MS
    bad = [M.ProduceRequest(batch_id=b, records=[
        M.Record(topic=topic, value=f"no-key-{b}".encode()),
        M.Record(topic=topic, key=b"old", value=f"stale-{b}".encode(), timestamp_ms=two_days_ago),
        M.Record(topic=topic, key=f"fine-{b}".encode(), value=f"fine-{b}".encode()),
        M.Record(topic=topic, key=f"tomb-{b}".encode())]).SerializeToString() for b in range(40)]   # a tombstone: ok
    results = dict(zip(("good", "bad"), two_apps(sc.target, good, bad), strict=True))
    assert len(results["good"]) == 150 and all(r.ok_count == 40 and not r.errors for r in results["good"])
    assert len(results["bad"]) == 40
    for r in results["bad"]:
        failed = per_record(r)
        assert r.ok_count == 2 and [(i, code) for i, code, _ in failed] == [
            (0, M.ERROR_CODE_INVALID_RECORD), (1, M.ERROR_CODE_INVALID_RECORD)], failed
        assert failed[0][2] == (f"cluster 'c1': topic '{topic}': the topic is compacted (cleanup.policy=compact) and "
                                "the record has no key")
        assert "message.timestamp.before.max.ms" in failed[1][2]
    written = read_all(c1, topic, 150 * 40 + 2 * 40)
    assert {m.value().decode() if m.value() is not None else f"tombstone:{m.key().decode()}" for m in written} == (
        {f"good-{b}-{j}" for b in range(150) for j in range(40)} | {f"fine-{b}" for b in range(40)}
        | {f"tombstone:tomb-{b}" for b in range(40)})


def test_a_topic_created_after_the_sidecar_started_is_checked_by_its_own_config(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    # Routed by __default__: the mapping does not name the topic, and it does not exist when the sidecar starts.
    c1 = sandbox.clusters[0].bootstrap
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    create_topic(c1, topic, partitions=1, config={"max.message.bytes": "20000"})
    # The sidecar's own check, not the brokers' refusal (which names max.message.bytes too).
    _wait_until_checked(sc.target, M.Record(topic=topic, value=b"x" * 30_000), "in a Kafka batch of its own")

    req = M.ProduceRequest(batch_id=7)
    for i in range(50):
        req.records.add(topic=topic, value=(b"x" * 19_960) if i == 25 else f"small-{i}".encode())
    req.records.add(topic=topic, value=b"y" * 19_000, headers=[M.Header(key="h" * 500, value=b"v" * 500)])
    [resp] = produce_paced(sc.target, [req.SerializeToString()])
    failed = per_record(resp)
    assert [(i, code) for i, code, _ in failed] == [(25, M.ERROR_CODE_RECORD_TOO_LARGE),
                                                    (50, M.ERROR_CODE_RECORD_TOO_LARGE)], failed
    assert failed[0][2] == (f"cluster 'c1': topic '{topic}': the record, in a Kafka batch of its own, is 20032 "
                            "bytes, over the topic's max.message.bytes of 20000")
    assert resp.ok_count == 49
    assert sorted(m.value() for m in read_all(c1, topic, 49)) == sorted(f"small-{i}".encode() for i in range(50)
                                                                        if i != 25)
