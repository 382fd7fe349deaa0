"""The sidecar under change: mapping changes applied live, a cluster going down, SIGTERM, etcd unreachable at
start and lost later, and the status entry under a lease."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from typing import Any

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2, mesh_pb2_grpc
from sidecar.config import DevSettings
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev import etcd_node, ports, procs
from sidecar.dev import sandbox as sandbox_mod
from sidecar.dev.sandbox import Sandbox
from tests.integration.conftest import sandbox_settings
from tests.integration.kafka_helpers import read_all, read_records
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace, produce, produce_across_change


def _route(topic: str, sink: str) -> dict[str, Any]:
    return {topic: {"where": [{"sink": sink}]}}


def _stream(target: str, requests: Any, out: list[mesh_pb2.ProduceResponse], errors: list[Exception]) -> None:
    try:
        with grpc.insecure_channel(target) as ch:
            for r in mesh_pb2_grpc.MeshStub(ch).Produce(requests, timeout=120):
                out.append(r)
    except Exception as e:   # reported by the test
        errors.append(e)


def test_mapping_change_during_continuous_produce_routes_each_batch_by_its_revision(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    rev1 = apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": _route(topic, "c1")})
    sc = sidecar_factory(ns)
    revs: list[int] = []
    by_rev = produce_across_change(sc.target, [topic], lambda: revs.append(
        apply(sandbox, ns, {"producer": _route(topic, "c2")})), per_topic=20)
    assert set(by_rev) == {rev1, *revs}, (sorted(by_rev), rev1, revs)
    c1, c2 = sandbox.clusters[0].bootstrap, sandbox.clusters[1].bootstrap
    # every record routed under revision 1 is in c1, and only those; likewise for revision 2 and c2
    assert read_records(c1, [topic], len(by_rev[rev1])) == by_rev[rev1]
    assert read_records(c2, [topic], len(by_rev[revs[0]])) == by_rev[revs[0]]


def test_a_stopped_cluster_does_not_hold_up_produce_to_the_others(
        sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: Any) -> None:
    extra_settings = sandbox_settings(tmp_path / "extra")
    extra, _ = sandbox_mod.up(extra_settings, clusters=1, detach=False)
    try:
        ns = new_namespace()
        alive, doomed = f"{topic}-alive", f"{topic}-doomed"
        apply(sandbox, ns, {
            "clusters": {**clusters_doc(sandbox),
                         "extra": {"bootstrap": extra.clusters[0].bootstrap, "config": {"message.timeout.ms": "3000"}}},
            "producer": {**_route(alive, "c1"), **_route(doomed, "extra")},
        })
        sc = sidecar_factory(ns)
        killed = threading.Event()

        def feed(t: str, n: int) -> Any:
            for b in range(n):
                yield batch(b, [(t, f"{b}-{i}") for i in range(20)])
                time.sleep(0.01)

        doomed_out: list[mesh_pb2.ProduceResponse] = []
        doomed_err: list[Exception] = []
        d = threading.Thread(target=_stream, args=(sc.target, feed(doomed, 300), doomed_out, doomed_err))
        d.start()
        time.sleep(0.5)
        procs.stop_all([b.proc for b in extra.clusters[0].brokers], timeout=0.1)   # SIGTERM, then SIGKILL
        killed.set()
        started = time.monotonic()
        alive_out = produce(sc.target, list(feed(alive, 200)))
        elapsed = time.monotonic() - started
        d.join(60)
        assert all(r.ok_count == 20 for r in alive_out.values()) and len(alive_out) == 200
        # 200 batches paced 10 ms apart: about 2 s when c1 is unaffected; the doomed cluster's timeout is 3 s.
        assert elapsed < 10, elapsed
        codes = {e.code for r in doomed_out for e in r.errors}
        assert codes == {mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE}
        assert not doomed_err and len(doomed_out) == 300
    finally:
        sandbox_mod.down(extra_settings)


def test_sigterm_answers_the_batches_in_flight_and_exits_zero(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": _route(topic, "c1")})
    sc = sidecar_factory(ns)
    stop_sent = threading.Event()
    sent: dict[int, int] = {}

    def requests() -> Any:
        for b in range(100_000):
            if stop_sent.is_set() and b > max(sent, default=0) + 50:
                return
            sent[b] = 100
            yield batch(b, [(topic, f"{b}-{i}") for i in range(100)])

    out: list[mesh_pb2.ProduceResponse] = []
    errors: list[Exception] = []
    t = threading.Thread(target=_stream, args=(sc.target, requests(), out, errors))
    t.start()
    time.sleep(1.0)
    sc.proc.send_signal(signal.SIGTERM)
    stop_sent.set()
    assert sc.proc.wait(60) == 0
    t.join(60)
    assert out, "no batch was answered"
    assert all(r.ok_count == 100 for r in out)
    answered = {f"{r.batch_id}-{i}" for r in out for i in range(100)}
    found = {m.value().decode() for m in read_all(sandbox.clusters[0].bootstrap, topic, len(answered))}
    assert answered <= found      # every acknowledged record is in Kafka
    log = sc.log.read_text()
    assert "stopping: no new streams" in log and "stopped" in log


def test_status_entry_under_a_lease_carries_the_applied_revision(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    rev = apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": _route(topic, "c1")})
    sc = sidecar_factory(ns)
    key = Keys(ns).status + f"test-{ns}"

    async def read() -> dict[str, Any] | None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            got = await etcd.get(key)
        return None if got is None else json.loads(got[0])

    deadline = time.monotonic() + 10
    doc = asyncio.run(read())
    while (doc is None or doc["revision"] < rev) and time.monotonic() < deadline:
        time.sleep(0.2)
        doc = asyncio.run(read())
    assert doc is not None and doc["revision"] >= rev and doc["host"] == f"test-{ns}"
    assert sc.stop() == 0
    assert asyncio.run(read()) is None      # revoked on a clean stop


def test_etcd_unreachable_at_start_serves_the_cached_mapping(
        sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: Any) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": _route(topic, "c2")})
    cache = str(tmp_path / "shared-cache")
    first = sidecar_factory(ns, "--cache-dir", cache)
    assert first.stop() == 0
    dead = f"http://127.0.0.1:{ports.allocate(1)[0]}"
    second = sidecar_factory(ns, "--cache-dir", cache, etcd=dead)
    [resp] = produce(second.target, [batch(1, [(topic, "from-cache")])]).values()
    assert resp.ok_count == 1
    assert [m.value() for m in read_all(sandbox.clusters[1].bootstrap, topic, 1)] == [b"from-cache"]
    assert "serving the cached mapping" in second.log.read_text()
    # Without a cache there is nothing to serve: a clear error and a non-zero exit.
    third = sidecar_factory(ns, "--cache-dir", str(tmp_path / "empty"), etcd=dead, wait=False)
    assert third.proc.wait(30) == 1
    assert "no cached mapping" in third.log.read_text()


def test_a_mapping_this_host_cannot_take_is_never_served_as_no_routes(
        sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: Any) -> None:
    """A revision whose cluster settings this host's librdkafka refuses (a CA file missing here): a sidecar that
    starts on it serves the last mapping it cached, or exits saying why; it never reports SERVING with no routes."""
    ns = new_namespace()
    good = apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": _route(topic, "c2")})
    cache = str(tmp_path / "shared-cache")
    assert sidecar_factory(ns, "--cache-dir", cache).stop() == 0
    bad = apply(sandbox, ns, {"clusters": clusters_doc(sandbox, c2={"security.protocol": "ssl",
                                                                   "ssl.ca.location": "/nonexistent/ca.pem"})})
    cached = sidecar_factory(ns, "--cache-dir", cache)
    [resp] = produce(cached.target, [batch(1, [(topic, "from-cache")])]).values()
    assert (resp.ok_count, resp.mapping_revision) == (1, good)
    log = cached.log.read_text()
    assert f"serving the cached mapping revision={good}" in log and f"revision {bad} cannot be applied" in log
    none = sidecar_factory(ns, "--cache-dir", str(tmp_path / "empty"), wait=False)
    assert none.proc.wait(30) == 2          # the mapping is bad input, as a bad --mapping file would be
    assert (f"the mapping in etcd cannot be served: revision {bad} cannot be applied: clusters.c2.config:"
            in none.log.read_text())


def test_etcd_lost_keeps_the_mapping_and_the_watch_resumes(
        sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: Any) -> None:
    settings = DevSettings.from_env()
    client, peer = ports.allocate(2)
    argv = etcd_node.command(settings, tmp_path / "etcd-data", client, peer)
    etcd_proc, _ = procs.spawn("etcd", argv, tmp_path / "etcd.log", tmp_path, detach=False)
    endpoint = f"http://127.0.0.1:{client}"
    own = Sandbox(str(tmp_path), "x", "", endpoint, etcd_proc, sandbox.clusters)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ns = new_namespace()
                apply(own, ns, {"clusters": clusters_doc(sandbox), "producer": _route(topic, "c1")})
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sc = sidecar_factory(ns, etcd=endpoint)
        procs.stop_all([etcd_proc], timeout=5)
        [r1] = produce(sc.target, [batch(1, [(topic, "while-etcd-down")])]).values()
        assert r1.ok_count == 1
        etcd_proc, _ = procs.spawn("etcd", argv, tmp_path / "etcd.log", tmp_path, detach=False)
        deadline = time.monotonic() + 20
        while True:
            try:
                rev2 = apply(own, ns, {"producer": _route(topic, "c3")})
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        deadline = time.monotonic() + 30
        n = 2
        while True:
            [r] = produce(sc.target, [batch(n, [(topic, f"after-{n}")])]).values()
            if r.mapping_revision == rev2 or time.monotonic() > deadline:
                break
            n += 1
            time.sleep(0.2)
        assert r.mapping_revision == rev2 and r.ok_count == 1
        assert [m.value() for m in read_all(sandbox.clusters[2].bootstrap, topic, 1)] == [f"after-{n}".encode()]
        log = sc.log.read_text()
        assert "etcd lost; the mapping in force stays" in log
    finally:
        procs.stop_all([etcd_proc], timeout=5)
