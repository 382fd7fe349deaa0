"""The poll thread of a stream with stand-in consumers (no server): credit bounds what it takes, every cluster gets
its turn, a response per round carries every cluster, events follow the records polled before them, a stream out of
credit pauses and keeps serving, a removed cluster is handed back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.subscribe import poller as poller_mod
from sidecar.subscribe.poller import Credit, Poller, Rebalanced, Records, Removed


@pytest.fixture(autouse=True)
def _fake_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    # The poll thread polls through the core's poll_batch(consumer, ...); the stand-ins poll themselves.
    monkeypatch.setattr(poller_mod, "poll_batch", lambda consumer, *args, **kw: consumer.poll_batch(*args, **kw))


class FakeConsumer:
    """Hands out `backlog` one-byte records of partition 0 of topic t, as the core's poll_batch encodes them."""

    def __init__(self, name: str, backlog: int) -> None:
        self.name = name
        self.backlog = backlog
        self.next_offset = 0
        self.events: list[tuple[bool, list[tuple[str, int]]]] = []
        self.paused = False
        self.held = 0
        self.served = 0
        self.lock = threading.Lock()

    def enable_wakeup(self, fd: int) -> None:
        self.fd = fd

    def poll_batch(self, cluster: str, max_records: int, max_bytes: int, timeout_ms: int,
                   strict: bool = False) -> Any:
        with self.lock:
            n = min(max_records, self.backlog, max_bytes if strict else max(1, max_bytes))
            if n <= 0:
                return None, [], 0
            first = self.next_offset
            self.next_offset += n
            self.backlog -= n
        resp = M.SubscribeResponse(records=M.RecordBatch(partitions=[M.PartitionRecords(
            cluster=cluster, topic="t", partition=0,
            records=[M.ConsumedRecord(offset=o, value=b"x") for o in range(first, first + n)])]))
        return resp.SerializeToString(), [("t", 0, first, first + n - 1)], n

    def take_events(self) -> list[tuple[bool, list[tuple[str, int]]]]:
        with self.lock:
            events, self.events = self.events, []
        return events

    def take_state(self) -> None:
        return None

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def serve(self, timeout_ms: int) -> int:
        self.served += 1
        return 0


class Collector:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.done = threading.Event()

    def __call__(self, item: Any) -> None:
        if item is None:
            self.done.set()
        else:
            self.items.append(item)

    def records(self) -> list[Records]:
        return [i for i in self.items if isinstance(i, Records)]

    def count(self) -> int:
        return sum(r.count for r in self.records())


def _wait(what: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def _start(credit: int, consumers: dict[str, FakeConsumer], max_records: int = 10) -> tuple[Poller, Collector]:
    out = Collector()
    p = Poller(Credit(credit, 1 << 30), max_records, out)
    for name, c in consumers.items():
        p.add(name, c)      # type: ignore[arg-type]
    p.start()
    return p, out


def _stop(p: Poller) -> None:
    p.stop()
    p.release()


def test_never_more_than_the_credit_and_every_cluster_in_one_response_per_round() -> None:
    cs = {n: FakeConsumer(n, 100) for n in ("c1", "c2", "c3")}
    p, out = _start(25, cs)
    try:
        _wait(lambda: out.count() >= 25)
        time.sleep(0.1)
        assert out.count() == 25                        # the credit, not the backlog of 300
        # rounds start one cluster further on, so a short credit still reaches every cluster
        assert {run[0] for r in out.records() for run in r.runs} == {"c1", "c2", "c3"}
        merged = [r for r in out.records() if len({run[0] for run in r.runs}) > 1]
        assert merged, "no response carried more than one cluster"
        for r in out.records():
            parsed = M.SubscribeResponse.FromString(r.encoded)
            assert [(g.cluster, g.records[0].offset, g.records[-1].offset) for g in parsed.records.partitions] == [
                (c, first, last) for c, _, _, first, last in r.runs]
        p.grant(1000, 1 << 20)
        _wait(lambda: out.count() == 300)
    finally:
        _stop(p)


def test_events_come_after_the_records_polled_before_them() -> None:
    c = FakeConsumer("c1", 5)
    c.events.append((True, [("t", 0)]))
    p, out = _start(1000, {"c1": c})
    try:
        _wait(lambda: any(isinstance(i, Rebalanced) for i in out.items))
        kinds = [type(i).__name__ for i in out.items]
        assert kinds == ["Records", "Rebalanced"]
    finally:
        _stop(p)


def test_out_of_credit_the_stream_pauses_and_keeps_serving_then_resumes(monkeypatch: Any) -> None:
    monkeypatch.setattr(poller_mod, "PAUSE_AFTER_S", 0.1)
    monkeypatch.setattr(poller_mod, "IDLE_WAKE_S", 0.05)
    c = FakeConsumer("c1", 100)
    p, out = _start(10, {"c1": c})
    try:
        _wait(lambda: c.paused and c.served >= 2)       # rebalances are still served while paused
        assert out.count() == 10
        p.grant(50, 1 << 20)
        _wait(lambda: out.count() == 60)
        assert not c.paused
    finally:
        _stop(p)


def test_a_removed_cluster_is_handed_back_paused_and_no_longer_polled() -> None:
    c1, c2 = FakeConsumer("c1", 0), FakeConsumer("c2", 0)
    p, out = _start(1000, {"c1": c1, "c2": c2})
    try:
        p.remove("c1")
        _wait(lambda: any(isinstance(i, Removed) for i in out.items))
        removed = next(i for i in out.items if isinstance(i, Removed))
        assert removed.cluster == "c1" and removed.consumer is c1 and c1.paused
        c1.backlog = 5
        c2.backlog = 5
        p.wake()
        _wait(lambda: out.count() == 5)
        time.sleep(0.1)
        assert {run[0] for r in out.records() for run in r.runs} == {"c2"}
    finally:
        held = p.stop()
        p.release()
    assert list(held) == ["c2"]
