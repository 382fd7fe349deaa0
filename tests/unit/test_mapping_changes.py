"""A mapping changed route by route (Mapping.updated, and the sidecar's parse_changes over stored parts) is the
mapping the changed document describes, and says exactly which topics' sinks changed; a change that would make an
invalid mapping is refused naming the route."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from sidecar.control import mapstore
from sidecar.control.source import parse_changes, parse_whole
from sidecar.errors import MappingError
from sidecar.mapping.model import REMOVE, Mapping

CLUSTERS = {f"c{i}": {"bootstrap": f"127.0.0.1:{9000 + i}"} for i in range(4)}


def _doc(n: int) -> dict[str, Any]:
    producer: dict[str, Any] = {f"t{i}": {"where": [{"sink": f"c{i % 4}"}]} for i in range(n)}
    producer["l1, l2"] = {"where": [{"sink": "c1"}, {"sink": "c2"}]}
    producer["__default__"] = {"where": [{"sink": "c3"}]}
    consumer = {f"t{i}": [{"vip": "c0"}, {"vip": f"c{i % 3 + 1}"}] for i in range(0, n, 7)}
    return {"clusters": dict(CLUSTERS), "producer": producer, "consumer": consumer}


def _edit(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """doc with a few random route changes: sinks changed, routes removed, routes added."""
    doc = copy.deepcopy(doc)
    keys = [k for k in doc["producer"] if k != "__default__"]
    for key in rng.sample(keys, 5):
        doc["producer"][key] = {"where": [{"sink": f"c{rng.randrange(4)}"}]}
    for key in rng.sample(keys, 3):
        doc["producer"].pop(key, None)
    for _ in range(3):
        doc["producer"][f"new{rng.randrange(10**6)}"] = {"where": [{"sink": "c2"}]}
    for topic in rng.sample(sorted(doc["consumer"]), 2):
        doc["consumer"].pop(topic)
    doc["consumer"][f"t{rng.randrange(10**6)}"] = [{"vip": "c1"}]
    return doc


def _sinks(mapping: Mapping, topics: set[str]) -> dict[str, tuple[str, ...] | None]:
    return {t: (mapping.routes[mapping.route_of(t) or ""] if mapping.route_of(t) else None) for t in topics}


@pytest.mark.parametrize("seed", range(5))
def test_stored_parts_changed_are_applied_route_by_route(seed: int) -> None:
    rng = random.Random(seed)
    before_doc = _doc(2000)
    after_doc = _edit(before_doc, rng)
    before_stored, after_stored = mapstore.split(before_doc), mapstore.split(after_doc)
    old = parse_whole(before_stored.parts, before_stored.blobs, 10, "test")
    new = parse_changes(old, after_stored.parts, after_stored.blobs, 11, "test")
    assert new is not None
    whole = parse_whole(after_stored.parts, after_stored.blobs, 11, "test")
    assert new.mapping == whole.mapping and new.blobs == whole.blobs
    assert new.mapping.to_document() == Mapping.from_document(after_doc).to_document()
    change = new.mapping.change
    assert change is not None and change.base == 10 and not change.default
    topics = {t for k in before_doc["producer"].keys() | after_doc["producer"].keys() for t in k.split(", ")}
    topics.discard("__default__")
    b, a = _sinks(old.mapping, topics), _sinks(new.mapping, topics)
    assert change.topics == {t: a[t] for t in topics if a[t] != b[t]}


def test_a_change_of_the_clusters_or_of_many_parts_is_parsed_whole() -> None:
    doc = _doc(3000)
    old_stored = mapstore.split(doc)
    old = parse_whole(old_stored.parts, old_stored.blobs, 1, "test")
    clusters = copy.deepcopy(doc)
    clusters["clusters"]["c9"] = {"bootstrap": "127.0.0.1:9999"}
    s = mapstore.split(clusters)
    assert parse_changes(old, s.parts, s.blobs, 2, "test") is None
    many = copy.deepcopy(doc)
    for i in range(3000):
        many["producer"][f"t{i}"] = {"where": [{"sink": "c0"}]}
    s = mapstore.split(many)
    assert parse_changes(old, s.parts, s.blobs, 2, "test") is None


def test_an_invalid_change_is_refused_naming_where_and_the_route() -> None:
    doc = _doc(50)
    s = mapstore.split(doc)
    old = parse_whole(s.parts, s.blobs, 1, "test")
    bad = copy.deepcopy(doc)
    bad["producer"]["t3"] = {"where": [{"sink": "c9"}]}
    s = mapstore.split(bad)
    with pytest.raises(MappingError, match=r"^ptr at revision 2: producer.t3.where\[0\].sink: unknown cluster 'c9'"):
        parse_changes(old, s.parts, s.blobs, 2, "ptr at revision 2")


def test_updated_refuses_a_topic_in_two_routes_and_allows_a_move_in_one_change() -> None:
    m = Mapping.from_document(_doc(10))
    with pytest.raises(MappingError) as e:
        m.updated({"l1": {"where": [{"sink": "c0"}]}}, {}, 2)
    assert str(e.value) == ("producer.l1: topic 'l1' is also in route 'l1, l2'; a topic may be in one producer route "
                            "only")
    with pytest.raises(MappingError, match=r"consumer.t1\[0\].vip: unknown cluster 'c7'"):
        m.updated({}, {"t1": [{"vip": "c7"}]}, 2)
    moved = m.updated({"l1, l2": REMOVE, "l1": {"where": [{"sink": "c0"}]}}, {}, 2)
    assert moved.sinks_for("l1") == ("c0",) and moved.sinks_for("l2") == ("c3",)       # l2: now the default
    assert moved.change is not None and moved.change.topics == {"l1": ("c0",), "l2": None}
    assert m.sinks_for("l1") == ("c1", "c2")            # the mapping it was made from is unchanged
    same = m.updated({"t1": {"where": [{"sink": "c1"}]}}, {}, 3)
    assert same.change is not None and same.change.topics == {} and same.revision == 3
    default = m.updated({"__default__": {"where": [{"sink": "c0"}]}}, {}, 4)
    assert default.change is not None and default.change.default and default.sinks_for("zz") == ("c0",)


def test_equal_sink_lists_are_one_object() -> None:
    m = Mapping.from_document(_doc(100))
    assert m.routes["t0"] is m.routes["t4"] and m.consumer["t0"] is m.consumer["t21"]


def test_a_null_route_is_refused_not_taken_for_a_removal() -> None:
    with pytest.raises(MappingError, match="^producer.t1: must be an object with 'where', got null"):
        Mapping.from_document({"clusters": CLUSTERS, "producer": {"t1": None}})
    with pytest.raises(MappingError, match=r"^consumer.t1: must be a list of \{\"vip\": CLUSTER\}, got null"):
        Mapping.from_document(_doc(3)).updated({}, {"t1": None}, 2)


def test_a_route_key_with_a_trailing_newline_names_the_topic_without_it() -> None:
    m = Mapping.from_document({"clusters": CLUSTERS, "producer": {"t1\n": {"where": [{"sink": "c0"}]}}})
    assert m.sinks_for("t1") == ("c0",) and m.route_of("t1") == "t1\n"
    with pytest.raises(MappingError, match="topic 't1' is also in route"):
        Mapping.from_document({"clusters": CLUSTERS, "producer": {"t1\n": {"where": [{"sink": "c0"}]},
                                                                   "t1": {"where": [{"sink": "c1"}]}}})
