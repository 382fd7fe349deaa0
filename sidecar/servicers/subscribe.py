"""The Subscribe RPC: one aggregated, at-least-once stream of records from every cluster of the subscribed topics.

This module is the gRPC side only: it checks the first message, feeds acks and credit to the stream's Session
(sidecar/subscribe/session.py: consumers, offsets, events, live mapping changes) and writes what the session
produces. The application ends a stream cleanly by half-closing its side: the sidecar then sends nothing more,
commits every acked offset, leaves the group and ends the call with OK. A cancelled call commits what was acked too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

import meshcore
from sidecar import memory
from sidecar.api.kafkamesh.v1 import mesh_pb2 as _mesh_pb2
from sidecar.errors import MappingError
from sidecar.mapping.model import check_topic
from sidecar.routing import RouteState
from sidecar.subscribe.session import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_RESPONSE_BYTES,
    MIN_RESPONSE_BYTES,
    PlanError,
    Session,
    StreamSettings,
)

log = logging.getLogger("kafka_mesh.subscribe")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_subscription(raw: bytes) -> _mesh_pb2.Subscription:
    """The first message of a stream, or Aborted(INVALID_ARGUMENT) naming what is wrong."""
    try:
        req = _mesh_pb2.SubscribeRequest.FromString(raw)
    except DecodeError as e:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"malformed SubscribeRequest: {e}") from e
    others = [f for f in ("acks", "credit") if req.HasField(f)]
    if not req.HasField("subscription"):
        got = " and ".join(others) or "an empty message"
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"the first message must be a subscription, got {got}")
    if others:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the first message carries the subscription only, got {' and '.join(others)} with it")
    sub = req.subscription
    if not sub.group:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "subscription.group is empty")
    if not sub.topics:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "subscription.topics is empty")
    if sub.start not in _mesh_pb2.StartPosition.values():
        known = ", ".join(f"{n} ({v})" for n, v in _mesh_pb2.StartPosition.items())
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                      f"subscription.start {sub.start} is not a StartPosition this sidecar knows: {known}")
    if sub.max_response_bytes and not MIN_RESPONSE_BYTES <= sub.max_response_bytes <= MAX_RESPONSE_BYTES:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                      f"subscription.max_response_bytes {sub.max_response_bytes} is out of range: 0 (the default, "
                      f"{DEFAULT_MAX_RESPONSE_BYTES}) or {MIN_RESPONSE_BYTES} to {MAX_RESPONSE_BYTES}")
    for i, topic in enumerate(sub.topics):
        try:
            check_topic(f"subscription.topics[{i}]", topic)
        except MappingError as e:
            raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
    return sub  # type: ignore[no-any-return]


class SubscribeServicer:
    def __init__(self, routes: RouteState, settings: StreamSettings | None = None) -> None:
        self._routes = routes
        self._settings = settings or StreamSettings()
        self.streams = 0
        self.sessions: set[Session] = set()         # the open streams' sessions (metrics read them)

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
            session = Session(sub, self._settings, self._routes.listeners)
            try:
                session.open(mapping)
            except PlanError as e:
                raise Aborted(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from e
            except meshcore.ConfigError as e:
                raise Aborted(grpc.StatusCode.FAILED_PRECONDITION, f"cannot create a consumer: {e}") from e
        except Aborted as e:
            await context.abort(e.code, e.message)
            raise   # abort raises; this line is for the type checker
        log.info("subscribe stream opened group=%s topics=%s", sub.group, ",".join(sub.topics))
        failure: list[tuple[grpc.StatusCode, str]] = []
        reader = asyncio.get_running_loop().create_task(self._read(it, session, failure))
        self.streams += 1
        self.sessions.add(session)
        try:
            while (encoded := await session.out.get()) is not None:
                yield encoded
        finally:
            self.streams -= 1
            self.sessions.discard(session)
            reader.cancel()
            await session.close()
            memory.release_soon()        # what the stream's consumers held
            log.info("subscribe stream closed group=%s", sub.group)
        if failure:
            await context.abort(*failure[0])
        if session.error is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the stream's consumer failed: {session.error}")

    async def _read(self, it: AsyncIterator[bytes], session: Session,
                    failure: list[tuple[grpc.StatusCode, str]]) -> None:
        """Apply acks and credit. A malformed message, or a second subscription, ends the stream with
        INVALID_ARGUMENT (what was acked before it is committed); a failure here, with INTERNAL."""
        try:
            async for raw in it:
                try:
                    req = _mesh_pb2.SubscribeRequest.FromString(raw)
                except DecodeError as e:
                    failure.append((grpc.StatusCode.INVALID_ARGUMENT, f"malformed SubscribeRequest: {e}"))
                    break
                if req.HasField("subscription"):
                    failure.append((grpc.StatusCode.INVALID_ARGUMENT,
                                    "a stream takes one subscription; open another stream for another"))
                    break
                if req.HasField("acks"):
                    session.ack(req.acks)
                if req.HasField("credit"):
                    session.grant(req.credit.records, req.credit.bytes)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            return
        except Exception as e:          # a bug or a librdkafka error: end the stream rather than ignore its acks
            log.exception("subscribe stream failed applying a request")
            failure.append((grpc.StatusCode.INTERNAL, f"the sidecar failed applying a request: {e}"))
        session.finish()        # half-closed by the application: a clean end
