"""Run the real sidecar process for a test: `kafka-mesh sidecar` on a Unix socket, against the sandbox's etcd, in a
namespace of the test's own whose mapping the test writes."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2, mesh_pb2_grpc
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev.sandbox import Sandbox
from sidecar.manage import mapping as mapping_store


def clusters_doc(sandbox: Sandbox, **config: dict[str, str]) -> dict[str, Any]:
    """The sandbox's clusters as a mapping's clusters section; config gives per-cluster librdkafka overrides."""
    return {c.name: {"bootstrap": c.bootstrap, "role": "fronting", "config": config.get(c.name, {})}
            for c in sandbox.clusters}


def apply(sandbox: Sandbox, namespace: str, doc: dict[str, Any]) -> int:
    async def go() -> int:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            return await mapping_store.apply(etcd, Keys(namespace), doc)

    return asyncio.run(go())


class SidecarProc:
    def __init__(self, sandbox: Sandbox | None, workdir: pathlib.Path, namespace: str, *extra: str,
                 etcd: str | None = None) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.socket = workdir / "sidecar.sock"
        self.log = workdir / "sidecar.log"
        self.etcd = etcd or (sandbox.etcd_endpoint if sandbox else None)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"unix:{self.socket}"

    def start(self, wait: bool = True, timeout: float = 30) -> SidecarProc:
        argv = ["kafka-mesh", "sidecar", "--namespace", self.namespace, "--listen", self.target,
                "--cache-dir", str(self.workdir / "cache"), "--host-id", f"test-{self.namespace}", *self.extra]
        if self.etcd and "--mapping" not in self.extra:
            argv += ["--etcd", self.etcd]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        if wait:
            self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if self.socket.exists():
                try:
                    with grpc.insecure_channel(self.target) as ch:
                        # The process serves ("" SERVING); kafkamesh.v1.Mesh may not, while the mapping has no
                        # cluster yet (a test that starts a sidecar before it applies one).
                        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                                 timeout=1)
                        if r.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"sidecar not serving after {timeout}s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stub(self) -> tuple[grpc.Channel, mesh_pb2_grpc.MeshStub]:
        ch = grpc.insecure_channel(self.target)
        return ch, mesh_pb2_grpc.MeshStub(ch)


def new_namespace() -> str:
    return f"ns{uuid.uuid4().hex[:10]}"


def batch(batch_id: int, records: list[tuple[str, str]]) -> mesh_pb2.ProduceRequest:
    """A ProduceRequest of (topic, id) records; the id is the value and the key."""
    req = mesh_pb2.ProduceRequest(batch_id=batch_id)
    for topic, rid in records:
        req.records.add(topic=topic, key=rid.encode(), value=rid.encode())
    return req


def produce(target: str, requests: list[mesh_pb2.ProduceRequest],
            timeout: float = 120) -> dict[int, mesh_pb2.ProduceResponse]:
    with grpc.insecure_channel(target) as ch:
        responses = mesh_pb2_grpc.MeshStub(ch).Produce(iter(requests), timeout=timeout)
        return {r.batch_id: r for r in responses}


def produce_paced(target: str, requests: list[bytes], pause_s: float = 0.0,
                  timeout: float = 120) -> list[mesh_pb2.ProduceResponse]:
    """Send serialized ProduceRequests on one stream, pause_s apart; the responses in the order they came."""
    def paced() -> Iterator[bytes]:
        for raw in requests:
            yield raw
            time.sleep(pause_s)

    with grpc.insecure_channel(target) as ch:
        call = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")
        return [mesh_pb2.ProduceResponse.FromString(r) for r in call(paced(), timeout=timeout)]


def two_apps(target: str, good: list[bytes], bad: list[bytes]) -> tuple[list[mesh_pb2.ProduceResponse],
                                                                         list[mesh_pb2.ProduceResponse]]:
    """Two apps' Produce streams at once on one sidecar (good's requests 5 ms apart, bad's 20 ms): the answers of
    each."""
    results: dict[str, list[mesh_pb2.ProduceResponse]] = {}

    def run(name: str, requests: list[bytes], pause_s: float) -> None:
        results[name] = produce_paced(target, requests, pause_s)

    threads = [threading.Thread(target=run, args=("good", good, 0.005)),
               threading.Thread(target=run, args=("bad", bad, 0.02))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results.get("good", []), results.get("bad", [])


def produce_across_change(target: str, topics: list[str], change: Callable[[], object], per_topic: int = 1,
                          after: int = 100, pause_s: float = 0.002) -> dict[int, set[tuple[str, str]]]:
    """Send batches of per_topic records of every topic on one stream, pause_s apart, call change() once a second
    has gone by, and go on until `after` more batches went out after it returned. Every batch must be acked whole;
    returns mapping revision -> the (topic, id) records of the batches routed under it."""
    switched = threading.Event()
    sent: dict[int, list[tuple[str, str]]] = {}

    def requests() -> Iterator[mesh_pb2.ProduceRequest]:
        b = after_change = 0
        while after_change < after and b < 20_000:
            sent[b] = [(t, f"{b}-{i}") for t in topics for i in range(per_topic)]
            yield batch(b, sent[b])
            b += 1
            after_change += switched.is_set()
            time.sleep(pause_s)

    out: list[mesh_pb2.ProduceResponse] = []
    errors: list[Exception] = []

    def stream() -> None:
        try:
            with grpc.insecure_channel(target) as ch:
                out.extend(mesh_pb2_grpc.MeshStub(ch).Produce(requests(), timeout=300))
        except Exception as e:   # reported below
            errors.append(e)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.0)
    try:
        change()
    finally:
        switched.set()
        t.join(300)
    assert not errors, errors
    assert sorted(r.batch_id for r in out) == sorted(sent)
    assert all(r.ok_count == len(sent[r.batch_id]) for r in out), [r for r in out if r.ok_count < len(sent[r.batch_id])]
    by_rev: dict[int, set[tuple[str, str]]] = {}
    for r in out:
        by_rev.setdefault(r.mapping_revision, set()).update(sent[r.batch_id])
    return by_rev
