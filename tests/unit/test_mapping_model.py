"""The mapping model: the one-file document (README, "The mapping"), every refusal with the key and the reason, the
routing questions a sidecar asks, and the etcd layout."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest

from sidecar.config import ControlSettings
from sidecar.errors import MappingError, UsageError
from sidecar.mapping.document import load_file, read_document
from sidecar.mapping.model import Cluster, Mapping, ProducerRoute

# A full document in the seed's own format (fronting and consumer clusters, a list key, __default__), verbatim.
DESIGN_EXAMPLE = """
    {
      "clusters": {
        "fronting-kafka-1": {"bootstrap": "127.0.0.1:19092", "role": "fronting", "config": {"linger.ms": "5"}},
        "consumer-kafka-1": {"bootstrap": "127.0.0.1:29092", "role": "consumer"}
      },
      "producer": {
        "t1, t2": {"where": [{"sink": "fronting-kafka-1"}]},
        "__default__": {"where": [{"sink": "fronting-kafka-1"}, {"sink": "consumer-kafka-1"}]}
      },
      "consumer": {
        "foo": [{"vip": "fronting-kafka-1"}, {"vip": "consumer-kafka-1"}]
      }
    }
"""

F, C = "fronting-kafka-1", "consumer-kafka-1"


def _doc() -> dict[str, Any]:
    return copy.deepcopy(json.loads(DESIGN_EXAMPLE))


def _refused(doc: Any, base: Mapping | None = None) -> str:
    with pytest.raises(MappingError) as e:
        Mapping.from_document(doc, base)
    return str(e.value)


def test_design_example_parses_verbatim() -> None:
    m = Mapping.from_document(json.loads(DESIGN_EXAMPLE))
    assert m.clusters == {
        F: Cluster(F, "127.0.0.1:19092", "fronting", {"linger.ms": "5"}),
        C: Cluster(C, "127.0.0.1:29092", "consumer", {}),
    }
    assert m.producer == (
        ProducerRoute(key="t1, t2", topics=("t1", "t2"), sinks=(F,)),
        ProducerRoute(key="__default__", topics=(), sinks=(F, C)),
    )
    assert m.consumer == {"foo": (F, C)}
    assert m.revision == 0


def test_document_round_trips() -> None:
    m = Mapping.from_document(_doc())
    expected = _doc()
    expected["clusters"][C]["config"] = {}          # written out in full: role and config always present
    assert m.to_document() == expected
    assert Mapping.from_document(m.to_document()) == m
    assert list(m.to_document()) == ["clusters", "producer", "consumer"]


def test_route_keys_with_and_without_spaces_name_the_same_topics() -> None:
    doc = _doc()
    doc["producer"] = {"a,b": {"where": [{"sink": F}]}, " c ,  d": {"where": [{"sink": C}]}}
    m = Mapping.from_document(doc)
    assert [(r.key, r.topics) for r in m.producer] == [(" c ,  d", ("c", "d")), ("a,b", ("a", "b"))]
    assert m.to_document()["producer"] == doc["producer"]         # keys kept exactly as written


def test_explicit_route_wins_over_default_and_no_default_means_no_route() -> None:
    m = Mapping.from_document(_doc())
    assert m.sinks_for("t1") == (F,)
    assert m.sinks_for("t2") == (F,)
    assert m.sinks_for("other") == (F, C)
    assert m.default_sinks == (F, C)
    assert m.producer_table() == {"t1": (F,), "t2": (F,)}

    doc = _doc()
    del doc["producer"]["__default__"]
    m = Mapping.from_document(doc)
    assert m.default_sinks is None
    assert m.sinks_for("other") is None
    assert m.sinks_for("t2") == (F,)


def test_consumer_route_first_then_the_topics_producer_sinks() -> None:
    m = Mapping.from_document(_doc())
    assert m.clusters_for_consumer("foo") == (F, C)        # its consumer route
    assert m.clusters_for_consumer("t1") == (F,)           # no consumer route: where producers write it
    assert m.clusters_for_consumer("bar") == (F, C)        # ... which for a topic of no route is __default__
    doc = _doc()
    del doc["producer"]["__default__"]
    assert Mapping.from_document(doc).clusters_for_consumer("bar") is None


def test_left_out_sections_come_from_the_base_or_are_empty() -> None:
    base = Mapping.from_document(_doc())
    m = Mapping.from_document({"producer": {"t9": {"where": [{"sink": C}]}}}, base)
    assert m.clusters == base.clusters and m.consumer == base.consumer
    assert m.producer == (ProducerRoute("t9", ("t9",), (C,)),)

    assert Mapping.from_document({}) == Mapping()
    assert Mapping.from_document({"clusters": {}}).to_document() == {"clusters": {}, "producer": {}, "consumer": {}}
    # Without the base, a producer-only document names clusters it does not have.
    assert _refused({"producer": {"t9": {"where": [{"sink": C}]}}}) == (
        f"producer.t9.where[0].sink: unknown cluster '{C}'")


def _with(section: str, key: str, value: Any) -> dict[str, Any]:
    doc = _doc()
    doc[section][key] = value
    return doc


WHERE_F = {"where": [{"sink": F}]}


@pytest.mark.parametrize("doc, message", [
    # the document and its sections
    ([], "mapping: must be an object with clusters, producer, consumer, router, got list"),
    ({"clusters": {}, "routes": {}}, "routes: unknown section(s); a mapping has only clusters, producer, consumer, "
                                     "router"),
    ({"producer": []}, "producer: must be an object, got list"),
    ({"consumer": None}, "consumer: must be an object, got null"),
    # clusters
    (_with("clusters", "a/b", {"bootstrap": "h:1"}), "clusters.a/b: invalid cluster name 'a/b'"),
    (_with("clusters", "c3", {"bootstrap": "nohost"}), "clusters.c3.bootstrap: 'nohost' is not HOST:PORT"),
    # producer route keys
    (_with("producer", "t1", WHERE_F), "producer.t1: topic 't1' is also in route 't1, t2'; a topic may be in one "
                                       "producer route only"),
    (_with("producer", "t3,t3", WHERE_F), "producer.t3,t3: topic 't3' is named twice"),
    (_with("producer", "t3, __default__", WHERE_F),
     "producer.t3, __default__: '__default__' must be a key of its own, not part of a list"),
    (_with("producer", " __default__", WHERE_F),
     "producer. __default__: write the default route's key as exactly '__default__'"),
    (_with("producer", "a b", WHERE_F), "producer.a b: invalid topic name 'a b': use 1-249 characters of "
                                        "[a-zA-Z0-9._-], not '.' or '..'"),
    (_with("producer", "t3,", WHERE_F), "producer.t3,: invalid topic name ''"),
    (_with("producer", "..", WHERE_F), "producer...: invalid topic name '..'"),
    (_with("producer", ".", WHERE_F), "producer..: invalid topic name '.'"),
    (_with("producer", "x" * 250, WHERE_F), f"producer.{'x' * 250}: invalid topic name"),
    # producer route values
    (_with("producer", "t3", [{"sink": F}]), "producer.t3: must be an object with 'where', got list"),
    (_with("producer", "t3", {"where": [{"sink": F}], "acks": 1}), "producer.t3: unknown field(s) acks"),
    (_with("producer", "t3", {"where": [{"sink": F}, {"sink": C}], "spread": True}),
     "producer.t3.spread: not supported yet"),
    (_with("producer", "t3", {}), "producer.t3.where: required, a list of {\"sink\": CLUSTER}, got null"),
    (_with("producer", "t3", {"where": []}), "producer.t3.where: needs at least one {\"sink\": CLUSTER}"),
    (_with("producer", "t3", {"where": ["c1"]}), "producer.t3.where[0]: must be an object {\"sink\": CLUSTER}, "
                                                 "got str"),
    (_with("producer", "t3", {"where": [{"sink": F, "weight": 2}]}), "producer.t3.where[0]: unknown field(s) weight"),
    (_with("producer", "t3", {"where": [{"sink": 7}]}), "producer.t3.where[0].sink: required, a cluster name"),
    (_with("producer", "t3", {"where": [{"sink": F}, {"sink": C}, {"sink": F}]}),
     f"producer.t3.where[2].sink: cluster '{F}' is listed twice"),
    (_with("producer", "t3", {"where": [{"sink": F}, {"sink": "c9"}]}),
     "producer.t3.where[1].sink: unknown cluster 'c9'"),
    # consumer routes
    (_with("consumer", "t,u", [{"vip": F}]), "consumer.t,u: invalid topic name 't,u'"),
    (_with("consumer", "__default__", [{"vip": F}]), "consumer.__default__: a consumer route names one topic"),
    (_with("consumer", "bar", {"vip": F}), "consumer.bar: must be a list of {\"vip\": CLUSTER}, got dict"),
    (_with("consumer", "bar", []), "consumer.bar: needs at least one {\"vip\": CLUSTER}"),
    (_with("consumer", "bar", [F]), "consumer.bar[0]: must be an object {\"vip\": CLUSTER}, got str"),
    (_with("consumer", "bar", [{"vip": F, "lag": 0}]), "consumer.bar[0]: unknown field(s) lag"),
    (_with("consumer", "bar", [{}]), "consumer.bar[0].vip: required, a cluster name"),
    (_with("consumer", "bar", [{"vip": C}, {"vip": C}]), f"consumer.bar[1].vip: cluster '{C}' is listed twice"),
    (_with("consumer", "bar", [{"vip": F}, {"vip": "c9"}]), "consumer.bar[1].vip: unknown cluster 'c9'"),
])
def test_invalid_document_is_refused_naming_key_and_reason(doc: Any, message: str) -> None:
    assert _refused(doc).startswith(message)


def test_a_removed_cluster_still_used_by_a_route_of_the_base_is_refused() -> None:
    base = Mapping.from_document(_doc())
    assert _refused({"clusters": {F: {"bootstrap": "h:1"}}}, base) == (
        f"producer.__default__.where[1].sink: unknown cluster '{C}'")


def test_mapping_file_errors_name_the_file_and_line(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(DESIGN_EXAMPLE)
    assert load_file(good) == Mapping.from_document(_doc())

    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "producer": {\n    "t1": {"where": [{"sink": "c1"}]},\n  }\n}\n')
    with pytest.raises(MappingError) as e:
        read_document(bad)
    assert str(e.value) == f"{bad}:4:3: not valid JSON: Expecting property name enclosed in double quotes"

    twice = tmp_path / "twice.json"
    twice.write_text('{"producer": {"t1": {"where": [{"sink": "c1"}]}, "t1": {"where": [{"sink": "c2"}]}}}')
    with pytest.raises(MappingError) as e:
        read_document(twice)
    assert str(e.value) == f"{twice}: not a valid mapping: key 't1' appears twice in one object"

    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(MappingError) as e:
        read_document(empty)
    assert str(e.value) == f"{empty}: no clusters, producer, consumer, router section; nothing to apply"

    with pytest.raises(UsageError) as u:
        read_document(tmp_path / "missing.json")
    assert str(u.value) == f"cannot read mapping file {tmp_path / 'missing.json'}: No such file or directory"


def test_read_document_checks_each_section_but_not_clusters_elsewhere(tmp_path: pathlib.Path) -> None:
    partial = tmp_path / "producer.json"
    partial.write_text('{"producer": {"t1": {"where": [{"sink": "c1"}]}}}')
    assert read_document(partial) == {"producer": {"t1": {"where": [{"sink": "c1"}]}}}   # c1 may be in etcd
    partial.write_text('{"producer": {"t1": {"where": [{"sink": "c1"}], "spread": true}}}')
    with pytest.raises(MappingError, match=r"^producer\.t1\.spread: not supported yet$"):
        read_document(partial)


def test_control_settings_flags_over_environment() -> None:
    env = {"KAFKA_MESH_ETCD": "http://e:1", "KAFKA_MESH_NAMESPACE": "prod"}
    assert ControlSettings.build(env=env) == ControlSettings("http://e:1", "prod")
    assert ControlSettings.build("http://f:2", "dev", env=env) == ControlSettings("http://f:2", "dev")
    assert ControlSettings.build("http://f:2", env={}) == ControlSettings("http://f:2", "default")
    with pytest.raises(UsageError, match="^no etcd endpoint: give --etcd URL or set KAFKA_MESH_ETCD$"):
        ControlSettings.build(env={})


def test_a_route_may_name_at_most_sixteen_sinks() -> None:
    doc = {"where": [{"sink": f"c{i}"} for i in range(17)]}
    with pytest.raises(MappingError, match=r"producer.t1.where: at most 16 sinks, got 17"):
        ProducerRoute.parse("t1", doc)
