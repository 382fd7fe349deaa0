"""The router against real clusters and real router processes: rules with steps, dead letters, at-least-once across
kill -9, two processes of one name, murmur2 placement of keyed records, and the whole hierarchy from a sidecar's
Produce to a sidecar's Subscribe."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest

from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.router_proc import RouterProc, produce_records, status_of
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace

pytestmark = pytest.mark.integration


def _id(m: Any) -> str:
    return str(m.value().decode())


def _headers(m: Any) -> dict[str, bytes]:
    return {k: v for k, v in (m.headers() or [])}


def test_filter_rename_and_dead_letter_route_every_record_as_the_rules_say(
        sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    c1, c2, c3 = sandbox.clusters
    run = uuid.uuid4().hex[:8]
    orders, refunds = f"orders-{run}", f"refunds-{run}"
    for t in (orders, refunds):
        create_topic(c1.bootstrap, t, partitions=3)
    for c in (c2, c3):
        for t in (f"eu.{orders}", f"eu.{refunds}"):
            create_topic(c.bootstrap, t, partitions=3)
    create_topic(c2.bootstrap, f"{orders}.by-customer", partitions=3)
    dead = f"dl-{run}"
    create_topic(c2.bootstrap, dead, partitions=1)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "router": {
        "eu": {"topics": [orders, refunds], "from": [{"source": "c1"}], "where": [{"sink": "c2"}, {"sink": "c3"}],
               "steps": [{"filter": {"header": "region", "equals": "eu"}}, {"rename": {"prefix": "eu."}},
                         {"drop_headers": ["trace"]}, {"add_headers": {"routed-by": "eu"}}]},
        "by-customer": {"topics": [orders], "from": [{"source": "c1"}], "where": [{"sink": "c2"}],
                        "steps": [{"rekey": {"header": "customer"}}, {"rename": {"to": f"{orders}.by-customer"}}],
                        "dead_letter": dead},
    }})
    n = 300
    for t in (orders, refunds):
        produce_records(c1.bootstrap, t, [
            {"value": f"{t}-{i}".encode(), "key": f"k{i}".encode(),
             "headers": [("region", b"eu" if i % 3 == 0 else b"us"), ("trace", b"x")]
             + ([("customer", f"cust-{i % 7}".encode())] if i % 2 == 0 else [])}
            for i in range(n)])
    router = RouterProc(sandbox, tmp_path, ns).start()
    try:
        eu = {f"{t}-{i}" for t in (orders, refunds) for i in range(n) if i % 3 == 0}
        for c in (c2, c3):
            got = read_all(c.bootstrap, [f"eu.{orders}", f"eu.{refunds}"], len(eu))
            assert {_id(m) for m in got} == eu, f"cluster {c.name}"
            assert len(got) == len(eu)          # no restart: no duplicate either
            for m in got:
                h = _headers(m)
                assert h.get("region") == b"eu" and "trace" not in h and h.get("routed-by") == b"eu"
                assert m.topic() == f"eu.{_id(m).rsplit('-', 1)[0]}"
        keyed = read_all(c2.bootstrap, f"{orders}.by-customer", n // 2)
        assert {_id(m) for m in keyed} == {f"{orders}-{i}" for i in range(0, n, 2)}
        assert all(m.key() == f"cust-{int(_id(m).rsplit('-', 1)[1]) % 7}".encode() for m in keyed)
        dead_letters = read_all(c2.bootstrap, dead, n // 2)
        assert {_id(m) for m in dead_letters} == {f"{orders}-{i}" for i in range(1, n, 2)}
        for m in dead_letters:
            h = _headers(m)
            assert h["kafka-mesh.dead-letter.reason"] == b"rekey: the record has no header 'customer'"
            assert h["kafka-mesh.dead-letter.rule"] == b"by-customer"
            assert h["kafka-mesh.dead-letter.source"].startswith(f"c1/{orders}/".encode())
            assert m.key() == f"k{int(_id(m).rsplit('-', 1)[1])}".encode()     # the record as it came
        # The filtered records are nowhere else: no topic of the source's names was made on the sinks.
        for c in (c2, c3):
            assert not _exists(c.bootstrap, orders) and not _exists(c.bootstrap, refunds)
        doc = router.wait_for(lambda d: d["rules"].get("eu", {}).get("in") == 2 * n, 30, "the rules' counts")
        assert {k: doc["rules"]["eu"][k] for k in ("in", "out", "filtered", "dead_lettered")} == \
            {"in": 2 * n, "out": len(eu), "filtered": 2 * n - len(eu), "dead_lettered": 0}
        assert {k: doc["rules"]["by-customer"][k] for k in ("in", "out", "filtered", "dead_lettered")} == \
            {"in": n, "out": n // 2, "filtered": 0, "dead_lettered": n // 2}
        shown = subprocess.run(["kafka-mesh", "status", "--etcd", sandbox.etcd_endpoint, "--namespace", ns],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "1 live router process(es)" in shown.stdout
        assert f"rule eu: {orders}, {refunds} from c1 to c2, c3: in {2 * n}, out {len(eu)}, filtered " \
               f"{2 * n - len(eu)}, dead-lettered 0" in shown.stdout
        assert "source c1: 6 partition(s), lag 0" in shown.stdout
    finally:
        assert router.stop() == 0


def _exists(bootstrap: str, topic: str) -> bool:
    from confluent_kafka.admin import AdminClient

    return topic in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner for a keyed record: murmur2 of the key, made positive, modulo the
    topic's partition count."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(key)) & 0xFFFFFFFF
    for i in range(len(key) // 4):
        k = int.from_bytes(key[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail, rest = len(key) & ~3, len(key) % 4
    if rest == 3:
        h ^= key[tail + 2] << 16
    if rest >= 2:
        h ^= key[tail + 1] << 8
    if rest >= 1:
        h ^= key[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def test_murmur2_matches_the_java_client() -> None:
    # Values the Java client's Utils.murmur2 gives (its own unit test's vectors), as partitions of 2^31 - 1.
    assert murmur2_partition(b"21", 2**31 - 1) == (-973932308 & 0x7FFFFFFF) % (2**31 - 1)
    assert murmur2_partition(b"foobar", 2**31 - 1) == (-790332482 & 0x7FFFFFFF) % (2**31 - 1)
    assert murmur2_partition(b"a-little-bit-long-string", 2**31 - 1) == (-985981536 & 0x7FFFFFFF) % (2**31 - 1)
    assert murmur2_partition(b"", 2**31 - 1) == (275646681 & 0x7FFFFFFF) % (2**31 - 1)


def test_keyed_records_land_on_murmur2_of_the_target_and_keyless_keep_their_partition(
        sandbox: Sandbox, tmp_path: pathlib.Path, topic: str) -> None:
    c1, c2, c3 = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=3)
    create_topic(c2.bootstrap, f"{topic}.copy", partitions=5)    # more partitions than the source
    create_topic(c3.bootstrap, f"{topic}.copy", partitions=2)    # fewer
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "router": {
        "copy": {"topics": [topic], "from": [{"source": "c1"}], "where": [{"sink": "c2"}, {"sink": "c3"}],
                 "steps": [{"rename": {"to": f"{topic}.copy"}}]}}})
    keyed = [{"value": f"keyed-{i}".encode(), "key": f"customer-{i}".encode()} for i in range(400)]
    keyless = [{"value": f"keyless-{i}-p{i % 3}".encode(), "partition": i % 3} for i in range(90)]
    produce_records(c1.bootstrap, topic, keyed + keyless)
    router = RouterProc(sandbox, tmp_path, ns).start()
    try:
        for cluster, partitions in ((c2, 5), (c3, 2)):
            got = read_all(cluster.bootstrap, f"{topic}.copy", len(keyed) + len(keyless))
            assert len(got) == len(keyed) + len(keyless)
            wrong = [(_id(m), m.partition()) for m in got if m.key() is not None
                     and m.partition() != murmur2_partition(m.key(), partitions)]
            assert not wrong, f"{cluster.name}: keyed records off their murmur2 partition: {wrong[:5]}"
            for m in got:
                if m.key() is None:
                    source_partition = int(_id(m).rsplit("-p", 1)[1])
                    assert m.partition() == source_partition % partitions, (cluster.name, _id(m), m.partition())
            # one key, one partition: every key was written once and is where the Java client would put it
            assert {_id(m) for m in got if m.key() is not None} == {f"keyed-{i}" for i in range(400)}
    finally:
        assert router.stop() == 0


def _produce_ids(bootstrap: str, topic: str, ids: range, pause_every: int = 0, pause_s: float = 0.0) -> None:
    for start in range(ids.start, ids.stop, pause_every or len(ids)):
        chunk = range(start, min(start + (pause_every or len(ids)), ids.stop))
        produce_records(bootstrap, topic, [{"value": f"id-{i}".encode(), "key": f"k{i}".encode()} for i in chunk])
        if pause_s:
            time.sleep(pause_s)


def test_a_router_killed_mid_run_and_started_again_loses_nothing(
        sandbox: Sandbox, tmp_path: pathlib.Path, topic: str) -> None:
    c1, c2, _ = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=3)
    create_topic(c2.bootstrap, topic, partitions=3)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "router": {
        "copy": {"topics": [topic], "from": [{"source": "c1"}], "where": [{"sink": "c2"}]}}})
    n = 30_000
    writer = threading.Thread(target=_produce_ids, args=(c1.bootstrap, topic, range(n), 1000, 0.1))
    writer.start()
    first = RouterProc(sandbox, tmp_path, ns, instance="r1").start()
    try:
        first.wait_for(lambda d: any(r["out"] >= 5000 for r in d["rules"].values()), 60, "5,000 records copied")
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        if first.alive():
            first.stop(signal.SIGKILL)
    second = RouterProc(sandbox, tmp_path, ns, instance="r2").start()
    try:
        writer.join()
        got = read_all(c2.bootstrap, topic, n, timeout=120)
        ids = [_id(m) for m in got]
        missing = {f"id-{i}" for i in range(n)} - set(ids)
        assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:5]}"
        # at-least-once: duplicates are what was in flight or acknowledged since the last commit when it died
        assert len(ids) - n < n // 2
    finally:
        assert second.stop() == 0


def test_two_routers_of_one_name_split_the_partitions_and_one_takes_over(
        sandbox: Sandbox, tmp_path: pathlib.Path, topic: str) -> None:
    c1, c2, _ = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=6)
    create_topic(c2.bootstrap, topic, partitions=6)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "router": {
        "copy": {"topics": [topic], "from": [{"source": "c1"}], "where": [{"sink": "c2"}]}}})
    a = RouterProc(sandbox, tmp_path, ns, instance="a").start()
    b = RouterProc(sandbox, tmp_path, ns, instance="b").start()
    try:
        def assigned(doc: dict[str, Any]) -> int:
            return int(doc["sources"].get("c1", {}).get("assigned", 0))

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            docs = status_of(sandbox, ns)
            counts = [assigned(docs.get(("main", i), {"sources": {}})) for i in ("a", "b")]
            if sum(counts) == 6 and min(counts) > 0:
                break
            time.sleep(0.5)
        assert sum(counts) == 6 and min(counts) > 0, f"assigned partitions a, b: {counts}"
        _produce_ids(c1.bootstrap, topic, range(3000))
        assert {_id(m) for m in read_all(c2.bootstrap, topic, 3000)} == {f"id-{i}" for i in range(3000)}
        for r in (a, b):        # each copied its share (the entries are rewritten every 2 s)
            r.wait_for(lambda d: d["rules"]["copy"]["out"] > 0, 10, "records copied")
        assert a.stop() == 0
        b.wait_for(lambda d: assigned(d) == 6, 60, "all six partitions")
        _produce_ids(c1.bootstrap, topic, range(3000, 6000))
        got = {_id(m) for m in read_all(c2.bootstrap, topic, 6000)}
        assert got == {f"id-{i}" for i in range(6000)}
    finally:
        for r in (a, b):
            if r.alive():
                r.stop()


def test_the_whole_hierarchy_sidecar_produce_to_fronting_router_to_consumer_cluster_sidecar_subscribe(
        sandbox: Sandbox, tmp_path: pathlib.Path, topic: str, sidecar_factory: Any) -> None:
    from tests.integration.sidecar_proc import batch, produce
    from tests.integration.subscribe_stream import SubStream

    c1, c2, c3 = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=3)
    for c in (c2, c3):
        create_topic(c.bootstrap, topic, partitions=3)
    ns = new_namespace()
    doc = {"clusters": {**clusters_doc(sandbox)}, "producer": {topic: {"where": [{"sink": "c1"}]}},
           "consumer": {topic: [{"vip": "c2"}, {"vip": "c3"}]},
           "router": {"fan-out": {"topics": [topic], "from": [{"source": "c1"}],
                                  "where": [{"sink": "c2"}, {"sink": "c3"}]}}}
    doc["clusters"]["c1"]["role"] = "fronting"
    doc["clusters"]["c2"]["role"] = doc["clusters"]["c3"]["role"] = "consumer"
    apply(sandbox, ns, doc)
    router = RouterProc(sandbox, tmp_path, ns).start()
    sc = sidecar_factory(ns)
    try:
        ids = [f"h-{i}" for i in range(600)]
        responses = produce(sc.target, [batch(b, [(topic, rid) for rid in ids[b * 100:(b + 1) * 100]])
                                        for b in range(6)])
        assert all(r.ok_count == 100 and not r.errors for r in responses.values())
        # The app reads the consumer clusters: each record once from each (the router copied it to both).
        with SubStream(sc.target, f"g-{topic}", [topic]) as s:
            s.wait(lambda s: len(s.values()) >= 2 * len(ids), timeout=90, what="every record from c2 and c3")
            by_cluster: dict[str, set[str]] = {}
            for cluster, _topic, _partition, _offset, value in s.records:
                by_cluster.setdefault(cluster, set()).add(value.decode())
        assert by_cluster == {"c2": set(ids), "c3": set(ids)}
    finally:
        assert router.stop() == 0


def test_a_target_that_is_down_holds_back_only_the_rules_that_write_to_it(
        sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    import os

    c1, c2, c3 = sandbox.clusters
    run = uuid.uuid4().hex[:8]
    fast, stuck = f"fast-{run}", f"stuck-{run}"
    create_topic(c1.bootstrap, fast, partitions=2)
    create_topic(c1.bootstrap, stuck, partitions=2)
    create_topic(c2.bootstrap, fast, partitions=2)
    create_topic(c3.bootstrap, stuck, partitions=2)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "router": {
        "to-c2": {"topics": [fast], "from": [{"source": "c1"}], "where": [{"sink": "c2"}]},
        "to-c3": {"topics": [stuck], "from": [{"source": "c1"}], "where": [{"sink": "c3"}]}}})
    router = RouterProc(sandbox, tmp_path, ns, "main", "r1", "--max-inflight-records", "100").start()
    broker = c3.brokers[0].proc.pid
    try:
        _produce_ids(c1.bootstrap, stuck, range(10))
        _produce_ids(c1.bootstrap, fast, range(10))
        assert len(read_all(c3.bootstrap, stuck, 10)) == 10 and len(read_all(c2.bootstrap, fast, 10)) == 10
        os.kill(broker, signal.SIGSTOP)           # c3 stops answering: its records wait, its partitions pause
        _produce_ids(c1.bootstrap, stuck, range(10, 1010))
        router.wait_for(lambda d: len(d["sources"]["c1"]["paused"]) == 2, 30, "both partitions of stuck paused")
        _produce_ids(c1.bootstrap, fast, range(10, 2010))
        got = {_id(m) for m in read_all(c2.bootstrap, fast, 2010)}
        assert got == {f"id-{i}" for i in range(2010)}, "the rule whose target is up kept flowing"
        doc = router.status()
        assert doc is not None and all(p.startswith(stuck) for p in doc["sources"]["c1"]["paused"])
        os.kill(broker, signal.SIGCONT)
        got = {_id(m) for m in read_all(c3.bootstrap, stuck, 1010, timeout=120)}
        assert got == {f"id-{i}" for i in range(1010)}, "held back, then copied whole"
        router.wait_for(lambda d: not d["sources"]["c1"]["paused"], 30, "the partitions resumed")
    finally:
        os.kill(broker, signal.SIGCONT)
        assert router.stop() == 0


def test_rule_changes_apply_live(sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    c1, c2, _ = sandbox.clusters
    run = uuid.uuid4().hex[:8]
    a, b = f"a-{run}", f"b-{run}"
    for t in (a, b):
        create_topic(c1.bootstrap, t, partitions=2)
        create_topic(c2.bootstrap, t, partitions=2)
    create_topic(c2.bootstrap, f"{a}.v2", partitions=2)
    ns = new_namespace()
    doc: dict[str, Any] = {"clusters": clusters_doc(sandbox), "router": {
        "copy": {"topics": [a], "from": [{"source": "c1"}], "where": [{"sink": "c2"}]}}}
    apply(sandbox, ns, doc)
    router = RouterProc(sandbox, tmp_path, ns).start()
    try:
        _produce_ids(c1.bootstrap, a, range(100))
        assert {_id(m) for m in read_all(c2.bootstrap, a, 100)} == {f"id-{i}" for i in range(100)}
        # A new revision: topic b joins the rule (read from its beginning), and a's copies go to a new name.
        _produce_ids(c1.bootstrap, b, range(50))
        doc["router"]["copy"] = {"topics": [a, b], "from": [{"source": "c1"}], "where": [{"sink": "c2"}]}
        doc["router"]["a-v2"] = {"topics": [a], "from": [{"source": "c1"}], "where": [{"sink": "c2"}],
                                 "steps": [{"rename": {"to": f"{a}.v2"}}]}
        revision = apply(sandbox, ns, doc)
        router.wait_for(lambda d: d["revision"] >= revision, 30, f"revision {revision} applied")
        assert {_id(m) for m in read_all(c2.bootstrap, b, 50)} == {f"id-{i}" for i in range(50)}
        _produce_ids(c1.bootstrap, a, range(100, 200))
        assert {_id(m) for m in read_all(c2.bootstrap, a, 200)} == {f"id-{i}" for i in range(200)}
        # The new rule applies from the revision on: a's records since then go to a.v2 too (the group reads a once,
        # for every rule, from where it stands).
        v2 = {_id(m) for m in read_all(c2.bootstrap, f"{a}.v2", 100)}
        assert {f"id-{i}" for i in range(100, 200)} <= v2
    finally:
        assert router.stop() == 0


def test_records_a_target_refuses_are_read_again_until_it_takes_them(
        sandbox: Sandbox, tmp_path: pathlib.Path, topic: str) -> None:
    """The target topic does not exist yet (a router never creates one): its records fail, the partition is read
    again after a backoff, status names the cluster, topic and error; once the topic exists, every record arrives."""
    c1, c2, _ = sandbox.clusters
    create_topic(c1.bootstrap, topic, partitions=1)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox, c2={"topic.metadata.propagation.max.ms": "500"}),
                        "router": {"copy": {"topics": [topic], "from": [{"source": "c1"}],
                                            "where": [{"sink": "c2"}]}}})
    _produce_ids(c1.bootstrap, topic, range(200))
    router = RouterProc(sandbox, tmp_path, ns).start()
    try:
        doc = router.wait_for(lambda d: d["sources"].get("c1", {}).get("failing"), 60, "the partition retrying")
        (part, why), = doc["sources"]["c1"]["failing"].items()
        assert part == f"{topic}[0]" and why.startswith(f"cluster 'c2': topic '{topic}': ") and "UNKNOWN_TOPIC" in why
        shown = subprocess.run(["kafka-mesh", "status", "--etcd", sandbox.etcd_endpoint, "--namespace", ns],
                               capture_output=True, text=True, timeout=60)
        assert f"{topic}[0] retrying: cluster 'c2'" in shown.stdout, shown.stdout
        create_topic(c2.bootstrap, topic, partitions=1)
        got = [_id(m) for m in read_all(c2.bootstrap, topic, 200, timeout=90)]
        assert set(got) == {f"id-{i}" for i in range(200)}
        router.wait_for(lambda d: not d["sources"]["c1"]["failing"], 30, "the partition flowing again")
    finally:
        assert router.stop() == 0
