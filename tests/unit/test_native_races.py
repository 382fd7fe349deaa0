"""Closing the core's handles while another thread is inside them: a Produce stream closed under a running submit,
a producer closed under a live route table and under a running submit or produce_request. Each case runs in a
child process (a crash there is one failed test), and in the debug build the child asserts that every C handle it
made was freed. No broker: the clusters' addresses refuse connections, so records stay queued."""

from __future__ import annotations

import gc
import threading
import time

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2
from tests.isolation import run_isolated
from tests.produce_responses import per_record
from tests.unit.stream_helpers import responses

NOWHERE = {"bootstrap.servers": "127.0.0.1:9", "log_level": "0", "message.timeout.ms": "1000"}


def _request(batch_id: int, count: int, topic: str = "t") -> bytes:
    """A ProduceRequest of count one-byte records, built without a Python object per record: protobuf merges the
    repeated field of concatenated messages."""
    one = mesh_pb2.ProduceRequest(records=[mesh_pb2.Record(topic=topic, value=b"x")]).SerializeToString()
    return mesh_pb2.ProduceRequest(batch_id=batch_id).SerializeToString() + one * count


def _assert_balanced(before: dict[str, tuple[int, int]]) -> None:
    gc.collect()
    for kind, (created, freed) in meshcore.debug_counts().items():
        c0, f0 = before.get(kind, (0, 0))
        assert created - c0 == freed - f0, f"{kind}: {created - c0} created, {freed - f0} freed"


def _submit_into(stream: meshcore.ProduceStream, table: meshcore.RouteTable, raw: bytes, out: list[object]) -> None:
    out.append(stream.submit(table, raw))


def _close_stream_under_submit(delays: list[float], records: int) -> list[str]:
    before = meshcore.debug_counts()
    producer = meshcore.create_producer("c1", dict(NOWHERE))
    table = meshcore.build_route_table(1, [producer], [], [0])
    raw = _request(1, records)
    outcomes = []
    for delay in delays:
        stream = meshcore.open_stream()
        result: list[object] = []
        worker = threading.Thread(target=_submit_into, args=(stream, table, raw, result))
        worker.start()
        time.sleep(delay)
        stream.close()
        worker.join(60)
        assert not worker.is_alive(), f"submit still running 60 s after close (closed after {delay} s)"
        outcomes.append(repr(result))
    # What was enqueued before each close is still owned by its batch: purged here, and every batch freed.
    producer.close(flush_timeout_ms=0)
    del table
    _assert_balanced(before)
    return outcomes


def test_closing_a_stream_under_a_running_submit_stops_it_and_frees_everything() -> None:
    # From before the submit reached the batch to well into its enqueuing (300,000 records: ~0.1-0.5 s to parse and
    # enqueue, depending on the build).
    delays = [0.0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2]
    outcomes = run_isolated(_close_stream_under_submit, delays, 300_000, timeout=240)
    assert outcomes == ["[1]"] * len(delays)     # each submit returned its batch id: none raised, none crashed


def _table_with_a_closed_producer() -> dict[str, object]:
    before = meshcore.debug_counts()
    c1 = meshcore.create_producer("c1", {**NOWHERE, "message.timeout.ms": "200"})
    c2 = meshcore.create_producer("c2", dict(NOWHERE))
    table = meshcore.build_route_table(4, [c1, c2], [(["both"], [0, 1]), (["only-c2"], [1])])
    assert c2.close(flush_timeout_ms=0) == 0
    queued = table.max_queued()              # reads c1 only: c2's handle is gone
    stream = meshcore.open_stream()
    req = mesh_pb2.ProduceRequest(batch_id=9, records=[
        mesh_pb2.Record(topic="only-c2", value=b"a"), mesh_pb2.Record(topic="both", value=b"b")])
    stream.submit(table, req.SerializeToString())
    [resp] = responses(stream, 1)
    stream.close()
    c1.close(flush_timeout_ms=0)
    del table
    _assert_balanced(before)
    return {"queued": queued, "ok": resp.ok_count,
            "errors": [(i, mesh_pb2.ErrorCode.Name(code), message) for i, code, message in per_record(resp)]}


def test_a_producer_closed_under_a_live_table_fails_its_records_and_nothing_else() -> None:
    got = run_isolated(_table_with_a_closed_producer)
    closed = ("cluster 'c2': topic '{}': not written, its producer was closed (the sidecar is stopping, or the "
              "cluster left the mapping)")
    assert got["queued"] == 0 and got["ok"] == 0
    # Record 0 went only to c2; record 1's first error is c2's (refused at once), before c1's time-out.
    assert got["errors"] == [(0, "ERROR_CODE_CLUSTER_UNAVAILABLE", closed.format("only-c2")),
                             (1, "ERROR_CODE_CLUSTER_UNAVAILABLE", closed.format("both"))]


def _close_producer_under_submit() -> dict[str, object]:
    before = meshcore.debug_counts()
    # A queue of 1,000 records: the submit of 50,000 waits for room that an unreachable cluster never frees.
    producer = meshcore.create_producer("c1", {**NOWHERE, "queue.buffering.max.messages": "1000",
                                               "message.timeout.ms": "60000"})
    table = meshcore.build_route_table(1, [producer], [], [0])
    stream = meshcore.open_stream()
    worker = threading.Thread(target=stream.submit, args=(table, _request(3, 50_000)))
    worker.start()
    time.sleep(0.3)
    started = time.monotonic()
    undelivered = producer.close(flush_timeout_ms=0)
    close_s = time.monotonic() - started
    worker.join(30)
    alive = worker.is_alive()
    [resp] = responses(stream, 1)
    stream.close()
    del table
    _assert_balanced(before)
    return {"close_s": close_s, "undelivered": undelivered, "alive": alive, "ok": resp.ok_count,
            "errors": len(per_record(resp)), "codes": sorted({mesh_pb2.ErrorCode.Name(e.code) for e in resp.errors})}


def test_closing_a_producer_under_a_waiting_submit_stops_the_wait_and_answers_every_record() -> None:
    got = run_isolated(_close_producer_under_submit)
    assert not got["alive"]
    assert got["close_s"] < 10, got                  # the submit gave up its wait at once; close purged the queue
    assert got["undelivered"] == 1000                 # the full queue, purged: each record answered as failed
    assert (got["ok"], got["errors"], got["codes"]) == (0, 50_000, ["ERROR_CODE_CLUSTER_UNAVAILABLE"])


def _produce_request_racing_close(rounds: int) -> list[str]:
    before = meshcore.debug_counts()
    ends = []
    raw = _request(1, 20_000)
    for i in range(rounds):
        producer = meshcore.create_producer("c1", {**NOWHERE, "queue.buffering.max.messages": "5000"})
        errors: list[str] = []

        def hammer(p: meshcore.Producer = producer, errors: list[str] = errors) -> None:
            try:
                while True:
                    p.produce_request(raw, queue_full_wait_ms=5)
                    p.poll(0)
                    _ = p.outstanding
            except meshcore.HandleClosedError as e:
                errors.append(str(e))

        workers = [threading.Thread(target=hammer) for _ in range(2)]
        for w in workers:
            w.start()
        time.sleep(0.01 * (i % 5))
        producer.close(flush_timeout_ms=0)
        for w in workers:
            w.join(30)
        assert not any(w.is_alive() for w in workers)
        ends += errors
    _assert_balanced(before)
    return sorted(set(ends))


def test_produce_request_poll_and_outstanding_racing_close_end_with_handle_closed() -> None:
    assert run_isolated(_produce_request_racing_close, 10, timeout=240) == ["producer 'c1' is closed"]
