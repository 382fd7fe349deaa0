"""The client's Consumer (sidecar.client) against the real sidecar process and real Kafka clusters: every record of
every cluster of a route arrives by poll() and by iteration, acked offsets are committed and never come again to the
group after a clean close while unacked ones do, a bad subscription raises SubscribeError with the sidecar's code
and message, the credit bounds what the client buffers, and examples/consume.py runs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import pytest

from sidecar.client import ConsumedRecord, Consumer, ConsumerEvent, PartitionsAssigned, SubscribeError
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import committed, create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, batch, clusters_doc, new_namespace, produce

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Long enough for the sidecar to commit and leave the group on a half-close; a sidecar that does not end the stream
# then is cancelled after it (which commits as well).
CLOSE_TIMEOUT = 3.0


def _start(sandbox: Sandbox, sidecar_factory: Any, topic: str, clusters: tuple[str, ...],
           partitions: int = 3) -> SidecarProc:
    """A sidecar whose mapping writes `topic` to every one of `clusters` and reads it from all of them."""
    ns = new_namespace()
    index = {c.name: c for c in sandbox.clusters}
    for name in clusters:
        create_topic(index[name].bootstrap, topic, partitions=partitions)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox),
                        "producer": {topic: {"where": [{"sink": c} for c in clusters]}},
                        "consumer": {topic: [{"vip": c} for c in clusters]}})
    return sidecar_factory(ns)


def _produce_ids(sc: SidecarProc, topic: str, ids: list[str]) -> None:
    responses = produce(sc.target, [batch(b + 1, [(topic, i) for i in ids[b * 100:(b + 1) * 100]])
                                    for b in range((len(ids) + 99) // 100)])
    assert sum(r.ok_count for r in responses.values()) == len(ids), responses


def _poll_until(c: Consumer, want: int, ack: bool = True, timeout: float = 60) -> list[ConsumedRecord]:
    got: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        records = c.poll(timeout=1.0)
        if ack:
            c.ack(records)
        got += records
    return got


def _committed_soon(bootstrap: str, group: str, topic: str, partitions: int, expected: dict[int, int],
                    timeout: float = 15) -> dict[int, int]:
    # close() returns once the stream ended; when it had to cancel, the sidecar commits right after.
    deadline = time.monotonic() + timeout
    while True:
        got = committed(bootstrap, group, topic, partitions)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_poll_receives_every_record_of_both_clusters_once_and_the_acked_offsets_are_committed(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc = _start(sandbox, sidecar_factory, topic, ("c1", "c2"))
    ids = [f"id-{i}" for i in range(300)]
    _produce_ids(sc, topic, ids)          # both sinks: every id is on c1 and on c2
    group = f"g-{topic}"
    events: list[tuple[str, ConsumerEvent]] = []

    def on_event(ev: ConsumerEvent) -> None:
        events.append((threading.current_thread().name, ev))

    with Consumer(sc.target, group=group, start="earliest", close_timeout=CLOSE_TIMEOUT, on_event=on_event) as c:
        c.subscribe([topic])
        got = _poll_until(c, 600)
        extra = c.poll(timeout=0.5)         # and nothing more
    assert extra == []
    # The sidecar said which partitions of which cluster the stream reads; on_event heard it on this thread.
    assert {(ev.cluster, ev.topic, p) for _, ev in events if isinstance(ev, PartitionsAssigned)
            for p in ev.partitions} == {(cl, topic, p) for cl in ("c1", "c2") for p in range(3)}
    assert {name for name, _ in events} == {threading.current_thread().name}
    pairs = [(r.cluster, r.value.decode() if r.value else None) for r in got]
    assert len(pairs) == 600 and set(pairs) == {(cl, i) for cl in ("c1", "c2") for i in ids}
    assert all(r.key == r.value and r.topic == topic for r in got)
    for cluster in sandbox.clusters[:2]:
        ends: dict[int, int] = {}
        for r in got:
            if r.cluster == cluster.name:
                ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
        expected = {p: ends.get(p, -1001) for p in range(3)}       # -1001: nothing committed in that partition
        assert _committed_soon(cluster.bootstrap, group, topic, 3, expected) == expected


def test_after_a_clean_close_the_group_gets_again_only_what_was_not_acked(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc = _start(sandbox, sidecar_factory, topic, ("c1",), partitions=1)
    ids = [f"id-{i}" for i in range(40)]
    _produce_ids(sc, topic, ids)
    group = f"g-{topic}"
    with Consumer(sc.target, group=group, start="earliest", close_timeout=CLOSE_TIMEOUT,
                  ack_interval_ms=60_000) as first:          # only close() sends the acks
        first.subscribe([topic])
        got = _poll_until(first, 40, ack=False)
        assert [r.offset for r in got] == list(range(40))
        first.ack(got[:25])
        first.ack(got[30:])                  # 25..29 never acked: the commit stops at 25
    assert _committed_soon(sandbox.clusters[0].bootstrap, group, topic, 1, {0: 25}) == {0: 25}

    with Consumer(sc.target, group=group, start="earliest", close_timeout=CLOSE_TIMEOUT) as second:
        second.subscribe([topic])
        again = _poll_until(second, 15)
        again += second.poll(timeout=1.0)    # nothing else may come
    # At least once: everything from the first unacked offset comes again, acked 30..39 included; 0..24 never.
    assert [(r.offset, r.value) for r in again] == [(o, f"id-{o}".encode()) for o in range(25, 40)]
    assert _committed_soon(sandbox.clusters[0].bootstrap, group, topic, 1, {0: 40}) == {0: 40}


def test_iteration_yields_every_record_and_ends_when_another_thread_closes_the_consumer(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc = _start(sandbox, sidecar_factory, topic, ("c1", "c2"))
    ids = [f"id-{i}" for i in range(50)]
    _produce_ids(sc, topic, ids)
    c = Consumer(sc.target, group=f"g-{topic}", start="earliest", close_timeout=CLOSE_TIMEOUT)
    c.subscribe([topic])
    got: list[tuple[str, str]] = []
    all_in = threading.Event()
    closer = threading.Thread(target=lambda: (all_in.wait(60), c.close()))
    closer.start()
    try:
        for r in c:                          # blocks for each next record; ends once closed
            got.append((r.cluster, (r.value or b"").decode()))
            r.ack()
            if len(got) == 100:
                all_in.set()
    finally:
        all_in.set()
        closer.join(30)
        c.close()
    assert len(got) == 100 and set(got) == {(cl, i) for cl in ("c1", "c2") for i in ids}


@pytest.mark.parametrize("topics, code, message", [
    (["bad topic"], grpc.StatusCode.INVALID_ARGUMENT, "subscription.topics[0]"),
    (["unrouted"], grpc.StatusCode.FAILED_PRECONDITION, "topic 'unrouted' has no consumer route"),
])
def test_a_bad_subscription_raises_subscribe_error_with_the_sidecars_code_and_message(
        sandbox: Sandbox, sidecar_factory: Any, topics: list[str], code: grpc.StatusCode, message: str) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"routed": {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    with Consumer(sc.target, group="g", close_timeout=CLOSE_TIMEOUT) as c:
        c.subscribe(topics)
        t0 = time.monotonic()
        with pytest.raises(SubscribeError) as e:
            c.poll(timeout=30)
        assert time.monotonic() - t0 < 10    # raised when the sidecar refused, not at the timeout
        assert e.value.code == code
        assert e.value.details.startswith(message), e.value.details
        with pytest.raises(SubscribeError):  # and again, also by iteration
            next(c)
    assert sc.alive()


def test_the_client_never_buffers_more_than_max_buffered_records_while_the_application_does_not_poll(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc = _start(sandbox, sidecar_factory, topic, ("c1",))
    ids = [f"id-{i}" for i in range(100)]
    _produce_ids(sc, topic, ids)
    with Consumer(sc.target, group=f"g-{topic}", start="earliest", max_buffered_records=10,
                  close_timeout=CLOSE_TIMEOUT) as c:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while c.buffered < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)                       # the sidecar has 90 more records and no credit: it must wait
        assert (c.buffered, c.peak_buffered) == (10, 10)
        got: list[ConsumedRecord] = []
        while len(got) < 100 and time.monotonic() < deadline + 30:
            records = c.poll(timeout=1.0)
            assert len(records) <= 10
            c.ack(records)
            got += records
            assert c.peak_buffered <= 10
    assert sorted((r.value or b"").decode() for r in got) == sorted(ids)


def test_example_consume_prints_and_acks_count_records_then_exits_cleanly(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    sc = _start(sandbox, sidecar_factory, topic, ("c1", "c2"))
    ids = [f"id-{i}" for i in range(10)]
    _produce_ids(sc, topic, ids)
    group = f"g-{topic}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(ROOT / "examples" / "python" / "consume.py"), "--target", sc.target, "--group", group,
            "--start", "earliest", "--count", "20", topic]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 20 and "consumed 20 record(s)" in run.stderr
    assert sorted(line.split(" ", 1)[0].split("/")[0] + " " + line.rsplit("value=", 1)[1] for line in lines) == \
        sorted(f"{cl} {i}" for cl in ("c1", "c2") for i in ids)
    assert all(line.startswith(("c1/", "c2/")) and f"/{topic}[" in line for line in lines)
    # It acked what it printed and closed cleanly: the same group has nothing more to read.
    with Consumer(sc.target, group=group, start="earliest", close_timeout=CLOSE_TIMEOUT) as c:
        c.subscribe([topic])
        assert c.poll(timeout=3.0) == []

    bad = subprocess.run([*argv[:-1], "not a topic"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr, bad.stderr
    usage = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "consume.py"), "--help"],
                           capture_output=True, text=True, timeout=30, env=env)
    assert usage.returncode == 0 and "--count" in usage.stdout and "example:" in usage.stdout
