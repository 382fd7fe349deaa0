"""The pump of one source cluster: a thread that polls the cluster's consumer, has the core route what it polled
(meshcore.RouterStream: no Python object per record), and commits each source partition's offsets as far as every
target acknowledged.

Why a thread per source cluster: librdkafka's calls block (a full producer queue, a poll), the routing is native work
done with the GIL released, and one source's trouble must not hold up another's. Why one thread for everything a
source does: the consumer is polled by one thread at a time, and its rebalances, seeks, pauses and offset stores are
made in the order they happen to its records.

At-least-once: each run (consecutive records of one partition, routed at once) is delivered to a partition's
PartitionOffsets when routed and acked when every delivery of it settled; the offset stored for commit is the
partition's committable one, so nothing past a record a target has not acknowledged is committed, whatever order the
targets answer in. A run that failed (a target refused a record, or was closed) is read again: its partition seeks
back to the run's first offset and waits out a backoff, its earlier runs still pending; what was written twice is the
duplicate at-least-once allows. Commits happen every commit interval and when a partition is revoked or the consumer
closes (librdkafka's auto-commit of stored offsets), so kill -9 repeats at most the last interval's records.

Flow: a partition with more than max_records or max_bytes routed and not acknowledged (its target is slow or down)
is paused, and resumed below half of both: a target that is down holds back only the partitions whose records wait
for it, the others keep flowing.
"""

from __future__ import annotations

import array
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import meshcore
from sidecar.consume.offsets import PartitionOffsets

log = logging.getLogger("kafka_mesh.router")

#: Most records and bytes (keys and values) one poll takes.
POLL_RECORDS = 5000
POLL_BYTES = 8 << 20
#: An idle pump's longest sleep (records, settled runs and commands wake it sooner).
IDLE_S = 0.2
#: How often the pump's status snapshot is refreshed.
SNAPSHOT_S = 1.0
#: After a failed run, its partition waits this long before it is read again, doubling up to BACKOFF_MAX_S.
BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
#: Most partitions a status snapshot lists by name (lag, paused, failing).
SNAPSHOT_PARTITIONS = 256


@dataclass(frozen=True)
class PumpSettings:
    max_records: int = 20_000          # per source partition, routed and not acknowledged
    max_bytes: int = 16 << 20
    drain_timeout_s: float = 10.0      # at stop: how long runs in flight may take to settle before the consumer closes


@dataclass(eq=False)
class _Part:
    topic: str
    partition: int
    offsets: PartitionOffsets | None = None
    bytes: int = 0
    stored: int = -1                   # the offset last stored for commit
    paused: bool = False
    backoff: float = 0.0
    backoff_until: float = 0.0
    failure: str = ""


@dataclass
class _Commands:
    lock: threading.Lock = field(default_factory=threading.Lock)
    table: meshcore.RouterTable | None = None
    topics: list[str] | None = None


class Pump:
    """Routes one source cluster's records by the table in force. start() once; set_table() and subscribe() from any
    thread; stop() ends it (blocking: call it in a worker thread) and closes the consumer, which commits."""

    def __init__(self, source: str, consumer: meshcore.Consumer, table: meshcore.RouterTable, topics: list[str],
                 settings: PumpSettings | None = None, stream: meshcore.RouterStream | None = None) -> None:
        self.source = source
        self._consumer = consumer
        self._table = table
        self._settings = settings or PumpSettings()
        self._commands = _Commands()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stream = stream or meshcore.open_router_stream()     # (the unit tests' stand-in)
        self._parts: dict[tuple[str, int], _Part] = {}
        # run id -> (partition, first, last, bytes, its offsets: native int64s)
        self._runs: dict[int, tuple[_Part, int, int, int, bytes]] = {}
        self._stopping = False
        self._base: dict[str, tuple[int, int, int, int]] = {}      # what tables before the one in force counted
        self._counts_lock = threading.Lock()
        self._down = ""
        self._skipped = 0               # errors librdkafka gave instead of records (their records are not copied)
        self._skipped_last = ""
        self.snapshot: dict[str, Any] = {"source": source, "assigned": 0}
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"router-pump-{source}", daemon=True)
        consumer.enable_wakeup(self._efd)
        consumer.subscribe(topics)

    # -- from the service ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def set_table(self, table: meshcore.RouterTable, topics: list[str]) -> None:
        """Route by table from the next poll on, and read these topics."""
        with self._commands.lock:
            self._commands.table = table
            self._commands.topics = topics
        self._wake()

    def counts(self) -> dict[str, tuple[int, int, int, int]]:
        """Per rule: records in, out (sent to the sinks), filtered, dead-lettered, since the pump started."""
        with self._counts_lock:
            out = dict(self._base)
            for rule, now in self._table.counts().items():
                before = out.get(rule, (0, 0, 0, 0))
                out[rule] = tuple(a + b for a, b in zip(before, now, strict=True))
        return out

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop routing, wait (drain_timeout_s at most) for the runs in flight, store what they settled, and close
        the consumer (it commits and leaves the group). Blocks."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self._close()
        # Only now: the consumer wrote to it until closed, and a closed fd number is soon reused.
        if self._efd >= 0:
            efd, self._efd = self._efd, -1
            os.close(efd)

    def _wake(self) -> None:
        if self._efd >= 0:
            os.eventfd_write(self._efd, 1)

    # -- the thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        waiter = select.poll()
        waiter.register(self._efd, select.POLLIN)
        waiter.register(self._stream.fileno(), select.POLLIN)
        next_snapshot = 0.0
        try:
            while not self._stopping:
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
                self._take_commands()
                routed = self._route()
                self._events()
                self._settle()
                self._flow()
                if time.monotonic() >= next_snapshot:
                    self._snap()
                    next_snapshot = time.monotonic() + SNAPSHOT_S
                if not routed:
                    waiter.poll(IDLE_S * 1000)
            self._drain(waiter)
        except Exception as e:      # a fatal consumer error, or a bug: the service sees error and rebuilds the pump
            self.error = f"{type(e).__name__}: {e}"
            log.exception("router pump failed source=%s", self.source)
        finally:
            self._close()

    def _take_commands(self) -> None:
        with self._commands.lock:
            table, topics = self._commands.table, self._commands.topics
            self._commands.table = self._commands.topics = None
        if table is not None and table is not self._table:
            with self._counts_lock:
                for rule, now in self._table.counts().items():
                    before = self._base.get(rule, (0, 0, 0, 0))
                    self._base[rule] = tuple(a + b for a, b in zip(before, now, strict=True))
                self._table = table
        if topics is not None and topics:
            self._consumer.subscribe(topics)

    def _route(self) -> int:
        runs = self._stream.route(self._table, self._consumer, POLL_RECORDS, POLL_BYTES, 0)
        for run_id, topic, partition, first, last, _n, size, offsets in runs:
            part = self._parts.get((topic, partition))
            if part is None:            # records before the assignment event was taken: the same assignment
                part = self._parts[(topic, partition)] = _Part(topic, partition)
            if part.offsets is None:
                part.offsets = PartitionOffsets(start=first)
                part.stored = first         # where the group stands: nothing to store until past it
            elif first < part.offsets.delivered_end:
                part.offsets.rewind(first)
            part.offsets.delivered(first, last)
            part.bytes += size
            self._runs[run_id] = (part, first, last, size, offsets)
        skipped = self._consumer.take_message_errors()
        if skipped is not None:
            self._skipped += skipped[0]
            self._skipped_last = skipped[1]
            log.error("records the source could not give, skipped source=%s errors=%d last=%s", self.source,
                      skipped[0], skipped[1])
        return len(runs)

    def _events(self) -> None:
        for assigned, partitions in self._consumer.take_events():
            for topic, partition in partitions:
                if assigned:
                    # A tracker made by records polled before this event was taken is the same assignment's: kept.
                    self._parts.setdefault((topic, partition), _Part(topic, partition))
                else:
                    # Settled runs of it are ignored from now on: its next owner starts at the committed offset.
                    self._parts.pop((topic, partition), None)
            log.info("partitions %s source=%s %s", "assigned" if assigned else "revoked", self.source,
                     " ".join(f"{t}[{p}]" for t, p in sorted(partitions)))
        state = self._consumer.take_state()
        if state is not None:
            available, reason = state
            self._down = "" if available else reason
            if available:
                log.info("source cluster available again source=%s", self.source)
            else:
                log.warning("source cluster unavailable source=%s reason=%s", self.source, reason)

    def _settle(self) -> None:
        touched: dict[tuple[str, int], _Part] = {}
        for run_id, failed, index, message in self._stream.drain():
            entry = self._runs.pop(run_id, None)
            if entry is None:
                continue
            part, first, last, size, offsets = entry
            part.bytes -= size
            if self._parts.get((part.topic, part.partition)) is not part or part.offsets is None:
                continue            # revoked since
            if failed:
                # Every record before the first failed one reached every target: acknowledged; read again from it.
                failed_at = array.array("q", offsets)[index]
                if failed_at > first:
                    part.offsets.ack(first, failed_at - 1)
                    touched[(part.topic, part.partition)] = part
                self._failed(part, failed_at, failed, message)
            else:
                part.offsets.ack(first, last)
                touched[(part.topic, part.partition)] = part
        stores = []
        for part in touched.values():
            assert part.offsets is not None
            offset = part.offsets.committable()
            if offset > part.stored:
                stores.append((part.topic, part.partition, offset))
                part.stored = offset
                if part.failure and not part.offsets.unacked:
                    log.info("source partition flows again source=%s partition=%s[%d]", self.source, part.topic,
                             part.partition)
                    part.failure, part.backoff = "", 0.0
        if stores:
            self._consumer.store_offsets(stores)

    def _failed(self, part: _Part, first: int, failed: int, message: str) -> None:
        """A run was not acknowledged by every target: read its partition again from the run's first offset, after a
        backoff. Its records written meanwhile are written again: never lost."""
        assert part.offsets is not None
        if first >= part.offsets.delivered_end:
            return          # read again from before it already (another run failed first)
        # The backoff grows with each seek, not with each failed run: runs failing together count once.
        part.backoff = min(max(BACKOFF_S, part.backoff * 2), BACKOFF_MAX_S)
        part.backoff_until = time.monotonic() + part.backoff
        if message != part.failure:
            log.warning("records not acknowledged by a target, read again source=%s partition=%s[%d] from=%d "
                        "failed=%d retry_in_s=%.1f error=%s", self.source, part.topic, part.partition, first, failed,
                        part.backoff, message)
        part.failure = message
        part.offsets.rewind(first)
        self._consumer.seek(part.topic, part.partition, first)

    def _flow(self) -> None:
        s = self._settings
        now = time.monotonic()
        pause: list[tuple[str, int]] = []
        resume: list[tuple[str, int]] = []
        for key, part in self._parts.items():
            unacked = part.offsets.unacked if part.offsets is not None else 0
            if not part.paused and (unacked > s.max_records or part.bytes > s.max_bytes or now < part.backoff_until):
                part.paused = True
                pause.append(key)
            elif part.paused and now >= part.backoff_until and unacked <= s.max_records // 2 \
                    and part.bytes <= s.max_bytes // 2:
                part.paused = False
                resume.append(key)
        if pause:
            self._consumer.pause(pause)
        if resume:
            self._consumer.resume(resume)

    def _snap(self) -> None:
        parts = sorted(self._parts.values(), key=lambda p: (p.topic, p.partition))
        lag: dict[str, int] = {}
        for topic, partition, high in self._consumer.watermarks([(p.topic, p.partition) for p in parts]):
            part = self._parts.get((topic, partition))
            if part is not None and high >= 0 and part.offsets is not None:
                lag[f"{topic}[{partition}]"] = max(0, high - part.offsets.committable())
        self.snapshot = {
            "source": self.source, "assigned": len(parts), "down": self._down,
            "lag": dict(sorted(lag.items(), key=lambda kv: -kv[1])[:SNAPSHOT_PARTITIONS]),
            "lag_total": sum(lag.values()),
            "paused": [f"{p.topic}[{p.partition}]" for p in parts if p.paused][:SNAPSHOT_PARTITIONS],
            "failing": {f"{p.topic}[{p.partition}]": p.failure for p in parts if p.failure},
            "in_flight_runs": len(self._runs),
            "skipped": self._skipped, "skipped_last": self._skipped_last,
        }

    def _drain(self, waiter: select.poll) -> None:
        """Stopping: no more routing; let the runs in flight settle (drain_timeout_s at most) and store them."""
        deadline = time.monotonic() + self._settings.drain_timeout_s
        waiter.unregister(self._efd)        # stop() wrote to it: only settled runs wake this wait
        while self._runs and time.monotonic() < deadline:
            self._settle()
            if self._runs:
                waiter.poll(min(IDLE_S, max(0.0, deadline - time.monotonic())) * 1000)
        if self._runs:
            log.warning("router stopping with runs unacknowledged source=%s runs=%d: they are read again by the "
                        "group's next owner", self.source, len(self._runs))

    def _close(self) -> None:
        if self._consumer.closed:
            return
        self._consumer.close()          # commits the stored offsets, leaves the group
        self._stream.close()
