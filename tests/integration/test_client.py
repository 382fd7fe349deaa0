"""The Python client (sidecar.client) against the real sidecar process: futures resolve once records are in the
cluster their route names, per-record errors fail only their record, a broken stream fails everything pending, and
the in-flight bound holds."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from sidecar.client import (
    ErrorCode,
    Producer,
    ProducerClosedError,
    RecordError,
    RecordResult,
    StreamError,
    stream,
)
from sidecar.dev import ports
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import read_all
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

CLUSTER = {"c1": 0, "c2": 1, "c3": 2}


def _start(sandbox: Sandbox, sidecar_factory: Any, routes: dict[str, str], *,
           dead_timeout_ms: int | None = None) -> tuple[SidecarProc, int]:
    """A sidecar in a fresh namespace whose producer routes are topic -> cluster; the cluster "gone" (a closed
    port) fails its records after dead_timeout_ms."""
    ns = new_namespace()
    clusters = clusters_doc(sandbox)
    if dead_timeout_ms is not None:
        clusters["gone"] = {"bootstrap": f"127.0.0.1:{ports.allocate(1)[0]}", "role": "fronting",
                            "config": {"message.timeout.ms": str(dead_timeout_ms)}}
    rev = apply(sandbox, ns, {"clusters": clusters,
                              "producer": {t: {"where": [{"sink": c}]} for t, c in routes.items()}})
    return sidecar_factory(ns), rev


def _read(sandbox: Sandbox, cluster: str, topic: str, expected: int) -> list[Any]:
    return read_all(sandbox.clusters[CLUSTER[cluster]].bootstrap, topic, expected, timeout=30 if expected else 3)


def _values(sandbox: Sandbox, cluster: str, topic: str, expected: int) -> list[str]:
    return sorted(m.value().decode() for m in _read(sandbox, cluster, topic, expected))


def test_every_future_resolves_and_every_record_lands_in_its_routed_cluster(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    t1, t2 = f"{topic}-a", f"{topic}-b"
    sc, rev = _start(sandbox, sidecar_factory, {t1: "c1", t2: "c2"})
    sent: dict[str, list[str]] = {t1: [], t2: []}
    futures: list[Future[RecordResult]] = []
    with Producer(sc.target, batch_records=100) as p:
        for i in range(2000):
            t = (t1, t2)[i % 2]
            rid = f"id-{i}"
            sent[t].append(rid)
            futures.append(p.send(t, rid.encode(), key=f"k{i % 17}".encode()))
    # leaving the with block flushed: every future is done, none failed
    assert all(f.done() for f in futures)
    results = [f.result(timeout=0) for f in futures]
    assert {r.mapping_revision for r in results} == {rev}
    per_batch: dict[int, int] = {}
    for r in results:
        per_batch[r.batch_id] = per_batch.get(r.batch_id, 0) + 1
    assert len(per_batch) >= 20 and max(per_batch.values()) <= 100     # batch_records bounds every batch
    assert _values(sandbox, "c1", t1, 1000) == sorted(sent[t1])
    assert _values(sandbox, "c2", t2, 1000) == sorted(sent[t2])
    assert _read(sandbox, "c2", t1, 0) == []        # and nowhere else
    with pytest.raises(ProducerClosedError):
        p.send(t1, b"late")


def test_linger_sends_a_partial_batch_without_flush(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc, rev = _start(sandbox, sidecar_factory, {topic: "c1"})
    with Producer(sc.target, linger_ms=200, batch_records=1000) as p:
        t0 = time.monotonic()
        futures = [p.send(topic, f"id-{i}".encode()) for i in range(3)]
        results = [f.result(timeout=30) for f in futures]        # no flush: only the linger timer sends them
        elapsed = time.monotonic() - t0
        assert elapsed >= 0.2                  # not before the batch was linger_ms old
        assert len({r.batch_id for r in results}) == 1 and results[0].mapping_revision == rev
    assert _values(sandbox, "c1", topic, 3) == ["id-0", "id-1", "id-2"]


def test_unrouted_and_invalid_topics_fail_only_their_records_in_a_batch(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    nowhere = f"{topic}-nowhere"
    sc, rev = _start(sandbox, sidecar_factory, {topic: "c1"})          # and no __default__
    with Producer(sc.target, linger_ms=10_000) as p:
        futures = [p.send(nowhere if i % 10 == 3 else topic, f"id-{i}".encode()) for i in range(50)]
        bad = p.send("tópico", b"x")                  # not [a-zA-Z0-9._-]: sent as UTF-8, refused by the sidecar
        p.flush(timeout=30)
        assert all(f.done() for f in futures) and bad.done()
    batch_ids = set()
    for i, f in enumerate(futures):
        if i % 10 == 3:
            e = f.exception()
            assert isinstance(e, RecordError)
            # A batch holds one topic's records: the index is the record's place among its topic's five.
            assert e.code is ErrorCode.NO_ROUTE and e.topic == nowhere and e.index == i // 10
            assert "no producer route" in e.message and nowhere in str(e)
        else:
            r = f.result()
            assert r.mapping_revision == rev
            batch_ids.add(r.batch_id)
    assert len(batch_ids) == 1              # one batch of the routed topic: all written
    e = bad.exception()
    assert isinstance(e, RecordError) and e.code is ErrorCode.INVALID_TOPIC and e.topic == "tópico"
    assert _values(sandbox, "c1", topic, 45) == sorted(f"id-{i}" for i in range(50) if i % 10 != 3)


def test_stream_decorated_objects_go_to_their_class_topic_with_their_key(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    orders, raw = f"{topic}-orders", f"{topic}-raw"
    sc, _ = _start(sandbox, sidecar_factory, {orders: "c1", raw: "c2"})

    @stream(orders, key="customer")
    @dataclasses.dataclass(slots=True)
    class Order:
        customer: str
        amount: int
        note: str = "ünïcode"

    @stream(raw, key=lambda m: m.n)
    class Measure:
        def __init__(self, n: int) -> None:
            self.n = n

        def to_bytes(self) -> bytes:
            return f"m{self.n}".encode()

    @dataclasses.dataclass
    class Unregistered:
        x: int

    class SubOrder(Order):
        pass

    with Producer(sc.target) as p:
        futures = [p.send(Order(f"cust-{i % 3}", i)) for i in range(30)]
        futures += [p.send(Measure(i)) for i in range(10)]
        with pytest.raises(TypeError, match="Unregistered is not registered with @stream"):
            p.send(Unregistered(1))
        with pytest.raises(TypeError, match="SubOrder is not registered"):
            p.send(SubOrder("c", 1))
    assert all(isinstance(f.result(timeout=0), RecordResult) for f in futures)
    got = sorted(((m.key().decode(), json.loads(m.value())) for m in _read(sandbox, "c1", orders, 30)),
                 key=lambda kv: kv[1]["amount"])
    assert got == [(f"cust-{i % 3}", {"customer": f"cust-{i % 3}", "amount": i, "note": "ünïcode"})
                   for i in range(30)]
    assert sorted((m.key(), m.value()) for m in _read(sandbox, "c2", raw, 10)) == sorted(
        (str(i).encode(), f"m{i}".encode()) for i in range(10))


def test_send_batch_resolves_one_future_per_batch_and_reports_failed_records_by_index(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc, rev = _start(sandbox, sidecar_factory, {topic: "c3"})
    with Producer(sc.target) as p:
        batches = []
        for b in range(5):
            values = [f"{b}-{i}".encode() for i in range(1000)]
            keys = None if b == 0 else [None if i % 7 == 0 else f"k{i}".encode() for i in range(1000)]
            batches.append(p.send_batch(topic, values, keys))
        unrouted = p.send_batch(f"{topic}-nowhere", [b"a", b"b", b"c"])
        results = [f.result(timeout=60) for f in batches]
        missing = unrouted.result(timeout=60)
    assert [(r.ok_count, r.errors, r.mapping_revision) for r in results] == [(1000, (), rev)] * 5
    assert len({r.batch_id for r in results}) == 5
    assert missing.ok_count == 0 and not missing.ok
    assert [(e.index, e.code) for e in missing.errors] == [(0, ErrorCode.NO_ROUTE), (1, ErrorCode.NO_ROUTE),
                                                           (2, ErrorCode.NO_ROUTE)]
    msgs = _read(sandbox, "c3", topic, 5000)
    assert sorted(m.value().decode() for m in msgs) == sorted(f"{b}-{i}" for b in range(5) for i in range(1000))
    keys_seen = {m.value().decode(): m.key() for m in msgs}
    assert keys_seen["0-5"] is None and keys_seen["1-7"] is None and keys_seen["1-8"] == b"k8"


def test_killed_sidecar_fails_every_pending_future_with_stream_error(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    # The records go to a cluster that does not answer, so they are all still pending when the sidecar dies.
    sc, _ = _start(sandbox, sidecar_factory, {topic: "gone"}, dead_timeout_ms=120_000)
    p = Producer(sc.target, linger_ms=1, batch_records=10)
    try:
        futures = [p.send(topic, f"id-{i}".encode()) for i in range(35)]
        whole = p.send_batch(topic, [b"x"] * 5)
        time.sleep(1.0)                         # in flight: sent, unanswered
        assert not any(f.done() for f in futures) and not whole.done()
        sc.stop(signal.SIGKILL)
        for f in [*futures, whole]:
            e = f.exception(timeout=30)
            assert isinstance(e, StreamError) and e.code == grpc.StatusCode.UNAVAILABLE, e
        with pytest.raises(StreamError, match="create a new Producer"):
            p.send(topic, b"after")
        with pytest.raises(StreamError):
            p.send_batch(topic, [b"after"])
        p.flush(timeout=5)                      # nothing pending any more: returns
    finally:
        p.close(timeout=10)


def test_max_inflight_bound_blocks_send_until_an_answer_frees_a_slot_or_its_timeout(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc, _ = _start(sandbox, sidecar_factory, {topic: "gone"}, dead_timeout_ms=4000)
    with Producer(sc.target, batch_records=1, max_inflight_batches=2) as p:
        first = [p.send(topic, b"1"), p.send(topic, b"2")]      # two one-record batches: the bound
        assert p.pending_batches == 2
        third = p.send(topic, b"3")            # fills the open batch, which cannot be sealed yet: no wait
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="max_inflight_batches=2"):
            p.send(topic, b"4", timeout=0.5)
        assert time.monotonic() - t0 >= 0.5
        with pytest.raises(TimeoutError, match="max_inflight_batches=2"):
            p.send_batch(topic, [b"5"], timeout=0.2)
        assert not any(f.done() for f in [*first, third])

        # Without a timeout, send waits until the sidecar answers a batch (here: the delivery timeout fails it).
        done_when_unblocked: list[bool] = []

        def blocked() -> None:
            p.send(topic, b"6")
            done_when_unblocked.append(first[0].done() or first[1].done())

        t = threading.Thread(target=blocked)
        t.start()
        t.join(1.0)
        assert t.is_alive()                    # still waiting for room
        t.join(30)
        assert not t.is_alive() and done_when_unblocked == [True]
        for f in first:
            e = f.exception(timeout=30)
            assert isinstance(e, RecordError) and e.code is ErrorCode.CLUSTER_UNAVAILABLE, e
        p.flush(timeout=30)
        assert isinstance(third.exception(timeout=0), RecordError)
