"""A pump's bookkeeping with stand-ins for the consumer and the core's stream (no server): offsets are stored only as
far as every earlier record was acknowledged, a failed run acknowledges what came before its first failed record and
reads again from exactly that record, a revoked partition's late runs are ignored, a partition over its bound pauses
and resumes below half, and the backoff grows per seek, not per failed run."""

from __future__ import annotations

import array
from typing import Any

import pytest

from sidecar.router.pump import Pump, PumpSettings

pytestmark = pytest.mark.unit


class FakeConsumer:
    def __init__(self) -> None:
        self.stored: list[tuple[str, int, int]] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.paused: set[tuple[str, int]] = set()
        self.events: list[tuple[bool, list[tuple[str, int]]]] = []
        self.closed = False

    def enable_wakeup(self, fd: int) -> None:
        pass

    def subscribe(self, topics: list[str]) -> None:
        self.topics = topics

    def store_offsets(self, offsets: list[tuple[str, int, int]]) -> list[tuple[str, int]]:
        self.stored += offsets
        return []

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append((topic, partition, offset))

    def pause(self, parts: list[tuple[str, int]]) -> None:
        self.paused |= set(parts)

    def resume(self, parts: list[tuple[str, int]]) -> None:
        self.paused -= set(parts)

    def take_events(self) -> list[tuple[bool, list[tuple[str, int]]]]:
        events, self.events = self.events, []
        return events

    def take_state(self) -> None:
        return None

    def take_message_errors(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class FakeStream:
    """Hands out the runs given to polled(), and settles what settle() is given."""

    def __init__(self) -> None:
        self.to_route: list[Any] = []
        self.settled: list[tuple[int, int, int, str]] = []
        self.next_id = 0

    def fileno(self) -> int:
        return 0

    def polled(self, topic: str, partition: int, offsets: list[int]) -> int:
        run_id = self.next_id
        self.next_id += 1
        self.to_route.append((run_id, topic, partition, offsets[0], offsets[-1], len(offsets), 10 * len(offsets),
                              array.array("q", offsets).tobytes()))
        return run_id

    def route(self, *args: Any) -> list[Any]:
        runs, self.to_route = self.to_route, []
        return runs

    def settle(self, run_id: int, failed: int = 0, index: int = -1, message: str = "") -> None:
        self.settled.append((run_id, failed, index, message))

    def drain(self) -> list[tuple[int, int, int, str]]:
        out, self.settled = self.settled, []
        return out

    def close(self) -> None:
        pass


class FakeTable:
    def counts(self) -> dict[str, tuple[int, int, int, int]]:
        return {}


def make(settings: PumpSettings | None = None) -> tuple[Pump, FakeConsumer, FakeStream]:
    consumer, stream = FakeConsumer(), FakeStream()
    pump = Pump("c1", consumer, FakeTable(), ["t"], settings, stream)   # type: ignore[arg-type]
    consumer.events.append((True, [("t", 0), ("t", 1)]))
    pump._events()
    return pump, consumer, stream


def step(pump: Pump) -> None:
    pump._route()
    pump._events()
    pump._settle()
    pump._flow()


def test_offsets_are_stored_only_past_runs_every_target_acknowledged() -> None:
    pump, consumer, stream = make()
    a = stream.polled("t", 0, [0, 1, 2])
    b = stream.polled("t", 0, [3, 5, 6])        # 4: a compacted record, never waited for
    step(pump)
    stream.settle(b)                             # the later run first: nothing may be committed yet
    step(pump)
    assert consumer.stored == []
    stream.settle(a)
    step(pump)
    assert consumer.stored == [("t", 0, 7)]


def test_a_failed_run_acknowledges_what_came_before_its_failed_record_and_reads_again_from_it() -> None:
    pump, consumer, stream = make()
    a = stream.polled("t", 0, [10, 11, 13, 14])
    b = stream.polled("t", 0, [15, 16])
    step(pump)
    stream.settle(a, failed=2, index=2, message="cluster 'c2': topic 't': too large")
    step(pump)
    assert consumer.seeks == [("t", 0, 13)]
    assert consumer.stored == [("t", 0, 13)]     # 10 and 11 reached every target
    assert ("t", 0) in consumer.paused            # backing off
    stream.settle(b)                              # written before the seek: truthful, but nothing past 13 commits
    step(pump)
    assert consumer.stored == [("t", 0, 13)]
    assert pump.snapshot is not None


def test_runs_failing_together_seek_once_and_back_off_once() -> None:
    pump, consumer, stream = make()
    runs = [stream.polled("t", 1, [i * 10 + k for k in range(10)]) for i in range(5)]
    step(pump)
    for r in runs:
        stream.settle(r, failed=10, index=0, message="cluster 'c2': closed")
    step(pump)
    assert consumer.seeks == [("t", 1, 0)]
    part = pump._parts[("t", 1)]
    assert part.backoff == 0.5


def test_a_revoked_partitions_late_runs_are_ignored() -> None:
    pump, consumer, stream = make()
    a = stream.polled("t", 0, [0, 1])
    step(pump)
    consumer.events.append((False, [("t", 0)]))
    step(pump)
    stream.settle(a)
    step(pump)
    assert consumer.stored == [] and consumer.seeks == []


def test_a_partition_over_its_bound_pauses_and_resumes_below_half() -> None:
    pump, consumer, stream = make(PumpSettings(max_records=100, max_bytes=1 << 30))
    runs = [stream.polled("t", 0, list(range(i * 60, i * 60 + 60))) for i in range(2)]
    step(pump)
    assert ("t", 0) in consumer.paused and ("t", 1) not in consumer.paused
    stream.settle(runs[0])
    step(pump)
    assert ("t", 0) in consumer.paused           # 60 left: over half of 100
    stream.settle(runs[1])
    step(pump)
    assert ("t", 0) not in consumer.paused and consumer.stored[-1] == ("t", 0, 120)
