"""The Produce RPC: a bidirectional stream of ProduceRequest -> ProduceResponse, on the native path.

The handler is registered without a request deserializer or response serializer: request bytes go to the core
undecoded, and the core's encoded responses are written as they are. Per stream, on the event loop:
- a reader task takes the next request only while the stream's in-flight bytes are under its bound and all
  streams' under the process's (a stream with nothing in flight always gets one request of up to
  RESERVED_REQUEST_BYTES), so a slow cluster makes gRPC flow control slow the app instead of growing memory; each
  request is routed by the table in force when it is read (one revision per batch) and submitted by the core with
  the GIL released: on the loop thread when small, in a thread of the stream's own when it is large or the
  producers hold many records (a full librdkafka queue makes submit wait for room, and only this stream waits);
- the handler itself waits on the stream's eventfd and writes each completed batch's response.
Malformed bytes end only this stream, with INVALID_ARGUMENT, after the batches already submitted are answered.

A request that was read is always submitted whole before its stream's reader stops, so that its batch exists and
is answered (or, when the app has gone, abandoned): `shutdown()` cancels only readers that are waiting for their
next request, and a reader cancelled in a worker-thread submit (the call ended) waits for it. A stream's native
state is closed only after its reader has finished, and `close()` waits for the submit workers; only then may the
producers be closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

import meshcore
from sidecar import memory
from sidecar.routing import RouteState

log = logging.getLogger("kafka_mesh.produce")

SERVICE = "kafkamesh.v1.Mesh"
#: Requests up to this size are submitted on the loop thread (at most ~200k records: a full librdkafka queue is out
#: of reach while every producer holds fewer than INLINE_MAX_QUEUED of its 10M); larger ones in a worker thread.
INLINE_MAX_BYTES = 1 << 20
INLINE_MAX_QUEUED = 1_000_000
#: Bound on submit threads (one per stream with a large request or a busy producer, reused when idle).
MAX_SUBMIT_THREADS = 4096
#: A stream with nothing in flight may always send one request up to this size, whatever the process-wide bound:
#: streams to healthy clusters keep flowing while a down cluster's streams hold the whole bound.
RESERVED_REQUEST_BYTES = 4 << 20


class StreamAborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _CallEnded(Exception):
    """Reading the next request failed because the call is over (the app cancelled it): no one to answer."""


def _call_ended(reader: asyncio.Task[None]) -> bool:
    return not reader.cancelled() and isinstance(reader.exception(), _CallEnded)


class _Reader:
    """One stream's reader task, and whether it holds a request it has read but not yet submitted."""

    __slots__ = ("task", "busy")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.busy = False


async def _finish(submit: asyncio.Future[int]) -> int:
    """Wait for a submit running in a worker thread, through any cancellation: its batch must exist before the
    reader goes, and the native stream stays open while it runs. A cancellation is raised once the submit ended."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(submit)
            break
        except asyncio.CancelledError:
            if submit.done():
                if submit.cancelled():
                    raise
                result = submit.result()
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


class ProduceServicer:
    """Serves Produce streams. `shutdown()` makes every stream stop reading, answer what it has in flight, and
    end, so that a SIGTERM loses nothing that was accepted."""

    def __init__(self, routes: RouteState, max_inflight_bytes: int, max_total_inflight_bytes: int = 1 << 62,
                 routable: Callable[[], Awaitable[None]] | None = None) -> None:
        self._routes = routes
        #: Waits, while the lease guard does not hold, until routing may go on (StatusReporter.routable).
        self._routable = routable
        self._max_inflight = max_inflight_bytes
        self._max_total = max_total_inflight_bytes
        self._readers: dict[_Reader, meshcore.ProduceStream] = {}
        # A thread per stream that needs one, not a small shared pool: a submit waiting for room in a full
        # librdkafka queue (its cluster down) then holds up only its own stream, never another cluster's. A stream
        # has one submit at a time, so there are never more threads than streams; idle ones are reused.
        self._executor = ThreadPoolExecutor(max_workers=MAX_SUBMIT_THREADS, thread_name_prefix="produce-submit")
        self._freed = asyncio.Event()     # set (and replaced) whenever responses went out: in-flight bytes went down
        self._stopping = False
        self._idle = asyncio.Event()      # set while no stream is open
        self._idle.set()
        # Requests being submitted in a worker thread, by the revision of their table: not yet counted in flight
        # by the core (oldest_revision_in_flight).
        self._submitting: dict[int, int] = {}

    @property
    def streams(self) -> int:
        """Produce streams open now."""
        return len(self._readers)

    def method(self) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self.produce)

    def shutdown(self) -> None:
        """Stop reading every stream; each still submits the request it has read, answers what it has in flight,
        then ends with OK."""
        self._stopping = True
        for reader in self._readers:
            if not reader.busy and reader.task is not None:
                reader.task.cancel()

    def oldest_revision_in_flight(self) -> int | None:
        """The oldest mapping revision that a request routed by is still being submitted or in flight to Kafka."""
        revisions = [r for r in (meshcore.oldest_revision_in_flight(), min(self._submitting, default=None))
                     if r is not None]
        return min(revisions, default=None)

    @property
    def inflight_bytes(self) -> int:
        """Request bytes in flight over every Produce stream (read, not yet answered)."""
        return sum(stream.inflight_bytes for stream in self._readers.values())

    def inflight(self) -> tuple[int, int]:
        """(request bytes, batches) in flight over every Produce stream, for the metrics thread: the streams are
        listed at once (the loop may add or drop one meanwhile), and one closed meanwhile counts nothing."""
        nbytes = batches = 0
        for stream in list(self._readers.values()):
            try:
                nbytes += stream.inflight_bytes
                batches += stream.inflight_batches
            except meshcore.HandleClosedError:
                pass
        return nbytes, batches

    def _responses_sent(self) -> None:
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    async def _wait_for_room(self, stream: meshcore.ProduceStream) -> None:
        """Before reading a stream's next request: wait until the stream is under its own bound and the process
        under the total one. A stream with nothing in flight need not wait for the total: its next request
        (if it is larger than RESERVED_REQUEST_BYTES, it waits after reading) keeps that stream going whatever the
        others hold."""
        while True:
            mine = stream.inflight_bytes
            if mine < self._max_inflight and (mine == 0 or self.inflight_bytes < self._max_total):
                return
            await self._freed.wait()

    async def _wait_for_total(self, stream: meshcore.ProduceStream, size: int) -> None:
        """After reading a request larger than RESERVED_REQUEST_BYTES: wait until the total has room for it (or
        nothing else is in flight, for a request larger than the whole bound)."""
        while size > RESERVED_REQUEST_BYTES:
            total = self.inflight_bytes
            if total == 0 or total + size <= self._max_total:
                return
            await self._freed.wait()

    async def wait_idle(self, timeout: float) -> bool:
        """After shutdown(): wait up to timeout for every stream to answer what it read and end; True if all did."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Wait for every submit worker: after this, no thread of this servicer uses a producer."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def produce(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        stream = meshcore.open_stream()
        wake = asyncio.Event()        # a batch completed, or the reader stopped
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
        state = _Reader()
        reader = state.task = loop.create_task(self._read(stream, requests, state))

        def reader_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled():
                task.exception()      # retrieved here: the handler reports it, or the call is already over
            wake.set()

        reader.add_done_callback(reader_done)
        self._readers[state] = stream
        self._idle.clear()
        # When the app cancels, grpc may stop this handler at a `yield` without resuming it: the call's own done
        # callback then ends the stream.
        context.add_done_callback(lambda _: self._end(stream, state, fd))
        try:
            while True:
                wake.clear()          # before the drain: a batch completing after it wakes the wait below
                responses = stream.drain()
                if responses:
                    self._responses_sent()
                    for raw in responses:
                        yield raw
                # A batch counts as in flight until drain() takes it: none left and no reader means all answered.
                if reader.done() and (stream.inflight_batches == 0 or _call_ended(reader)):
                    break
                await wake.wait()
            error = None if reader.cancelled() else reader.exception()
            if isinstance(error, _CallEnded):
                log.debug("produce stream: the call ended while reading: %s", error)
                return
            if isinstance(error, StreamAborted):
                await context.abort(error.code, error.message)
            elif error is not None:
                raise error
        finally:
            self._end(stream, state, fd)

    def _end(self, stream: meshcore.ProduceStream, state: _Reader, fd: int) -> None:
        """The stream's call is over (answered, failed or cancelled); runs once or more, the first time counts. Its
        native stream is closed once the reader has finished: a submit in progress (stopped early, since no one
        reads its answer) has returned by then."""
        if state not in self._readers:
            return
        del self._readers[state]
        self._responses_sent()            # its in-flight bytes no longer count
        if not self._readers:
            self._idle.set()
        memory.release_soon()
        asyncio.get_running_loop().remove_reader(fd)      # before close() frees the eventfd's number
        reader = state.task
        if reader is None or reader.done():
            stream.close()
            return
        stream.abandon()
        reader.cancel()
        reader.add_done_callback(lambda _: stream.close())

    async def _read(self, stream: meshcore.ProduceStream, requests: AsyncIterator[bytes], state: _Reader) -> None:
        """Submit each request as it arrives, reading the next only once there is room for it (gRPC's flow control
        then slows the app). shutdown() cancels it only while it waits for room or for the next request; once it
        holds one it submits it, then sees the servicer stopping and returns."""
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        incoming = requests.__aiter__()
        while True:
            await self._wait_for_room(stream)
            try:
                raw = await incoming.__anext__()
            except StopAsyncIteration:
                break
            except Exception as e:   # grpc's UsageError ("RPC already finished"): the app cancelled the call
                raise _CallEnded(f"{type(e).__name__}: {e}") from e
            state.busy = True
            await self._wait_for_total(stream, len(raw))
            if self._routable is not None and not meshcore.guard_holds():
                await self._routable()
            table = self._routes.table
            # The lease guard's epoch with the table: the batch is acknowledged only under that same guard.
            epoch = meshcore.guard_epoch()
            if table is None:
                raise StreamAborted(grpc.StatusCode.UNAVAILABLE, "the sidecar stopped before this request was "
                                    "enqueued: nothing of it was written" if self._stopping else
                                    "the sidecar has no mapping yet")
            try:
                # On the loop thread when it cannot wait: parsing and enqueuing takes microseconds per record with
                # the GIL released. A large request, or producers already holding many records, may meet a full
                # librdkafka queue and wait for Kafka: that runs in a worker thread, so the loop never waits.
                if len(raw) > INLINE_MAX_BYTES or table.max_queued() > INLINE_MAX_QUEUED:
                    revision = table.revision
                    self._submitting[revision] = self._submitting.get(revision, 0) + 1
                    try:
                        await _finish(loop.run_in_executor(self._executor, stream.submit, table, raw, 50, epoch))
                    finally:
                        if self._submitting[revision] == 1:
                            del self._submitting[revision]
                        else:
                            self._submitting[revision] -= 1
                else:
                    stream.submit(table, raw, 50, epoch)
            except (meshcore.WireError, ValueError) as e:
                log.info("produce stream ended: %s", e)
                raise StreamAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
            # An idle stream must not keep an old table (and with it retired producers) or the request alive.
            table = None
            raw = b""
            state.busy = False
            if self._stopping:
                return
        log.debug("produce stream: the app closed its side")
