"""Subscribe over time, with the real sidecar, clusters and etcd: events, a clean end, two subscribers handing
partitions over, clusters added and removed by the mapping mid-stream, a sidecar killed with -9, a cluster down."""

from __future__ import annotations

import random
import time
from typing import Any

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.dev import sandbox as sandbox_mod
from sidecar.dev.sandbox import Sandbox
from tests.integration.conftest import sandbox_settings
from tests.integration.kafka_helpers import committed, create_topic, group_type, produce_direct
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace
from tests.integration.subscribe_stream import SubStream


def _consumer_mapping(sandbox: Sandbox, topic: str, clusters: list[str]) -> dict[str, Any]:
    return {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": clusters[0]}]}},
            "consumer": {topic: [{"vip": c} for c in clusters]}}


def _one_cluster(sandbox: Sandbox, sidecar_factory: Any, topic: str, partitions: int, values: list[str],
                 *extra: str) -> tuple[Any, str]:
    """topic on c1 holding values, a namespace whose mapping reads it from c1, and a sidecar serving it."""
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=partitions)
    if values:
        produce_direct(sandbox.clusters[0].bootstrap, topic, values)
    ns = new_namespace()
    apply(sandbox, ns, _consumer_mapping(sandbox, topic, ["c1"]))
    return sidecar_factory(ns, *extra), ns


def _two_clusters(sandbox: Sandbox, topic: str, partitions: int, per_cluster: int) -> str:
    """topic on c1 and c2, each holding per_cluster values "<cluster>-<i>", and a namespace whose mapping reads it
    from both; returns the namespace."""
    for c in sandbox.clusters[:2]:
        create_topic(c.bootstrap, topic, partitions=partitions)
        produce_direct(c.bootstrap, topic, [f"{c.name}-{i}" for i in range(per_cluster)])
    ns = new_namespace()
    apply(sandbox, ns, _consumer_mapping(sandbox, topic, ["c1", "c2"]))
    return ns


def _ends(records: list[tuple[str, str, int, int, bytes]], cluster: str) -> dict[int, int]:
    ends: dict[int, int] = {}
    for c, _, p, off, _ in records:
        if c == cluster:
            ends[p] = max(ends.get(p, 0), off + 1)
    return ends


def test_events_acks_ignored_and_a_clean_end_commit_what_was_acked(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = _two_clusters(sandbox, topic, partitions=3, per_cluster=60)
    sc = sidecar_factory(ns)
    group = f"g-{topic}"
    with SubStream(sc.target, group, [topic]) as s:
        s.wait(lambda s: len(s.records) >= 120, what="120 records")
        assigned = {(e.assigned.cluster, e.assigned.topic, tuple(e.assigned.partitions))
                    for e in s.events if e.WhichOneof("kind") == "assigned"}
        assert assigned == {("c1", topic, (0, 1, 2)), ("c2", topic, (0, 1, 2))}
        bogus = [M.AckRange(cluster="c1", topic=topic, partition=0, first_offset=10_000, last_offset=10_001),
                 M.AckRange(cluster="c9", topic=topic, partition=0, first_offset=0, last_offset=0)]
        s.send(M.SubscribeRequest(acks=M.Acks(ranges=bogus)))
        s.wait(lambda s: "acks_ignored" in s.event_kinds(), timeout=10, what="acks_ignored")
        ignored = next(e.acks_ignored for e in s.events if e.WhichOneof("kind") == "acks_ignored")
        assert list(ignored.ranges) == bogus
        assert s.close() == grpc.StatusCode.OK
    assert sorted(s.values()) == sorted([f"c1-{i}" for i in range(60)] + [f"c2-{i}" for i in range(60)])
    for c in sandbox.clusters[:2]:
        assert committed(c.bootstrap, group, topic, 3) == {p: _ends(s.records, c.name).get(p, -1001) for p in range(3)}


def test_a_malformed_message_or_a_second_subscription_mid_stream_is_invalid_argument(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc, _ = _one_cluster(sandbox, sidecar_factory, topic, 1, [])
    for bad, message in [
        (M.SubscribeRequest(subscription=M.Subscription(group="g", topics=[topic])), "a stream takes one subscription"),
        (None, "malformed SubscribeRequest"),
    ]:
        with SubStream(sc.target, f"g-{topic}", [topic]) as s:
            s.wait(lambda s: "assigned" in s.event_kinds(), timeout=30, what="the assignment")
            if bad is None:
                s._outbox.put(_Raw(b"\x12\x05ab"))      # acks field, truncated
            else:
                s.send(bad)
            s.wait(lambda s: s.status is not None, timeout=30, what="the end of the stream")
            assert s.status == grpc.StatusCode.INVALID_ARGUMENT
            assert s.details.startswith(message), s.details
    assert sc.alive()


class _Raw:
    """Bytes sent as they are in place of a message."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def SerializeToString(self) -> bytes:   # noqa: N802 (the protobuf method's name)
        return self.raw


def test_credit_bounds_what_is_sent_and_a_stream_paused_for_lack_of_it_resumes_without_loss(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0]
    sc, ns = _one_cluster(sandbox, sidecar_factory, topic, 2, [f"r-{i}" for i in range(300)])
    with SubStream(sc.target, f"g-{topic}", [topic], grant=False, credit_records=10, credit_bytes=1 << 20) as s:
        s.wait(lambda s: len(s.records) >= 10, what="the first 10 records")
        time.sleep(2.5)                                   # out of credit long enough for the partitions to pause
        assert len(s.records) == 10
        s.send(M.SubscribeRequest(credit=M.Credit(records=15, bytes=1 << 20)))
        s.wait(lambda s: len(s.records) >= 25, what="15 more")
        time.sleep(1)
        assert len(s.records) == 25
        s.send(M.SubscribeRequest(credit=M.Credit(records=1000, bytes=1 << 20)))
        s.wait(lambda s: len(s.records) >= 300, what="the rest")
        assert sorted(s.values()) == sorted(f"r-{i}" for i in range(300))      # nothing lost by the pause
    big = f"{topic}-big"
    create_topic(c1.bootstrap, big, partitions=1)
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": c1.bootstrap})
    for i in range(20):
        p.produce(big, value=bytes([65 + i]) * 100_000)
    assert p.flush(30) == 0
    apply(sandbox, ns, {"consumer": {big: [{"vip": "c1"}]}})
    time.sleep(1)
    with SubStream(sc.target, f"g-{big}", [big], grant=False, credit_records=1000, credit_bytes=350_000) as s:
        s.wait(lambda s: len(s.records) >= 3, what="what 350 kB of credit buys")
        time.sleep(2)
        # 3 records fit; the credit left (about 50 kB) is not zero, and a batch always carries one record, so that a
        # record larger than any credit still gets through: a stream overshoots its byte credit by one record at most
        assert len(s.records) == 4


def test_two_subscribers_split_the_partitions_and_hand_over_without_loss_or_acked_duplicates(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0]
    sc, _ = _one_cluster(sandbox, sidecar_factory, topic, 4, [])
    group = f"g-{topic}"
    produce_direct(c1.bootstrap, topic, [f"p1-{i}" for i in range(200)])
    a = SubStream(sc.target, group, [topic])
    b: SubStream | None = None
    try:
        a.wait(lambda s: len(s.records) >= 200, what="phase 1 by a")
        time.sleep(1.5)                                  # a's acks committed
        b = SubStream(sc.target, group, [topic])

        def owned(s: SubStream) -> set[int]:
            parts: set[int] = set()
            for e in s.events:
                kind = e.WhichOneof("kind")
                if kind == "assigned":
                    parts |= set(e.assigned.partitions)
                elif kind == "revoked":
                    parts -= set(e.revoked.partitions)
            return parts

        a.wait(lambda _: len(owned(a)) == 2 and len(owned(b)) == 2, timeout=60, what="the split")  # type: ignore[arg-type]
        assert owned(a).isdisjoint(owned(b))
        # KIP-848's protocol, incremental: a gave up only the partitions b took, and kept reading the others.
        assert group_type(c1.bootstrap, group) == "CONSUMER"
        revoked_from_a = {p for e in a.events if e.WhichOneof("kind") == "revoked" for p in e.revoked.partitions}
        assert revoked_from_a == owned(b)
        produce_direct(c1.bootstrap, topic, [f"p2-{i}" for i in range(200)])
        a.wait(lambda _: len(set(a.values() + b.values())) >= 400, what="phase 2")  # type: ignore[union-attr]
        assert b.records and all(v.startswith("p2-") for v in b.values())     # phase 1 was acked: not again
        b_parts = owned(b)
        time.sleep(0.5)                                  # b's acks reach the sidecar
        b.auto_ack = False
        produce_direct(c1.bootstrap, topic, [f"p3-{i}" for i in range(200)])
        a.wait(lambda _: len({v for v in a.values() + b.values() if v.startswith("p3-")}) >= 200,  # type: ignore[union-attr]
               what="phase 3")
        b_unacked = {v for (c, t, p, o, v) in b.records if (c, t, p, o) not in b.acked}
        b_acked = {v for (c, t, p, o, v) in b.records if (c, t, p, o) in b.acked}
        assert b_unacked and {v.decode() for v in b_unacked} == {v for v in b.values() if v.startswith("p3-")}
        time.sleep(0.5)
        before = len(a.records)
        assert b.close() == grpc.StatusCode.OK           # a clean hand-over
        a.wait(lambda _: len(owned(a)) == 4, timeout=60, what="a takes b's partitions")
        a.wait(lambda s: {v for v in s.records[before:]} >= set(), timeout=1)
        a.wait(lambda s: {r[4] for r in s.records[before:]} >= b_unacked, timeout=60,
               what="b's unacked records at a")
        time.sleep(1)
        again = [r for r in a.records[before:]]
        assert {r[2] for r in again} <= b_parts          # only b's partitions come again
        assert {r[4] for r in again} == b_unacked        # every unacked record, and nothing acked
        assert not ({r[4] for r in again} & b_acked)
        everything = {f"p{ph}-{i}" for ph in (1, 2, 3) for i in range(200)}
        assert set(a.values()) | set(b.values()) == everything
    finally:
        a.cancel()
        if b is not None:
            b.cancel()


def test_clusters_added_and_removed_mid_stream(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    for c in sandbox.clusters:
        create_topic(c.bootstrap, topic, partitions=2)
        produce_direct(c.bootstrap, topic, [f"{c.name}-{i}" for i in range(50)])
    c1 = sandbox.clusters[0]
    ns = new_namespace()
    apply(sandbox, ns, _consumer_mapping(sandbox, topic, ["c1", "c2"]))
    sc = sidecar_factory(ns, "--drain-timeout-s", "60")
    group = f"g-{topic}"
    with SubStream(sc.target, group, [topic]) as s:
        s.wait(lambda s: len(s.records) >= 100, what="c1 and c2")
        assert {r[0] for r in s.records} == {"c1", "c2"}
        rev = apply(sandbox, ns, {"consumer": {topic: [{"vip": "c1"}, {"vip": "c2"}, {"vip": "c3"}]}})
        s.wait(lambda s: len(s.records) >= 150, what="c3's records without reconnecting")
        assert sorted(v for v in s.values() if v.startswith("c3-")) == sorted(f"c3-{i}" for i in range(50))
        changed = [e.clusters_changed for e in s.events if e.WhichOneof("kind") == "clusters_changed"]
        assert [(x.topic, list(x.clusters), x.mapping_revision) for x in changed] == [(topic, ["c1", "c2", "c3"], rev)]

        # c1 sends 10 more that the app holds unacked while the mapping drops c1
        s.auto_ack = False
        produce_direct(c1.bootstrap, topic, [f"c1-late-{i}" for i in range(10)])
        s.wait(lambda s: len(s.records) >= 160, what="c1's late records")
        late = [r for r in s.records if r[4].startswith(b"c1-late-")]
        apply(sandbox, ns, {"consumer": {topic: [{"vip": "c2"}, {"vip": "c3"}]}})
        s.wait(lambda s: s.event_kinds().count("clusters_changed") == 2, timeout=30, what="c1 leaves")
        produce_direct(c1.bootstrap, topic, [f"c1-after-{i}" for i in range(10)])
        time.sleep(2)
        assert not [v for v in s.values() if v.startswith("c1-after-")]     # c1 is no longer read
        assert "revoked" not in s.event_kinds()                            # ... but waits for the acks
        s.ack(late)
        s.wait(lambda s: "revoked" in s.event_kinds(), timeout=30, what="c1's partitions revoked after the acks")
        revoked = [e.revoked for e in s.events if e.WhichOneof("kind") == "revoked"]
        assert [(x.cluster, list(x.partitions)) for x in revoked] == [("c1", [0, 1])]
        assert committed(c1.bootstrap, group, topic, 2) == _ends(s.records, "c1")
        assert s.status is None                                            # the stream goes on
        produce_direct(sandbox.clusters[1].bootstrap, topic, ["c2-more"])
        s.wait(lambda s: "c2-more" in s.values(), timeout=30, what="c2 still read")


def test_sidecar_killed_mid_stream_redelivers_only_unacked_records(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = _two_clusters(sandbox, topic, partitions=3, per_cluster=1000)
    everything = {f"{c.name}-{i}" for c in sandbox.clusters[:2] for i in range(1000)}
    first = sidecar_factory(ns, "--commit-interval-ms", "100", name="first")
    group = f"g-{topic}"
    s1 = SubStream(first.target, group, [topic], auto_ack=False)
    s1.wait(lambda s: len(s.records) >= 2000, what="every record")
    s1.ack(s1.records[:800])                             # in arrival order: a prefix of each partition
    time.sleep(1)                                        # the acks are committed (every 100 ms)
    first.stop(9)
    s1.cancel()
    acked = {v for (c, t, p, o, v) in s1.records if (c, t, p, o) in s1.acked}
    unacked = {r[4] for r in s1.records} - acked
    assert acked and unacked
    second = sidecar_factory(ns, name="second")
    reconnected = time.monotonic()
    with SubStream(second.target, group, [topic]) as s2:
        s2.wait(lambda s: set(s1.values()) | set(s.values()) >= everything, what="every record")
        # every record the killed sidecar's stream had not acked comes again: the partitions came back (the killed
        # members hold them until the brokers' session timeout: 10 s in the sandbox, as README advises; Kafka's
        # default is 45 s)
        s2.wait(lambda s: {v.encode() for v in s.values()} >= unacked, what="the unacked records again")
        took = time.monotonic() - reconnected
        assert took < 15, took
        time.sleep(1)
        duplicates = {v.encode() for v in s2.values()} & {r[4] for r in s1.records}
        assert duplicates <= unacked, sorted(duplicates - unacked)[:10]
        assert len(s2.values()) == len(set(s2.values()))


def test_a_cluster_down_is_reported_and_the_stream_goes_on(
        sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: Any) -> None:
    extra_settings = sandbox_settings(tmp_path / "extra")
    base = random.randrange(30000, 40000, 10)
    extra, _ = sandbox_mod.up(extra_settings, clusters=1, port_base=base, detach=False)
    try:
        c1 = sandbox.clusters[0]
        create_topic(c1.bootstrap, topic, partitions=1)
        create_topic(extra.clusters[0].bootstrap, topic, partitions=1)
        ns = new_namespace()
        apply(sandbox, ns, {
            "clusters": {**clusters_doc(sandbox), "extra": {"bootstrap": extra.clusters[0].bootstrap}},
            "producer": {topic: {"where": [{"sink": "c1"}]}},
            "consumer": {topic: [{"vip": "c1"}, {"vip": "extra"}]}})
        sc = sidecar_factory(ns)
        with SubStream(sc.target, f"g-{topic}", [topic]) as s:
            s.wait(lambda s: s.event_kinds().count("assigned") == 2, timeout=60, what="both assigned")
            sandbox_mod.down(extra_settings)
            s.wait(lambda s: "cluster_state" in s.event_kinds(), timeout=60, what="extra reported down")
            state = next(e.cluster_state for e in s.events if e.WhichOneof("kind") == "cluster_state")
            assert (state.cluster, state.available) == ("extra", False) and state.reason
            produce_direct(c1.bootstrap, topic, [f"while-down-{i}" for i in range(20)])
            s.wait(lambda s: sum(v.startswith("while-down-") for v in s.values()) == 20, timeout=15,
                   what="c1's records while extra is down")
            extra, _ = sandbox_mod.up(extra_settings, clusters=1, port_base=base, detach=False)
            s.wait(lambda s: s.event_kinds().count("cluster_state") == 2, timeout=90, what="extra back")
            back = [e.cluster_state for e in s.events if e.WhichOneof("kind") == "cluster_state"][1]
            assert (back.cluster, back.available) == ("extra", True)
            # The cluster came back empty (new storage, a new cluster id): the group the stream's consumer was in is
            # gone, which is fatal to that consumer. The stream reads the cluster with a new one, c1 all along.
            # (The sidecar's producer may have made the topic already: it holds the handles of topics that a consumer
            # route reads where producers do not write, and the sandbox's brokers create topics on first use.)
            create_topic(extra.clusters[0].bootstrap, topic, partitions=1, exist_ok=True)
            produce_direct(extra.clusters[0].bootstrap, topic, [f"extra-again-{i}" for i in range(10)])
            produce_direct(c1.bootstrap, topic, [f"c1-again-{i}" for i in range(10)])
            s.wait(lambda s: sum(v.startswith(("extra-again-", "c1-again-")) for v in s.values()) == 20,
                   timeout=60, what="records of both clusters after extra came back")
    finally:
        sandbox_mod.down(extra_settings)


def test_a_partition_revoked_while_paused_is_read_again_when_it_comes_back(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0]
    sc, _ = _one_cluster(sandbox, sidecar_factory, topic, 2, [f"a-{i}" for i in range(100)])
    group = f"g-{topic}"
    with SubStream(sc.target, group, [topic], grant=False, credit_records=5) as a:
        a.wait(lambda s: len(s.records) >= 5, what="5 records")
        time.sleep(2)                                    # out of credit: a's partitions are paused
        with SubStream(sc.target, group, [topic]) as b:  # takes a partition away from a while a is paused
            b.wait(lambda s: "assigned" in s.event_kinds(), timeout=60, what="b's share")
            a.send(M.SubscribeRequest(credit=M.Credit(records=1000, bytes=1 << 20)))     # a resumes its share
            time.sleep(1)
            b.close()
        # b left: its partition comes back to a, which is not paused any more: every partition must flow
        a.wait(lambda s: [e.assigned.partitions for e in s.events if e.WhichOneof("kind") == "assigned"][-1:]
               == [[0, 1]], timeout=60, what="both partitions back at a")
        produce_direct(c1.bootstrap, topic, [f"b-{i}" for i in range(100)])
        a.wait(lambda s: {v for v in s.values() if v.startswith("b-")} == {f"b-{i}" for i in range(100)},
               timeout=30, what="new records of both partitions")


def test_a_topic_added_to_a_running_clusters_consumer_is_read_from_its_beginning(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0]
    other = f"{topic}-other"
    for t in (topic, other):
        create_topic(c1.bootstrap, t, partitions=1)
    ns = new_namespace()
    # `other` is read from c2 at first; the stream starts at "latest"
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}},
                        "consumer": {topic: [{"vip": "c1"}], other: [{"vip": "c2"}]}})
    create_topic(sandbox.clusters[1].bootstrap, other, partitions=1)
    sc = sidecar_factory(ns)
    with SubStream(sc.target, f"g-{topic}", [topic, other], start=M.START_POSITION_LATEST) as s:
        s.wait(lambda s: s.event_kinds().count("assigned") == 2, timeout=60, what="assignments")
        produce_direct(c1.bootstrap, other, [f"early-{i}" for i in range(10)])   # before c1 reads `other`
        apply(sandbox, ns, {"consumer": {topic: [{"vip": "c1"}], other: [{"vip": "c1"}, {"vip": "c2"}]}})
        s.wait(lambda s: sorted(s.values()) == sorted(f"early-{i}" for i in range(10)), timeout=60,
               what="what was written to the added topic before it was read")


def test_a_cluster_added_to_a_running_stream_is_read_from_its_earliest_offset(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    """What a topic move relies on: a stream that started at "latest" on c1 reads c2, once the mapping adds it, from
    c2's earliest offset (its group has none there), so nothing written to c2 before the stream joined it is lost."""
    c1, c2 = sandbox.clusters[0], sandbox.clusters[1]
    for c in (c1, c2):
        create_topic(c.bootstrap, topic, partitions=2)
    ns = new_namespace()
    apply(sandbox, ns, _consumer_mapping(sandbox, topic, ["c1"]))
    sc = sidecar_factory(ns)
    with SubStream(sc.target, f"g-{topic}", [topic], start=M.START_POSITION_LATEST) as s:
        s.wait(lambda s: "assigned" in s.event_kinds(), timeout=60, what="c1 assigned")
        produce_direct(c2.bootstrap, topic, [f"c2-early-{i}" for i in range(20)])    # before the stream reads c2
        apply(sandbox, ns, {"consumer": {topic: [{"vip": "c1"}, {"vip": "c2"}]}})
        s.wait(lambda s: sorted(s.values()) == sorted(f"c2-early-{i}" for i in range(20)), timeout=60,
               what="c2's records written before the stream joined it")
        assert {r[0] for r in s.records} == {"c2"}


def test_a_cluster_removed_and_added_back_while_it_drains_is_read_again(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = _two_clusters(sandbox, topic, partitions=1, per_cluster=10)
    sc = sidecar_factory(ns, "--drain-timeout-s", "60")
    with SubStream(sc.target, f"g-{topic}", [topic], auto_ack=False) as s:
        s.wait(lambda s: len(s.records) >= 20, what="20 records")
        apply(sandbox, ns, {"consumer": {topic: [{"vip": "c2"}]}})
        s.wait(lambda s: s.event_kinds().count("clusters_changed") == 1, timeout=30, what="c1 leaves")
        apply(sandbox, ns, {"consumer": {topic: [{"vip": "c1"}, {"vip": "c2"}]}})   # back while it drains
        time.sleep(1)
        s.ack(list(s.records))                           # the drain ends, c1 closes and is read again
        s.auto_ack = True
        s.wait(lambda s: "revoked" in s.event_kinds(), timeout=30, what="c1 closed")
        produce_direct(sandbox.clusters[0].bootstrap, topic, ["c1-again"])
        s.wait(lambda s: "c1-again" in s.values(), timeout=60, what="c1 read again")


def test_a_cluster_whose_definition_changes_is_read_through_a_rebuilt_consumer_without_loss(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0]
    sc, ns = _one_cluster(sandbox, sidecar_factory, topic, 2, [f"before-{i}" for i in range(50)])
    with SubStream(sc.target, f"g-{topic}", [topic]) as s:
        s.wait(lambda s: len(s.records) >= 50, what="the first records")
        apply(sandbox, ns, {"clusters": clusters_doc(sandbox, c1={"client.id": "rebuilt"})})
        s.wait(lambda s: "revoked" in s.event_kinds(), timeout=30, what="the old consumer closed")
        s.wait(lambda s: s.event_kinds().count("assigned") >= 2, timeout=60, what="the rebuilt consumer's share")
        produce_direct(c1.bootstrap, topic, [f"after-{i}" for i in range(50)])
        s.wait(lambda s: {v for v in s.values() if v.startswith("after-")} == {f"after-{i}" for i in range(50)},
               timeout=60, what="records after the change")
        assert {v for v in s.values() if v.startswith("before-")} == {f"before-{i}" for i in range(50)}
        assert s.status is None
