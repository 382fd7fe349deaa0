"""The native ProduceRequest parser against the protobuf runtime, on valid, truncated, mutated and random bytes."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2
from tests.isolation import run_isolated


def _request(n: int = 3, seed: int = 0) -> mesh_pb2.ProduceRequest:
    rnd = random.Random(seed)
    req = mesh_pb2.ProduceRequest(batch_id=rnd.randrange(2**64))
    for i in range(n):
        rec = req.records.add(topic=f"topic-{i % 3}")
        if i % 4 != 0:
            rec.key = rnd.randbytes(i % 7)        # includes present-but-empty keys
        if i % 5 != 1:
            rec.value = rnd.randbytes(rnd.randrange(0, 300))
        for h in range(i % 3):
            hdr = rec.headers.add(key=f"h{h}")
            if h % 2 == 0:
                hdr.value = rnd.randbytes(h + 1)
        if i % 2:
            rec.timestamp_ms = 1_700_000_000_000 + i
        if i % 3 == 2:
            rec.partition = i % 4
    return req


def _expected(req: mesh_pb2.ProduceRequest) -> tuple[int, list[tuple[object, ...]]]:
    return req.batch_id, [
        (r.topic,
         r.key if r.HasField("key") else None,
         r.value if r.HasField("value") else None,
         [(h.key, h.value if h.HasField("value") else None) for h in r.headers],
         r.timestamp_ms if r.HasField("timestamp_ms") else None,
         r.partition if r.HasField("partition") else None)
        for r in req.records
    ]


def test_decodes_exactly_what_the_protobuf_runtime_encodes() -> None:
    for seed in range(20):
        req = _request(n=seed * 3, seed=seed)
        assert meshcore.decode_produce_request(req.SerializeToString()) == _expected(req)


def test_empty_request_is_a_batch_with_no_records() -> None:
    assert meshcore.decode_produce_request(b"") == (0, [])


def test_ten_byte_varint_holds_the_top_bit() -> None:
    assert meshcore.decode_produce_request(b"\x08" + b"\x80" * 9 + b"\x01") == (2**63, [])


def test_unknown_fields_are_skipped_for_forward_compatibility() -> None:
    req = _request(2)
    raw = req.SerializeToString()
    # field 15 varint, field 16 fixed64, field 17 bytes, field 18 fixed32, at the top level
    extra = b"\x78\x05" + b"\x81\x01" + b"\x00" * 8 + b"\x8a\x01\x03abc" + b"\x95\x01" + b"\x00" * 4
    assert meshcore.decode_produce_request(extra + raw + extra) == _expected(req)


def test_a_negative_timestamp_or_a_header_name_not_utf8_marks_that_record_alone() -> None:
    good = mesh_pb2.Record(topic="t", value=b"v")
    negative = mesh_pb2.Record(topic="t", value=b"n", timestamp_ms=-1)
    raw = mesh_pb2.ProduceRequest(batch_id=9, records=[good, negative, good]).SerializeToString()
    # Header{key=b"\xff\xfe"} by hand: the protobuf runtime will not encode a string that is not UTF-8.
    bad_header = b"\x0a\x01t" + b"\x22\x04\x0a\x02\xff\xfe"
    raw += b"\x12" + bytes([len(bad_header)]) + bad_header
    batch_id, records = meshcore.decode_produce_request(raw)
    assert batch_id == 9 and len(records) == 4
    assert records[0] == records[2] == ("t", None, b"v", [], None, None)
    assert records[1] == ("t", None, b"n", [], None, None, "timestamp")
    assert records[3] == ("t", None, None, [("\udcff\udcfe", None)], None, None, "header_name")
    negative_partition = mesh_pb2.ProduceRequest(records=[mesh_pb2.Record(topic="t", partition=-1)])
    assert meshcore.decode_produce_request(negative_partition.SerializeToString())[1] == [
        ("t", None, None, [], None, None, "partition")]


@pytest.mark.parametrize("raw, reason", [
    (b"\x08", "truncated varint"),
    (b"\x08" + b"\x80" * 10 + b"\x01", "varint overflows 64 bits"),
    (b"\x08" + b"\xff" * 9 + b"\x02", "varint overflows 64 bits"),
    (b"\x12\x05ab", "length-delimited field runs past the end of its message"),
    (b"\x12\xff\xff\xff\xff\x0f", "length-delimited field runs past the end of its message"),
    (b"\x00\x01", "invalid field number"),
    (b"\x7b", "unsupported wire type (groups or invalid)"),
    (b"\x0b", "ProduceRequest.batch_id must be a varint"),
    (b"\x10\x01", "ProduceRequest.records must be length-delimited"),
    (b"\x0a\x01x", "ProduceRequest.batch_id must be a varint"),
    (b"\x12\x02\x08\x01", "Record.topic must be length-delimited"),
    (b"\x12\x02\x28\xff", "truncated varint"),
    (b"\x12\x06\x30\x80\x80\x80\x80\x08", "Record.partition is out of the int32 range"),
    (b"\x12\x04\x22\x02\x0a\x05", "length-delimited field runs past the end of its message"),
    (b"\x12\x04\x22\x02\x08\x01", "Header.key must be length-delimited"),
])
def test_malformed_bytes_raise_wire_error_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(meshcore.WireError) as e:
        meshcore.decode_produce_request(raw)
    assert e.value.reason == reason
    assert 0 <= e.value.offset <= len(raw)
    assert str(e.value).startswith("malformed request: ")


def _agrees_with_protobuf(raw: bytes) -> None:
    """The native parser accepts what the protobuf runtime accepts and decodes it the same; where they differ it
    is only by the parser's stricter checks (partition out of int32 range, a 10th varint byte over 1, which the
    runtime silently truncates, a known field with the wrong wire type), the records it marks to fail alone (a
    negative timestamp, a header name that is not UTF-8), or the runtime's UTF-8 check of string fields, which the
    sidecar leaves to per-record validation."""
    try:
        ours = meshcore.decode_produce_request(raw)
    except meshcore.WireError as e:
        ours = e
    try:
        msg = mesh_pb2.ProduceRequest.FromString(raw)
        theirs: object = _expected(msg)
    except DecodeError as e:
        theirs = e
    if isinstance(ours, meshcore.WireError):
        if not isinstance(theirs, DecodeError):
            # A known field with the wrong wire type is kept as an unknown field by the runtime; we refuse it.
            assert ours.reason.endswith(("must be a varint", "must be length-delimited")) or ours.reason in (
                "Record.partition is out of the int32 range",
                "varint overflows 64 bits", "unsupported wire type (groups or invalid)"), (ours, raw)
    elif isinstance(theirs, DecodeError):
        # Only a string field with invalid UTF-8 (topic or header name) is accepted by us and refused by protobuf.
        assert "utf-8" in str(theirs).lower() or "utf8" in str(theirs).lower() or any(
            "\udc80" <= ch <= "\udcff"
            for rec in ours[1] for ch in rec[0] + "".join(h[0] for h in rec[3])), (theirs, raw)
    else:
        assert isinstance(theirs, tuple) and ours[0] == theirs[0] and len(ours[1]) == len(theirs[1]), raw
        for mine, runtime in zip(ours[1], theirs[1], strict=True):
            if len(mine) == 7:
                # Refused alone: a negative timestamp or partition is not kept (the runtime keeps it; a header
                # name's UTF-8 failure would have made the runtime refuse the whole message, above).
                assert mine[6] in ("timestamp", "partition"), (mine, runtime)
                dropped = [k for k in (4, 5) if mine[k] is None and runtime[k] is not None and runtime[k] < 0]
                assert dropped and mine[:6] == tuple(runtime[k] if k in dropped else mine[k] for k in range(6)) \
                    and mine[:4] == runtime[:4], raw
            else:
                assert mine == runtime, raw


def test_every_truncation_of_a_valid_request_agrees_with_protobuf() -> None:
    raw = _request(6, seed=7).SerializeToString()
    for cut in range(len(raw) + 1):
        _agrees_with_protobuf(raw[:cut])


def _fuzz(seed: int, rounds: int) -> int:
    """Mutated valid requests and random bytes through the parser and through a producer's enqueue path."""
    rnd = random.Random(seed)
    producer = meshcore.create_producer("fuzz", {"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": "50",
                                                 "log_level": "0"})
    errors = 0
    try:
        for i in range(rounds):
            raw = bytearray(_request(rnd.randrange(0, 8), seed=rnd.randrange(1000)).SerializeToString())
            mode = i % 3
            if mode == 0 and raw:
                for _ in range(rnd.randrange(1, 6)):
                    raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            elif mode == 1:
                raw = bytearray(rnd.randbytes(rnd.randrange(0, 200)))
            else:
                del raw[rnd.randrange(len(raw) + 1):]
            _agrees_with_protobuf(bytes(raw))
            try:
                producer.produce_request(bytes(raw))
            except meshcore.WireError:
                errors += 1
    finally:
        producer.close(flush_timeout_ms=0)
    return errors


def test_fuzzed_bytes_never_crash_the_parser_or_producer() -> None:
    errors = run_isolated(_fuzz, 1234, 6000)
    assert errors > 1000   # the corpus really exercised the error paths


def test_encode_records_decodes_with_the_protobuf_runtime() -> None:
    values = [b"", b"v" * 300, bytes(range(256))]
    keys = [None, b"", b"k"]
    raw = meshcore.encode_records(2**40, "orders.v1", values, keys)
    req = mesh_pb2.ProduceRequest.FromString(raw)
    assert req.batch_id == 2**40
    assert [(r.topic, r.HasField("key"), r.key, r.value) for r in req.records] == [
        ("orders.v1", False, b"", b""), ("orders.v1", True, b"", b"v" * 300), ("orders.v1", True, b"k", values[2])]
    assert meshcore.decode_produce_request(meshcore.encode_records(0, "t", [b"a"])) == (
        0, [("t", None, b"a", [], None, None)])


def test_encode_records_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TypeError, match=r"values\[1\] must be bytes, got str"):
        meshcore.encode_records(1, "t", [b"a", "b"])
    with pytest.raises(TypeError, match=r"keys\[0\] must be bytes or None, got int"):
        meshcore.encode_records(1, "t", [b"a"], [1])
    with pytest.raises(ValueError, match="keys has 2 entries for 1 values"):
        meshcore.encode_records(1, "t", [b"a"], [b"k", b"k"])


_UTF8_EDGES = [b"", b"abc", b"a\x00b", "é€😀".encode(), "\U0010ffff".encode(), "\ud7ff".encode(), "\ue000".encode(),
               b"\xc0\x80", b"\xc1\xbf",            # overlong 2-byte forms
               b"\xe0\x80\x80", b"\xe0\x9f\xbf",    # overlong 3-byte
               b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",   # overlong 4-byte
               b"\xed\xa0\x80", b"\xed\xbf\xbf",    # UTF-16 surrogates
               b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xfe",   # above U+10FFFF, never-valid bytes
               b"\x80", b"\xbf", b"\xe2\x82", b"\xf0\x9f\x98", b"\xe2\x82\xac\x80", b"\xc2"]   # stray, truncated


def _strict(b: bytes) -> bool:
    try:
        b.decode("utf-8")       # Python's codec is strict: no overlongs, surrogates or values over U+10FFFF
    except UnicodeDecodeError:
        return False
    return True


def test_the_header_name_utf8_check_agrees_with_strict_decoding() -> None:
    for b in _UTF8_EDGES:
        assert meshcore.wire.utf8_valid(b) == _strict(b), b
    rnd = random.Random(11)
    pivots = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED,
              0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
    valid = 0
    for _ in range(100_000):
        n = rnd.randrange(1, 9)
        b = bytes(rnd.choice(pivots) if rnd.random() < 0.7 else rnd.randrange(256) for _ in range(n))
        if rnd.random() < 0.3:      # a valid prefix, then the mutation: the check must read every sequence
            b = rnd.choice(_UTF8_EDGES[:7]) + b
        ok = meshcore.wire.utf8_valid(b)
        assert ok == _strict(b), b
        valid += ok
    assert 2_000 < valid < 98_000       # both outcomes well exercised
