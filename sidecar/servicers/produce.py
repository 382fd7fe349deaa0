"""The Produce RPC: a bidirectional stream of ProduceRequest -> ProduceResponse, on the native path.

The handler is registered without a request deserializer or response serializer: request bytes go to the core
undecoded, and the core's encoded responses are written as they are. Per stream, on the event loop:
- a reader task takes the next request only while the stream's in-flight bytes are under the bound, so a slow
  cluster makes gRPC flow control slow the app instead of growing memory; each request is routed by the table in
  force when it is read (one revision per batch) and submitted in a worker thread, because a full librdkafka queue
  makes submit wait for room;
- the handler itself waits on the stream's eventfd and writes each completed batch's response.
Malformed bytes end only this stream, with INVALID_ARGUMENT, after the batches already submitted are answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

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

    def __init__(self, routes: RouteState, max_inflight_bytes: int, workers: int = 32) -> None:
        self._routes = routes
        self._max_inflight = max_inflight_bytes
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="produce-submit")
        self._stopping = asyncio.Event()
        self.streams = 0

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Produce": grpc.stream_stream_rpc_method_handler(self.produce),
        })

    def shutdown(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def produce(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        stream = meshcore.open_stream()
        completed = asyncio.Event()
        room = asyncio.Event()
        fd = stream.fileno()
        loop.add_reader(fd, completed.set)
        reader = loop.create_task(self._read(stream, requests, room))
        self.streams += 1
        try:
            while True:
                completed.clear()
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
                waiters = [loop.create_task(completed.wait())]
                if not reader.done():
                    waiters.append(reader)   # type: ignore[arg-type]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                waiters[0].cancel()
            error = reader.exception()
            if isinstance(error, StreamAborted):
                await context.abort(error.code, error.message)
            elif error is not None:
                raise error
        finally:
            self.streams -= 1
            reader.cancel()
            loop.remove_reader(fd)
            stream.close()

    async def _read(self, stream: meshcore.ProduceStream, requests: AsyncIterator[bytes], room: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        it = requests.__aiter__()
        stopping = loop.create_task(self._stopping.wait())
        try:
            while True:
                while stream.inflight_bytes >= self._max_inflight:
                    room.clear()
                    await room.wait()
                nxt: asyncio.Task[bytes] = loop.create_task(anext(it))   # type: ignore[arg-type]
                await asyncio.wait([nxt, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    return          # shutting down: answer what is in flight, take nothing more
                try:
                    raw = nxt.result()
                except StopAsyncIteration:
                    log.debug("produce stream: the app closed its side")
                    return
                table = self._routes.table
                if table is None:
                    raise StreamAborted(grpc.StatusCode.UNAVAILABLE, "the sidecar has no mapping yet")
                try:
                    await loop.run_in_executor(self._executor, stream.submit, table, raw)
                except meshcore.WireError as e:
                    log.info("produce stream ended: %s", e)
                    raise StreamAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        finally:
            stopping.cancel()
