"""The client's hand-written ProduceRequest encoder (sidecar.client.wire) against the protobuf runtime: its bytes
decode to exactly the records given, and are the bytes SerializeToString gives for the same message."""

from __future__ import annotations

import random

import pytest

from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.client import ErrorCode, wire


def _decoded(raw: bytes) -> tuple[int, list[tuple[object, ...]]]:
    req = mesh_pb2.ProduceRequest.FromString(raw)
    return req.batch_id, [
        (r.topic,
         r.key if r.HasField("key") else None,
         r.value if r.HasField("value") else None,
         [(h.key, h.value if h.HasField("value") else None) for h in r.headers],
         r.timestamp_ms if r.HasField("timestamp_ms") else None,
         r.partition if r.HasField("partition") else None)
        for r in req.records]


def _runtime(batch_id: int, topic: str, values: list[bytes], keys: list[bytes | None] | None) -> bytes:
    req = mesh_pb2.ProduceRequest(batch_id=batch_id)
    for i, v in enumerate(values):
        rec = req.records.add(topic=topic, value=v)
        if keys is not None and keys[i] is not None:
            rec.key = keys[i]
    return bytes(req.SerializeToString())


@pytest.mark.parametrize("keys", [None, "all", "mixed"])
def test_encode_batch_decodes_to_exactly_the_values_and_keys_given(keys: str | None) -> None:
    rnd = random.Random(7)
    # lengths around every varint boundary and the encoder's table, empty values, a value over 1 MiB
    lengths = [0, 1, 127, 128, 300, 4095, 4096, 4097, 16383, 16384, 2**21 + 5, 5, 0]
    values = [rnd.randbytes(n) for n in lengths]
    if keys is None:
        ks: list[bytes | None] | None = None
    elif keys == "all":
        ks = [rnd.randbytes(n) for n in (0, 1, 200, 127, 128, 5000, 3, 0, 1, 2, 16384, 9, 0)]
    else:
        ks = [None, b"", b"k", None, b"", rnd.randbytes(300), None, b"x", None, b"", b"y" * 128, None, b""]
    raw = wire.encode_batch(42, "orders.v1", values, ks)
    batch_id, records = _decoded(raw)
    assert batch_id == 42
    assert records == [("orders.v1", None if ks is None else ks[i], v, [], None, None) for i, v in enumerate(values)]
    assert raw == _runtime(42, "orders.v1", values, ks)


def test_records_of_equal_lengths_with_and_without_keys_keep_their_own_framing() -> None:
    # the encoder reuses a record's framing while the lengths repeat; key presence must break the reuse
    keys: list[bytes | None] = [None, b"kk", None, b"kk", b"kk", None, None, b"", b"", None]
    values = [b"v" * 10] * len(keys)
    raw = wire.encode_batch(5, "t", values, keys)
    assert raw == _runtime(5, "t", values, keys)
    assert [k for _, k, *_ in _decoded(raw)[1]] == keys


def test_a_null_key_and_an_empty_key_stay_distinct() -> None:
    raw = wire.encode_batch(1, "t", [b"a", b"b", b""], [None, b"", None])
    assert [(k, v) for _, k, v, *_ in _decoded(raw)[1]] == [(None, b"a"), (b"", b"b"), (None, b"")]


@pytest.mark.parametrize("batch_id", [0, 1, 127, 128, 2**32, 2**64 - 1])
def test_batch_ids_encode_over_the_whole_uint64_range(batch_id: int) -> None:
    raw = wire.encode_batch(batch_id, "t", [b"v"])
    assert _decoded(raw)[0] == batch_id and raw == _runtime(batch_id, "t", [b"v"], None)


def test_batch_ids_outside_uint64_are_refused() -> None:
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="batch_id"):
            wire.encode_batch(bad, "t", [b"v"])


def test_unicode_topics_are_encoded_as_utf8_like_the_runtime() -> None:
    # Kafka refuses such names; the sidecar answers INVALID_TOPIC for the record, so the client does not judge them.
    for topic in ("tópico", "话题", "emoji-\U0001f600", "a" * 300):
        raw = wire.encode_batch(3, topic, [b"v"], [b"k"])
        assert _decoded(raw)[1] == [(topic, b"k", b"v", [], None, None)]
        assert raw == _runtime(3, topic, [b"v"], [b"k"])


def test_a_topic_that_is_not_valid_unicode_is_refused_like_the_runtime() -> None:
    with pytest.raises(UnicodeEncodeError):
        wire.encode_batch(1, "bad\ud800", [b"v"])
    with pytest.raises((UnicodeEncodeError, ValueError)):
        mesh_pb2.Record(topic="bad\ud800").SerializeToString()
    with pytest.raises(TypeError, match="topic must be str"):
        wire.encode_batch(1, b"t", [b"v"])   # type: ignore[arg-type]   # on purpose


def test_an_empty_topic_is_left_out_as_the_runtime_does() -> None:
    raw = wire.encode_batch(1, "", [b"v"])
    assert raw == _runtime(1, "", [b"v"], None) and _decoded(raw)[1] == [("", None, b"v", [], None, None)]


def test_keys_and_values_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 keys, 3 values"):
        wire.encode_batch(1, "t", [b"a", b"b", b"c"], [b"k", b"k"])


def test_bytes_like_values_are_encoded_as_their_bytes() -> None:
    raw = wire.encode_batch(1, "t", [bytearray(b"ab"), memoryview(b"cd")], [bytearray(b"k"), None])  # type: ignore[list-item]
    assert _decoded(raw)[1] == [("t", b"k", b"ab", [], None, None), ("t", None, b"cd", [], None, None)]


Rec = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]], int | None, int | None]


def test_encode_record_covers_every_record_field_like_the_runtime() -> None:
    rnd = random.Random(11)
    # (topic, key, value, headers, timestamp_ms, partition)
    cases: list[Rec] = [
        ("t", None, None, [], None, None),
        ("t", b"", b"", [], None, None),
        ("t2", b"k", rnd.randbytes(20000), [("h", b"v"), ("h", None), ("", b"")], None, None),
        ("t3", None, b"v", [], 1_700_000_000_123, 0),
        ("t3", None, b"v", [], -1, -1),
        ("t3", None, b"v", [], 2**63 - 1, 2**31 - 1),
        ("t3", None, b"v", [], -(2**63), -(2**31)),
        ("tópico", b"\x00", None, [("ünï", b"\xff" * 200)], None, None),
    ]
    req = mesh_pb2.ProduceRequest(batch_id=9)
    fields = []
    for topic, key, value, headers, ts, partition in cases:
        rec = req.records.add(topic=topic)
        for name, given in (("key", key), ("value", value), ("timestamp_ms", ts), ("partition", partition)):
            if given is not None:
                setattr(rec, name, given)
        for hk, hv in headers:
            h = rec.headers.add(key=hk)
            if hv is not None:
                h.value = hv
        fields.append(wire.encode_record(wire.topic_field(topic), key, value, headers, ts, partition))
    raw = wire.encode_request(9, fields)
    assert raw == req.SerializeToString()
    assert _decoded(raw) == (9, cases)


def test_out_of_range_timestamps_and_partitions_are_refused() -> None:
    tf = wire.topic_field("t")
    with pytest.raises(ValueError, match="int64"):
        wire.encode_record(tf, None, b"v", timestamp_ms=2**63)
    with pytest.raises(ValueError, match="int32"):
        wire.encode_record(tf, None, b"v", partition=2**31)


def test_random_batches_match_the_runtime_byte_for_byte() -> None:
    rnd = random.Random(3)
    for _ in range(200):
        n = rnd.randrange(1, 60)
        values = [rnd.randbytes(rnd.choice((0, 1, rnd.randrange(300), rnd.randrange(20000)))) for _ in range(n)]
        keys = None if rnd.random() < 0.3 else [None if rnd.random() < 0.2 else rnd.randbytes(rnd.randrange(40))
                                                for _ in range(n)]
        topic = rnd.choice(("a", "orders", "x" * 249, "t.with-dots_and"))
        batch_id = rnd.randrange(2**64)
        assert wire.encode_batch(batch_id, topic, values, keys) == _runtime(batch_id, topic, values, keys)


def test_error_codes_are_the_protos_without_their_prefix() -> None:
    proto = {v.name.removeprefix("ERROR_CODE_"): v.number for v in mesh_pb2.DESCRIPTOR.enum_types_by_name[
        "ErrorCode"].values}
    assert {c.name: c.value for c in ErrorCode} == proto
    assert ErrorCode.from_wire(1) is ErrorCode.NO_ROUTE
    assert ErrorCode.from_wire(999) is ErrorCode.INTERNAL      # a code newer than this client
