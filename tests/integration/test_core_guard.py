"""The lease guard of the native Produce path against a real cluster: a batch routed under the guard and completed
after it lapsed is answered as not acknowledged (its records were written, and the app is told to send them again);
one routed while the guard was lapsed on purpose (etcd out of reach) is acknowledged until the guard is renewed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.unit.stream_helpers import responses

#: Long enough that the test changes the guard while the batch waits in librdkafka.
LINGER = {"enable.idempotence": "true", "acks": "all", "linger.ms": "1500"}
LAPSED = ("cluster 'c1': written, not acknowledged: this sidecar lost its status lease in etcd while the record was "
          "in flight (paused, or cut off from etcd), so the route it took may be stale (a topic move); send the "
          "record again")


@pytest.fixture
def guard() -> Iterator[None]:
    yield
    meshcore.renew_guard(1e12, True)         # as a process without a lease starts: holds for ever


def _batch(batch_id: int, topic: str, n: int = 5) -> bytes:
    return mesh_pb2.ProduceRequest(batch_id=batch_id, records=[
        mesh_pb2.Record(topic=topic, value=f"{batch_id}-{i}".encode()) for i in range(n)]).SerializeToString()


def test_the_guard_decides_what_is_acknowledged(sandbox: Sandbox, topic: str, guard: None) -> None:
    c1 = sandbox.clusters[0]
    create_topic(c1.bootstrap, topic)
    producer = meshcore.create_producer("c1", {"bootstrap.servers": c1.bootstrap, **LINGER})
    table = meshcore.build_route_table(1, [producer], [([topic], [0])])
    stream = meshcore.open_stream()
    try:
        def run(batch_id: int, change: object = None) -> mesh_pb2.ProduceResponse:
            stream.submit(table, _batch(batch_id, topic), 50, meshcore.guard_epoch())
            if callable(change):
                change()
            [resp] = responses(stream, 1, timeout=30)
            assert resp.batch_id == batch_id
            return resp

        meshcore.renew_guard(time.monotonic() + 60, True)
        assert meshcore.guard_holds() and run(1).ok_count == 5
        # Lapsed while the batch was in flight: written, not acknowledged.
        lapsed = run(2, meshcore.expire_guard)
        assert lapsed.ok_count == 0 and [(e.index, e.code, e.count, e.message) for e in lapsed.errors] == [
            (0, mesh_pb2.ERROR_CODE_CLUSTER_UNAVAILABLE, 5, LAPSED)]
        # The deadline passed while it was in flight, with no one noticing: the same.
        meshcore.renew_guard(time.monotonic() + 0.5, True)
        assert run(3).ok_count == 0 and not meshcore.guard_holds()
        # etcd out of reach: routed by the mapping in force and acknowledged, until the guard is renewed.
        meshcore.stale_guard()
        assert run(4).ok_count == 5
        assert run(5, lambda: meshcore.renew_guard(time.monotonic() + 60, True)).ok_count == 0
        assert run(6).ok_count == 5
        # A batch given the epoch of before a lapse is not acknowledged after it, though the guard holds again.
        epoch = meshcore.guard_epoch()
        meshcore.expire_guard()
        meshcore.renew_guard(time.monotonic() + 60, True)
        stream.submit(table, _batch(7, topic), 50, epoch)
        [old] = responses(stream, 1, timeout=30)
        assert (old.batch_id, old.ok_count) == (7, 0)
    finally:
        stream.close()
        producer.close()
    # Each batch was written, acknowledged or not.
    got = {m.value().decode() for m in read_all(c1.bootstrap, topic, 35)}
    assert got == {f"{b}-{i}" for b in range(1, 8) for i in range(5)}
