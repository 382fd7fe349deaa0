"""Protobuf wire encoding of kafkamesh.v1.ProduceRequest for the client, written by hand so that the hot path
builds no protobuf message object per record: a batch is the bytes of its fields joined once with bytes.join.

The output is byte for byte what the protobuf runtime's SerializeToString gives for the same message (fields in
number order, proto3 scalars left out when zero, `optional` fields present exactly when given), which
tests/unit/test_client_wire.py checks. Strings are encoded as UTF-8 as the runtime does; this module does not
judge topic names (the sidecar answers ERROR_CODE_INVALID_TOPIC for a bad one, per record). It only encodes: it
never decodes, and it never imports the generated stubs.

    ProduceRequest { uint64 batch_id = 1; repeated Record records = 2; }
    Record { string topic = 1; optional bytes key = 2; optional bytes value = 3; repeated Header headers = 4;
             optional int64 timestamp_ms = 5; optional int32 partition = 6; }
    Header { string key = 1; optional bytes value = 2; }
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

_U64 = (1 << 64) - 1


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Lengths below 4 KiB (most keys and values) take their varint from a table: one index instead of a loop.
_TABLE = 1 << 12
_VARINT: tuple[bytes, ...] = tuple(_varint_slow(i) for i in range(_TABLE))
# ...and with the tag of a length-delimited field 2 (ProduceRequest.records, and Record.key) or 3 (Record.value).
_FIELD2: tuple[bytes, ...] = tuple(b"\x12" + v for v in _VARINT)
_FIELD3: tuple[bytes, ...] = tuple(b"\x1a" + v for v in _VARINT)


def varint(n: int) -> bytes:
    """Base-128 varint of an unsigned value below 2**64."""
    if 0 <= n < _TABLE:
        return _VARINT[n]
    if n < 0 or n > _U64:
        raise ValueError(f"varint out of range: {n}")
    return _varint_slow(n)


def _signed(n: int, bits: int) -> bytes:
    """int32/int64 as protobuf encodes them: two's complement over 64 bits, so a negative value takes 10 bytes."""
    low = -(1 << (bits - 1))
    if not low <= n < -low:
        raise ValueError(f"{n} does not fit in int{bits}")
    return varint(n & _U64)


@functools.lru_cache(maxsize=4096)
def topic_field(topic: str) -> bytes:
    """Record.topic as a field (tag, length, UTF-8 bytes); empty for "" as the runtime leaves proto3 defaults out.
    Cached: an application sends to a few topics many times."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    raw = topic.encode("utf-8")   # a lone surrogate raises UnicodeEncodeError, as in the protobuf runtime
    return b"\x0a" + varint(len(raw)) + raw if raw else b""


def request_head(batch_id: int) -> bytes:
    """ProduceRequest.batch_id as a field; empty for 0."""
    if not 0 <= batch_id <= _U64:
        raise ValueError(f"batch_id must be in [0, 2**64), got {batch_id}")
    return b"\x08" + varint(batch_id) if batch_id else b""


def encode_record(topic_fld: bytes, key: bytes | None, value: bytes | None,
                  headers: Sequence[tuple[str, bytes | None]] | None = None,
                  timestamp_ms: int | None = None, partition: int | None = None) -> bytes:
    """One record as a ProduceRequest.records field (tag, length, Record). `topic_fld` is topic_field(topic).
    Concatenating such fields after request_head(batch_id) gives a ProduceRequest."""
    if key is not None and value is not None and not headers and timestamp_ms is None and partition is None:
        # The usual record, a key and a value: one join of a tuple, no list.
        lk, lv = len(key), len(value)
        kf = _FIELD2[lk] if lk < _TABLE else b"\x12" + varint(lk)
        vf = _FIELD3[lv] if lv < _TABLE else b"\x1a" + varint(lv)
        n = len(topic_fld) + len(kf) + lk + len(vf) + lv
        return b"".join((_FIELD2[n] if n < _TABLE else b"\x12" + varint(n), topic_fld, kf, key, vf, value))
    parts = [topic_fld]
    if key is not None:
        parts += (b"\x12", varint(len(key)), key)
    if value is not None:
        parts += (b"\x1a", varint(len(value)), value)
    if headers:
        for name, hval in headers:
            hname = name.encode("utf-8")
            hbody = (b"\x0a" + varint(len(hname)) + hname if hname else b"") + (
                b"" if hval is None else b"\x12" + varint(len(hval)) + bytes(hval))
            parts += (b"\x22", varint(len(hbody)), hbody)
    if timestamp_ms is not None:
        parts += (b"\x28", _signed(timestamp_ms, 64))
    if partition is not None:
        parts += (b"\x30", _signed(partition, 32))
    body = b"".join(parts)
    return b"\x12" + varint(len(body)) + body


def encode_request(batch_id: int, records: Iterable[bytes]) -> bytes:
    """A ProduceRequest from records encoded by encode_record; one join, so the batch's bytes are copied once."""
    parts = [request_head(batch_id)]
    parts += records
    return b"".join(parts)


def encode_batch(batch_id: int, topic: str, values: Sequence[bytes],
                 keys: Sequence[bytes | None] | None = None) -> bytes:
    """A ProduceRequest of len(values) records to one topic, value i with key i (keys None: every key null; a None
    in keys: that record's key null; b"": an empty key).

    The fast path. Everything of a record but its key and value bytes (its framing, the topic field, the tags and
    length prefixes) depends only on the two lengths: it is built as two pieces, `head` (up to the key, or up to the
    value when there is no key) and `mid` (the value's tag and length), from tables while the lengths are below
    4 KiB, and reused as long as the lengths stay those of the previous record (the common case of uniform
    records). Per record that leaves two len(), a comparison and two or four list appends, then one bytes.join for
    the batch: no object per record outlives the call."""
    if keys is not None and len(keys) != len(values):
        raise ValueError(f"keys and values differ in length: {len(keys)} keys, {len(values)} values")
    tf = topic_field(topic)
    base = len(tf) + 2           # the two tags of a keyed record's key and value fields, besides the topic field
    f2, f3, table = _FIELD2, _FIELD3, _TABLE
    parts: list[bytes] = [request_head(batch_id)]
    ap = parts.append
    prev_lk = prev_lv = -2       # -1 stands for "no key"
    head = b""
    if keys is None:
        for v in values:
            lv = len(v)
            if lv != prev_lv:
                prev_lv = lv
                head = _keyless_head(tf, lv)
            ap(head)
            ap(v)
        return b"".join(parts)
    mid = b""
    for k, v in zip(keys, values, strict=True):
        lv = len(v)
        if k is None:
            if lv != prev_lv or prev_lk != -1:
                prev_lk, prev_lv = -1, lv
                head = _keyless_head(tf, lv)
            ap(head)
            ap(v)
            continue
        lk = len(k)
        if lk != prev_lk or lv != prev_lv:
            prev_lk, prev_lv = lk, lv
            if lk < table and lv < table:
                n = base + lk + lv + (2 if lk > 127 else 1) + (2 if lv > 127 else 1)
                head = (f2[n] if n < table else b"\x12" + varint(n)) + tf + f2[lk]
                mid = f3[lv]
            else:
                lkv, lvv = varint(lk), varint(lv)
                head = b"\x12" + varint(base + len(lkv) + lk + len(lvv) + lv) + tf + b"\x12" + lkv
                mid = b"\x1a" + lvv
        ap(head)
        ap(k)
        ap(mid)
        ap(v)
    return b"".join(parts)


def _keyless_head(tf: bytes, value_len: int) -> bytes:
    """A record's bytes up to its value, for a record with no key: framing, topic field, the value's tag and length."""
    mid = _FIELD3[value_len] if value_len < _TABLE else b"\x1a" + varint(value_len)
    n = len(tf) + len(mid) + value_len
    return (_FIELD2[n] if n < _TABLE else b"\x12" + varint(n)) + tf + mid
