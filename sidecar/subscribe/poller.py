"""The poll thread of one Subscribe stream: takes encoded record batches from the stream's consumers (one per
cluster) in turn, never more than the credit the application granted, and hands them to the event loop.

Why a thread and not the event loop: librdkafka's poll blocks, and encoding a batch is native work done with the GIL
released; a thread per stream keeps one stream's consumers from ever waiting for another's. Why one thread for all of
a stream's clusters: the credit is the stream's, and one thread can wait for any consumer at once: librdkafka writes
to the stream's eventfd whenever a consumer queue turns non-empty (Consumer.enable_wakeup), and the loop writes to it
for new credit, commands and stop. A wake-up polls every consumer with no wait, so an idle cluster never delays a
busy one, and a quiet stream sleeps in poll(2) instead of spinning.

Out of credit for longer than PAUSE_AFTER_S, the consumers' partitions are paused (librdkafka stops fetching, so
its prefetch stays bounded; resuming drops and fetches again what it had prefetched, which is why a short wait for
credit does not pause) and the consumers are still served, so that rebalances of the group are never held up by a
slow application.

The thread owns the consumers in its rotation: only it polls them. The loop adds one with add() and takes one out
with remove(); the thread answers with Removed once it no longer touches it, and only then may the loop close it.
The eventfd outlives the thread: librdkafka may write to it until every consumer given to add() is closed, so the
owner calls release() only then (a closed fd number is soon reused by a socket, which the write would corrupt).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import meshcore

log = logging.getLogger("kafka_mesh.subscribe")

#: Polls one consumer and encodes the records as a SubscribeResponse (the core's; the unit tests' stand-in consumers
#: bring their own).
poll_batch = meshcore.poll_batch

#: Longest sleep of an idle stream between two rounds (the wake-ups make it a safety net, not a latency).
IDLE_WAKE_S = 0.5
#: After an idle wait, how long the thread lets records gather before it polls. At 10,000 records/s over three
#: clusters, 0.5 ms gathers ~15 records a response for 1.8 ms of median consume-side latency; 2 ms gathered ~30 for
#: 3.3 ms, and saved ~0.05 of a core.
LINGER_S = 0.0005
#: How long a stream may be out of credit before its partitions are paused and only rebalances are served.
PAUSE_AFTER_S = 1.0
#: Credit beyond these is as good as unlimited (and keeps the numbers within what the core takes).
MAX_CREDIT_RECORDS = 1 << 31
MAX_CREDIT_BYTES = 1 << 62


@dataclass
class Credit:
    """Records and bytes the stream may still send; shared by the poll thread and the loop under a lock."""

    records: int
    bytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[int, int]:
        with self.lock:
            return self.records, self.bytes

    def spend(self, records: int, nbytes: int) -> None:
        with self.lock:
            self.records -= records
            self.bytes -= nbytes

    def add(self, records: int, nbytes: int) -> bool:
        """Returns whether the stream was out of credit before."""
        with self.lock:
            starved = self.records <= 0 or self.bytes <= 0
            self.records = min(self.records + records, MAX_CREDIT_RECORDS)
            self.bytes = min(self.bytes + nbytes, MAX_CREDIT_BYTES)
            return starved


@dataclass(frozen=True)
class Records:
    """One SubscribeResponse with the records of one round over the stream's clusters; runs: (cluster, topic,
    partition, first_offset, last_offset) per group of consecutive records of one partition."""

    encoded: bytes
    runs: list[tuple[str, str, int, int, int]]
    count: int


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def merge_responses(encoded: list[bytes]) -> bytes:
    """One SubscribeResponse{records} from several: their RecordBatches' partition groups, concatenated. Each input
    is a tag (SubscribeResponse.records) and a length, then the RecordBatch, as the core encodes it."""
    if len(encoded) == 1:
        return encoded[0]
    bodies = []
    for e in encoded:
        i = 1
        while e[i] & 0x80:          # the length's varint: the batch starts after it
            i += 1
        bodies.append(memoryview(e)[i + 1:])
    total = sum(len(b) for b in bodies)
    return b"".join([b"\x0a", _varint(total), *bodies])


@dataclass(frozen=True)
class Rebalanced:
    cluster: str
    assigned: bool
    partitions: list[tuple[str, int]]


@dataclass(frozen=True)
class StateChanged:
    cluster: str
    available: bool
    reason: str


@dataclass(frozen=True)
class Removed:
    """The thread let go of the cluster's consumer: the loop may drain and close it."""

    cluster: str
    consumer: meshcore.Consumer


@dataclass(frozen=True)
class Lost:
    """A consumer hit a fatal librdkafka error (its group vanished, its instance was fenced, ...): the thread let go
    of it, and polls the stream's other clusters on. The loop closes it and reads the cluster with a new one."""

    cluster: str
    consumer: meshcore.Consumer
    error: str


@dataclass(frozen=True)
class Failed:
    """The thread stopped: a consumer raised (a fatal librdkafka error)."""

    cluster: str
    error: str


Item = Records | Rebalanced | StateChanged | Removed | Lost | Failed


def _fatal(e: meshcore.KafkaError) -> bool:
    return bool(e.name == "_FATAL")


class Poller:
    """Polls a stream's consumers on one thread; every Item goes to deliver(item) (called on the poll thread: it
    must hand over to the loop thread-safely), and deliver(None) comes last."""

    def __init__(self, credit: Credit, max_records: int, deliver: Callable[[Item | None], None],
                 max_response_bytes: int = 4 << 20) -> None:
        self.credit = credit
        self._max_records = max_records
        self._max_response = max_response_bytes
        self._deliver = deliver
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._consumers: dict[str, meshcore.Consumer] = {}     # only the thread touches this
        self._commands: deque[tuple[str, str, meshcore.Consumer | None]] = deque()
        self._stopping = False
        self._released = False
        self._turn = 0
        self._thread = threading.Thread(target=self._run, name="subscribe-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        if not self._released:
            os.eventfd_write(self._efd, 1)

    def add(self, cluster: str, consumer: meshcore.Consumer) -> None:
        """Hand a subscribed consumer to the thread (call before start() or from the loop)."""
        consumer.enable_wakeup(self._efd)
        self._commands.append(("add", cluster, consumer))
        self.wake()

    def remove(self, cluster: str) -> None:
        """Stop polling cluster; the thread answers Removed(cluster, consumer)."""
        self._commands.append(("remove", cluster, None))
        self.wake()

    def grant(self, records: int, nbytes: int) -> None:
        if self.credit.add(records, nbytes):
            self.wake()     # only a thread out of credit waits for it; a wake-up costs a round over every consumer

    def stop(self) -> dict[str, meshcore.Consumer]:
        """End the thread (blocks until it has) and return the consumers it still held, for the caller to close."""
        self._stopping = True
        self.wake()
        if self._thread.is_alive():
            self._thread.join()
        self._apply_commands()      # adds that came after the thread's last round
        consumers, self._consumers = self._consumers, {}
        return consumers

    def release(self) -> None:
        """Close the eventfd: only once every consumer ever added is closed. Idempotent."""
        if not self._released:
            self._released = True
            os.close(self._efd)

    def _apply_commands(self) -> None:
        while self._commands:
            op, cluster, consumer = self._commands.popleft()
            if op == "add":
                assert consumer is not None
                self._consumers[cluster] = consumer
            else:
                gone = self._consumers.pop(cluster, None)
                if gone is not None:
                    gone.set_paused(True)       # no more fetching for a cluster that is only waiting for acks
                    self._deliver(Removed(cluster, gone))

    def _run(self) -> None:
        waiter = select.poll()
        waiter.register(self._efd, select.POLLIN)
        failed: Failed | None = None
        starved_since: float | None = None
        try:
            while not self._stopping:
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
                self._apply_commands()
                records, nbytes = self.credit.take()
                idle = False
                if records > 0 and nbytes > 0:
                    starved_since = None
                    if self._round():
                        continue
                    # Every queue was drained: whatever arrives from now on writes to the eventfd (read above, before
                    # the round), so the wait below returns at once for records that came during the round.
                    wait, idle = IDLE_WAKE_S, True
                else:
                    now = time.monotonic()
                    starved_since = starved_since or now
                    wait = starved_since + PAUSE_AFTER_S - now
                    if wait <= 0:
                        self._serve_paused()
                        wait = IDLE_WAKE_S
                if waiter.poll(wait * 1000) and idle and LINGER_S:
                    # Woken out of idleness by a first record: give the other clusters' fetches a moment to land too,
                    # so that one response carries them all (a response costs the same for 3 records or 300). Not
                    # after a wait for credit: records are waiting then, and a busy stream would pay it every batch.
                    time.sleep(LINGER_S)
        except Exception as e:     # a fatal consumer error, or a bug: the stream ends with an error either way
            failed = Failed(getattr(e, "cluster", ""), f"{type(e).__name__}: {e}")
            log.exception("subscribe poll failed")
        finally:
            if failed is not None:
                self._deliver(failed)
            self._deliver(None)

    def _round(self) -> bool:
        """Poll every consumer once, within the credit. True when a consumer may still hold records now (a batch
        stopped at max_records, at the credit or at a rebalance): another round follows at once. False when every
        queue was drained: the next record wakes the thread."""
        more = False
        encoded_all: list[bytes] = []
        runs_all: list[tuple[str, str, int, int, int]] = []
        count = 0
        order = list(self._consumers.items())
        if order:
            # Start each round one cluster further on: when credit is short, every cluster gets its turn.
            self._turn = (self._turn + 1) % len(order)
            order = order[self._turn:] + order[:self._turn]
        room = self._max_response       # one response per round, of at most max_response_bytes
        for cluster, consumer in order:
            records, nbytes = self.credit.take()
            if records > 0 and nbytes > 0 and room > 0:
                if consumer.paused:
                    consumer.set_paused(False)
                limit = min(records, self._max_records)
                try:
                    # Only the response's first record may be larger than the room (a record larger than the
                    # response limit then comes alone); a later cluster's must fit, or waits for the next round.
                    encoded, runs, n = poll_batch(consumer, cluster, limit, min(nbytes, room), 0,
                                                  strict=bool(encoded_all))
                except meshcore.KafkaError as e:
                    if not _fatal(e):
                        e.cluster = cluster
                        raise
                    self._lose(cluster, consumer, e)
                    continue
                except meshcore.CoreError as e:
                    e.cluster = cluster
                    raise
                if encoded is not None:
                    self.credit.spend(n, len(encoded))
                    encoded_all.append(encoded)
                    runs_all += [(cluster, *run) for run in runs]
                    count += n
                    room -= len(encoded)
                # records held back (over the byte budget, or a batch cut by a rebalance) wake nobody: poll again
                more = more or n >= limit or consumer.held > 0
            else:
                more = True     # out of credit, or the response is full, mid-round: poll again
            events = consumer.take_events()
            if events and encoded_all:
                # the records polled before a rebalance go first, so that acks meet the assignment they came from
                self._deliver(Records(merge_responses(encoded_all), runs_all, count))
                encoded_all, runs_all, count = [], [], 0
                room = self._max_response
            self._deliver_events(cluster, consumer, events)
        if encoded_all:
            # One response per round over every cluster: at a modest rate each cluster has a few records a round,
            # and a response costs the same whether it carries 3 records or 300.
            self._deliver(Records(merge_responses(encoded_all), runs_all, count))
        return more

    def _serve_paused(self) -> None:
        for cluster, consumer in list(self._consumers.items()):
            if not consumer.paused:
                consumer.set_paused(True)
            try:
                consumer.serve(0)
            except meshcore.KafkaError as e:
                if not _fatal(e):
                    raise
                self._lose(cluster, consumer, e)
                continue
            self._deliver_events(cluster, consumer, consumer.take_events())

    def _lose(self, cluster: str, consumer: meshcore.Consumer, error: meshcore.KafkaError) -> None:
        """One cluster's consumer failed for good: the stream goes on with the others (one cluster's trouble stays
        its own), and the loop builds the cluster a new consumer."""
        log.warning("subscribe consumer failed cluster=%s error=%s", cluster, error)
        self._consumers.pop(cluster, None)
        self._deliver(Lost(cluster, consumer, str(error)))

    def _deliver_events(self, cluster: str, consumer: meshcore.Consumer,
                        events: list[tuple[bool, list[tuple[str, int]]]]) -> None:
        for assigned, partitions in events:
            self._deliver(Rebalanced(cluster, assigned, partitions))
        state = consumer.take_state()
        if state is not None:
            self._deliver(StateChanged(cluster, state[0], state[1]))
