"""The Produce RPC: a bidirectional stream of ProduceRequest -> ProduceResponse, on the native path.

The handler is registered without a request deserializer or response serializer: request bytes go to the core
undecoded, and the core's encoded responses are written as they are. Per stream, on the event loop:
- a reader task takes the next request only while the stream's in-flight bytes are under the bound, so a slow
  cluster makes gRPC flow control slow the app instead of growing memory; each request is routed by the table in
  force when it is read (one revision per batch) and submitted at once (the core releases the GIL);
- the handler itself waits on the stream's eventfd and writes each completed batch's response.
Malformed bytes end only this stream, with INVALID_ARGUMENT, after the batches already submitted are answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

import meshcore
from sidecar.routing import RouteState

log = logging.getLogger("kafka_mesh.produce")

SERVICE = "kafkamesh.v1.Mesh"


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
        self._stopping = False
        self.streams = 0

    def method(self) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self.produce)

    def shutdown(self) -> None:
        """Stop reading every stream; each still answers what it has in flight, then ends with OK."""
        self._stopping = True
        for reader in self._readers:
            reader.cancel()

    async def produce(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        stream = meshcore.open_stream()
        wake = asyncio.Event()        # a batch completed, or the reader stopped
        room = asyncio.Event()        # responses were sent: in-flight bytes went down
        fd = stream.fileno()
        loop.add_reader(fd, wake.set)
        reader = loop.create_task(self._read(stream, requests, room))
        reader.add_done_callback(lambda _: wake.set())
        self._readers.add(reader)
        self.streams += 1
        try:
            while True:
                wake.clear()
                # In this order: once the reader is done nothing new is submitted, and a batch leaves the in-flight
                # count only after it is on the completed list, so "idle" here means the drain below gets the rest.
                finished = reader.done() and stream.inflight_batches == 0
                responses = stream.drain()
                if responses:
                    room.set()
                    for raw in responses:
                        yield raw
                if finished:
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
        async for raw in requests:
            while stream.inflight_bytes >= self._max_inflight:
                room.clear()
                await room.wait()
            table = self._routes.table
            if table is None:
                raise StreamAborted(grpc.StatusCode.UNAVAILABLE, "the sidecar has no mapping yet")
            try:
                # On the loop thread: parsing and enqueuing a batch takes microseconds per record with the GIL
                # released; librdkafka's queues are sized (routing.PRODUCER_DEFAULTS) so that the in-flight bounds
                # are reached long before a queue is full, so submit does not wait on Kafka.
                stream.submit(table, raw)
            except meshcore.WireError as e:
                log.info("produce stream ended: %s", e)
                raise StreamAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        log.debug("produce stream: the app closed its side")
