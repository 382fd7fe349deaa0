"""One record must not hurt others: a header name that is not UTF-8, written to Kafka by another producer, is
delivered by Subscribe without breaking the response it is in (nor the records after it); sent through Produce, such
a record, or one with a negative timestamp, fails alone with ERROR_CODE_INVALID_RECORD while the rest of its batch
and the stream go on."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.client.consumer import Consumer
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, produce_raw_headers, read_all
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace, two_apps
from tests.integration.subscribe_stream import SubStream
from tests.produce_responses import per_record
from tests.wire_bytes import len_field

BAD_NAME = b"\xff\xfebad-\xc0\x80name"      # not UTF-8: stray bytes and an overlong NUL


def _setup(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> Any:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}},
                        "consumer": {topic: [{"vip": "c1"}]}})
    return sidecar_factory(ns)


def test_a_header_name_not_utf8_from_another_producer_is_delivered_with_the_records_around_it(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0].bootstrap
    create_topic(c1, topic, partitions=1)                  # one partition: the poison sits between good records
    produce_raw_headers(c1, topic, [
        (f"id-{i}".encode(), [(BAD_NAME, b"poison"), (b"fine", b"")] if i == 4 else [(b"n", str(i).encode())])
        for i in range(10)])
    sc = _setup(sandbox, sidecar_factory, topic)

    with SubStream(sc.target, f"g-{uuid.uuid4().hex[:8]}", [topic]) as s:   # protobuf's own (strict) parser
        s.wait(lambda s: len(s.records) >= 10, what="all 10 records")
        assert s.values() == [f"id-{i}" for i in range(10)]
        poisoned = s.consumed[4]
        assert [(h.key, h.raw_key, h.value, h.HasField("value")) for h in poisoned.headers] == [
            ("", BAD_NAME, b"poison", True), ("fine", b"", b"", True)]
        assert [(h.key, h.raw_key) for h in s.consumed[3].headers] == [("n", b"")]
        # every record was acked: the stream went on past the poison
        s.wait(lambda s: len(s.acked) == 10, what="acks")
        assert s.close() == grpc.StatusCode.OK

    with Consumer(sc.target, group=f"g-{uuid.uuid4().hex[:8]}", start="earliest") as c:   # the Python client
        c.subscribe([topic])
        got = []
        while len(got) < 10:
            got += c.poll(timeout=30)
        name, value = got[4].headers[0]
        assert name.encode("utf-8", "surrogateescape") == BAD_NAME and value == b"poison"
        assert [r.value for r in got] == [f"id-{i}".encode() for i in range(10)]


def _record(value: bytes, header_name: bytes | None = None, timestamp_ms: int | None = None, topic: str = "") -> bytes:
    """A Record's bytes, by hand where the protobuf runtime would refuse (a header name that is not UTF-8)."""
    rec = M.Record(topic=topic, value=value)
    if timestamp_ms is not None:
        rec.timestamp_ms = timestamp_ms
    raw = rec.SerializeToString()
    if header_name is not None:
        header = b"\x0a" + bytes([len(header_name)]) + header_name
        raw += b"\x22" + bytes([len(header)]) + header
    return raw


def _request(batch_id: int, records: list[bytes]) -> bytes:
    out = M.ProduceRequest(batch_id=batch_id).SerializeToString()
    for r in records:
        out += len_field(2, r)
    return out


def test_produce_fails_a_bad_header_name_or_a_negative_timestamp_alone_and_the_stream_goes_on(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0].bootstrap
    create_topic(c1, topic, partitions=1)
    sc = _setup(sandbox, sidecar_factory, topic)
    first = _request(1, [_record(b"ok-0", topic=topic), _record(b"bad-header", BAD_NAME, topic=topic),
                         _record(b"ok-1", b"good-name", topic=topic),
                         _record(b"bad-ts", timestamp_ms=-1_700_000_000_000, topic=topic),
                         _record(b"ok-2", timestamp_ms=1_700_000_000_000, topic=topic)])
    second = _request(2, [_record(b"ok-3", topic=topic)])
    with grpc.insecure_channel(sc.target) as ch:
        call = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")
        answers = [M.ProduceResponse.FromString(r) for r in call(iter([first, second]), timeout=60)]
    by_batch = {a.batch_id: a for a in answers}
    assert by_batch[1].ok_count == 3 and by_batch[2].ok_count == 1 and not by_batch[2].errors
    errors = {e.index: e for e in by_batch[1].errors}
    assert sorted(errors) == [1, 3]
    assert errors[1].code == M.ERROR_CODE_INVALID_RECORD and "header name is not valid UTF-8" in errors[1].message
    assert errors[3].code == M.ERROR_CODE_INVALID_RECORD and "timestamp_ms is negative" in errors[3].message
    got = read_all(c1, topic, 4)
    assert sorted(m.value() for m in got) == [b"ok-0", b"ok-1", b"ok-2", b"ok-3"]
    assert {m.value(): m.timestamp()[1] for m in got}[b"ok-2"] == 1_700_000_000_000


def test_records_the_broker_refuses_get_invalid_record_and_their_batch_mates_a_retriable_code(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    # One partition: the request's records go to Kafka in one batch, which the broker refuses whole, naming the
    # culprits (KIP-467). Never INTERNAL: the culprits get INVALID_RECORD, the others CLUSTER_UNAVAILABLE (retry).
    # The sidecar's own checks are off here (its clock bound, and the topic's config), so that the broker refuses.
    c1 = sandbox.clusters[0].bootstrap
    create_topic(c1, topic, partitions=1, config={"message.timestamp.after.max.ms": "3600000"})
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns, "--max-timestamp-ahead-ms", "0", "--no-topic-checks")
    micros = int(time.time() * 1_000_000)                   # a timestamp in microseconds: ~55,000 years ahead
    req = M.ProduceRequest(batch_id=1)
    for i in range(6):
        rec = req.records.add(topic=topic, value=f"v{i}".encode())
        if i in (1, 4):
            rec.timestamp_ms = micros
    with grpc.insecure_channel(sc.target) as ch:
        [raw] = list(ch.stream_stream("/kafkamesh.v1.Mesh/Produce")(iter([req.SerializeToString()]), timeout=60))
    failed = per_record(M.ProduceResponse.FromString(raw))
    assert [(i, code) for i, code, _ in failed] == [
        (0, M.ERROR_CODE_CLUSTER_UNAVAILABLE), (1, M.ERROR_CODE_INVALID_RECORD),
        (2, M.ERROR_CODE_CLUSTER_UNAVAILABLE), (3, M.ERROR_CODE_CLUSTER_UNAVAILABLE),
        (4, M.ERROR_CODE_INVALID_RECORD), (5, M.ERROR_CODE_CLUSTER_UNAVAILABLE)], failed
    assert "_INVALID_DIFFERENT_RECORD" in failed[0][2] and "INVALID_RECORD" in failed[1][2]


def test_timestamps_in_microseconds_from_one_app_never_fail_another_apps_records(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    # One partition: both apps' records share librdkafka's batches. A record timestamped hours ahead would make
    # the broker refuse the whole batch; the sidecar refuses it alone before it is enqueued.
    c1 = sandbox.clusters[0].bootstrap
    create_topic(c1, topic, partitions=1)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    good = [M.ProduceRequest(batch_id=b, records=[M.Record(topic=topic, key=b"k", value=f"good-{b}-{j}".encode())
                                                 for j in range(40)]).SerializeToString() for b in range(150)]
    micros = int(time.time() * 1_000_000)
    bad = [M.ProduceRequest(batch_id=b, records=[
        M.Record(topic=topic, value=f"bad-{b}".encode(), timestamp_ms=micros),
        M.Record(topic=topic, value=f"fine-{b}".encode())]).SerializeToString() for b in range(40)]
    results = dict(zip(("good", "bad"), two_apps(sc.target, good, bad), strict=True))
    assert len(results["good"]) == 150 and all(r.ok_count == 40 and not r.errors for r in results["good"])
    assert len(results["bad"]) == 40
    for r in results["bad"]:
        assert r.ok_count == 1 and [(i, code) for i, code, _ in per_record(r)] == [(0, M.ERROR_CODE_INVALID_RECORD)]
    written = {m.value().decode() for m in read_all(c1, topic, 150 * 40 + 40)}
    assert written == {f"good-{b}-{j}" for b in range(150) for j in range(40)} | {f"fine-{b}" for b in range(40)}
