"""The compiled routing table and the native Produce stream, without a broker: routing, per-record errors in the
encoded response, and the lifetime of batches that outlive their stream."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2
from tests.isolation import run_isolated
from tests.produce_responses import per_record
from tests.unit.stream_helpers import responses
from tests.wire_bytes import len_field

NOWHERE = {"bootstrap.servers": "127.0.0.1:9", "log_level": "0", "message.timeout.ms": "200"}


@pytest.fixture
def producers() -> list[meshcore.Producer]:
    ps = [meshcore.create_producer(f"c{i + 1}", dict(NOWHERE)) for i in range(3)]
    yield ps
    for p in ps:
        p.close(flush_timeout_ms=0)


def test_lookup_routes_topics_and_falls_back_to_default(producers: list[meshcore.Producer]) -> None:
    t = meshcore.build_route_table(7, producers, [(["t1", "t2"], [0]), (["t3"], [1, 2])], [2])
    assert (t.revision, t.topic_count) == (7, 3)
    assert t.sinks_for("t1") == t.sinks_for("t2") == ("c1",)
    assert t.sinks_for("t3") == ("c2", "c3")
    assert t.sinks_for("other") == ("c3",)
    assert meshcore.build_route_table(1, producers, [(["t1"], [0])]).sinks_for("other") is None


def test_a_hundred_thousand_topics_all_resolve(producers: list[meshcore.Producer]) -> None:
    topics = [f"topic-{i}" for i in range(100_000)]
    routes = [(topics[i::3], [i]) for i in range(3)]
    t = meshcore.build_route_table(1, producers, routes)
    assert t.topic_count == 100_000
    for i in random.Random(1).sample(range(100_000), 2000):
        assert t.sinks_for(topics[i]) == (f"c{i % 3 + 1}",)
    assert t.sinks_for("topic-100000") is None


def test_an_overlay_routes_its_changed_topics_and_leaves_the_rest_to_its_base(
        producers: list[meshcore.Producer]) -> None:
    base = meshcore.build_route_table(1, producers, [(["t1", "t2"], [0]), (["t3"], [1])], [2])
    # t1 moves to c2, t2 loses its own route (default now), t9 is new; t3 is untouched.
    over = meshcore.build_route_table(2, producers, [(["t1"], [1]), (["t2"], []), (["t9"], [0, 1])], [1],
                                      base=base)
    assert (over.revision, over.is_overlay, over.topic_count, base.is_overlay) == (2, True, 3, False)
    assert over.sinks_for("t1") == ("c2",) and over.sinks_for("t9") == ("c1", "c2")
    assert over.sinks_for("t2") == ("c2",)            # no route of its own: the overlay's default
    assert over.sinks_for("t3") == ("c2",) and over.sinks_for("other") == ("c2",)
    assert base.sinks_for("t1") == ("c1",) and base.sinks_for("t2") == ("c1",)     # the base is unchanged
    del base                                           # the overlay keeps its base alive
    assert over.sinks_for("t3") == ("c2",)
    assert meshcore.build_route_table(3, producers, [(["t2"], [])], None,
                                      base=meshcore.build_route_table(1, producers, [(["t2"], [0])])
                                      ).sinks_for("t2") is None


def test_bad_overlays_are_refused(producers: list[meshcore.Producer]) -> None:
    base = meshcore.build_route_table(1, producers, [(["t1"], [0])])
    over = meshcore.build_route_table(2, producers, [(["t1"], [1])], base=base)
    with pytest.raises(meshcore.CoreError, match="cannot be the base of another"):
        meshcore.build_route_table(3, producers, [], base=over)
    with pytest.raises(meshcore.CoreError, match="needs its base's producers"):
        meshcore.build_route_table(3, producers[:2], [], base=base)
    with pytest.raises(meshcore.CoreError, match="needs its base's producers"):
        meshcore.build_route_table(3, [producers[1], producers[0], producers[2]], [], base=base)
    with pytest.raises(meshcore.CoreError, match="default route needs 1 to 16 sinks"):
        meshcore.build_route_table(3, producers, [], [], base=base)


def test_bad_tables_are_refused(producers: list[meshcore.Producer]) -> None:
    with pytest.raises(meshcore.CoreError, match="'t1' appears in more than one route"):
        meshcore.build_route_table(1, producers, [(["t1"], [0]), (["t1"], [1])])
    with pytest.raises(meshcore.CoreError, match="topic '' cannot be routed: a topic name is 1 to 249 bytes"):
        meshcore.build_route_table(1, producers, [([""], [0])])
    with pytest.raises(meshcore.CoreError, match="sink index 5 is out of range"):
        meshcore.build_route_table(1, producers, [(["t1"], [5])])
    with pytest.raises(meshcore.CoreError, match="1 to 16 sinks"):
        meshcore.build_route_table(1, producers, [(["t1"], [])])
    with pytest.raises(TypeError):
        meshcore.build_route_table(1, ["not a producer"], [])


def test_each_record_error_is_reported_by_index_and_code(producers: list[meshcore.Producer]) -> None:
    t = meshcore.build_route_table(3, producers, [(["t1"], [0])])
    s = meshcore.open_stream()
    try:
        req = mesh_pb2.ProduceRequest(batch_id=11)
        req.records.add(topic="t1", value=b"a")           # cluster unreachable: times out
        req.records.add(topic="unrouted", value=b"b")     # no route, no default
        req.records.add(topic="bad/name", value=b"c")     # invalid topic
        req.records.add(topic="..", value=b"d")           # invalid topic
        assert s.submit(t, req.SerializeToString()) == 11
        [resp] = responses(s, 1)
    finally:
        s.close()
    assert (resp.batch_id, resp.ok_count, resp.mapping_revision) == (11, 0, 3)
    assert [(i, code) for i, code, _ in per_record(resp)] == [
        (0, mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE), (1, mesh_pb2.ERROR_CODE_NO_ROUTE),
        (2, mesh_pb2.ERROR_CODE_INVALID_TOPIC), (3, mesh_pb2.ERROR_CODE_INVALID_TOPIC)]
    # Consecutive records that failed alike are one entry, unless their topics differ: each message names its topic.
    assert [(e.index, e.count) for e in resp.errors] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert resp.errors[0].message == "cluster 'c1': topic 't1': Local: Message timed out (_MSG_TIMED_OUT)"
    assert resp.errors[1].message == ("topic 'unrouted': no producer route for it and no __default__ route (mapping "
                                      "revision 3)")
    assert resp.errors[2].message == ("invalid topic name 'bad/name': it must be 1 to 249 characters of "
                                      "[a-zA-Z0-9._-] and not '.' or '..'")
    assert resp.errors[3].message.startswith("invalid topic name '..': ")


def test_a_batch_with_only_immediate_errors_completes_at_once(producers: list[meshcore.Producer]) -> None:
    t = meshcore.build_route_table(1, producers, [])
    s = meshcore.open_stream()
    try:
        raw = mesh_pb2.ProduceRequest(batch_id=5, records=[mesh_pb2.Record(topic="x")]).SerializeToString()
        s.submit(t, raw)
        s.submit(t, mesh_pb2.ProduceRequest(batch_id=6).SerializeToString())   # an empty batch is answered too
        got = {r.batch_id: r for r in responses(s, 2, timeout=2)}
    finally:
        s.close()
    assert got[5].ok_count == 0 and [e.code for e in got[5].errors] == [mesh_pb2.ERROR_CODE_NO_ROUTE]
    assert got[6].ok_count == 0 and not got[6].errors


def test_a_stream_closed_with_batches_in_flight_frees_them_when_they_settle(
        producers: list[meshcore.Producer]) -> None:
    t = meshcore.build_route_table(1, producers, [(["t1"], [0, 1])])
    s = meshcore.open_stream()
    raw = mesh_pb2.ProduceRequest(batch_id=1, records=[mesh_pb2.Record(topic="t1", value=b"v")] * 10)
    s.submit(t, raw.SerializeToString())
    assert s.inflight_batches == 1 and s.inflight_bytes == raw.ByteSize()
    s.close()
    deadline = time.monotonic() + 5
    while any(p.outstanding for p in producers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.outstanding for p in producers)
    with pytest.raises(meshcore.HandleClosedError):
        s.submit(t, b"")
    # The debug build's fixture checks that the batch and the stream were freed.


def test_malformed_request_raises_and_leaves_no_batch(producers: list[meshcore.Producer]) -> None:
    t = meshcore.build_route_table(1, producers, [(["t1"], [0])])
    s = meshcore.open_stream()
    try:
        with pytest.raises(meshcore.WireError, match="truncated varint"):
            s.submit(t, b"\x08")
        assert s.inflight_batches == 0 and s.drain() == []
    finally:
        s.close()


def _fuzz_stream(seed: int, rounds: int) -> int:
    rnd = random.Random(seed)
    ps = [meshcore.create_producer(f"c{i}", dict(NOWHERE)) for i in range(2)]
    t = meshcore.build_route_table(1, ps, [(["topic-0"], [0]), (["topic-1"], [0, 1])], [1])
    s = meshcore.open_stream()
    refused = 0
    try:
        for i in range(rounds):
            req = mesh_pb2.ProduceRequest(batch_id=i)
            for _ in range(rnd.randrange(0, 6)):
                req.records.add(topic=f"topic-{rnd.randrange(3)}", value=rnd.randbytes(rnd.randrange(50)))
            raw = bytearray(req.SerializeToString())
            if i % 2 and raw:
                for _ in range(rnd.randrange(1, 4)):
                    raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            try:
                s.submit(t, bytes(raw))
            except meshcore.WireError:
                refused += 1
            s.drain()
    finally:
        s.close()
        for p in ps:
            p.close(flush_timeout_ms=0)
    return refused


def test_fuzzed_requests_never_crash_the_stream() -> None:
    assert run_isolated(_fuzz_stream, 99, 4000) > 100


def test_a_timestamp_too_far_ahead_fails_alone_before_anything_is_enqueued(producers: list[meshcore.Producer]) -> None:
    t = meshcore.build_route_table(1, producers, [(["t1"], [0])])
    s = meshcore.open_stream()
    now_ms = int(time.time() * 1000)
    req = mesh_pb2.ProduceRequest(batch_id=3)
    req.records.add(topic="t1", value=b"micros", timestamp_ms=now_ms * 1000)   # microseconds given for ms
    req.records.add(topic="t1", value=b"59 min ahead", timestamp_ms=now_ms + 59 * 60_000)
    req.records.add(topic="t1", value=b"2 h ahead", timestamp_ms=now_ms + 2 * 3_600_000)
    try:
        meshcore.set_max_timestamp_ahead_ms(3_600_000)
        s.submit(t, req.SerializeToString())
        [resp] = responses(s, 1, timeout=5)     # the 59-minute record waits for c1, unreachable: times out
        meshcore.set_max_timestamp_ahead_ms(0)  # off: nothing is refused for its timestamp
        s.submit(t, mesh_pb2.ProduceRequest(batch_id=4, records=[req.records[0]]).SerializeToString())
        [off] = responses(s, 1, timeout=5)
    finally:
        meshcore.set_max_timestamp_ahead_ms(3_600_000)
        s.close()
    failed = per_record(resp)
    assert [(i, code) for i, code, _ in failed] == [
        (0, mesh_pb2.ERROR_CODE_INVALID_RECORD), (1, mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE),
        (2, mesh_pb2.ERROR_CODE_INVALID_RECORD)]
    assert "more than 3600000 ms ahead of the sidecar's clock" in failed[0][2]
    assert [code for _, code, _ in per_record(off)] == [mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE]
    with pytest.raises(ValueError, match="0 or more"):
        meshcore.set_max_timestamp_ahead_ms(-1)


def _answer(t: meshcore.RouteTable, req: mesh_pb2.ProduceRequest) -> mesh_pb2.ProduceResponse:
    """Submit one request on a stream of its own and return its answer (unreachable sinks time out in 200 ms)."""
    s = meshcore.open_stream()
    try:
        s.submit(t, req.SerializeToString())
        [resp] = responses(s, 1, timeout=5)
        return resp
    finally:
        s.close()


#: (requires_key, create_time, before_max_ms, after_max_ms, max_bytes), as meshcore.build_topic_rules takes them.
COMPACTED = (True, True, None, None, None)
DAY_OLD_AT_MOST = (False, True, 86_400_000, 60_000, None)
LOG_APPEND_TIME = (False, False, 86_400_000, 60_000, None)
SMALL = (False, True, None, None, 200)


def test_what_a_topics_brokers_would_refuse_fails_alone_for_that_sink(producers: list[meshcore.Producer]) -> None:
    """Each record below breaks one rule of its topic on c1: it fails there, alone, before anything is enqueued,
    while the same record's delivery to c2 (which knows no rule) is enqueued (and times out: c2 is unreachable)."""
    t = meshcore.build_route_table(1, producers, [(["compacted", "dated", "appended", "small"], [0, 1])])
    producers[0].topic_rules = meshcore.build_topic_rules(None, {
        "compacted": COMPACTED, "dated": DAY_OLD_AT_MOST, "appended": LOG_APPEND_TIME, "small": SMALL})
    now_ms = int(time.time() * 1000)
    req = mesh_pb2.ProduceRequest(batch_id=9)
    req.records.add(topic="compacted", value=b"no key")                                  # 0: refused
    req.records.add(topic="compacted", key=b"", value=None)                              # 1: empty key, tombstone: ok
    req.records.add(topic="dated", value=b"2 days old", timestamp_ms=now_ms - 2 * 86_400_000)   # 2: refused
    req.records.add(topic="dated", value=b"2 min ahead", timestamp_ms=now_ms + 120_000)  # 3: refused
    req.records.add(topic="dated", value=b"1 h old", timestamp_ms=now_ms - 3_600_000)   # 4: ok
    req.records.add(topic="appended", value=b"2 days old", timestamp_ms=now_ms - 2 * 86_400_000)  # 5: ok
    req.records.add(topic="small", value=b"x" * 150)                                     # 6: refused: 61+... > 200
    req.records.add(topic="small", value=b"x" * 100)                                     # 7: ok
    req.records.add(topic="small", value=b"x" * 50, headers=[mesh_pb2.Header(key="h" * 40, value=b"v" * 40)])  # 8
    resp = _answer(t, req)
    # Records refused on c1 report c1's refusal (the first error of a record wins); the others time out on c1.
    got = {i: (code, message) for i, code, message in per_record(resp)}
    assert set(got) == set(range(9))
    refused = {i: got[i] for i in (0, 2, 3, 6, 8)}
    assert refused[0] == (mesh_pb2.ERROR_CODE_INVALID_RECORD, "cluster 'c1': topic 'compacted': the topic is "
                          "compacted (cleanup.policy=compact) and the record has no key")
    assert refused[2][0] == refused[3][0] == mesh_pb2.ERROR_CODE_INVALID_RECORD
    assert "message.timestamp.before.max.ms" in refused[2][1] and "message.timestamp.after.max.ms" in refused[3][1]
    assert refused[6][0] == refused[8][0] == mesh_pb2.ERROR_CODE_RECORD_TOO_LARGE
    assert refused[6][1] == ("cluster 'c1': topic 'small': the record, in a Kafka batch of its own, is 220 bytes, "
                             "over the topic's max.message.bytes of 200")
    for i in (1, 4, 5, 7):
        assert got[i][0] == mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE, (i, got[i])


def test_topics_without_a_rule_are_noted_and_checked_by_the_fallback(producers: list[meshcore.Producer]) -> None:
    t = meshcore.build_route_table(1, producers, [], [0])
    rules = meshcore.build_topic_rules(COMPACTED, {"known": (False, True, None, None, None)})
    producers[0].topic_rules = rules
    req = mesh_pb2.ProduceRequest(batch_id=1)
    for i in range(20):     # more topics than the per-batch topic cache holds: each still found and noted once
        req.records.add(topic=f"new{i % 10}", value=b"no key")
        req.records.add(topic="known", value=b"no key")
    resp = _answer(t, req)
    codes = [code for _, code, _ in per_record(resp)]
    assert codes[0::2] == [mesh_pb2.ERROR_CODE_INVALID_RECORD] * 20        # the fallback: a compacted default
    assert codes[1::2] == [mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE] * 20
    assert sorted(rules.take_misses()) == sorted(f"new{i}" for i in range(10))
    assert rules.take_misses() == []
    assert rules.rule_for("known") == (False, True, None, None, None) and rules.rule_for("other") == COMPACTED
    assert len(rules) == 1


def test_topic_rules_refuse_bad_input() -> None:
    with pytest.raises(meshcore.CoreError, match="0 or more"):
        meshcore.build_topic_rules(None, {"t": (False, True, -1, None, None)})
    with pytest.raises(ValueError):
        meshcore.build_topic_rules(None, {"t": (False, True)})
    assert meshcore.build_topic_rules(None, {}).rule_for("t") is None


def _revisions_in_flight() -> list[Any]:
    producer = meshcore.create_producer("c1", dict(NOWHERE, **{"message.timeout.ms": "1500"}))
    s = meshcore.open_stream()
    seen: list[Any] = [meshcore.oldest_revision_in_flight()]
    raw = mesh_pb2.ProduceRequest(records=[mesh_pb2.Record(topic="t1", value=b"v")]).SerializeToString()
    for revision in (9, 7, 12):
        s.submit(meshcore.build_route_table(revision, [producer], [(["t1"], [0])]), raw)
    seen.append(meshcore.oldest_revision_in_flight())
    # More revisions in flight than there are slots: the oldest can no longer be told, and reads 0.
    for revision in range(100, 170):
        s.submit(meshcore.build_route_table(revision, [producer], [(["t1"], [0])]), raw)
    seen.append(meshcore.oldest_revision_in_flight())
    got = responses(s, 73, timeout=20)          # every record times out (no broker)
    seen.append(len(got))
    seen.append(meshcore.oldest_revision_in_flight())
    s.close()
    producer.close(flush_timeout_ms=0)
    return seen


def test_batches_in_flight_are_counted_by_revision() -> None:
    """What a topic move waits for: the oldest revision any batch in flight was routed by."""
    assert run_isolated(_revisions_in_flight) == [None, 7, 0, 73, None]


def test_messages_name_the_topic_the_size_and_the_limit(producers: list[meshcore.Producer]) -> None:
    """Hostile topic names are shown escaped and cut (the message stays valid UTF-8 and bounded); a record over the
    producer's message.max.bytes names its size and the limit."""
    t = meshcore.build_route_table(2, producers, [(["t1"], [0])])
    s = meshcore.open_stream()
    bad = b"\xff'\\\xc3\xa9" + b"x" * 300            # not UTF-8, a quote, a backslash, then too long
    raw = mesh_pb2.ProduceRequest(batch_id=1, records=[
        mesh_pb2.Record(topic="t1", value=b"v" * 2_000_000),
    ]).SerializeToString() + len_field(2, len_field(1, bad) + len_field(3, b"x"))
    # Just over: the key, the value and the headers count (10 + 999,990 + 1 + 1 bytes).
    near = mesh_pb2.ProduceRequest(batch_id=2, records=[mesh_pb2.Record(
        topic="t1", key=b"k" * 10, value=b"v" * 999_990, headers=[mesh_pb2.Header(key="h", value=b"1")])])
    try:
        s.submit(t, raw)
        s.submit(t, near.SerializeToString())
        resp, over = sorted(responses(s, 2), key=lambda r: r.batch_id)
    finally:
        s.close()
    got = {i: (code, message) for i, code, message in per_record(resp)}
    assert got[0] == (mesh_pb2.ERROR_CODE_RECORD_TOO_LARGE, "cluster 'c1': topic 't1': the record is 2000000 bytes "
                      "(key, value and headers), over the producer's message.max.bytes of 1000000; raise it in the "
                      "cluster's config (and the topic's max.message.bytes on its brokers)")
    assert over.errors[0].message.startswith("cluster 'c1': topic 't1': the record is 1000002 bytes")
    assert got[1] == (mesh_pb2.ERROR_CODE_INVALID_TOPIC, "invalid topic name '\\xff\\x27\\x5c\\xc3\\xa9"
                      + "x" * 59 + "'... (305 bytes): it must be 1 to 249 characters of [a-zA-Z0-9._-] and not '.' "
                      "or '..'")


def test_records_are_counted_by_their_topics_slot(producers: list[meshcore.Producer]) -> None:
    """Per-topic counters: received as routed, failed (here: nowhere to deliver) by the delivery reports, each under
    the slot TopicSlots gives the topic, __default__ (1) for every other; a table without slots counts none."""
    slots = meshcore.build_topic_slots({"named": 2, "far": meshcore.MAX_TOPIC_SLOT})
    assert len(slots) == 2
    t = meshcore.build_route_table(1, producers, [(["named", "far"], [0])], [1], slots=slots)
    before = meshcore.received_counts()
    s = meshcore.open_stream()
    try:
        req = mesh_pb2.ProduceRequest(batch_id=1)
        for topic, n in (("named", 3), ("unnamed", 2), ("named", 1), ("far", 2), ("bad/name", 1)):
            for i in range(n):
                req.records.add(topic=topic, key=b"k", value=b"v" * (i + 1))
        s.submit(t, req.SerializeToString())
        # the same topics by a table without slots: not counted per topic
        s.submit(meshcore.build_route_table(2, producers, [(["named"], [0])], [1]),
                 mesh_pb2.ProduceRequest(batch_id=2, records=[mesh_pb2.Record(topic="named")]).SerializeToString())
        assert {r.ok_count for r in responses(s, 2)} == {0}
    finally:
        s.close()
    after = meshcore.received_counts()
    delta = {slot: tuple(a - b for a, b in zip(counts, before.get(slot, (0, 0, 0)), strict=True))
             for slot, counts in after.items()}
    # keys and values: a 1-byte key and 1..n bytes of value each
    assert delta[2] == (4, (2 + 3 + 4) + 2, 0)
    assert delta[meshcore.MAX_TOPIC_SLOT] == (2, 2 + 3, 0)
    assert delta[1] == (3, (2 + 3) + 2, 0)            # "unnamed" x2 and the invalid name
    assert producers[0].topic_stats() == {2: (0, 0, 4), meshcore.MAX_TOPIC_SLOT: (0, 0, 2)}
    assert producers[1].topic_stats() == {1: (0, 0, 2)}
    assert producers[2].topic_stats() == {}


@pytest.mark.parametrize("slots, error", [
    ({"t": 0}, "slot 0 of 't' is out of range"), ({"t": 1}, "out of range"), ({"t": 65536}, "out of range"),
    ({"t": -1}, "out of range"), ({"": 2}, "a topic name is 1 to 249 bytes"),
])
def test_bad_topic_slots_are_refused(slots: dict[str, int], error: str) -> None:
    with pytest.raises(meshcore.CoreError, match=error):
        meshcore.build_topic_slots(slots)
