"""The mapping store's pure half: a document split into content-addressed parts and joined back, and what a change of
one route costs; hostile pointers and blobs are refused with the key named."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from sidecar.control import mapstore
from sidecar.errors import MappingError


def _doc(n: int, sink: str = "c1") -> dict[str, Any]:
    return {"clusters": {"c1": {"bootstrap": "h:1"}, "c2": {"bootstrap": "h:2"}},
            "producer": {f"t{i}": {"where": [{"sink": sink}]} for i in range(n)},
            "consumer": {f"t{i}": [{"vip": "c1"}] for i in range(n)}}


def test_a_document_round_trips_through_its_blobs() -> None:
    doc = _doc(100_000)
    stored = mapstore.split(doc)
    assert len(stored.parts) == 1 + 2 * mapstore.BUCKETS
    assert max(len(b) for b in stored.blobs.values()) < 64 << 10          # a few KB a bucket
    assert mapstore.join(mapstore.parse_pointer(stored.pointer(), "p"), stored.blobs, "p") == doc


def test_one_route_changed_makes_one_new_blob() -> None:
    before, after = _doc(10_000), _doc(10_000)
    after["producer"]["t42"] = {"where": [{"sink": "c2"}]}
    a, b = mapstore.split(before), mapstore.split(after)
    assert len(set(b.blobs) - set(a.blobs)) == 1
    assert [n for n in b.parts if b.parts[n] != a.parts[n]] == [f"producer/{mapstore.bucket('t42')}"]


def test_a_part_over_the_blob_limit_is_cut_into_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapstore, "MAX_BLOB", 100)
    doc = _doc(2000)
    stored = mapstore.split(doc)
    assert max(len(ids) for ids in stored.parts.values()) > 1
    assert all(len(b) <= 100 for b in stored.blobs.values())
    assert mapstore.join(stored.parts, stored.blobs, "p") == doc


@pytest.mark.parametrize(("raw", "match"), [
    (b"\xff", "not valid JSON"),
    (b"[]", "pointer of format 1"),
    (b'{"format": 2, "parts": {}}', "pointer of format 1"),
    (b'{"format": 1, "parts": {"producer/00": []}}', "must list blob ids"),
    (b'{"format": 1, "parts": {"producer/00": [12]}}', "must list blob ids"),
])
def test_hostile_pointers_are_refused_naming_the_key(raw: bytes, match: str) -> None:
    with pytest.raises(MappingError, match=f"/kafka-mesh/ns/mapping: .*{match}"):
        mapstore.parse_pointer(raw, "/kafka-mesh/ns/mapping")


def test_a_blob_that_does_not_match_its_id_or_does_not_decode_is_refused() -> None:
    stored = mapstore.split(_doc(10))
    name, [first] = next((n, ids) for n, ids in stored.parts.items() if n.startswith("producer/"))
    tampered = dict(stored.blobs, **{first: zlib.compress(b'{"t0": {"where": [{"sink": "evil"}]}}')})
    with pytest.raises(MappingError, match="does not match its id"):
        mapstore.join(stored.parts, tampered, "p")
    junk = b"not zlib"
    with pytest.raises(MappingError, match="does not decode"):
        mapstore.join({"producer/00": [mapstore.blob_id(junk)]}, {mapstore.blob_id(junk): junk}, "p")
    listed = zlib.compress(json.dumps([1, 2]).encode())
    with pytest.raises(MappingError, match="is not an object"):
        mapstore.join({"consumer/00": [mapstore.blob_id(listed)]}, {mapstore.blob_id(listed): listed}, "p")
    with pytest.raises(MappingError, match="unknown part"):
        mapstore.join({"status/00": [mapstore.blob_id(listed)]}, {mapstore.blob_id(listed): listed}, "p")
