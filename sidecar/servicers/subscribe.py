"""The Subscribe RPC: one aggregated, at-least-once stream of records from every cluster of the subscribed topics.

Per stream:
- one meshcore Consumer per cluster, in the stream's group, so that streams sharing a group share partitions;
- a poll thread (the GIL is released while librdkafka polls) that takes encoded RecordBatches from the consumers in
  turn, never more than the credit the app granted, and hands them to the event loop;
- the handler, on the event loop, records what each batch delivered per (cluster, topic, partition) and writes it;
- a reader task that applies acks (offsets are stored for commit only up to the first record not yet acked in its
  partition: sidecar/subscribe/offsets.py) and adds credit.
Consumers commit stored offsets automatically, and when they close or lose a partition, so records sent but never
acked are delivered again to the group.
Not yet: events for partition assignment and mapping changes, live addition and removal of clusters (the next
steps of the Subscribe issue).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2 as _mesh_pb2
from sidecar.errors import MappingError
from sidecar.mapping.model import Mapping, check_topic
from sidecar.routing import RouteState
from sidecar.subscribe.offsets import PartitionOffsets

log = logging.getLogger("kafka_mesh.subscribe")

DEFAULT_MAX_RECORDS = 500
DEFAULT_MAX_WAIT_MS = 100
DEFAULT_CREDIT_RECORDS = 1000
DEFAULT_CREDIT_BYTES = 16 << 20


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Credit:
    """Records and bytes the stream may still send; shared by the poll thread and the loop under a lock."""

    records: int
    bytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    more: threading.Event = field(default_factory=threading.Event)

    def grant(self, records: int, nbytes: int) -> None:
        with self.lock:
            self.records += records
            self.bytes += nbytes
        self.more.set()


def parse_subscription(raw: bytes) -> _mesh_pb2.Subscription:
    """The first message of a stream, or Aborted(INVALID_ARGUMENT) naming what is wrong."""
    try:
        req = _mesh_pb2.SubscribeRequest.FromString(raw)
    except DecodeError as e:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"malformed SubscribeRequest: {e}") from e
    if req.WhichOneof("kind") != "subscription":
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the first message must be a subscription, got {req.WhichOneof('kind') or 'an empty message'}")
    sub = req.subscription
    if not sub.group:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "subscription.group is empty")
    if not sub.topics:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "subscription.topics is empty")
    for i, topic in enumerate(sub.topics):
        try:
            check_topic(f"subscription.topics[{i}]", topic)
        except MappingError as e:
            raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
    return sub  # type: ignore[no-any-return]


def clusters_by_topic(mapping: Mapping, topics: list[str]) -> dict[str, list[str]]:
    """cluster -> the subscribed topics read there (consumer route, else the producer route's sinks)."""
    out: dict[str, list[str]] = {}
    for topic in topics:
        clusters = mapping.clusters_for_consumer(topic)
        if not clusters:
            raise Aborted(grpc.StatusCode.FAILED_PRECONDITION,
                          f"topic {topic!r} has no consumer route, no producer route and no __default__")
        for cluster in clusters:
            out.setdefault(cluster, []).append(topic)
    return out


class SubscribeServicer:
    def __init__(self, routes: RouteState) -> None:
        self._routes = routes
        self.streams = 0

    def method(self) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self.subscribe)

    async def subscribe(self, requests: AsyncIterator[bytes],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        it = requests.__aiter__()
        try:
            first = await anext(it)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before a subscription")
            raise
        try:
            sub = parse_subscription(first)
            mapping = self._routes.mapping
            if mapping is None:
                raise Aborted(grpc.StatusCode.UNAVAILABLE, "the sidecar has no mapping yet")
            plan = clusters_by_topic(mapping, list(sub.topics))
        except Aborted as e:
            await context.abort(e.code, e.message)
            raise   # abort raises; this line is for the type checker
        credit = _Credit(sub.credit.records or DEFAULT_CREDIT_RECORDS, sub.credit.bytes or DEFAULT_CREDIT_BYTES)
        session = _Session(mapping, sub, plan, credit)
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue()
        session.start(loop, out)
        reader = loop.create_task(self._read(it, session, credit))
        self.streams += 1
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                cluster, encoded, runs = item
                session.delivered(cluster, runs)
                yield encoded
        finally:
            self.streams -= 1
            reader.cancel()
            await asyncio.to_thread(session.stop)

    async def _read(self, it: AsyncIterator[bytes], session: _Session, credit: _Credit) -> None:
        async for raw in it:
            try:
                req = _mesh_pb2.SubscribeRequest.FromString(raw)
            except DecodeError:
                log.info("subscribe stream sent malformed bytes; ignored")
                continue
            kind = req.WhichOneof("kind")
            if kind == "acks":
                session.ack(req.acks)
            elif kind == "credit":
                credit.grant(req.credit.records, req.credit.bytes)


class _Session:
    """The consumers, offsets and poll thread of one stream."""

    def __init__(self, mapping: Mapping, sub: _mesh_pb2.Subscription, plan: dict[str, list[str]],
                 credit: _Credit) -> None:
        self._credit = credit
        self._max_records = sub.max_records or DEFAULT_MAX_RECORDS
        self._max_wait_ms = sub.max_wait_ms or DEFAULT_MAX_WAIT_MS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.offsets: dict[tuple[str, str, int], PartitionOffsets] = {}
        self.consumers: dict[str, meshcore.Consumer] = {}
        reset = "earliest" if sub.start == _mesh_pb2.START_POSITION_EARLIEST else "latest"
        # librdkafka prefetches up to queued.max.messages.kbytes per consumer: sized from the stream's byte credit
        # (1-16 MiB) so that many streams over several clusters keep a bounded footprint.
        prefetch_kb = max(1024, min(16384, (credit.bytes or DEFAULT_CREDIT_BYTES) // 1024))
        try:
            for cluster_name, topics in plan.items():
                cluster = mapping.clusters[cluster_name]
                c = meshcore.create_consumer(cluster_name, {
                    **cluster.config, "bootstrap.servers": cluster.bootstrap, "group.id": sub.group,
                    "auto.offset.reset": reset, "enable.auto.commit": "true", "enable.auto.offset.store": "false",
                    "auto.commit.interval.ms": "1000", "queued.max.messages.kbytes": str(prefetch_kb),
                    "log_level": "4",
                })
                self.consumers[cluster_name] = c
                c.subscribe(topics)
        except BaseException:
            for c in self.consumers.values():
                c.close()
            raise

    def start(self, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[Any]) -> None:
        self._thread = threading.Thread(target=self._poll, args=(loop, out), name="subscribe-poll", daemon=True)
        self._thread.start()

    def _poll(self, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[Any]) -> None:
        clusters = list(self.consumers.items())
        try:
            while not self._stop.is_set():
                got_any = False
                for name, consumer in clusters:
                    with self._credit.lock:
                        records, nbytes = self._credit.records, self._credit.bytes
                    if records <= 0 or nbytes <= 0:
                        break
                    # Only the last cluster of a quiet round waits, so that a busy cluster is never held up by an
                    # idle one.
                    encoded, runs, n = consumer.poll_batch(name, min(records, self._max_records), nbytes, 0)
                    if encoded is None:
                        continue
                    got_any = True
                    with self._credit.lock:
                        self._credit.records -= n
                        self._credit.bytes -= len(encoded)
                    loop.call_soon_threadsafe(out.put_nowait, (name, encoded, runs))
                if got_any:
                    continue
                with self._credit.lock:
                    starved = self._credit.records <= 0 or self._credit.bytes <= 0
                    if starved:
                        self._credit.more.clear()
                if starved:
                    self._credit.more.wait(0.1)
                else:
                    self._stop.wait(min(self._max_wait_ms, 20) / 1000)
        except Exception as e:   # a fatal consumer error ends the stream
            log.error("subscribe poll failed: %s", e)
        finally:
            loop.call_soon_threadsafe(out.put_nowait, None)

    def delivered(self, cluster: str, runs: list[tuple[str, int, int, int]]) -> None:
        for topic, partition, first, last in runs:
            key = (cluster, topic, partition)
            p = self.offsets.get(key)
            if p is None or first < p.delivered_end:
                # first delivery of this partition on this stream, or it came back after a rebalance
                p = self.offsets[key] = PartitionOffsets(start=first)
            p.delivered(first, last)

    def ack(self, acks: _mesh_pb2.Acks) -> None:
        stores: dict[str, list[tuple[str, int, int]]] = {}
        for r in acks.ranges:
            p = self.offsets.get((r.cluster, r.topic, r.partition))
            if p is None:
                log.debug("ack for a partition never delivered on this stream ignored: %s/%s/%d", r.cluster, r.topic,
                          r.partition)
                continue
            before = p.committable()
            p.ack(r.first_offset, r.last_offset)
            after = p.committable()
            if after > before:
                stores.setdefault(r.cluster, []).append((r.topic, r.partition, after))
        for cluster, offsets in stores.items():
            consumer = self.consumers.get(cluster)
            if consumer is not None:
                consumer.store_offsets(offsets)

    def stop(self) -> None:
        self._stop.set()
        self._credit.more.set()
        if self._thread is not None:
            self._thread.join()
        for c in self.consumers.values():
            c.close()       # commits what was stored, then leaves the group
