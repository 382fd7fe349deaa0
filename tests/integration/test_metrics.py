"""GET /metrics of a real sidecar and a real router: the counters equal what the test did."""

from __future__ import annotations

import pathlib
import socket
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.router_proc import RouterProc, produce_records
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace, produce

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_sidecars_metrics_count_what_it_did(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    from tests.integration.subscribe_stream import SubStream

    c1 = sandbox.clusters[0]
    create_topic(c1.bootstrap, topic, partitions=2)
    ns = new_namespace()
    revision = apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    port = free_port()
    sc = sidecar_factory(ns, "--metrics-listen", f"127.0.0.1:{port}")
    before = scrape(port)
    assert before[("kafka_mesh_mapping_revision", ())] == revision
    assert before[("kafka_mesh_etcd_connected", ())] == 1
    assert before[("kafka_mesh_status_lease_held", ())] == 1
    assert before.get(("kafka_mesh_records_delivered_total", (("cluster", "c1"),)), 0) == 0
    responses = produce(sc.target, [batch(b, [(topic, f"id-{b}-{i}") for i in range(100)]) for b in range(3)])
    assert sum(r.ok_count for r in responses.values()) == 300
    unrouted = produce(sc.target, [batch(9, [(f"{topic}-unrouted", f"u-{i}") for i in range(5)])])
    assert unrouted[9].ok_count == 0
    after = scrape(port)
    c1_label = (("cluster", "c1"),)
    assert after[("kafka_mesh_records_delivered_total", c1_label)] == 300
    assert after[("kafka_mesh_records_failed_total", c1_label)] == 0
    # keys and values: "id-B-I" both (batch() uses the id as key and value)
    assert after[("kafka_mesh_bytes_delivered_total", c1_label)] == sum(
        2 * len(f"id-{b}-{i}") for b in range(3) for i in range(100))
    assert after[("kafka_mesh_delivery_latency_seconds_count", c1_label)] == 300
    assert after[("kafka_mesh_delivery_latency_seconds_bucket", (("cluster", "c1"), ("le", "+Inf")))] == 300
    assert 0 < after[("kafka_mesh_delivery_latency_seconds_sum", c1_label)] < 300 * 10
    assert after[("kafka_mesh_produce_errors_total", (("code", "NO_ROUTE"),))] == 5
    assert after[("kafka_mesh_records_queued", (("cluster", "c1"),))] == 0
    assert after[("kafka_mesh_produce_streams", ())] == 0
    assert after[("kafka_mesh_produce_inflight_batches", ())] == after[("kafka_mesh_produce_inflight_bytes", ())] == 0
    # by topic: the mapping names the topic; the unrouted one counts under __default__
    assert after[("kafka_mesh_topic_records_received_total", (("topic", topic),))] == 300
    assert after[("kafka_mesh_topic_records_received_total", (("topic", "__default__"),))] == 5
    assert after[("kafka_mesh_topic_bytes_received_total", (("topic", "__default__"),))] == sum(
        2 * len(f"u-{i}") for i in range(5))
    assert after[("kafka_mesh_topic_records_delivered_total", (("cluster", "c1"), ("topic", topic)))] == 300
    assert after[("kafka_mesh_topic_bytes_delivered_total", (("cluster", "c1"), ("topic", topic)))] == \
        after[("kafka_mesh_bytes_delivered_total", c1_label)]
    assert ("kafka_mesh_topic_records_delivered_total", (("cluster", "c1"), ("topic", "__default__"))) not in after
    with SubStream(sc.target, f"g-{topic}", [topic]) as s:
        s.wait(lambda s: len(s.values()) == 300, timeout=60, what="every record")
        m = scrape(port)
        assert m[("kafka_mesh_subscribe_streams", ())] == 1
        assert ("kafka_mesh_subscribe_streams_out_of_credit", ()) in m
        # every record read and acked: both partitions' lag comes to 0, by group
        deadline = time.monotonic() + 30
        while True:
            lag = {dict(labels)["partition"]: v for (name, labels), v in scrape(port).items()
                   if name == "kafka_mesh_subscribe_lag" and dict(labels)["group"] == f"g-{topic}"
                   and dict(labels)["cluster"] == "c1" and dict(labels)["topic"] == topic}
            if lag == {"0": 0, "1": 0}:
                break
            assert time.monotonic() < deadline, f"subscribe lag by partition: {lag}"
            time.sleep(0.3)
    # a stream that acks nothing: its group's lag is every record it was sent
    with SubStream(sc.target, f"h-{topic}", [topic], auto_ack=False) as s:
        s.wait(lambda s: len(s.values()) == 300, timeout=60, what="every record, unacked")
        lag = sum(v for (name, labels), v in scrape(port).items()
                  if name == "kafka_mesh_subscribe_lag" and dict(labels)["group"] == f"h-{topic}")
        assert lag == 300
    deadline = time.monotonic() + 10
    while scrape(port)[("kafka_mesh_subscribe_streams", ())] != 0:
        assert time.monotonic() < deadline, "the stream's end is counted"
        time.sleep(0.2)


def test_topic_labels_are_bounded_and_librdkafka_statistics_are_exposed(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    """--metrics-topics 2: the first two topics the mapping names (sorted) get labels, the third and any unnamed
    topic count under __default__; each label keeps its counters when the mapping drops its topic."""
    c1, c2, _ = sandbox.clusters
    names = [f"{topic}-a", f"{topic}-b", f"{topic}-c"]
    for name in names:
        create_topic(c1.bootstrap, name, partitions=1)
        create_topic(c2.bootstrap, name, partitions=1)
    ns = new_namespace()
    route = {"where": [{"sink": "c1"}, {"sink": "c2"}]}
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {name: route for name in names}})
    port = free_port()
    sc = sidecar_factory(ns, "--metrics-listen", f"127.0.0.1:{port}", "--metrics-topics", "2",
                         "--statistics-interval-ms", "200")
    responses = produce(sc.target, [batch(k, [(name, f"id-{k}-{i}") for i in range(10)])
                                    for k, name in enumerate(names)])
    assert all(r.ok_count == 10 for r in responses.values())
    m = scrape(port)
    received = {dict(labels)["topic"]: v for (name, labels), v in m.items()
                if name == "kafka_mesh_topic_records_received_total"}
    assert received == {names[0]: 10, names[1]: 10, "__default__": 10}
    for cluster in ("c1", "c2"):
        delivered = {dict(labels)["topic"]: v for (name, labels), v in m.items()
                     if name == "kafka_mesh_topic_records_delivered_total" and dict(labels)["cluster"] == cluster}
        assert delivered == {names[0]: 10, names[1]: 10, "__default__": 10}
    # the mapping drops names[0]: it keeps its label (its counters stay monotonic); its records have no route now
    revision = apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {name: route for name in names[1:]}})
    deadline = time.monotonic() + 30
    while scrape(port)[("kafka_mesh_mapping_revision", ())] != revision:
        assert time.monotonic() < deadline, "the new mapping is applied"
        time.sleep(0.2)
    assert produce(sc.target, [batch(7, [(names[0], f"late-{i}") for i in range(5)])])[7].ok_count == 0
    m = scrape(port)
    assert m[("kafka_mesh_topic_records_received_total", (("topic", names[0]),))] == 15
    assert m[("kafka_mesh_topic_records_delivered_total", (("cluster", "c1"), ("topic", names[0])))] == 10
    # librdkafka's statistics: each cluster's producer, its one broker up, a round trip measured (while records go)
    deadline = time.monotonic() + 30
    k = 100
    while True:
        k += 1
        assert produce(sc.target, [batch(k, [(names[1], f"more-{k}")])])[k].ok_count == 1
        m = scrape(port)
        up = {dict(labels)["cluster"]: v for (name, labels), v in m.items()
              if name == "kafka_mesh_librdkafka_broker_up"}
        rtt = {dict(labels)["cluster"]: v for (name, labels), v in m.items()
               if name == "kafka_mesh_librdkafka_broker_rtt_avg_seconds"}
        if up.get("c1") == 1 and up.get("c2") == 1 and rtt.get("c1", 0) > 0 and rtt.get("c2", 0) > 0:
            break
        assert time.monotonic() < deadline, f"librdkafka statistics: up {up}, rtt {rtt}"
        time.sleep(0.3)
    assert ("kafka_mesh_librdkafka_queue_messages", (("cluster", "c1"),)) in m
    assert 0 <= m[("kafka_mesh_librdkafka_statistics_age_seconds", (("cluster", "c1"),))] < 5


def test_a_routers_metrics_count_each_rule(sandbox: Sandbox, tmp_path: pathlib.Path, topic: str) -> None:
    c1, c2, _ = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=2)
    create_topic(c2.bootstrap, f"eu.{topic}", partitions=2)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "router": {
        "eu": {"topics": [topic], "from": [{"source": "c1"}], "where": [{"sink": "c2"}],
               "steps": [{"filter": {"key_prefix": "eu-"}}, {"rename": {"prefix": "eu."}}]}}})
    produce_records(c1.bootstrap, topic, [{"value": f"v{i}".encode(), "key": f"{'eu' if i % 4 == 0 else 'us'}-{i}"
                                           .encode()} for i in range(400)])
    port = free_port()
    router = RouterProc(sandbox, tmp_path, ns, "main", "r1", "--metrics-listen", f":{port}").start()
    try:
        assert len(read_all(c2.bootstrap, f"eu.{topic}", 100)) == 100
        deadline = time.monotonic() + 30
        while True:
            m = scrape(port)
            lags = [v for (name, labels), v in m.items() if name == "kafka_mesh_router_lag"
                    and dict(labels)["source"] == "c1" and dict(labels)["topic"] == topic]
            if len(lags) == 2 and sum(lags) == 0:
                break
            assert time.monotonic() < deadline, f"lag never reached 0: {lags}"
            time.sleep(0.5)
        rule = (("rule", "eu"),)
        assert (m[("kafka_mesh_router_records_in_total", rule)], m[("kafka_mesh_router_records_out_total", rule)],
                m[("kafka_mesh_router_records_filtered_total", rule)],
                m[("kafka_mesh_router_records_dead_lettered_total", rule)]) == (400, 100, 300, 0)
        assert m[("kafka_mesh_records_delivered_total", (("cluster", "c2"),))] == 100
        assert m[("kafka_mesh_delivery_latency_seconds_count", (("cluster", "c2"),))] == 100
        assert m[("kafka_mesh_router_partitions_paused", (("source", "c1"),))] == 0
        assert m[("kafka_mesh_router_partitions_retrying", (("source", "c1"),))] == 0
        assert m[("kafka_mesh_etcd_connected", ())] == 1
    finally:
        assert router.stop() == 0
