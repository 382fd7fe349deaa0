"""The client's Consumer without Kafka: its bookkeeping as pure logic (ack ranges, the credit a response frees, the
decoding of records and events), then its side of the Subscribe protocol against a scripted server in this process
(when acks and credit go out, how close ends the stream, how a refusal surfaces). What the real sidecar does with a
subscription is tests/integration/test_client_consumer.py's job."""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures as cf
from typing import Any

import grpc
import pytest

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.client import (
    AckRange,
    AcksIgnored,
    ClustersChanged,
    ClusterStateChanged,
    ConsumedRecord,
    Consumer,
    ConsumerClosedError,
    ConsumerEvent,
    PartitionsAssigned,
    PartitionsRevoked,
    SubscribeError,
)
from sidecar.client.consumer import _Buffer, _decode, _PendingAcks

# ---------------------------------------------------------------------------------------------------------------
# Ack ranges


def test_acks_in_delivery_order_make_one_range_per_partition() -> None:
    acks = _PendingAcks()
    for off in range(100, 200):
        acks.add(("c1", "t", 0), off, off - 1)
    for off in range(5):
        acks.add(("c2", "t", 0), off, off - 1)
        acks.add(("c1", "t", 1), off, off - 1)
    assert acks.count == 3
    assert sorted(acks.take(), key=lambda r: (r.cluster, r.partition)) == [
        AckRange("c1", "t", 0, 100, 199), AckRange("c1", "t", 1, 0, 4), AckRange("c2", "t", 0, 0, 4)]
    assert not acks and acks.take() == []            # taken: nothing pending any more


def test_out_of_order_and_repeated_acks_are_merged_when_taken() -> None:
    acks = _PendingAcks()
    for off in (7, 3, 4, 9, 5, 5, 8, 3, 12):
        acks.add(("c1", "t", 2), off, off - 1)
    assert acks.take() == [AckRange("c1", "t", 2, 3, 5), AckRange("c1", "t", 2, 7, 9),
                           AckRange("c1", "t", 2, 12, 12)]


def test_a_range_extends_across_offsets_kafka_skipped_between_records_of_one_fetch() -> None:
    # Offsets 11 and 14-15 are not records (transaction markers, compacted away): 12's predecessor was 10.
    acks = _PendingAcks()
    for off, prev in ((10, 9), (12, 10), (13, 12), (16, 13)):
        acks.add(("c1", "t", 0), off, prev)
    assert acks.take() == [AckRange("c1", "t", 0, 10, 16)]
    # Without that knowledge (a record that starts a fetch has prev = offset - 1), a gap stays a gap.
    acks.add(("c1", "t", 0), 20, 19)
    acks.add(("c1", "t", 0), 22, 21)
    assert acks.take() == [AckRange("c1", "t", 0, 20, 20), AckRange("c1", "t", 0, 22, 22)]


# ---------------------------------------------------------------------------------------------------------------
# Credit


def _records(n: int, first: int = 0, partition: int = 0) -> list[ConsumedRecord]:
    return [ConsumedRecord("c1", "t", partition, first + i, None, b"v") for i in range(n)]


def test_a_response_frees_its_records_and_bytes_only_once_all_its_records_are_taken() -> None:
    buf = _Buffer()
    assert buf.put_records(_records(4), 400) == (0, 0)
    assert buf.put_records(_records(3, first=4), 300) == (0, 0)
    assert (buf.records, buf.nbytes, buf.peak) == (7, 700, 7)
    got, cr, cb = buf.take(3)
    assert [r.offset for r in got] == [0, 1, 2] and (cr, cb) == (0, 0)       # response 1 not all taken
    assert (buf.records, buf.nbytes) == (4, 700)
    got, cr, cb = buf.take(2)
    assert [r.offset for r in got] == [3, 4] and (cr, cb) == (4, 400)        # response 1 done, 2 started
    got, cr, cb = buf.take(None)
    assert [r.offset for r in got] == [5, 6] and (cr, cb) == (3, 300)
    assert (buf.records, buf.nbytes, buf.peak) == (0, 0, 7)
    assert buf.take(None) == ([], 0, 0)


def test_a_response_with_no_record_gives_its_bytes_back_at_once() -> None:
    buf = _Buffer()
    assert buf.put_records([], 12) == (0, 12)
    assert (buf.records, buf.nbytes) == (0, 0)


def test_records_are_taken_across_responses_but_never_past_an_event() -> None:
    buf = _Buffer()
    ev = PartitionsRevoked("c1", "t", (0,))
    buf.put_records(_records(2), 20)
    buf.put_records(_records(2, first=2), 20)
    buf.put_event(ev)
    buf.put_records(_records(2, first=4), 20)
    assert buf.pop_event() is None                   # records come first
    got, cr, cb = buf.take(None)
    assert [r.offset for r in got] == [0, 1, 2, 3] and (cr, cb) == (4, 40)
    assert buf.take(None) == ([], 0, 0)              # the event stops it
    assert buf.pop_event() is ev and buf.pop_event() is None
    got, cr, cb = buf.take(10)
    assert [r.offset for r in got] == [4, 5] and (cr, cb) == (2, 20)


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def _response(**kind: Any) -> bytes:
    return bytes(M.SubscribeResponse(**kind).SerializeToString())


def test_records_decode_with_their_cluster_null_fields_headers_and_fetch_predecessor() -> None:
    raw = _response(records=M.RecordBatch(partitions=[
        M.PartitionRecords(cluster="c2", topic="orders", partition=3, records=[
            M.ConsumedRecord(offset=10, key=b"k", value=b"v", timestamp_ms=1700000000123,
                             headers=[M.Header(key="h1", value=b"x"), M.Header(key="h2"), M.Header(key="h1")]),
            M.ConsumedRecord(offset=12, key=b"", timestamp_ms=5),
        ]),
        M.PartitionRecords(cluster="c1", topic="orders", partition=0, records=[M.ConsumedRecord(offset=0, value=b"")]),
    ]))
    got = _decode(raw)
    assert isinstance(got, list)
    assert [(r.cluster, r.topic, r.partition, r.offset, r.key, r.value, r.headers, r.timestamp_ms) for r in got] == [
        ("c2", "orders", 3, 10, b"k", b"v", (("h1", b"x"), ("h2", None), ("h1", None)), 1700000000123),
        ("c2", "orders", 3, 12, b"", None, (), 5),
        ("c1", "orders", 0, 0, None, b"", (), 0),
    ]
    assert [r._prev for r in got] == [9, 10, -1]
    with pytest.raises(ValueError, match="did not come from a Consumer"):
        got[0].ack()


@pytest.mark.parametrize("event, expected", [
    (M.Event(assigned=M.PartitionSet(cluster="c1", topic="t", partitions=[0, 2])),
     PartitionsAssigned("c1", "t", (0, 2))),
    (M.Event(revoked=M.PartitionSet(cluster="c2", topic="t", partitions=[1])), PartitionsRevoked("c2", "t", (1,))),
    (M.Event(clusters_changed=M.ClustersChanged(topic="t", clusters=["c1", "c3"], mapping_revision=42)),
     ClustersChanged("t", ("c1", "c3"), 42)),
    (M.Event(cluster_state=M.ClusterState(cluster="c3", available=False, reason="all brokers down")),
     ClusterStateChanged("c3", False, "all brokers down")),
    (M.Event(acks_ignored=M.Acks(ranges=[M.AckRange(cluster="c1", topic="t", partition=4, first_offset=5,
                                                    last_offset=9)])),
     AcksIgnored((AckRange("c1", "t", 4, 5, 9),))),
])
def test_each_event_decodes_to_its_frozen_dataclass(event: Any, expected: ConsumerEvent) -> None:
    got = _decode(_response(event=event))
    assert got == expected
    assert dataclasses.is_dataclass(got)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(got, dataclasses.fields(got)[0].name, None)


def test_a_response_of_a_kind_this_client_does_not_know_decodes_to_none() -> None:
    assert _decode(b"") is None                      # no kind set: what a newer oneof member looks like here
    assert _decode(_response(event=M.Event())) is None


# ---------------------------------------------------------------------------------------------------------------
# Arguments


def test_bad_arguments_are_refused_before_any_stream() -> None:
    with pytest.raises(ValueError, match="group"):
        Consumer("unix:/nowhere", group="")
    with pytest.raises(ValueError, match="start"):
        Consumer("unix:/nowhere", group="g", start="beginning")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_buffered_records"):
        Consumer("unix:/nowhere", group="g", max_buffered_records=0)
    with pytest.raises(ValueError, match="batch_records"):
        Consumer("unix:/nowhere", group="g", batch_records=1 << 32)
    c = Consumer("unix:/nowhere", group="g")
    with pytest.raises(TypeError, match=r"subscribe\(\[topic\]\)"):
        c.subscribe("orders")
    with pytest.raises(ValueError, match="empty"):
        c.subscribe([])
    with pytest.raises(RuntimeError, match="before subscribe"):
        c.poll(0)
    c.ack([])                                        # nothing to ack: no error, whatever the state
    c.close()
    c.close()                                        # idempotent, also never subscribed
    with pytest.raises(ConsumerClosedError):
        c.subscribe(["orders"])
    with pytest.raises(ConsumerClosedError):
        c.poll(0)


def test_subscribe_without_a_sidecar_raises_unavailable_within_connect_timeout(tmp_path: pathlib.Path) -> None:
    c = Consumer(f"unix:{tmp_path}/none.sock", group="g", connect_timeout=0.2)
    with pytest.raises(SubscribeError) as e:
        c.subscribe(["t"])
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "no sidecar reachable" in e.value.details
    c.close()


# ---------------------------------------------------------------------------------------------------------------
# The protocol, against a scripted Subscribe server

Script = Callable[["FakeSubscribe", grpc.ServicerContext], Iterator[bytes]]


class FakeSubscribe:
    """Serves kafkamesh.v1.Mesh/Subscribe on a Unix socket. `script` yields the responses; afterwards the stream
    ends when the client half-closes (end_on_half_close) or is cancelled. Requests are decoded into `requests`."""

    def __init__(self, path: pathlib.Path, script: Script, end_on_half_close: bool = True) -> None:
        self.script = script
        self.end_on_half_close = end_on_half_close
        self.requests: list[M.SubscribeRequest] = []
        self.half_closed = threading.Event()
        self.cancelled = threading.Event()
        self.target = f"unix:{path}"
        self.server = grpc.server(cf.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kafkamesh.v1.Mesh", {
            "Subscribe": grpc.stream_stream_rpc_method_handler(self._subscribe)}),))
        self.server.add_insecure_port(self.target)
        self.server.start()

    def _subscribe(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(self.cancelled.set)

        def drain() -> None:
            try:
                for raw in requests:
                    self.requests.append(M.SubscribeRequest.FromString(raw))
                self.half_closed.set()
            except Exception:
                pass

        threading.Thread(target=drain, daemon=True).start()
        yield from self.script(self, context)
        while context.is_active() and not (self.end_on_half_close and self.half_closed.is_set()):
            time.sleep(0.005)

    def wait_for(self, what: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, f"timed out; requests: {self.requests}"
            time.sleep(0.005)

    def of_kind(self, kind: str) -> list[Any]:
        return [getattr(r, kind) for r in self.requests if r.HasField(kind)]

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture
def fake(tmp_path: pathlib.Path) -> Iterator[Callable[..., FakeSubscribe]]:
    made: list[FakeSubscribe] = []

    def make(script: Script, **kw: Any) -> FakeSubscribe:
        made.append(FakeSubscribe(tmp_path / f"fake-{len(made)}.sock", script, **kw))
        return made[-1]

    yield make
    for f in made:
        f.stop()


def _batch(partition: int, offsets: range, cluster: str = "c1") -> bytes:
    return _response(records=M.RecordBatch(partitions=[M.PartitionRecords(
        cluster=cluster, topic="t", partition=partition,
        records=[M.ConsumedRecord(offset=o, value=f"v{o}".encode()) for o in offsets])]))


def _sends(*responses: bytes) -> Script:
    def script(fake: FakeSubscribe, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from responses
    return script


def test_the_subscription_carries_group_topics_start_batch_options_and_the_buffer_bounds_as_credit(
        fake: Callable[..., FakeSubscribe]) -> None:
    sc = fake(_sends())
    with Consumer(sc.target, group="billing", start="earliest", max_buffered_records=10,
                  max_buffered_bytes=4096, batch_records=5, batch_wait_ms=7) as c:
        c.subscribe(["a", "b"])
        with pytest.raises(RuntimeError, match="one subscription per Consumer"):
            c.subscribe(["c"])
        sc.wait_for(lambda: len(sc.requests) >= 1)
    assert sc.requests[0] == M.SubscribeRequest(subscription=M.Subscription(
        group="billing", topics=["a", "b"], start=M.START_POSITION_EARLIEST, max_records=5, max_wait_ms=7,
        credit=M.Credit(records=10, bytes=4096)))


def test_credit_goes_back_per_response_once_the_application_took_all_its_records(
        fake: Callable[..., FakeSubscribe]) -> None:
    r1, r2 = _batch(0, range(0, 4)), _batch(1, range(0, 3), cluster="c2")
    sc = fake(_sends(r1, r2))
    with Consumer(sc.target, group="g") as c:
        c.subscribe(["t"])
        sc.wait_for(lambda: c.buffered == 7)
        assert c.buffered_bytes == len(r1) + len(r2)
        assert [r.offset for r in c.poll(5, max_records=3)] == [0, 1, 2]
        time.sleep(0.1)
        assert sc.of_kind("credit") == []           # r1 has a record left: nothing freed yet
        got = c.poll(5)
        assert [(r.cluster, r.partition, r.offset) for r in got] == [("c1", 0, 3), ("c2", 1, 0), ("c2", 1, 1),
                                                                     ("c2", 1, 2)]
        sc.wait_for(lambda: sum(cr.records for cr in sc.of_kind("credit")) == 7)
        assert sum(cr.bytes for cr in sc.of_kind("credit")) == len(r1) + len(r2)
        assert (c.buffered, c.buffered_bytes, c.peak_buffered) == (0, 0, 7)
        assert c.poll(0.05) == []


def test_freed_credit_waits_for_a_quarter_of_the_window_or_the_ack_interval(
        fake: Callable[..., FakeSubscribe]) -> None:
    r1, r2 = _batch(0, range(0, 10)), _batch(0, range(10, 40))
    sc = fake(_sends(r1, r2))
    with Consumer(sc.target, group="g", max_buffered_records=100, ack_interval_ms=600) as c:
        c.subscribe(["t"])
        sc.wait_for(lambda: c.buffered == 40)
        assert len(c.poll(5, max_records=10)) == 10        # r1 taken: 10 records freed, under a quarter of 100
        time.sleep(0.2)
        assert sc.of_kind("credit") == []                 # not worth a message yet
        t0 = time.monotonic()
        assert len(c.poll(5)) == 30                       # 40 freed: a quarter and more, sent at once
        sc.wait_for(lambda: sum(cr.records for cr in sc.of_kind("credit")) == 40, timeout=0.5)
        assert time.monotonic() - t0 < 0.5
        assert sum(cr.bytes for cr in sc.of_kind("credit")) == len(r1) + len(r2)


def test_freed_credit_under_a_quarter_goes_at_the_ack_interval(fake: Callable[..., FakeSubscribe]) -> None:
    r1 = _batch(0, range(0, 5))
    sc = fake(_sends(r1))
    with Consumer(sc.target, group="g", max_buffered_records=100, ack_interval_ms=300) as c:
        c.subscribe(["t"])
        sc.wait_for(lambda: c.buffered == 5)
        t0 = time.monotonic()
        assert len(c.poll(5)) == 5
        sc.wait_for(lambda: sum(cr.records for cr in sc.of_kind("credit")) == 5, timeout=3)
        assert time.monotonic() - t0 >= 0.25              # held for the interval, then sent without any ack


def test_acks_are_sent_as_ranges_after_the_ack_interval(fake: Callable[..., FakeSubscribe]) -> None:
    sc = fake(_sends(_batch(0, range(0, 50)), _batch(1, range(10, 20))))
    with Consumer(sc.target, group="g", ack_interval_ms=50) as c:
        c.subscribe(["t"])
        got: list[ConsumedRecord] = []
        while len(got) < 60:
            got += c.poll(5)
        t0 = time.monotonic()
        for r in got:
            r.ack()                                   # 60 acks, one message
        sc.wait_for(lambda: bool(sc.of_kind("acks")))
        assert time.monotonic() - t0 >= 0.04
        assert [list(a.ranges) for a in sc.of_kind("acks")] == [[
            M.AckRange(cluster="c1", topic="t", partition=0, first_offset=0, last_offset=49),
            M.AckRange(cluster="c1", topic="t", partition=1, first_offset=10, last_offset=19)]]


def test_close_sends_the_pending_acks_then_half_closes_and_returns_when_the_stream_ends(
        fake: Callable[..., FakeSubscribe]) -> None:
    sc = fake(_sends(_batch(0, range(0, 10))))
    c = Consumer(sc.target, group="g", ack_interval_ms=60_000, close_timeout=30)
    c.subscribe(["t"])
    got: list[ConsumedRecord] = []
    while len(got) < 10:
        got += c.poll(5)
    c.ack(got[5:])
    c.ack(got[:3])
    time.sleep(0.05)
    assert sc.of_kind("acks") == []                  # the interval is long: only close sends them
    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < 5                  # the sidecar ended the stream: no waiting for close_timeout
    assert sc.half_closed.is_set()
    assert [list(a.ranges) for a in sc.of_kind("acks")] == [[
        M.AckRange(cluster="c1", topic="t", partition=0, first_offset=0, last_offset=2),
        M.AckRange(cluster="c1", topic="t", partition=0, first_offset=5, last_offset=9)]]
    last = sc.requests[-1]
    assert last.HasField("acks") and not last.HasField("credit")   # nothing after them: no credit while closing
    with pytest.raises(ConsumerClosedError):
        got[4].ack()
    with pytest.raises(ConsumerClosedError):
        c.poll(0)
    assert list(c) == []


def test_close_cancels_a_stream_the_sidecar_does_not_end_after_close_timeout(
        fake: Callable[..., FakeSubscribe]) -> None:
    sc = fake(_sends(_batch(0, range(0, 2))), end_on_half_close=False)
    c = Consumer(sc.target, group="g", close_timeout=0.3)
    c.subscribe(["t"])
    got = c.poll(5)
    c.ack(got)
    t0 = time.monotonic()
    c.close()
    assert 0.3 <= time.monotonic() - t0 < 3
    assert sc.half_closed.is_set() and len(sc.of_kind("acks")) == 1
    sc.wait_for(sc.cancelled.is_set)


def test_events_reach_on_event_on_the_polling_thread_in_order_with_the_records(
        fake: Callable[..., FakeSubscribe]) -> None:
    seen: list[tuple[str, Any]] = []
    sc = fake(_sends(_response(event=M.Event(assigned=M.PartitionSet(cluster="c1", topic="t", partitions=[0]))),
                     _batch(0, range(0, 2)),
                     _response(event=M.Event(revoked=M.PartitionSet(cluster="c1", topic="t", partitions=[0]))),
                     _batch(0, range(0, 1))))
    with Consumer(sc.target, group="g", on_event=lambda ev: seen.append((threading.current_thread().name, ev))) as c:
        c.subscribe(["t"])
        sc.wait_for(lambda: c.buffered == 3)
        first = c.poll(5)
        assert [r.offset for r in first] == [0, 1]
        assert seen == [(threading.current_thread().name, PartitionsAssigned("c1", "t", (0,)))]
        second = c.poll(5)                            # the revocation comes before the records after it
        assert [r.offset for r in second] == [0]
        assert [ev for _, ev in seen] == [PartitionsAssigned("c1", "t", (0,)), PartitionsRevoked("c1", "t", (0,))]


def test_a_refused_subscription_raises_subscribe_error_from_poll_iteration_and_ack(
        fake: Callable[..., FakeSubscribe]) -> None:
    def refuse(fake: FakeSubscribe, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield _batch(0, range(0, 1))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "topic 't' has no consumer route")

    sc = fake(refuse)
    with Consumer(sc.target, group="g") as c:
        c.subscribe(["t"])
        sc.wait_for(lambda: c.closed or c._failure is not None)
        for call in (lambda: c.poll(5), lambda: next(c)):
            with pytest.raises(SubscribeError) as e:
                call()
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert e.value.details == "topic 't' has no consumer route"
            assert "FAILED_PRECONDITION: topic 't' has no consumer route" in str(e.value)
        assert c.buffered == 0                        # what came before the error is dropped: it comes again


def test_a_stream_the_sidecar_ends_by_itself_is_unavailable(fake: Callable[..., FakeSubscribe]) -> None:
    def end(fake: FakeSubscribe, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from ()
        fake.end_on_half_close = True
        fake.half_closed.set()                        # the handler returns: status OK, but nobody asked for it

    sc = fake(end)
    with Consumer(sc.target, group="g") as c:
        c.subscribe(["t"])
        with pytest.raises(SubscribeError) as e:
            c.poll(5)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_poll_waiting_in_another_thread_returns_empty_when_the_consumer_is_closed(
        fake: Callable[..., FakeSubscribe]) -> None:
    sc = fake(_sends(_batch(0, range(0, 1))))
    c = Consumer(sc.target, group="g")
    c.subscribe(["t"])
    results: list[Any] = []

    def poller() -> None:
        results.append([r.offset for r in c.poll(5)])
        results.append(c.poll(timeout=None))         # nothing more comes: waits until close

    t = threading.Thread(target=poller)
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    c.close()
    t.join(5)
    assert not t.is_alive() and results == [[0], []]


def test_iteration_yields_records_as_they_come_and_ends_when_another_thread_closes(
        fake: Callable[..., FakeSubscribe]) -> None:
    sc = fake(_sends(_batch(0, range(0, 3)), _batch(1, range(0, 2))))
    c = Consumer(sc.target, group="g")
    c.subscribe(["t"])
    got: list[tuple[int, int]] = []

    def iterate() -> None:
        for r in c:
            got.append((r.partition, r.offset))
            r.ack()

    t = threading.Thread(target=iterate)
    t.start()
    sc.wait_for(lambda: len(got) == 5)
    assert t.is_alive()
    c.close()
    t.join(5)
    assert not t.is_alive() and got == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert sorted((r.partition, r.first_offset, r.last_offset) for a in sc.of_kind("acks") for r in a.ranges) == [
        (0, 0, 2), (1, 0, 1)]
