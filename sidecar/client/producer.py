"""The batching producer of the Python client: records in, a concurrent.futures.Future per record (or per batch)
out, resolved when the sidecar answers the batch the record went in.

What it owns: one gRPC channel to the sidecar and one Produce stream on it, the open batch (records not yet sent),
and the batches in flight (sent or queued, not yet answered). It encodes records with sidecar.client.wire (no
protobuf message object per record) and decodes only the ProduceResponses, one per batch. It never retries.

Threads, and how data crosses them:
- Application threads call send, send_batch, flush and close. Each record is encoded in the calling thread, then
  appended to its topic's open batch under the producer's one lock (`_lock`). A batch holds one topic's records, so
  that a topic whose cluster is down holds up only its own records. A batch is sealed when it reaches
  `batch_records` records or `batch_bytes` bytes: sealing takes the next batch id, records the batch as in flight
  and puts it on a queue.SimpleQueue, all under the lock. A batch cannot be sealed while `max_inflight_batches`
  batches are in flight, nor while its topic has `max_inflight_per_topic` in flight, unless its topic has none
  (so one topic can never take every slot, nor a healthy topic wait for another's): the sender waits on the
  `_room` condition (of the same lock) for a response to free a slot, or until its timeout.
- The linger thread (`kafka-mesh-linger`) seals each open batch once it is `linger_ms` old (or full and a slot has
  freed); it sleeps on the `_tick` condition, which a new open batch, a freed slot and close() notify.
- gRPC's own request thread (grpc starts one to consume a request iterator) runs `_requests`: it takes sealed
  batches off the queue and joins each into one ProduceRequest's bytes, so the join is off the lock and off the
  application's threads; gRPC flow control makes it wait when the sidecar reads slowly, and the bound above then
  stops the senders. A None on the queue ends the iterator, which half-closes the stream.
- The response thread (`kafka-mesh-responses`) reads ProduceResponses, finds each one's batch by batch_id,
  resolves its futures outside the lock, and only then takes the batch off the in-flight table (so a flush returns
  with every future done, and a slot frees once its futures are). Future callbacks therefore run on this thread:
  keep them short. A send from a callback never waits for room (it would wait for this very thread): it
  may take the in-flight count past the bound. flush and close from a callback raise RuntimeError.

When the stream breaks (the sidecar went away, or ended the stream with INVALID_ARGUMENT or UNAVAILABLE), every
pending future (sent, queued, or still in the open batch) fails with a StreamError carrying the gRPC status code
and details, and so does every later send: the producer does not reconnect. A batch in flight when the stream broke
may or may not have been written, so sending it again on a new stream could duplicate it, and sending only the
later records could reorder them; that decision is the application's, which creates a new Producer.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, overload

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2 as _mesh_pb2
from sidecar.client import wire
from sidecar.client.channel import open_channel
from sidecar.client.errors import ErrorCode, ProducerClosedError, RecordError, StreamError

log = logging.getLogger("kafka_mesh.client")

_METHOD = "/kafkamesh.v1.Mesh/Produce"
_STREAM_ATTR = "__kafka_mesh_stream__"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True, slots=True)
class RecordResult:
    """A record was written to every cluster its route names. One instance is shared by the records of a batch."""

    batch_id: int
    mapping_revision: int       # the etcd revision of the mapping that routed the record's batch


@dataclasses.dataclass(frozen=True, slots=True)
class BatchResult:
    """The answer to one send_batch: `ok_count` records written, one RecordError per record that was not (its
    `index` is the record's position in the values given), in index order."""

    batch_id: int
    ok_count: int
    errors: tuple[RecordError, ...]
    mapping_revision: int

    @property
    def ok(self) -> bool:
        return not self.errors


# ---------------------------------------------------------------------------------------------------------------
# @stream: a class's topic


@dataclasses.dataclass(frozen=True, slots=True)
class _StreamInfo:
    topic: str
    topic_field: bytes
    key: Callable[[Any], object] | None


def stream(topic: str, *, key: str | Callable[[Any], object] | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator: instances of the class are records of `topic`, so that `producer.send(obj)` needs no topic.

    The value is `obj.to_bytes()` when the class has that method, else the JSON of `dataclasses.asdict(obj)`
    (compact, UTF-8). `key` is the name of an attribute or a function of the object giving the record key, as
    bytes, str (UTF-8) or int (its decimal digits); None there, or no `key`, means a null key. The registration
    belongs to this class only (a subclass is not registered), and holds also when @stream is written above or
    below @dataclass(slots=True).

        @stream("orders", key="customer")
        @dataclass
        class Order:
            customer: str
            amount: int
    """
    tf = wire.topic_field(topic)
    if isinstance(key, str):
        keyfn: Callable[[Any], object] | None = _attrgetter(key)
    elif key is None or callable(key):
        keyfn = key
    else:
        raise TypeError(f"key must be an attribute name or a callable, not {type(key).__name__}")

    def register(cls: type[T]) -> type[T]:
        if not isinstance(cls, type):
            raise TypeError(f"@stream({topic!r}) decorates a class, not {type(cls).__name__}")
        setattr(cls, _STREAM_ATTR, _StreamInfo(topic, tf, keyfn))
        return cls

    return register


def _attrgetter(name: str) -> Callable[[Any], object]:
    def get(obj: Any) -> object:
        return getattr(obj, name)
    return get


def _stream_info(obj: object) -> _StreamInfo:
    cls = type(obj)
    # The class's own namespace only: a subclass inherits the attribute but is not registered. (dataclass with
    # slots=True builds a new class from the namespace, so the registration survives it in either order.)
    info = cls.__dict__.get(_STREAM_ATTR)
    if isinstance(info, _StreamInfo):
        return info
    raise TypeError(f"{cls.__module__}.{cls.__qualname__} is not registered with @stream(topic): "
                    "send(obj) needs a class decorated with @stream, or use send(topic, value)")


def _key_bytes(raw: object, cls: type) -> bytes | None:
    if raw is None or isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8")
    if isinstance(raw, (bytearray, memoryview)):
        return bytes(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw).encode("ascii")
    raise TypeError(f"the key of a {cls.__qualname__} must be bytes, str, int or None, not {type(raw).__name__}")


def _as_bytes(raw: object, what: str) -> bytes:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    raise TypeError(f"{what} must be bytes or None, not {type(raw).__name__}")


def _value_bytes(obj: object) -> bytes:
    to_bytes = getattr(obj, "to_bytes", None)
    if to_bytes is not None:
        out = to_bytes()
        if not isinstance(out, (bytes, bytearray, memoryview)):
            raise TypeError(f"{type(obj).__qualname__}.to_bytes() returned {type(out).__name__}, not bytes")
        return bytes(out)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json.dumps(dataclasses.asdict(obj), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raise TypeError(f"{type(obj).__qualname__} has no to_bytes() method and is not a dataclass: "
                    "its records have no value encoding")


# ---------------------------------------------------------------------------------------------------------------
# Batches


class _Missing(enum.Enum):
    MISSING = 0


_MISSING = _Missing.MISSING


class _RecordBatch:
    """Records of one topic given to send(): their encoded fields and their futures."""

    __slots__ = ("records", "futures", "topic", "nbytes", "deadline", "batch_id")

    def __init__(self, topic: str, deadline: float) -> None:
        self.records: list[bytes] = []
        self.futures: list[Future[RecordResult]] = []
        self.topic = topic
        self.nbytes = 0
        self.deadline = deadline
        self.batch_id = 0

    @property
    def count(self) -> int:
        return len(self.futures)

    def encode(self) -> bytes:
        raw = wire.encode_request(self.batch_id, self.records)
        self.records = []           # gRPC holds the request now; the batch keeps only what resolving needs
        return raw

    def resolve(self, resp: Any) -> None:
        result = RecordResult(self.batch_id, resp.mapping_revision)
        failed = dict(record_errors(resp.errors))
        if resp.ok_count + len(failed) != len(self.futures):
            log.warning("produce response does not add up batch_id=%d records=%d ok=%d errors=%d",
                        self.batch_id, len(self.futures), resp.ok_count, len(failed))
        if not failed:
            for f in self.futures:
                f.set_result(result)
            return
        for i, f in enumerate(self.futures):
            e = failed.get(i)
            if e is None:
                f.set_result(result)
            else:
                f.set_exception(RecordError(e[0], e[1], index=i, topic=self.topic))

    def fail(self, code: Any, details: str) -> None:
        for f in self.futures:
            f.set_exception(StreamError(code, details))


def record_errors(errors: Any) -> Iterator[tuple[int, tuple[ErrorCode, str]]]:
    """(index, (code, message)) for every failed record of a ProduceResponse's errors, whose entries each stand for
    `count` consecutive records; an entry past the response's first 1,000 has no text: it takes the last text given
    for its code."""
    said: dict[int, str] = {}
    for e in errors:
        message = e.message or said.get(e.code, "")
        said[e.code] = message
        code = ErrorCode.from_wire(e.code)
        for i in range(e.index, e.index + max(e.count, 1)):
            yield i, (code, message)


try:
    # The native encoder (about 15 ns a record), where the sidecar's core is installed: an optional speed-up. The
    # client is a plain gRPC client and works without it, with the pure-Python encoder (sidecar.client.wire).
    from meshcore import encode_records as _native_encode
except ImportError:      # the client alone: no librdkafka, no native core
    _native_encode = None

#: The most records the sidecar takes in one ProduceRequest (kafkamesh.v1.ProduceRequest.records says so).
MAX_REQUEST_RECORDS = 500_000


class _WholeBatch:
    """A batch given to send_batch, encoded by the caller; one future for all of it."""

    __slots__ = ("payload", "future", "topic", "count", "batch_id")

    def __init__(self, batch_id: int, payload: bytes, topic: str, count: int) -> None:
        self.payload = payload
        self.future: Future[BatchResult] = Future()
        self.future.set_running_or_notify_cancel()
        self.topic = topic
        self.count = count
        self.batch_id = batch_id

    def encode(self) -> bytes:
        raw, self.payload = self.payload, b""
        return raw

    def resolve(self, resp: Any) -> None:
        errors = tuple(RecordError(code, message, index=i, topic=self.topic)
                       for i, (code, message) in record_errors(resp.errors))
        self.future.set_result(BatchResult(self.batch_id, resp.ok_count, errors, resp.mapping_revision))

    def fail(self, code: Any, details: str) -> None:
        self.future.set_exception(StreamError(code, details))


_Batch = _RecordBatch | _WholeBatch


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"         # close() is flushing: no new records
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------------------------------
# The producer


class Producer:
    """Sends records to the sidecar at `target` ("unix:/path/sidecar.sock" or "127.0.0.1:7420") over one Produce
    stream, in batches of up to `batch_records` records or `batch_bytes` bytes, each sent at the latest `linger_ms`
    after its first record; a batch holds the records of one topic. At most `max_inflight_batches` batches are queued
    or sent and not yet answered, and at most `max_inflight_per_topic` (default three quarters of them) of one
    topic, but a topic with none in flight may always send one: a topic whose cluster is down cannot hold up the
    others. A send that needs a slot waits for a response, up to its `timeout` (then TimeoutError). A record larger than
    `batch_bytes` goes in a batch of its own; one whose request would exceed `max_request_bytes` (the sidecar's
    limit, 64 MiB by default) is refused with ValueError. The constructor waits up to `connect_timeout` seconds for
    the channel to connect (None: do not wait; a sidecar that is not there then fails the first futures).

        with Producer("unix:/run/kafka-mesh/sidecar.sock") as p:
            fut = p.send("orders", b"...", key=b"customer-1")
            fut.result().mapping_revision

    Thread-safe. Use it as a context manager, or call close(): threads and the channel live until then.
    """

    def __init__(self, target: str, *, linger_ms: float = 5, batch_records: int = 1000, batch_bytes: int = 1 << 20,
                 max_inflight_batches: int = 64, max_inflight_per_topic: int | None = None,
                 max_request_bytes: int = 64 << 20, connect_timeout: float | None = 10.0) -> None:
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms}")
        if max_inflight_per_topic is None:
            max_inflight_per_topic = max_inflight_batches - max_inflight_batches // 4
        for name, value in (("batch_records", batch_records), ("batch_bytes", batch_bytes),
                            ("max_inflight_batches", max_inflight_batches),
                            ("max_inflight_per_topic", max_inflight_per_topic),
                            ("max_request_bytes", max_request_bytes)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if batch_records > MAX_REQUEST_RECORDS:
            raise ValueError(f"batch_records must be at most {MAX_REQUEST_RECORDS:,} (the sidecar's limit per "
                             f"request), got {batch_records:,}")
        self.target = target
        self._linger = linger_ms / 1000.0
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self._max_inflight = max_inflight_batches
        self._max_per_topic = max_inflight_per_topic
        self._max_request = max_request_bytes

        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)     # a slot freed, a batch answered, or the stream ended
        self._tick = threading.Condition(self._lock)     # the linger thread's: a new open batch, a slot, close
        self._state = _State.OPEN
        self._failure: StreamError | None = None
        self._open: dict[str, _RecordBatch] = {}        # topic -> its open batch (never empty)
        self._inflight: dict[int, _Batch] = {}
        self._topic_inflight: dict[str, int] = {}
        self._next_id = 1
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()

        self._channel = open_channel(target)
        if connect_timeout is not None:
            try:
                grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
            except grpc.FutureTimeoutError:
                self._channel.close()
                raise StreamError(grpc.StatusCode.UNAVAILABLE,
                                  f"no sidecar reachable at {target} within {connect_timeout:g} s") from None
        # No serializers: requests go out as the bytes `_requests` yields, responses come in as bytes.
        self._call = self._channel.stream_stream(_METHOD)(self._requests())
        self._responses = threading.Thread(target=self._read_responses, name="kafka-mesh-responses", daemon=True)
        self._linger_thread = threading.Thread(target=self._linger_loop, name="kafka-mesh-linger", daemon=True)
        self._responses.start()
        self._linger_thread.start()
        log.debug("producer open target=%s", target)

    # -- sending --------------------------------------------------------------------------------------------------

    @overload
    def send(self, topic: str, value: bytes | None, /, *, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes | None]] | None = None, timestamp_ms: int | None = None,
             partition: int | None = None, timeout: float | None = None) -> Future[RecordResult]: ...

    @overload
    def send(self, obj: object, /, *, timeout: float | None = None) -> Future[RecordResult]: ...

    def send(self, target: object, value: bytes | None | _Missing = _MISSING, /, *, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes | None]] | None = None, timestamp_ms: int | None = None,
             partition: int | None = None, timeout: float | None = None) -> Future[RecordResult]:
        """Queue one record; the future resolves to a RecordResult once the record is written to every cluster of
        its route, or fails with RecordError (this record was refused; `.code` says why) or StreamError (the stream
        ended; the record's fate is unknown).

        `send(topic, value, key=..., headers=..., timestamp_ms=..., partition=...)` sends bytes (value None: a
        null value, a tombstone). `send(obj)` sends an instance of a class decorated with @stream to its topic.
        Waits up to `timeout` seconds (None: as long as it takes) when max_inflight_batches batches are pending,
        then raises TimeoutError. Raises StreamError when the stream has ended, ProducerClosedError after close().
        The returned future cannot be cancelled: the record is on its way.
        """
        if isinstance(target, str):
            if value is _MISSING:
                raise TypeError("send(topic, value): the value is missing (None sends a null value)")
            topic = target
            tf = wire.topic_field(topic)
            raw_key = key
            raw_value = value
        else:
            if value is not _MISSING or key is not None or headers or timestamp_ms is not None or partition is not None:
                raise TypeError("send(obj) takes the object only: its class's @stream gives topic and key")
            info = _stream_info(target)
            topic, tf = info.topic, info.topic_field
            raw_key = None if info.key is None else _key_bytes(info.key(target), type(target))
            raw_value = _value_bytes(target)
        if raw_key is not None and type(raw_key) is not bytes:
            raw_key = _as_bytes(raw_key, "key")
        if raw_value is not None and type(raw_value) is not bytes:
            raw_value = _as_bytes(raw_value, "value")
        rec = wire.encode_record(tf, raw_key, raw_value, headers, timestamp_ms, partition)
        if len(rec) > self._max_request - 11:      # 11: the largest batch_id field
            raise ValueError(f"record of {len(rec)} bytes to {topic!r} exceeds max_request_bytes="
                             f"{self._max_request}")
        fut: Future[RecordResult] = Future()
        fut.set_running_or_notify_cancel()
        deadline = None if timeout is None else time.monotonic() + timeout
        size = len(rec)
        with self._lock:
            self._check_open()
            while True:
                b = self._open.get(topic)
                if b is None or (len(b.futures) < self._batch_records and b.nbytes + size <= self._batch_bytes):
                    break
                # The open batch has no room for this record: seal it, which takes an in-flight slot.
                if self._has_slot(topic):
                    self._seal_locked(topic)
                    break
                self._wait_room_locked(deadline, timeout, "send", topic)
                self._check_open()
            b = self._open.get(topic)
            if b is None:
                b = self._open[topic] = _RecordBatch(topic, time.monotonic() + self._linger)
                self._tick.notify()
            b.records.append(rec)
            b.futures.append(fut)
            b.nbytes += size
            if (len(b.futures) >= self._batch_records or b.nbytes >= self._batch_bytes) and self._has_slot(topic):
                self._seal_locked(topic)
            # else a full batch waits for a slot: the next send or the linger thread seals it
        return fut

    def send_batch(self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None, *,
                   timeout: float | None = None) -> Future[BatchResult]:
        """Send len(values) records to `topic` as one ProduceRequest of their own, value i with key i (keys None:
        null keys). The fast path: the request is encoded directly (sidecar.client.wire.encode_batch), with no
        Python object per record; one future for the batch resolves to a BatchResult (ok_count, the failed
        records' RecordErrors by index, mapping_revision) or fails with StreamError. Records queued by send() before
        this call are sent before it. `timeout` as for send()."""
        if len(values) == 0:
            raise ValueError("send_batch: values is empty")
        if len(values) > MAX_REQUEST_RECORDS:
            # refused here: the sidecar would end the stream, failing every batch in flight on it
            raise ValueError(f"send_batch: at most {MAX_REQUEST_RECORDS:,} records per batch (the sidecar's limit "
                             f"per request), got {len(values):,}; split them")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            # What send() queued goes first, so that records of one key stay in the order they were given.
            while topic in self._open:
                if self._has_slot(topic):
                    self._seal_locked(topic)
                    break
                self._wait_room_locked(deadline, timeout, "send_batch", topic)
                self._check_open()
            batch_id = self._take_id()
        # Encoded outside the lock: other threads go on sending meanwhile. Lists of bytes take the native encoder
        # when it is installed; anything else the pure-Python one, which also explains what it refuses.
        try:
            if _native_encode is None or type(values) is not list or (keys is not None and type(keys) is not list):
                raise TypeError("the pure-Python encoder")
            payload = _native_encode(batch_id, topic, values, keys)
        except (TypeError, ValueError):
            payload = wire.encode_batch(batch_id, topic, values, keys)
        if len(payload) > self._max_request:
            raise ValueError(f"send_batch: the request is {len(payload)} bytes, over max_request_bytes="
                             f"{self._max_request}; split it")
        batch = _WholeBatch(batch_id, payload, topic, len(values))
        with self._lock:
            self._check_open()
            while not self._has_slot(topic):
                self._wait_room_locked(deadline, timeout, "send_batch", topic)
                self._check_open()
            self._add_inflight_locked(batch_id, batch)
            self._queue.put(batch)
        return batch.future

    # -- waiting and closing --------------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Send the open batch now and wait until every record sent before this call is answered (or failed: the
        outcome is on the futures, flush does not raise for it). Raises TimeoutError when records are still
        pending after `timeout` seconds."""
        self._not_from_callback("flush")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._open and self._failure is None:
                ready = [t for t in self._open if self._has_slot(t)]
                for topic in ready:
                    self._seal_locked(topic)
                if self._open:
                    self._wait_room_locked(deadline, timeout, "flush")
            # Waiting for the batches in flight now; ids only grow, so later sends do not hold this flush up.
            last = self._next_id
            while any(bid < last for bid in self._inflight):
                self._wait_room_locked(deadline, timeout, "flush")

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout` seconds), end the stream and release the channel and threads. Records still
        unanswered when the timeout passes fail with StreamError(CANCELLED) and TimeoutError is raised. Sends
        after close() raise ProducerClosedError. Idempotent."""
        self._not_from_callback("close")
        with self._lock:
            if self._state is not _State.OPEN:
                return
            self._state = _State.CLOSING
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._state = _State.CLOSED
                self._tick.notify_all()
                self._room.notify_all()
                pending = len(self._inflight)
            self._queue.put(None)       # half-close: the sidecar ends the stream once it has answered everything
            if pending:
                self._call.cancel()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._responses.join(left if left is not None else 30.0)
            if self._responses.is_alive():
                self._call.cancel()
                self._responses.join()
            self._linger_thread.join()
            self._channel.close()
            log.debug("producer closed target=%s", self.target)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending_batches(self) -> int:
        """Batches queued or sent and not yet answered: at most max_inflight_batches, bar sends from callbacks and
        the one batch each topic with none in flight may always send."""
        with self._lock:
            return len(self._inflight)

    # -- under the lock -------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise ProducerClosedError(f"the producer for {self.target} is closed")
        if self._failure is not None:
            raise StreamError(self._failure.code, f"{self._failure.details} (earlier; this producer cannot send: "
                              "create a new Producer)")

    def _has_slot(self, topic: str) -> bool:
        """Whether a batch of topic may be sealed now: a topic with none in flight always may (bar the bound);
        a send from a callback always may (it must not wait for the thread it runs on)."""
        mine = self._topic_inflight.get(topic, 0)
        return (mine == 0 or (len(self._inflight) < self._max_inflight and mine < self._max_per_topic)
                or threading.current_thread() is self._responses)

    def _add_inflight_locked(self, batch_id: int, batch: _Batch) -> None:
        self._inflight[batch_id] = batch
        self._topic_inflight[batch.topic] = self._topic_inflight.get(batch.topic, 0) + 1

    def _remove_inflight_locked(self, batch_id: int) -> None:
        topic = self._inflight.pop(batch_id).topic
        left = self._topic_inflight[topic] - 1
        if left:
            self._topic_inflight[topic] = left
        else:
            del self._topic_inflight[topic]

    def _take_id(self) -> int:
        bid = self._next_id
        self._next_id += 1
        return bid

    def _seal_locked(self, topic: str) -> None:
        b = self._open.pop(topic)
        b.batch_id = self._take_id()
        self._add_inflight_locked(b.batch_id, b)
        self._queue.put(b)

    def _wait_room_locked(self, deadline: float | None, timeout: float | None, what: str,
                          topic: str | None = None) -> None:
        if deadline is None:
            self._room.wait()
            return
        left = deadline - time.monotonic()
        if left <= 0 or not self._room.wait(left) and time.monotonic() >= deadline:
            if what == "flush":
                records = sum(b.count for b in self._inflight.values()) + sum(b.count for b in self._open.values())
                raise TimeoutError(f"flush: {len(self._inflight)} batch(es) still await the sidecar's answer "
                                   f"after {timeout:g} s ({records} record(s) unsent or unanswered)")
            mine = self._topic_inflight.get(topic, 0) if topic is not None else 0
            raise TimeoutError(f"{what}: {len(self._inflight)} batches await the sidecar's answer, {mine} of them "
                               f"of topic {topic!r} (max_inflight_batches={self._max_inflight}, "
                               f"max_inflight_per_topic={self._max_per_topic}); no room within {timeout:g} s")

    def _not_from_callback(self, what: str) -> None:
        if threading.current_thread() is self._responses:
            raise RuntimeError(f"{what}() from a future's callback would wait for the thread that runs the callback")

    # -- threads --------------------------------------------------------------------------------------------------

    def _requests(self) -> Iterator[bytes]:
        """gRPC's request thread: sealed batches in, request bytes out, until the None of close() or a failure."""
        while True:
            b = self._queue.get()
            if b is None:
                return
            yield b.encode()

    def _linger_loop(self) -> None:
        with self._lock:
            while self._state is not _State.CLOSED and self._failure is None:
                if not self._open:
                    self._tick.wait()
                    continue
                now = time.monotonic()
                wait: float | None = None       # None: until notified (nothing due has a slot)
                sealed = False
                for topic, b in list(self._open.items()):
                    left = b.deadline - now
                    if left > 0 and b.count < self._batch_records and b.nbytes < self._batch_bytes:
                        wait = left if wait is None else min(wait, left)
                    elif self._has_slot(topic):
                        self._seal_locked(topic)
                        sealed = True
                    # else due but without a slot: a response frees one and notifies
                if sealed:
                    self._room.notify_all()     # a flush may wait for the open batches to go
                else:
                    self._tick.wait(wait)

    def _read_responses(self) -> None:
        try:
            for raw in self._call:
                resp = _mesh_pb2.ProduceResponse.FromString(raw)
                with self._lock:
                    batch = self._inflight.get(resp.batch_id)
                if batch is None:
                    log.warning("produce response for an unknown batch batch_id=%d", resp.batch_id)
                    continue
                # Resolved before it leaves the in-flight table, so that flush() returns only once the futures
                # are done; outside the lock, because resolving runs the application's callbacks.
                batch.resolve(resp)
                with self._lock:
                    self._remove_inflight_locked(resp.batch_id)
                    self._room.notify_all()
                    if self._open:
                        self._tick.notify()
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            if code == grpc.StatusCode.CANCELLED and self._state is _State.CLOSED:
                details = "the producer was closed before the sidecar answered"
            self._fail(code, details)
        except Exception as e:   # a bug, or a response that does not parse: nothing pending may hang on it
            log.exception("produce response thread failed")
            self._fail(grpc.StatusCode.INTERNAL, f"the client could not read the sidecar's responses: {e!r}")
        else:
            with self._lock:
                answered = not self._inflight and not self._open
                closing = self._state is not _State.OPEN
            if not (answered and closing):
                self._fail(grpc.StatusCode.UNAVAILABLE, "the sidecar ended the Produce stream (shutting down?)")

    def _fail(self, code: Any, details: str) -> None:
        """The response thread's last act when the stream ended early: every pending future fails. The failure is
        set first (sends raise from then on); the futures fail outside the lock (callbacks), and only then do the
        batches leave the in-flight table, so that a flush() waiting returns with every future done."""
        with self._lock:
            if self._failure is None:
                self._failure = StreamError(code, details)
            batches: list[_Batch] = list(self._inflight.values()) + list(self._open.values())
            self._open = {}
            self._tick.notify_all()
        self._queue.put(None)          # gRPC's request thread may wait on the queue
        if batches:
            log.warning("produce stream ended target=%s code=%s details=%r pending_batches=%d",
                        self.target, getattr(code, "name", code), details, len(batches))
        for b in batches:
            b.fail(code, details)
        with self._lock:
            self._inflight.clear()
            self._topic_inflight.clear()
            self._room.notify_all()
