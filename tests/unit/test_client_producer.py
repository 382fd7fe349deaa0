"""The client's Producer against a scripted Produce server in this process (no Kafka, no sidecar): batching
bounds, futures matched to out-of-order answers, every way a stream can end, close with a timeout, and callbacks.
What the real sidecar does with the records is tests/integration/test_client.py's job."""

from __future__ import annotations

import dataclasses
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures as cf
from typing import Any

import grpc
import pytest

from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.client import ErrorCode, Producer, ProducerClosedError, RecordError, StreamError, stream

Policy = Callable[[mesh_pb2.ProduceRequest], "list[mesh_pb2.ProduceResponse] | None"]


def ok(req: mesh_pb2.ProduceRequest) -> list[mesh_pb2.ProduceResponse]:
    return [mesh_pb2.ProduceResponse(batch_id=req.batch_id, ok_count=len(req.records), mapping_revision=7)]


class FakeSidecar:
    """Serves kafkamesh.v1.Mesh/Produce on a Unix socket; `policy` turns each request into the responses to send
    now (None: end the stream). Every request received is kept in `requests`."""

    def __init__(self, path: pathlib.Path, policy: Policy = ok) -> None:
        self.policy = policy
        self.requests: list[mesh_pb2.ProduceRequest] = []
        self.target = f"unix:{path}"
        self.server = grpc.server(cf.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kafkamesh.v1.Mesh", {
            "Produce": grpc.stream_stream_rpc_method_handler(self._produce)}),))
        self.server.add_insecure_port(self.target)
        self.server.start()

    def _produce(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for raw in requests:
            req = mesh_pb2.ProduceRequest.FromString(raw)
            self.requests.append(req)
            out = self.policy(req)
            if out is None:
                return
            for resp in out:
                yield resp.SerializeToString()

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture
def fake(tmp_path: pathlib.Path) -> Iterator[Callable[..., FakeSidecar]]:
    made: list[FakeSidecar] = []

    def make(policy: Policy = ok) -> FakeSidecar:
        made.append(FakeSidecar(tmp_path / f"fake-{len(made)}.sock", policy))
        return made[-1]

    yield make
    for f in made:
        f.stop()


def _values(req: mesh_pb2.ProduceRequest) -> list[bytes]:
    return [r.value for r in req.records]


def test_batches_are_cut_at_batch_records_and_batch_bytes(fake: Callable[..., FakeSidecar]) -> None:
    sc = fake()
    with Producer(sc.target, linger_ms=10_000, batch_records=4, batch_bytes=1000) as p:
        fs = [p.send("t", bytes([i]) * 10) for i in range(10)]            # 4 + 4 + 2 (the 2 sent by flush)
        p.flush(timeout=10)
        fs += [p.send("u", b"x" * 300) for _ in range(4)]                  # ~310 bytes each: 3 fit in 1000
        p.flush(timeout=10)
        fs.append(p.send("u", b"y" * 5000))                                # over batch_bytes: alone, at once
        assert fs[-1].result(timeout=10)
    assert all(f.result(timeout=0).mapping_revision == 7 for f in fs)
    assert [len(r.records) for r in sc.requests] == [4, 4, 2, 3, 1, 1]
    assert [r.value for req in sc.requests[:3] for r in req.records] == [bytes([i]) * 10 for i in range(10)]
    assert len({r.batch_id for r in sc.requests}) == 6


def test_out_of_order_answers_resolve_the_right_futures_and_errors_by_index(
        fake: Callable[..., FakeSidecar]) -> None:
    held: list[mesh_pb2.ProduceRequest] = []

    def reverse_after_three(req: mesh_pb2.ProduceRequest) -> list[mesh_pb2.ProduceResponse]:
        held.append(req)
        if len(held) < 3:
            return []
        out = []
        for r in reversed(held):     # the last batch answered first
            errors = [mesh_pb2.RecordError(index=1, code=mesh_pb2.ERROR_CODE_RECORD_TOO_LARGE, message="too big"),
                      mesh_pb2.RecordError(index=2, code=99, message="from the future")]
            out.append(mesh_pb2.ProduceResponse(batch_id=r.batch_id, ok_count=len(r.records) - 2, errors=errors,
                                                mapping_revision=r.batch_id * 10))
        return out

    sc = fake(reverse_after_three)
    with Producer(sc.target, batch_records=3) as p:
        fs = [p.send("t", f"v{i}".encode()) for i in range(9)]
        p.flush(timeout=10)
    by_value = {r.value: req.batch_id for req in sc.requests for r in req.records}
    for i, f in enumerate(fs):
        if i % 3 == 0:
            assert f.result().batch_id == by_value[f"v{i}".encode()]
            assert f.result().mapping_revision == by_value[f"v{i}".encode()] * 10
        else:
            e = f.exception()
            assert isinstance(e, RecordError) and e.index == i % 3 and e.topic == "t"
            assert (e.code, e.message) == ((ErrorCode.RECORD_TOO_LARGE, "too big") if i % 3 == 1 else
                                           (ErrorCode.INTERNAL, "from the future"))


def test_an_aborted_stream_fails_every_pending_future_with_its_status_and_later_sends_raise(
        fake: Callable[..., FakeSidecar], tmp_path: pathlib.Path) -> None:
    gate = threading.Event()

    def abort(req: mesh_pb2.ProduceRequest) -> list[mesh_pb2.ProduceResponse]:
        gate.wait(10)
        raise ValueError("boom")       # grpc ends the stream with UNKNOWN

    sc = fake(abort)
    p = Producer(sc.target, batch_records=2, linger_ms=10_000)
    sent = [p.send("t", b"a"), p.send("t", b"b")]           # one sealed batch
    whole = p.send_batch("t", [b"d"])
    unsent = p.send("t", b"c")                                # still in the open batch
    gate.set()
    for f in [*sent, unsent, whole]:
        e = f.exception(timeout=10)
        assert isinstance(e, StreamError) and e.code == grpc.StatusCode.UNKNOWN
    with pytest.raises(StreamError, match="UNKNOWN.*create a new Producer"):
        p.send("t", b"later")
    p.close(timeout=5)
    with pytest.raises(ProducerClosedError):
        p.send("t", b"closed")


def test_invalid_argument_from_the_sidecar_reaches_the_futures(tmp_path: pathlib.Path) -> None:
    def produce(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        next(requests)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "record 0: truncated field")
        yield b""

    server = grpc.server(cf.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kafkamesh.v1.Mesh", {
        "Produce": grpc.stream_stream_rpc_method_handler(produce)}),))
    target = f"unix:{tmp_path / 'abort.sock'}"
    server.add_insecure_port(target)
    server.start()
    try:
        with Producer(target) as p:
            e = p.send("t", b"x").exception(timeout=10)
            assert isinstance(e, StreamError)
            assert (e.code, e.details) == (grpc.StatusCode.INVALID_ARGUMENT, "record 0: truncated field")
            assert "INVALID_ARGUMENT" in str(e)
    finally:
        server.stop(None).wait()


def test_a_stream_the_sidecar_ends_before_answering_fails_with_unavailable(
        fake: Callable[..., FakeSidecar]) -> None:
    sc = fake(lambda req: None)
    with Producer(sc.target) as p:
        e = p.send("t", b"x").exception(timeout=10)
        assert isinstance(e, StreamError) and e.code == grpc.StatusCode.UNAVAILABLE
        assert "ended the Produce stream" in e.details


def test_close_with_a_timeout_cancels_what_is_unanswered(fake: Callable[..., FakeSidecar]) -> None:
    sc = fake(lambda req: [])          # never answers
    p = Producer(sc.target)
    fs = [p.send("t", b"x") for _ in range(5)]
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="1 batch.*5 record"):
        p.close(timeout=0.3)
    assert time.monotonic() - t0 < 5
    for f in fs:
        e = f.exception(timeout=5)
        assert isinstance(e, StreamError) and e.code == grpc.StatusCode.CANCELLED
        assert "closed before the sidecar answered" in e.details
    p.close()                          # idempotent


def test_send_waits_at_the_bound_and_raises_timeout_naming_it(fake: Callable[..., FakeSidecar]) -> None:
    release: queue.Queue[None] = queue.Queue()

    def slow(req: mesh_pb2.ProduceRequest) -> list[mesh_pb2.ProduceResponse]:
        release.get(timeout=10)
        return ok(req)

    sc = fake(slow)
    with Producer(sc.target, batch_records=1, max_inflight_batches=2) as p:
        first = [p.send("t", b"1"), p.send("t", b"2"), p.send("t", b"3")]     # 2 in flight, 1 full and open
        with pytest.raises(TimeoutError, match=r"send: 2 batches await .*max_inflight_batches=2.* within 0.2 s"):
            p.send("t", b"4", timeout=0.2)
        assert p.pending_batches == 2
        got: list[float] = []
        waiter = threading.Thread(target=lambda: (p.send("t", b"5"), got.append(time.monotonic())))
        waiter.start()
        time.sleep(0.3)
        assert not got                  # waiting for room
        release.put(None)               # one answer frees one slot
        waiter.join(10)
        assert got and first[0].result(timeout=5).mapping_revision == 7
        for _ in range(3):
            release.put(None)
    assert all(f.done() for f in first)


def test_a_callback_may_send_even_at_the_bound_but_not_flush(fake: Callable[..., FakeSidecar]) -> None:
    sc = fake()
    chained: list[cf.Future[Any]] = []
    flush_errors: list[RuntimeError] = []
    done = threading.Event()
    with Producer(sc.target, batch_records=1, max_inflight_batches=1) as p:
        def again(f: cf.Future[Any]) -> None:
            # runs on the response thread, while the batch just answered still holds the only slot
            if not chained:
                try:
                    p.flush()
                except RuntimeError as e:
                    flush_errors.append(e)
            if len(chained) < 20:
                chained.append(p.send("t", b"next"))
                chained[-1].add_done_callback(again)
            else:
                done.set()

        p.send("t", b"first").add_done_callback(again)
        assert done.wait(10)
    assert len(chained) == 20 and all(f.result(timeout=0).mapping_revision == 7 for f in chained)
    assert len(flush_errors) == 1 and "callback" in str(flush_errors[0])


def test_no_sidecar_at_the_target_fails_the_constructor(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StreamError, match="no sidecar reachable") as info:
        Producer(f"unix:{tmp_path / 'nobody.sock'}", connect_timeout=0.3)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_misuse_is_refused_at_the_call(fake: Callable[..., FakeSidecar]) -> None:
    sc = fake()

    @stream("t")
    class NoEncoding:
        pass

    with Producer(sc.target, max_request_bytes=1000) as p:
        with pytest.raises(ValueError, match="exceeds max_request_bytes=1000"):
            p.send("t", b"x" * 2000)
        with pytest.raises(ValueError, match="over max_request_bytes=1000"):
            p.send_batch("t", [b"x" * 600, b"y" * 600])
        with pytest.raises(TypeError, match="value is missing"):
            p.send("t")              # type: ignore[call-overload]   # on purpose
        with pytest.raises(TypeError, match="value must be bytes"):
            p.send("t", "text")      # type: ignore[call-overload]   # on purpose
        with pytest.raises(TypeError, match="takes the object only"):
            p.send(NoEncoding(), b"x")   # type: ignore[call-overload]   # on purpose
        with pytest.raises(TypeError, match="no to_bytes"):
            p.send(NoEncoding())
        with pytest.raises(ValueError, match="2 keys, 1 values"):
            p.send_batch("t", [b"v"], [b"k", b"k"])
        with pytest.raises(ValueError, match="empty"):
            p.send_batch("t", [])
        assert p.send("t", None, key=b"k").result(timeout=10).mapping_revision == 7    # a tombstone
    assert sc.requests[-1].records[0].HasField("value") is False
    with pytest.raises(ValueError, match="max_inflight_batches"):
        Producer(sc.target, max_inflight_batches=0)


def test_stream_registration_holds_above_and_below_dataclass_slots_and_not_for_subclasses(
        fake: Callable[..., FakeSidecar]) -> None:
    @stream("above", key=lambda o: o.k)
    @dataclasses.dataclass(slots=True)
    class Above:
        k: int

    @dataclasses.dataclass(slots=True)
    @stream("below", key="k")
    class Below:
        k: str

    class Sub(Below):
        pass

    class Raw:
        def to_bytes(self) -> bytearray:
            return bytearray(b"raw")

    stream("raw")(Raw)
    sc = fake()
    with Producer(sc.target) as p:
        for obj in (Above(7), Below("é"), Raw()):
            p.send(obj).result(timeout=10)
        with pytest.raises(TypeError, match="Sub is not registered"):
            p.send(Sub("x"))
    got = [(r.topic, r.key if r.HasField("key") else None, r.value) for req in sc.requests for r in req.records]
    assert got == [("above", b"7", b'{"k":7}'), ("below", "é".encode(), '{"k":"é"}'.encode()), ("raw", None, b"raw")]


def test_runs_of_errors_resolve_every_record_and_untold_texts_take_their_codes_last(
        fake: Callable[..., FakeSidecar]) -> None:
    def answer(req: mesh_pb2.ProduceRequest) -> list[mesh_pb2.ProduceResponse]:
        errors = [mesh_pb2.RecordError(index=1, code=mesh_pb2.ERROR_CODE_NO_ROUTE, message="no route", count=3),
                  mesh_pb2.RecordError(index=5, code=mesh_pb2.ERROR_CODE_NO_ROUTE),          # past the 1,000th
                  mesh_pb2.RecordError(index=7, code=mesh_pb2.ERROR_CODE_INVALID_RECORD, count=0)]
        return [mesh_pb2.ProduceResponse(batch_id=req.batch_id, ok_count=len(req.records) - 5, errors=errors)]

    sc = fake(answer)
    with Producer(sc.target, batch_records=8) as p:
        fs = [p.send("t", f"v{i}".encode()) for i in range(8)]
        whole = p.send_batch("t", [b"x"] * 8).result(timeout=10)
    failed = {i: (f.exception().code, f.exception().message) for i, f in enumerate(fs) if f.exception()}
    assert failed == {1: (ErrorCode.NO_ROUTE, "no route"), 2: (ErrorCode.NO_ROUTE, "no route"),
                      3: (ErrorCode.NO_ROUTE, "no route"), 5: (ErrorCode.NO_ROUTE, "no route"),
                      7: (ErrorCode.INVALID_RECORD, "")}
    assert [(e.index, e.code) for e in whole.errors] == [(i, c) for i, (c, _) in failed.items()]


def test_more_records_than_the_sidecar_takes_in_a_request_are_refused_here(
        fake: Callable[..., FakeSidecar]) -> None:
    with pytest.raises(ValueError, match="batch_records must be at most 500,000"):
        Producer("unix:/nonexistent", batch_records=500_001, connect_timeout=None)
    sc = fake(lambda req: [mesh_pb2.ProduceResponse(batch_id=req.batch_id, ok_count=len(req.records))])
    with Producer(sc.target) as p:
        with pytest.raises(ValueError, match="at most 500,000 records per batch .* got 500,001; split them"):
            p.send_batch("t", [b""] * 500_001)
        assert p.send_batch("t", [b"ok"]).result(timeout=10).ok_count == 1     # the producer is unharmed


def test_a_topic_whose_answers_stall_cannot_hold_up_another_topics_records(fake: Callable[..., FakeSidecar]) -> None:
    """As with a cluster down behind the sidecar: "down"'s batches get no answer. They take at most
    max_inflight_per_topic slots, never share a batch with "up"'s records, and "up" is answered at once."""
    held: list[mesh_pb2.ProduceRequest] = []
    released = threading.Event()

    def policy(req: mesh_pb2.ProduceRequest) -> list[mesh_pb2.ProduceResponse]:
        topics = {r.topic for r in req.records}
        assert len(topics) == 1, f"a batch mixed topics {topics}"
        if topics == {"down"} and not released.is_set():
            held.append(req)
            return []
        if topics == {"release"}:
            released.set()
            return [resp for r in [*held, req] for resp in ok(r)]
        return ok(req)

    sc = fake(policy)
    with Producer(sc.target, batch_records=1, max_inflight_batches=8, max_inflight_per_topic=6) as p:
        down = [p.send("down", b"d") for _ in range(7)]       # 6 one-record batches (down's share), 1 full and open
        with pytest.raises(TimeoutError, match=r"6 of them of topic 'down' .*max_inflight_per_topic=6"):
            p.send("down", b"more", timeout=0.2)
        t0 = time.monotonic()
        up = [p.send("up", f"u{i}".encode()) for i in range(50)]
        assert all(f.result(timeout=10).mapping_revision == 7 for f in up)
        assert time.monotonic() - t0 < 5
        assert not any(f.done() for f in down)
        p.send("release", b"r").result(timeout=10)
        assert all(f.result(timeout=10) for f in down)
    assert {r.records[0].topic for r in sc.requests} == {"down", "up", "release"}


def test_a_topic_with_nothing_in_flight_may_send_past_the_global_bound(fake: Callable[..., FakeSidecar]) -> None:
    stalled: list[mesh_pb2.ProduceRequest] = []

    def policy(req: mesh_pb2.ProduceRequest) -> list[mesh_pb2.ProduceResponse]:
        if req.records[0].topic.startswith("stall"):
            stalled.append(req)
            return []
        return [resp for r in [*stalled, req] for resp in ok(r)]

    sc = fake(policy)
    with Producer(sc.target, batch_records=1, max_inflight_batches=2, max_inflight_per_topic=1) as p:
        first = [p.send("stall-a", b"1"), p.send("stall-b", b"2")]      # the global bound: 2
        assert p.pending_batches == 2
        third = p.send("stall-c", b"3")                                # nothing of stall-c in flight: it goes
        deadline = time.monotonic() + 5
        while p.pending_batches < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.pending_batches == 3
        assert p.send("go", b"4").result(timeout=10)
        assert all(f.result(timeout=10) for f in [*first, third])
