"""Protobuf wire bytes by hand, for tests that send what the protobuf runtime will not encode (header names that
are not UTF-8, negative values in unsigned positions, truncations)."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """n as a base-128 varint (a negative n as its 64-bit two's complement, as protobuf encodes int64)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def len_field(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def int_field(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)
