"""The consumer of the Python client: one Subscribe stream to the sidecar, whose records (from every cluster of the
subscribed topics) the application takes with poll() or by iterating, and acks one by one or in bulk.

What it owns: one gRPC channel and one Subscribe stream on it; the buffer of records received and not yet handed to
the application; the acks and the credit not yet sent. The buffer is bounded by credit, not by waiting: the stream
starts with `max_buffered_records` records and `max_buffered_bytes` bytes of credit, the sidecar never sends past
it, and a response's records and bytes are granted back only once the application has taken all of its records. It
decodes responses with the generated stubs (the application asks for one object per record anyway) and builds the
small request messages the same way. It never retries: when the stream ends with an error the consumer is done, and
what it received without an ack comes again to the group, to a new Consumer.

Threads, and how data crosses them:
- The application's polling thread calls poll() or iterates (one thread at a time). It takes records off the buffer
  under the consumer's one lock (`_lock`), waiting on the `_readable` condition of that lock while the buffer is
  empty. on_event callbacks run on this thread, inside poll() and outside the lock, in stream order with the
  records: an event is dispatched only after every record received before it was returned by an earlier poll, and
  before any record received after it. This is the Kafka clients' rebalance-callback model, and it keeps the
  application's code off the network threads.
- Any thread may call ack() and close(). ack() only adds the offset to the pending ranges under the lock, extending
  the last range of the partition when the record follows it, so acking record by record costs a lock and a
  comparison, not a message. The first pending ack wakes the request thread.
- gRPC's request thread (grpc starts one to consume a request iterator) runs `_requests`: the subscription, then the
  pending acks `ack_interval_ms` after the first of them (or at once when `_ACK_FLUSH_RANGES` ranges are pending),
  and freed credit with them, or on its own once a quarter of the window is free or `ack_interval_ms` after the
  first of it (the sidecar holds the rest of the window meanwhile, so it never waits for this; a message per
  response would cost the sidecar and this process a wake-up each); it waits on the `_outgoing` condition between.
  When close() is called it sends the last acks and ends the iterator, which half-closes the stream.
- The reader thread (`kafka-mesh-subscribe`) reads SubscribeResponses, decodes them into records and events, and
  appends them to the buffer. No application code runs on it.

Why the sync gRPC API and these threads: the producer uses the same shape, it needs no event loop in the
application, and the credit protocol already bounds what the reader can buffer, so the reader never has to wait for
the application.

Closing: close() sends the pending acks and half-closes; the sidecar then stops sending, commits the acked offsets,
leaves the group and ends the stream with OK. close() waits up to `close_timeout` for that, then cancels the call
(the sidecar commits what was acked when a stream is cancelled too). Records received and not acked are not
committed: they come again to the group.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2 as _mesh_pb2
from sidecar.client.channel import open_channel
from sidecar.client.errors import ConsumerClosedError, SubscribeError

log = logging.getLogger("kafka_mesh.client")

_METHOD = "/kafkamesh.v1.Mesh/Subscribe"
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
# Out-of-order acks make one range each; past this many the acks go at once, which bounds a message's size.
_ACK_FLUSH_RANGES = 1024

Headers = tuple[tuple[str, bytes | None], ...]


def _name(raw: bytes) -> str:
    """A header name another producer wrote that is not UTF-8 (sent in Header.raw_key): as a str that gives the
    bytes back with .encode("utf-8", "surrogateescape")."""
    return raw.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------------------------
# Records and events


class ConsumedRecord:
    """One record as Kafka stored it, and where: `cluster`, `topic`, `partition`, `offset`, `key` and `value` (None:
    null), `headers` (a tuple of (name, value or None), in order), `timestamp_ms`. Treat it as read-only.

    ack() marks it processed; the sidecar commits its offset once it and every record before it in its partition
    (on its cluster) are acked."""

    __slots__ = ("cluster", "topic", "partition", "offset", "key", "value", "headers", "timestamp_ms",
                 "_owner", "_prev")

    def __init__(self, cluster: str, topic: str, partition: int, offset: int, key: bytes | None,
                 value: bytes | None, headers: Headers = (), timestamp_ms: int = 0,
                 owner: Consumer | None = None, prev: int | None = None) -> None:
        self.cluster = cluster
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp_ms = timestamp_ms
        self._owner = owner
        # The offset of the record delivered just before this one in the same fetch of the partition (offset - 1
        # unless Kafka skipped offsets: compacted records, transaction markers). An ack range may extend across
        # such a gap, so that acking in order stays one range per partition on compacted and transactional topics.
        self._prev = offset - 1 if prev is None else prev

    def ack(self) -> None:
        """Mark this record processed (see Consumer.ack). Any thread."""
        if self._owner is None:
            raise ValueError("this record did not come from a Consumer: there is nothing to ack it to")
        self._owner._ack_one(self)

    def __repr__(self) -> str:
        return (f"ConsumedRecord(cluster={self.cluster!r}, topic={self.topic!r}, partition={self.partition}, "
                f"offset={self.offset}, key={self.key!r}, value={_short(self.value)}, "
                f"headers={self.headers!r}, timestamp_ms={self.timestamp_ms})")


def _short(b: bytes | None) -> str:
    return repr(b) if b is None or len(b) <= 64 else f"{b[:64]!r}...({len(b)} bytes)"


@dataclasses.dataclass(frozen=True, slots=True)
class AckRange:
    """Offsets first_offset..last_offset (inclusive) of one partition of one cluster."""

    cluster: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionsAssigned:
    """The stream now reads these partitions of `topic` on `cluster`."""

    cluster: str
    topic: str
    partitions: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionsRevoked:
    """The stream no longer reads these partitions (their acked offsets were committed first); acks for their records
    from now on are ignored, and what was not acked goes to the partitions' new owner."""

    cluster: str
    topic: str
    partitions: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ClustersChanged:
    """A subscribed topic is now read from `clusters`, by the mapping at `mapping_revision`."""

    topic: str
    clusters: tuple[str, ...]
    mapping_revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterStateChanged:
    """A cluster stopped answering (`available` False, `reason` says why) or answers again; the stream goes on with
    the other clusters meanwhile."""

    cluster: str
    available: bool
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class AcksIgnored:
    """Acks the sidecar ignored: offsets this stream never delivered, or of partitions it no longer owns."""

    ranges: tuple[AckRange, ...]


ConsumerEvent = PartitionsAssigned | PartitionsRevoked | ClustersChanged | ClusterStateChanged | AcksIgnored


def _decode(raw: bytes, owner: Consumer | None = None) -> list[ConsumedRecord] | ConsumerEvent | None:
    """A SubscribeResponse: its records (in stream order), or its event; None for a kind newer than this client."""
    resp = _mesh_pb2.SubscribeResponse.FromString(raw)
    kind = resp.WhichOneof("kind")
    if kind == "records":
        out: list[ConsumedRecord] = []
        append = out.append
        for g in resp.records.partitions:
            cluster, topic, partition = g.cluster, g.topic, g.partition
            prev: int | None = None
            for r in g.records:
                offset = r.offset
                headers: Headers = tuple(
                    (h.key or _name(h.raw_key), h.value if h.HasField("value") else None)
                    for h in r.headers) if r.headers else ()
                append(ConsumedRecord(cluster, topic, partition, offset,
                                      r.key if r.HasField("key") else None,
                                      r.value if r.HasField("value") else None,
                                      headers, r.timestamp_ms, owner, prev))
                prev = offset
        return out
    if kind == "event":
        return _decode_event(resp.event)
    return None


def _decode_event(ev: Any) -> ConsumerEvent | None:
    kind = ev.WhichOneof("kind")
    if kind == "assigned":
        return PartitionsAssigned(ev.assigned.cluster, ev.assigned.topic, tuple(ev.assigned.partitions))
    if kind == "revoked":
        return PartitionsRevoked(ev.revoked.cluster, ev.revoked.topic, tuple(ev.revoked.partitions))
    if kind == "clusters_changed":
        c = ev.clusters_changed
        return ClustersChanged(c.topic, tuple(c.clusters), c.mapping_revision)
    if kind == "cluster_state":
        s = ev.cluster_state
        return ClusterStateChanged(s.cluster, s.available, s.reason)
    if kind == "acks_ignored":
        return AcksIgnored(tuple(AckRange(r.cluster, r.topic, r.partition, r.first_offset, r.last_offset)
                                 for r in ev.acks_ignored.ranges))
    return None


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping (pure; the consumer's lock guards each instance)


_PartitionKey = tuple[str, str, int]


class _PendingAcks:
    """Acked offsets not sent yet, as inclusive [first, last] ranges per (cluster, topic, partition)."""

    __slots__ = ("_ranges", "count")

    def __init__(self) -> None:
        self._ranges: dict[_PartitionKey, list[list[int]]] = {}
        self.count = 0                  # ranges held: what a message would carry before merging

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, key: _PartitionKey, offset: int, prev: int) -> None:
        """Offset `offset` is acked; `prev` is the offset delivered just before it in its fetch (offset - 1 but for
        skipped offsets)."""
        ranges = self._ranges.get(key)
        if ranges is None:
            self._ranges[key] = [[offset, offset]]
            self.count += 1
            return
        tail = ranges[-1]
        if offset > tail[1] and (offset == tail[1] + 1 or prev == tail[1]):
            tail[1] = offset            # the usual case: acks in delivery order extend one range
        elif not tail[0] <= offset <= tail[1]:
            ranges.append([offset, offset])
            self.count += 1

    def take(self) -> list[AckRange]:
        """Every pending range, sorted and merged per partition (out-of-order acks that now touch become one), and
        forget them."""
        out: list[AckRange] = []
        for (cluster, topic, partition), ranges in self._ranges.items():
            ranges.sort()
            first, last = ranges[0]
            for a, b in ranges[1:]:
                if a <= last + 1:
                    last = max(last, b)
                else:
                    out.append(AckRange(cluster, topic, partition, first, last))
                    first, last = a, b
            out.append(AckRange(cluster, topic, partition, first, last))
        self._ranges = {}
        self.count = 0
        return out


class _Response:
    """The records of one response and how many the application has taken; its bytes are its credit."""

    __slots__ = ("records", "pos", "nbytes")

    def __init__(self, records: list[ConsumedRecord], nbytes: int) -> None:
        self.records = records
        self.pos = 0
        self.nbytes = nbytes


class _Buffer:
    """Responses and events received and not yet handed to the application, in stream order, and the credit each
    response frees once its last record is taken."""

    __slots__ = ("_items", "records", "nbytes", "peak")

    def __init__(self) -> None:
        self._items: collections.deque[_Response | ConsumerEvent] = collections.deque()
        self.records = 0                # records not yet taken
        self.nbytes = 0                 # bytes of the responses not entirely taken
        self.peak = 0                   # the most records held at once

    def put_records(self, records: list[ConsumedRecord], nbytes: int) -> tuple[int, int]:
        """Append one response's records; returns credit to grant now (all of it for a response with no record,
        which holds nothing back)."""
        if not records:
            return 0, nbytes
        self._items.append(_Response(records, nbytes))
        self.records += len(records)
        self.nbytes += nbytes
        self.peak = max(self.peak, self.records)
        return 0, 0

    def put_event(self, event: ConsumerEvent) -> None:
        self._items.append(event)

    def pop_event(self) -> ConsumerEvent | None:
        """The event at the head of the stream, if the head is one."""
        if self._items:
            head = self._items[0]
            if not isinstance(head, _Response):
                self._items.popleft()
                return head
        return None

    def take(self, max_records: int | None) -> tuple[list[ConsumedRecord], int, int]:
        """Up to max_records records (None: all) from the head, stopping at an event; with the records and bytes of
        every response whose last record this takes, to grant as credit."""
        out: list[ConsumedRecord] = []
        credit_records = credit_bytes = 0
        items = self._items
        while items and (max_records is None or len(out) < max_records):
            head = items[0]
            if not isinstance(head, _Response):
                break
            end = len(head.records) if max_records is None else min(len(head.records),
                                                                    head.pos + max_records - len(out))
            out += head.records[head.pos:end]
            head.pos = end
            if end == len(head.records):
                items.popleft()
                credit_records += len(head.records)
                credit_bytes += head.nbytes
                self.nbytes -= head.nbytes
        self.records -= len(out)
        return out, credit_records, credit_bytes

    def clear(self) -> None:
        self._items.clear()
        self.records = self.nbytes = 0


# ---------------------------------------------------------------------------------------------------------------
# The consumer


class _State(enum.Enum):
    NEW = "new"                     # no subscribe() yet
    SUBSCRIBED = "subscribed"
    CLOSING = "closing"             # close() runs: last acks, half-close, wait for the end
    CLOSED = "closed"


_START = {"latest": _mesh_pb2.START_POSITION_LATEST, "earliest": _mesh_pb2.START_POSITION_EARLIEST}


class Consumer:
    """Consumes `group`'s share of topics from the sidecar at `target` ("unix:/path/sidecar.sock" or
    "127.0.0.1:7420"), from every cluster the mapping routes them to, as one stream; at least once.

        with Consumer("unix:/run/kafka-mesh/sidecar.sock", group="billing", start="earliest") as c:
            c.subscribe(["orders", "refunds"])
            while running:
                for r in c.poll(timeout=1.0):      # or: for r in c: ...
                    handle(r.cluster, r.topic, r.key, r.value)
                    r.ack()

    `start` ("latest" or "earliest") is where a partition the group has no committed offset for begins. At most
    `max_buffered_records` records (and about `max_buffered_bytes` bytes of responses: one response may overshoot
    by its framing) are received and not yet taken by poll() or iteration: that is the credit the consumer grants
    the sidecar. `batch_records` and `batch_wait_ms` are the most records the sidecar puts in one response and how
    long a partial one may wait for more (None: the sidecar's defaults, 2,000 per cluster and 100 ms; today it
    gathers for 0.5 ms at most). Acks are sent `ack_interval_ms` after the first one not yet sent, together with
    every other pending one, and freed credit with them (or sooner, once a quarter of the buffer is free).
    `on_event` receives the stream's events (ConsumerEvent: assignment, revocation, cluster changes, ignored
    acks) on the polling thread, inside poll(); without it they are dropped. `connect_timeout` bounds
    subscribe()'s wait for the channel to connect (None: do not wait), `close_timeout` close()'s wait for the
    sidecar to end the stream.

    One subscription per Consumer: subscribe() opens the stream, and a second call raises RuntimeError (changing the
    topics means a new stream, a new member of the group and a rebalance; a new Consumer says so plainly).

    Threads: poll() and iteration from one thread at a time; ack() and close() from any thread. A SubscribeError
    (the sidecar refused the subscription, went away, or the stream broke) is raised by poll(), iteration and ack()
    from then on; the consumer does not reconnect.
    """

    def __init__(self, target: str, *, group: str, start: Literal["latest", "earliest"] = "latest",
                 max_buffered_records: int = 1000, max_buffered_bytes: int = 16 << 20,
                 batch_records: int | None = None, batch_wait_ms: int | None = None, ack_interval_ms: float = 20,
                 on_event: Callable[[ConsumerEvent], object] | None = None,
                 connect_timeout: float | None = 10.0, close_timeout: float = 10.0) -> None:
        if not isinstance(group, str) or not group:
            raise ValueError("group must be a non-empty str")
        if start not in _START:
            raise ValueError(f"start must be 'latest' or 'earliest', got {start!r}")
        for name, value, top in (("max_buffered_records", max_buffered_records, _U32),
                                 ("max_buffered_bytes", max_buffered_bytes, _U64),
                                 ("batch_records", batch_records, _U32), ("batch_wait_ms", batch_wait_ms, _U32)):
            if value is not None and not 1 <= value <= top:
                raise ValueError(f"{name} must be in [1, {top}], got {value}")
        if ack_interval_ms < 0 or close_timeout < 0:
            raise ValueError("ack_interval_ms and close_timeout must be >= 0")
        self.target = target
        self.group = group
        self.start = start
        self.topics: tuple[str, ...] = ()
        self._max_records = max_buffered_records
        self._max_bytes = max_buffered_bytes
        self._batch_records = batch_records or 0        # 0: the sidecar's default
        self._batch_wait_ms = batch_wait_ms or 0
        self._ack_interval = ack_interval_ms / 1000.0
        self._on_event = on_event
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout

        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)    # records or an event arrived, the stream ended, close
        self._outgoing = threading.Condition(self._lock)    # acks or credit to send, close, the stream ended
        self._state = _State.NEW
        self._buf = _Buffer()
        self._acks = _PendingAcks()
        self._ack_deadline: float | None = None
        self._credit_records = 0
        self._credit_bytes = 0
        self._credit_deadline: float | None = None     # when freed credit not yet sent goes out on its own
        self._sending = False           # the request thread still takes acks (False before and after the stream)
        self._failure: SubscribeError | None = None
        self._warned_credit = False
        self._channel: grpc.Channel | None = None
        self._call: Any = None
        self._reader: threading.Thread | None = None

    # -- subscribing ----------------------------------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str]) -> None:
        """Open the stream for `topics` (a list of names). Returns once the request is sent: a refusal (a bad topic
        name, a topic with no route) is raised by the next poll() as SubscribeError. Raises SubscribeError
        (UNAVAILABLE) at once when no sidecar answers at `target` within connect_timeout; subscribe() may then be
        called again."""
        if isinstance(topics, (str, bytes)):
            raise TypeError("topics is a list of topic names, not one name: subscribe([topic])")
        names = tuple(topics)
        if not names:
            raise ValueError("subscribe: topics is empty")
        for t in names:
            if not isinstance(t, str):
                raise TypeError(f"a topic name must be str, not {type(t).__name__}")
        with self._lock:
            if self._state is _State.SUBSCRIBED:
                raise RuntimeError(f"this Consumer is already subscribed to {list(self.topics)}: one subscription "
                                   "per Consumer; close it and create a new one to change topics")
            if self._state is not _State.NEW:
                raise ConsumerClosedError(f"the consumer of group {self.group!r} is closed")
            self._state = _State.SUBSCRIBED       # before connecting, so that a concurrent second call fails
        channel = open_channel(self.target)
        if self._connect_timeout is not None:
            try:
                grpc.channel_ready_future(channel).result(timeout=self._connect_timeout)
            except grpc.FutureTimeoutError:
                channel.close()
                with self._lock:
                    if self._state is _State.SUBSCRIBED:
                        self._state = _State.NEW
                raise SubscribeError(grpc.StatusCode.UNAVAILABLE, f"no sidecar reachable at {self.target} within "
                                     f"{self._connect_timeout:g} s") from None
        sub = _mesh_pb2.Subscription(group=self.group, topics=names, start=_START[self.start],
                                     max_records=self._batch_records, max_wait_ms=self._batch_wait_ms,
                                     credit=_mesh_pb2.Credit(records=self._max_records, bytes=self._max_bytes))
        first = _mesh_pb2.SubscribeRequest(subscription=sub).SerializeToString()
        with self._lock:
            if self._state is not _State.SUBSCRIBED:      # closed while connecting
                channel.close()
                raise ConsumerClosedError(f"the consumer of group {self.group!r} was closed during subscribe()")
            self.topics = names
            self._channel = channel
            self._sending = True
            # No serializers: requests go out as the bytes `_requests` yields, responses come in as bytes.
            self._call = channel.stream_stream(_METHOD)(self._requests(first))
            self._reader = threading.Thread(target=self._read, name="kafka-mesh-subscribe", daemon=True)
            self._reader.start()
        log.debug("consumer subscribed target=%s group=%s topics=%s", self.target, self.group, ",".join(names))

    # -- taking records -------------------------------------------------------------------------------------------

    def poll(self, timeout: float | None = None, *, max_records: int | None = None) -> list[ConsumedRecord]:
        """The records received so far from every cluster, in stream order (up to `max_records`; None: all that are
        buffered, at most max_buffered_records), waiting up to `timeout` seconds for the first (None: until one
        comes); [] when none came in time, or when another thread closed the consumer meanwhile. Each record must be
        acked (record.ack() or ack(records)) for its offset to be committed. Dispatches the events that precede the
        records to on_event first; an exception from on_event comes out of poll() (that event is consumed, the
        records stay buffered). Raises SubscribeError once the stream has ended, ConsumerClosedError after
        close(), RuntimeError before subscribe()."""
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._state is _State.NEW:
                raise RuntimeError("poll() before subscribe()")
            if self._state is not _State.SUBSCRIBED:
                raise ConsumerClosedError(f"the consumer of group {self.group!r} is closed")
        while True:
            with self._lock:
                self._raise_failure()
                if self._state is not _State.SUBSCRIBED:
                    return []
                event = self._buf.pop_event()
                if event is None:
                    records, credit_records, credit_bytes = self._buf.take(max_records)
                    if credit_records or credit_bytes:
                        self._grant_locked(credit_records, credit_bytes)
                    if records:
                        return records
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return []
                    self._readable.wait(left)
                    continue
            # Outside the lock: the application's code, which may ack or close.
            if self._on_event is not None:
                self._on_event(event)

    def __iter__(self) -> Iterator[ConsumedRecord]:
        return self

    def __next__(self) -> ConsumedRecord:
        """The next record, waiting as long as it takes. Iteration ends when the consumer is closed (by another
        thread, or before); a SubscribeError is raised as from poll()."""
        try:
            records = self.poll(None, max_records=1)
        except ConsumerClosedError:
            raise StopIteration from None
        if not records:
            raise StopIteration
        return records[0]

    # -- acking ---------------------------------------------------------------------------------------------------

    def ack(self, records: ConsumedRecord | Iterable[ConsumedRecord]) -> None:
        """Mark records processed (one record, or any iterable of them, in any order). The sidecar commits an offset
        once it and every record before it in its partition are acked. Acks are sent in batches (see the class);
        close() sends those still pending. Any thread. Raises ValueError for a record of another consumer,
        SubscribeError once the stream has ended, ConsumerClosedError after close() sent the last acks."""
        if isinstance(records, ConsumedRecord):
            self._ack_one(records)
            return
        batch = records if isinstance(records, (list, tuple)) else list(records)
        if not batch:
            return                      # so that `c.ack(c.poll(...))` needs no check, also once closed
        for r in batch:
            if not isinstance(r, ConsumedRecord) or r._owner is not self:
                raise ValueError(f"ack: {r!r} was not received by this consumer")
        with self._lock:
            self._check_ackable()
            was_empty = not self._acks
            add = self._acks.add
            for r in batch:
                add((r.cluster, r.topic, r.partition), r.offset, r._prev)
            self._acks_added_locked(was_empty)

    def _ack_one(self, r: ConsumedRecord) -> None:
        if r._owner is not self:
            raise ValueError(f"ack: {r!r} was not received by this consumer")
        with self._lock:
            self._check_ackable()
            was_empty = not self._acks
            self._acks.add((r.cluster, r.topic, r.partition), r.offset, r._prev)
            self._acks_added_locked(was_empty)

    # -- closing --------------------------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Send the pending acks, end the stream and release the channel and threads. Waits up to `timeout` seconds
        (None: close_timeout) for the sidecar to commit and end the stream, then cancels it. Records received and not
        acked are not committed: they come again to the group. A poll() waiting in another thread returns [], an
        iteration ends. Any thread, also from on_event; idempotent."""
        with self._lock:
            if self._state in (_State.CLOSING, _State.CLOSED):
                return
            subscribed = self._state is _State.SUBSCRIBED
            self._state = _State.CLOSING
            self._buf.clear()                       # never handed out now: they come again to the group
            self._readable.notify_all()
            self._outgoing.notify_all()             # the request thread sends the last acks and half-closes
        wait = self._close_timeout if timeout is None else timeout
        try:
            if subscribed and self._reader is not None:
                self._reader.join(wait)
                if self._reader.is_alive():
                    log.debug("consumer close: the stream did not end within %g s; cancelling group=%s", wait,
                              self.group)
                    self._call.cancel()
                    self._reader.join()
        finally:
            with self._lock:
                self._state = _State.CLOSED
                self._sending = False
                self._outgoing.notify_all()
            if self._channel is not None:
                self._channel.close()
            log.debug("consumer closed target=%s group=%s", self.target, self.group)

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Records received and not yet taken by poll() or iteration (at most max_buffered_records)."""
        with self._lock:
            return self._buf.records

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the responses whose records are not all taken yet."""
        with self._lock:
            return self._buf.nbytes

    @property
    def peak_buffered(self) -> int:
        """The most records buffered at once since subscribe(); never above max_buffered_records."""
        with self._lock:
            return self._buf.peak

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._state in (_State.CLOSING, _State.CLOSED)

    # -- under the lock -------------------------------------------------------------------------------------------

    def _raise_failure(self) -> None:
        f = self._failure
        if f is not None:
            # A new instance per raise: one instance raised again and again would pile up tracebacks.
            raise SubscribeError(f.code, f.details)

    def _check_ackable(self) -> None:
        self._raise_failure()
        if not self._sending:
            if self._state is _State.NEW:
                raise RuntimeError("ack() before subscribe()")
            raise ConsumerClosedError(f"the consumer of group {self.group!r} is closed: the ack cannot be sent "
                                      "(the record comes again to the group)")

    def _acks_added_locked(self, was_empty: bool) -> None:
        if was_empty:
            self._ack_deadline = time.monotonic() + self._ack_interval
            self._outgoing.notify()
        elif self._acks.count >= _ACK_FLUSH_RANGES:
            self._outgoing.notify()

    def _grant_locked(self, records: int, nbytes: int) -> None:
        if self._sending and self._state is _State.SUBSCRIBED:
            self._credit_records += records
            self._credit_bytes += nbytes
            if self._credit_deadline is None:
                self._credit_deadline = time.monotonic() + self._ack_interval
                self._outgoing.notify()
            elif self._credit_due_locked(None):
                self._outgoing.notify()

    def _credit_due_locked(self, now: float | None) -> bool:
        """Freed credit goes out on its own once a quarter of the window is free, or at its deadline (`now`)."""
        if not (self._credit_records or self._credit_bytes):
            return False
        return (self._credit_records >= max(1, self._max_records // 4)
                or self._credit_bytes >= max(1, self._max_bytes // 4)
                or (now is not None and self._credit_deadline is not None and now >= self._credit_deadline))

    # -- threads --------------------------------------------------------------------------------------------------

    def _requests(self, first: bytes) -> Iterator[bytes]:
        """gRPC's request thread: the subscription, then acks and credit until close() (the last acks, then the end
        of the iterator: a half-close) or the end of the stream."""
        yield first
        while True:
            acks: list[AckRange] = []
            credit: tuple[int, int] | None = None
            with self._lock:
                while True:
                    if not self._sending:
                        return
                    closing = self._state is not _State.SUBSCRIBED
                    now = time.monotonic()
                    if self._acks and (closing or self._acks.count >= _ACK_FLUSH_RANGES
                                       or self._ack_deadline is None or now >= self._ack_deadline):
                        acks = self._acks.take()
                        self._ack_deadline = None
                    if not closing and (self._credit_records or self._credit_bytes) and (
                            acks or self._credit_due_locked(now)):
                        credit = (self._credit_records, self._credit_bytes)
                        self._credit_records = self._credit_bytes = 0
                        self._credit_deadline = None
                    if acks or credit is not None:
                        break
                    if closing:
                        self._sending = False       # from now on ack() raises: nothing would send it
                        return
                    deadlines = [d for d in (self._ack_deadline, self._credit_deadline) if d is not None]
                    self._outgoing.wait(min(deadlines) - now if deadlines else None)
            yield _encode_request(acks, credit)     # both in one message: half the messages for the sidecar

    def _read(self) -> None:
        call = self._call
        try:
            for raw in call:
                item = _decode(raw, self)
                with self._lock:
                    if self._state is not _State.SUBSCRIBED:
                        continue                # closing: never handed out, so never acked; it comes again
                    if isinstance(item, list):
                        credit_records, credit_bytes = self._buf.put_records(item, len(raw))
                        if credit_bytes:
                            self._grant_locked(credit_records, credit_bytes)
                        if self._buf.records > self._max_records and not self._warned_credit:
                            self._warned_credit = True
                            log.warning("the sidecar sent past the credit granted group=%s buffered=%d "
                                        "max_buffered_records=%d", self.group, self._buf.records, self._max_records)
                        self._readable.notify_all()
                    elif item is not None and self._on_event is not None:
                        self._buf.put_event(item)
                        self._readable.notify_all()
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            with self._lock:
                closing = self._state is not _State.SUBSCRIBED
            if closing and code == grpc.StatusCode.CANCELLED:
                return                          # close() cancelled the call after its timeout
            if closing:
                log.warning("consumer stream ended with an error while closing group=%s code=%s details=%r",
                            self.group, code.name, details)
                return
            self._fail(code, details)
        except Exception as e:      # a bug, or a response that does not parse: poll() must not wait forever on it
            log.exception("consumer reader thread failed")
            self._fail(grpc.StatusCode.INTERNAL, f"the client could not read the sidecar's responses: {e!r}")
            call.cancel()
        else:
            with self._lock:
                closing = self._state is not _State.SUBSCRIBED
            if not closing:
                self._fail(grpc.StatusCode.UNAVAILABLE, "the sidecar ended the Subscribe stream (shutting down?)")

    def _fail(self, code: grpc.StatusCode, details: str) -> None:
        """The reader's last act when the stream ended early: polls raise from now on, the request thread ends, and
        the buffer goes (its records come again to the group, and could not be acked anyway)."""
        with self._lock:
            if self._failure is None:
                self._failure = SubscribeError(code, details)
            self._sending = False
            self._buf.clear()
            self._readable.notify_all()
            self._outgoing.notify_all()
        # INFO, not WARNING: the application hears it as a SubscribeError from poll(), which is the report.
        log.info("consumer stream ended target=%s group=%s code=%s details=%r", self.target, self.group,
                 code.name, details)


def _encode_request(ranges: list[AckRange], credit: tuple[int, int] | None) -> bytes:
    req = _mesh_pb2.SubscribeRequest()
    if ranges:
        req.acks.ranges.extend(
            _mesh_pb2.AckRange(cluster=r.cluster, topic=r.topic, partition=r.partition, first_offset=r.first_offset,
                               last_offset=r.last_offset) for r in ranges)
    if credit is not None:
        req.credit.records, req.credit.bytes = credit
    return bytes(req.SerializeToString())
