"""Responses stay under what stock gRPC clients accept (4 MiB), through the real sidecar process: a Produce
response is compact whatever the request (runs of records failing for one cause are one entry), a request of more
records than a response can account for is refused, a Subscribe response stays under its max_response_bytes (4 MiB
by default) whatever the credit, and a credit of 2^64 - 1 (an app's "no limit") is taken as such."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.client import ErrorCode, Producer
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, produce_direct
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace
from tests.produce_responses import per_record

GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024


def _sidecar(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> Any:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}},
                        "consumer": {topic: [{"vip": "c1"}, {"vip": "c2"}, {"vip": "c3"}]}})
    return sidecar_factory(ns)


def _raw_request(batch_id: int, records: list[bytes], times: int) -> bytes:
    """A ProduceRequest of `records` repeated `times` times, without a Python object per record."""
    one = b"".join(M.ProduceRequest(records=[M.Record.FromString(r)]).SerializeToString() for r in records)
    return M.ProduceRequest(batch_id=batch_id).SerializeToString() + one * times


def _produce_raw(target: str, requests: list[bytes]) -> tuple[list[bytes], grpc.RpcError | None]:
    out: list[bytes] = []
    with grpc.insecure_channel(target) as ch:      # a stock channel: 4 MiB receive limit
        try:
            for raw in ch.stream_stream("/kafkamesh.v1.Mesh/Produce")(iter(requests), timeout=120):
                out.append(raw)
        except grpc.RpcError as e:
            return out, e
    return out, None


def test_a_16_mib_request_of_unroutable_records_gets_a_small_response(sandbox: Sandbox, sidecar_factory: Any,
                                                                       topic: str) -> None:
    sc = _sidecar(sandbox, sidecar_factory, topic)
    unroutable = M.Record(topic="nowhere-" + topic, value=b"v" * 12).SerializeToString()
    raw = _raw_request(1, [unroutable], 420_000)
    assert len(raw) > 16 << 20
    got, err = _produce_raw(sc.target, [raw])
    assert err is None
    [resp_raw] = got
    assert len(resp_raw) < 1024                                   # one entry for the run: 828 MB before
    resp = M.ProduceResponse.FromString(resp_raw)
    assert resp.ok_count == 0 and [(e.index, e.count, e.code) for e in resp.errors] == [
        (0, 420_000, M.ERROR_CODE_NO_ROUTE)]
    assert "no producer route" in resp.errors[0].message


def test_every_other_record_failing_still_fits_and_every_record_is_accounted(sandbox: Sandbox, sidecar_factory: Any,
                                                                              topic: str) -> None:
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=3)
    sc = _sidecar(sandbox, sidecar_factory, topic)
    ok = M.Record(topic=topic, value=b"ok").SerializeToString()
    bad = M.Record(topic="nowhere-" + topic, value=b"no").SerializeToString()
    got, err = _produce_raw(sc.target, [_raw_request(2, [ok, bad], 250_000)])     # 500,000: the most
    assert err is None
    [resp_raw] = got
    assert len(resp_raw) < GRPC_DEFAULT_LIMIT
    resp = M.ProduceResponse.FromString(resp_raw)
    failed = per_record(resp)
    assert resp.ok_count == 250_000 and [i for i, _, _ in failed] == list(range(1, 500_000, 2))
    assert {code for _, code, _ in failed} == {M.ERROR_CODE_NO_ROUTE}
    assert sum(1 for e in resp.errors if e.message) == 1000        # the text for the first 1,000 entries only


def test_a_request_over_500000_records_ends_its_stream_with_invalid_argument(sandbox: Sandbox, sidecar_factory: Any,
                                                                              topic: str) -> None:
    sc = _sidecar(sandbox, sidecar_factory, topic)
    small = M.Record(topic=topic, value=b"x").SerializeToString()
    got, err = _produce_raw(sc.target, [_raw_request(3, [small], 500_001)])
    assert got == [] and err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 500,000 records, got 500,001" in (err.details() or "")


def test_the_python_client_reads_a_batch_of_60000_unroutable_records(sandbox: Sandbox, sidecar_factory: Any,
                                                                    topic: str) -> None:
    sc = _sidecar(sandbox, sidecar_factory, topic)
    with Producer(sc.target) as p:
        result = p.send_batch("nowhere-" + topic, [b"x"] * 60_000).result(timeout=60)
    assert result.ok_count == 0 and len(result.errors) == 60_000
    assert [e.index for e in result.errors] == list(range(60_000))
    assert {e.code for e in result.errors} == {ErrorCode.NO_ROUTE}
    assert all("no producer route" in e.message for e in result.errors)   # the run's text, for every record


def _subscribe(target: str, sub: M.Subscription) -> Any:
    """A Subscribe call on a stock channel (4 MiB receive limit) that sends the subscription and then nothing (the
    credit it grants is all there is), until cancelled."""
    done = threading.Event()

    def requests() -> Iterator[bytes]:
        yield M.SubscribeRequest(subscription=sub).SerializeToString()
        done.wait(120)

    ch = grpc.insecure_channel(target)
    call = ch.stream_stream("/kafkamesh.v1.Mesh/Subscribe")(requests())
    call.add_done_callback(lambda _c: done.set())
    return ch, call


@pytest.mark.parametrize("max_response", [0, 64 << 10])
def test_subscribe_responses_stay_under_the_limit_at_a_large_credit(sandbox: Sandbox, sidecar_factory: Any,
                                                                    topic: str, max_response: int) -> None:
    for c in sandbox.clusters:
        create_topic(c.bootstrap, topic, partitions=2)
        produce_direct(c.bootstrap, topic, [f"{c.name}-{i}-" + "v" * 30_000 for i in range(150)])   # 9 MB each
    sc = _sidecar(sandbox, sidecar_factory, topic)
    limit = max_response or GRPC_DEFAULT_LIMIT
    ch, call = _subscribe(sc.target, M.Subscription(
        group=f"g-{uuid.uuid4().hex[:8]}", topics=[topic], start=M.START_POSITION_EARLIEST,
        credit=M.Credit(records=100_000, bytes=64 << 20), max_response_bytes=max_response))
    try:
        seen: set[str] = set()
        sizes = []
        for raw in call:
            resp = M.SubscribeResponse.FromString(raw)
            if resp.WhichOneof("kind") != "records":
                continue
            sizes.append(len(raw))
            seen.update(r.value.decode().split("-v")[0] for g in resp.records.partitions for r in g.records)
            if len(seen) == 450:
                break
    finally:
        call.cancel()
        ch.close()
    assert len(seen) == 450
    assert max(sizes) <= limit, (max(sizes), limit)
    assert len(sizes) >= 27_000_000 // limit                         # the 27 MB came in many responses


@pytest.mark.parametrize("value, why", [(512, "out of range"), (65 << 20, "out of range")])
def test_a_max_response_bytes_out_of_range_is_refused(sandbox: Sandbox, sidecar_factory: Any, topic: str,
                                                      value: int, why: str) -> None:
    sc = _sidecar(sandbox, sidecar_factory, topic)
    ch, call = _subscribe(sc.target, M.Subscription(group="g", topics=[topic], max_response_bytes=value))
    try:
        with pytest.raises(grpc.RpcError) as e:
            list(call)
    finally:
        ch.close()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"subscription.max_response_bytes {value} is {why}" in (e.value.details() or "")


def test_a_credit_of_2_64_minus_1_means_no_limit(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=1)
    produce_direct(sandbox.clusters[0].bootstrap, topic, [f"r{i}" for i in range(50)])
    sc = _sidecar(sandbox, sidecar_factory, topic)
    ch, call = _subscribe(sc.target, M.Subscription(
        group=f"g-{uuid.uuid4().hex[:8]}", topics=[topic], start=M.START_POSITION_EARLIEST,
        credit=M.Credit(records=2**32 - 1, bytes=2**64 - 1)))
    try:
        values = []
        for raw in call:
            resp = M.SubscribeResponse.FromString(raw)
            if resp.WhichOneof("kind") == "records":
                values += [r.value for g in resp.records.partitions for r in g.records]
                if len(values) >= 50:
                    break
    finally:
        call.cancel()
        ch.close()
    assert sorted(values) == sorted(f"r{i}".encode() for i in range(50))
