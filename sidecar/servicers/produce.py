"""The Produce RPC: a bidirectional stream of ProduceRequest -> ProduceResponse, on the native path.

The handler is registered without a request deserializer or response serializer: request bytes go to the core
undecoded, and the core's encoded responses are written as they are. Per stream, on the event loop:
- a reader task takes the next request only while the stream's in-flight bytes are under the bound, so a slow
  cluster makes gRPC flow control slow the app instead of growing memory; each request is routed by the table in
  force when it is read (one revision per batch) and submitted by the core with the GIL released: on the loop
  thread when small, in a worker thread when it is large or the producers hold many records (a full librdkafka
  queue makes submit wait for room);
- the handler itself waits on the stream's eventfd and writes each completed batch's response.
Malformed bytes end only this stream, with INVALID_ARGUMENT, after the batches already submitted are answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc

import meshcore
from sidecar.routing import RouteState

log = logging.getLogger("kafka_mesh.produce")

SERVICE = "kafkamesh.v1.Mesh"
#: Requests up to this size are submitted on the loop thread (at most ~200k records: a full librdkafka queue is out
#: of reach while every producer holds fewer than INLINE_MAX_QUEUED of its 10M); larger ones in a worker thread.
INLINE_MAX_BYTES = 1 << 20
INLINE_MAX_QUEUED = 1_000_000


class StreamAborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProduceServicer:
    """Serves Produce streams. `shutdown()` makes every stream stop reading, answer what it has in flight, and
    end, so that a SIGTERM loses nothing that was accepted."""

    def __init__(self, routes: RouteState, max_inflight_bytes: int) -> None:
        self._routes = routes
        self._max_inflight = max_inflight_bytes
        self._readers: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="produce-submit")
        self._stopping = False
        self.streams = 0

    def method(self) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self.produce)

    def shutdown(self) -> None:
        """Stop reading every stream; each still answers what it has in flight, then ends with OK."""
        self._stopping = True
        for reader in self._readers:
            reader.cancel()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def produce(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        stream = meshcore.open_stream()
        wake = asyncio.Event()        # a batch completed, or the reader stopped
        room = asyncio.Event()        # responses were sent: in-flight bytes went down
        fd = stream.fileno()

        def ready() -> None:
            # The eventfd is read here, so that the level-triggered reader does not fire again while this handler
            # is busy writing (a slow app); the completed list itself is taken by drain().
            try:
                os.read(fd, 8)
            except BlockingIOError:
                pass
            wake.set()

        loop.add_reader(fd, ready)
        reader = loop.create_task(self._read(stream, requests, room))
        reader.add_done_callback(lambda _: wake.set())
        self._readers.add(reader)
        self.streams += 1
        try:
            while True:
                wake.clear()          # before the drain: a batch completing after it wakes the wait below
                responses = stream.drain()
                if responses:
                    room.set()
                    for raw in responses:
                        yield raw
                # A batch counts as in flight until drain() takes it: none left and no reader means all answered.
                if reader.done() and stream.inflight_batches == 0:
                    break
                await wake.wait()
            error = None if reader.cancelled() else reader.exception()
            if isinstance(error, StreamAborted):
                await context.abort(error.code, error.message)
            elif error is not None:
                raise error
        finally:
            self.streams -= 1
            self._readers.discard(reader)
            reader.cancel()
            loop.remove_reader(fd)
            stream.close()

    async def _read(self, stream: meshcore.ProduceStream, requests: AsyncIterator[bytes], room: asyncio.Event) -> None:
        """Submit each request as it arrives; cancelled by shutdown(), which only stops the reading."""
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        async for raw in requests:
            while stream.inflight_bytes >= self._max_inflight:
                room.clear()
                await room.wait()
            table = self._routes.table
            if table is None:
                raise StreamAborted(grpc.StatusCode.UNAVAILABLE, "the sidecar has no mapping yet")
            try:
                # On the loop thread when it cannot wait: parsing and enqueuing takes microseconds per record with
                # the GIL released. A large request, or producers already holding many records, may meet a full
                # librdkafka queue and wait for Kafka: that runs in a worker thread, so the loop never waits.
                if len(raw) > INLINE_MAX_BYTES or table.max_queued() > INLINE_MAX_QUEUED:
                    await loop.run_in_executor(self._executor, stream.submit, table, raw)
                else:
                    stream.submit(table, raw)
            except (meshcore.WireError, ValueError) as e:
                log.info("produce stream ended: %s", e)
                raise StreamAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
            # An idle stream must not keep an old table (and with it retired producers) or the request alive.
            table = None
            raw = b""
        log.debug("produce stream: the app closed its side")
