"""HTTP produce: `POST /v1/topics/{topic}/records` on `--http-listen HOST:PORT`, for producers that cannot speak gRPC
(a shell script, a legacy service). docs/http-api.yaml is its OpenAPI document.

A request becomes one ProduceRequest and goes through the Produce servicer itself, as a stream of one request: the
same routing, the same bounds on bytes in flight, the same lease guard, the same producers and the same per-record
results. It is answered once every cluster of the record's route acknowledged it or failed it (synchronous), with
each record's clusters or its error code and message.

Bodies, by Content-Type:
- `application/json`: {"records": [{"key": .., "value": .., "headers": {NAME: VALUE} or [[NAME, VALUE], ...],
  "partition": N, "timestamp_ms": N}, ...]}, keys, values and header values as UTF-8 text (null: absent);
- `application/vnd.kafka-mesh.base64+json`: the same, keys, values and header values base64 (any bytes);
- anything else: the body is one record's value, its key the `key` query parameter (UTF-8) when given.

Runs on the sidecar's event loop (aiohttp), beside the gRPC server.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2 as _pb
from sidecar.metrics import parse_listen
from sidecar.routing import RouteState
from sidecar.servicers.produce import ProduceServicer

log = logging.getLogger("kafka_mesh.http")

JSON = "application/json"
BASE64_JSON = "application/vnd.kafka-mesh.base64+json"
#: The most records one request may carry (a larger batch: several requests).
MAX_RECORDS = 10_000
_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_RECORD_FIELDS = {"key", "value", "headers", "partition", "timestamp_ms"}
#: ErrorCode numbers as the answer names them (ERROR_CODE_NO_ROUTE -> NO_ROUTE).
_CODES = {v.number: v.name.removeprefix("ERROR_CODE_") for v in _pb.ErrorCode.DESCRIPTOR.values}


class BadRequest(Exception):
    """The request cannot be produced: answered 400 with the reason."""


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bytes(where: str, value: Any, b64: bool) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a string or null, got {type(value).__name__}")
    if not b64:
        return _utf8(where, value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None


def _utf8(where: str, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:      # JSON's escapes can make a lone surrogate, which is no text
        raise BadRequest(f"{where}: not valid Unicode text (a lone surrogate)") from None


def _int(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)          # JSON has one number type: 3.0 is the integer 3
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{where}: must be an integer from {low} to {high}, got {value!r}")
    return value


def _headers(where: str, value: Any, b64: bool) -> list[tuple[str, bytes | None]]:
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for i, pair in enumerate(value):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise BadRequest(f"{where}[{i}]: must be a [NAME, VALUE] pair")
            pairs.append((pair[0], pair[1]))
    else:
        raise BadRequest(f"{where}: must be an object or a list of [NAME, VALUE] pairs")
    out = []
    for name, hvalue in pairs:
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}: a header name must be a non-empty string, got {name!r}")
        _utf8(f"{where}: header name", name)
        out.append((name, _bytes(f"{where}.{name}", hvalue, b64)))
    return out


def parse_body(topic: str, content_type: str, body: bytes, query_key: str | None) -> tuple[bytes, int]:
    """The encoded ProduceRequest a request's body describes, and its record count. Raises BadRequest naming what
    is wrong."""
    request = _pb.ProduceRequest(batch_id=1)
    if content_type not in (JSON, BASE64_JSON):
        record = request.records.add(topic=topic, value=body)
        if query_key is not None:
            record.key = _utf8("the key query parameter", query_key)
        return request.SerializeToString(), 1
    b64 = content_type == BASE64_JSON
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or set(doc) != {"records"} or not isinstance(doc["records"], list):
        raise BadRequest('the body must be an object {"records": [RECORD, ...]}')
    records = doc["records"]
    if not records:
        raise BadRequest("records: at least one record")
    if len(records) > MAX_RECORDS:
        raise BadRequest(f"records: at most {MAX_RECORDS:,} a request, got {len(records):,}; send several requests")
    # Records of a key and a value only (the common case) are encoded by the core in one call, with no message
    # object per record; any other field takes the protobuf runtime's message objects.
    keys: list[bytes | None] = []
    values: list[bytes] = []
    fast = True
    for i, r in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(r, dict):
            raise BadRequest(f"{where}: must be an object")
        unknown = set(r) - _RECORD_FIELDS
        if unknown:
            raise BadRequest(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        fields: dict[str, Any] = {"topic": topic}
        for name in ("key", "value"):
            value = _bytes(f"{where}.{name}", r.get(name), b64)
            if value is not None:
                fields[name] = value
        if fast and fields.get("value") is not None and not (
                r.get("headers") or r.get("partition") is not None or r.get("timestamp_ms") is not None):
            keys.append(fields.get("key"))
            values.append(fields["value"])
            continue
        if fast:        # this record needs the message objects: so do those before it
            for key, value in zip(keys, values, strict=True):
                request.records.add(topic=topic, value=value, **({} if key is None else {"key": key}))
            fast = False
        if r.get("partition") is not None:
            fields["partition"] = _int(f"{where}.partition", r["partition"], 0, 2**31 - 1)
        if r.get("timestamp_ms") is not None:
            fields["timestamp_ms"] = _int(f"{where}.timestamp_ms", r["timestamp_ms"], 0, 2**63 - 1)
        record = request.records.add(**fields)
        headers = r.get("headers")
        for name, hvalue in _headers(f"{where}.headers", {} if headers is None else headers, b64):
            header = record.headers.add(key=name)
            if hvalue is not None:
                header.value = hvalue
    if fast:
        return meshcore.encode_records(1, topic, values, keys), len(values)
    return request.SerializeToString(), len(request.records)


class _Call:
    """What the Produce servicer needs of a gRPC call, for one HTTP request."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def add_done_callback(self, callback: Any) -> None:
        pass            # the servicer ends the stream itself once the one request is answered

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise _Aborted()


class _Aborted(Exception):
    pass


async def _one(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own answers (no such path, a method other than POST) as JSON problems, like the handler's."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        answer = _problem(e.status, f"{e.reason}: {request.method} {request.path}" + (
            "; produce with POST /v1/topics/{topic}/records" if e.status in (404, 405) else ""))
        for name in ("Allow",):
            if name in e.headers:
                answer.headers[name] = e.headers[name]
        return answer


class HttpProduce:
    """The HTTP front end of one sidecar."""

    def __init__(self, spec: str, routes: RouteState, produce: ProduceServicer, max_body_bytes: int) -> None:
        self.host, self.port = parse_listen(spec, flag="--http-listen")
        self._routes = routes
        self._produce = produce
        self._max_body = max_body_bytes
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body, middlewares=[_json_errors])
        # Any topic text routes here (a '/' in it too): its name is checked by the handler, which says why.
        app.router.add_post("/v1/topics/{topic:.+}/records", self.post)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            from sidecar.errors import UsageError

            raise UsageError(f"cannot serve HTTP produce on {self.host}:{self.port}: {e.strerror}") from e
        log.info("HTTP produce served url=http://%s:%d/v1/topics/{topic}/records", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def post(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
            return _problem(400, f"invalid topic name {topic!r}: it must be 1 to 249 characters of [a-zA-Z0-9._-] "
                                 "and not '.' or '..'")
        if request.content_length is not None and request.content_length > self._max_body:
            return _problem(413, f"the body is {request.content_length:,} bytes, over the sidecar's limit of "
                                 f"{self._max_body:,} (--http-max-body-bytes)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _problem(413, f"the body is over the sidecar's limit of {self._max_body:,} bytes "
                                 "(--http-max-body-bytes)")
        if not body and "Content-Type" not in request.headers:
            return _problem(400, "no body: send the records as JSON (Content-Type: application/json), or one "
                                 "record's value as the body (Content-Type: application/octet-stream)")
        mapping = self._routes.mapping
        if mapping is None or not mapping.clusters:
            return _problem(503, "the sidecar has no mapping with a cluster in force yet")
        try:
            encoded, n = parse_body(topic, request.content_type, body, request.query.get("key"))
        except BadRequest as e:
            return _problem(400, str(e))
        call = _Call()
        answers: list[bytes] = []
        try:
            async for raw in self._produce.produce(_one(encoded), call):
                answers.append(raw)
        except _Aborted:
            pass
        if call.aborted is not None:
            code, message = call.aborted
            return _problem(503 if code == grpc.StatusCode.UNAVAILABLE else 400, message)
        if len(answers) != 1:
            return _problem(503, "the sidecar is stopping: nothing of this request was written")
        return web.json_response(self._results(topic, n, _pb.ProduceResponse.FromString(answers[0])))

    def _results(self, topic: str, n: int, response: _pb.ProduceResponse) -> dict[str, Any]:
        mapping = self._routes.mapping
        sinks = list(mapping.sinks_for(topic) or ()) if mapping is not None else []
        results: list[dict[str, Any]] = [{"clusters": sinks} for _ in range(n)]
        failed = 0
        for error in response.errors:
            for index in range(error.index, min(n, error.index + max(1, error.count))):
                results[index] = {"error": {"code": _CODES.get(error.code, str(error.code)),
                                            "message": error.message}}
                failed += 1
        return {"mapping_revision": response.mapping_revision, "ok": n - failed, "failed": failed,
                "results": results}
