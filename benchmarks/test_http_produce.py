"""HTTP produce beside gRPC Produce, in one run, through one real sidecar process on one topic.

- http: a keep-alive HTTP/1.1 client posting 1,000-record JSON bodies (100-character values, a key each), one request
  at a time, each answered once every record is acknowledged (synchronous); http-4: four such clients at once, each
  with its own connection, a quarter of the bodies each;
- grpc: the same records as 1,000-record ProduceRequests on one Produce stream, encoded by the client's native
  encoder, every response awaited before the round ends (the stream keeps several batches in flight).
Rounds alternate between the two; the terminal summary prints records/s and the ratio (http / grpc). Nothing here
asserts a time.

Run: python -m pytest benchmarks/test_http_produce.py --benchmark-only -s
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshcore
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

BATCH = 1000
BATCHES = 50
VALUE = "x" * 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sidecar(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SidecarProc, str, int]]:
    ns = new_namespace()
    topic = f"bench-http-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=3)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    port = _free_port()
    proc = SidecarProc(sandbox, tmp_path_factory.mktemp("bench-http"), ns, "--http-listen", f"127.0.0.1:{port}")
    proc.start()
    try:
        yield proc, topic, port
    finally:
        proc.stop()


def _bodies() -> list[bytes]:
    return [json.dumps({"records": [{"key": f"k{b}-{i}", "value": VALUE} for i in range(BATCH)]}).encode()
            for b in range(BATCHES)]


def test_http_produce(benchmark: Any, sidecar: tuple[SidecarProc, str, int]) -> None:
    _, topic, port = sidecar
    bodies = _bodies()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def run() -> None:
        for body in bodies:
            conn.request("POST", f"/v1/topics/{topic}/records", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            answer = json.loads(r.read())
            assert r.status == 200 and answer["ok"] == BATCH, answer

    try:
        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    finally:
        conn.close()
    benchmark.group = "http-produce"
    benchmark.extra_info["records"] = BATCH * BATCHES


def test_http_produce_4_connections(benchmark: Any, sidecar: tuple[SidecarProc, str, int]) -> None:
    _, topic, port = sidecar
    bodies = _bodies()
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(4)]
    errors: list[str] = []

    def post_all(conn: http.client.HTTPConnection, mine: list[bytes]) -> None:
        for body in mine:
            conn.request("POST", f"/v1/topics/{topic}/records", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            answer = json.loads(r.read())
            if r.status != 200 or answer["ok"] != BATCH:
                errors.append(str(answer)[:200])

    def run() -> None:
        threads = [threading.Thread(target=post_all, args=(c, bodies[i::4])) for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]

    try:
        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    finally:
        for c in conns:
            c.close()
    benchmark.group = "http-produce"
    benchmark.extra_info["records"] = BATCH * BATCHES


def test_grpc_produce(benchmark: Any, sidecar: tuple[SidecarProc, str, int]) -> None:
    proc, topic, _ = sidecar
    requests = [meshcore.encode_records(b, topic, [VALUE.encode()] * BATCH,
                                        [f"k{b}-{i}".encode() for i in range(BATCH)]) for b in range(BATCHES)]
    channel = grpc.insecure_channel(proc.target)
    produce = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")     # raw bytes both ways, as the client sends

    def run() -> None:
        answered = sum(1 for _ in produce(iter(requests)))
        assert answered == BATCHES

    try:
        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    finally:
        channel.close()
    benchmark.group = "http-produce"
    benchmark.extra_info["records"] = BATCH * BATCHES
