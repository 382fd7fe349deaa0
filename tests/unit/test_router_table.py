"""The router's compiled table refuses what it cannot run, naming it, and never crashes on hostile programs; the plan
compiles the mapping's rules into programs (no server: producers that point nowhere are never written to)."""

from __future__ import annotations

from typing import Any

import pytest

import meshcore
from sidecar.clientconf import PRODUCER_DEFAULTS
from sidecar.config import RouterSettings
from sidecar.errors import UsageError
from sidecar.mapping.model import Mapping
from sidecar.router.plan import native_steps, plan

pytestmark = pytest.mark.unit

NOWHERE = {**PRODUCER_DEFAULTS, "bootstrap.servers": "127.0.0.1:9"}


@pytest.fixture
def producers() -> Any:
    made = [meshcore.create_producer(name, dict(NOWHERE)) for name in ("c2", "c3")]
    yield made
    for p in made:
        p.close(0)


def program(**over: Any) -> dict[str, Any]:
    return {"rule": 0, "topic": "t.copy", "dead_letter": "r.dead-letter", "sinks": [(0, 3)], "steps": [], **over}


def test_a_table_compiles_every_step_and_counts_nothing_yet(producers: list[Any]) -> None:
    steps = [("filter", b"eu-", "region", b"eu"), ("filter", None, "h", None), ("reject",), ("rekey", "customer"),
             ("drop_header", "trace"), ("add_header", "via", b"\xff\x00binary"), ("sample", 10)]
    table = meshcore.build_router_table("c1", 7, producers, ["r"], {"t": [program(steps=steps)]})
    assert (table.source, table.revision, table.rules, table.topics_read) == ("c1", 7, ("r",), ("t",))
    assert table.counts() == {"r": (0, 0, 0, 0)}


@pytest.mark.parametrize("over, message", [
    ({"rule": 1}, "rule index 1 out of range"),
    ({"rule": -1}, "rule index -1 out of range"),
    ({"sinks": [(2, 3)]}, "producer index 2 out of range"),
    ({"sinks": [(-1, 3)]}, "producer index -1 out of range"),
    ({"sinks": []}, "1 to 16 sinks, got 0"),
    ({"sinks": [(0, 1)] * 17}, "1 to 16 sinks, got 17"),
    ({"steps": [("sample", 0)]}, "sample: one in 0"),
    ({"steps": [("sample", -5)]}, "sample: one in -5"),
    ({"steps": [("explode",)]}, "unknown step 'explode'"),
])
def test_a_program_the_core_cannot_run_is_refused_naming_it(producers: list[Any], over: dict[str, Any],
                                                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        meshcore.build_router_table("c1", 1, producers, ["r"], {"t": [program(**over)]})


@pytest.mark.parametrize("steps", [
    [("filter", "not-bytes", None, None)],
    [("add_header", "h", "not-bytes")],
    [("rekey", None)],
    [("sample", 2**70)],
    [("filter",)],
])
def test_malformed_steps_raise_instead_of_crashing(producers: list[Any], steps: list[Any]) -> None:
    with pytest.raises((TypeError, ValueError, OverflowError, IndexError, AttributeError)):
        meshcore.build_router_table("c1", 1, producers, ["r"], {"t": [program(steps=steps)]})


def test_not_producers_are_refused(producers: list[Any]) -> None:
    with pytest.raises(TypeError):
        meshcore.build_router_table("c1", 1, [object()], ["r"], {"t": [program()]})


DOC = {
    "clusters": {c: {"bootstrap": f"127.0.0.1:{9000 + i}"} for i, c in enumerate(("f1", "f2", "k1", "k2"))},
    "router": {
        "eu": {"topics": ["orders", "refunds"], "from": [{"source": "f1"}, {"source": "f2"}],
               "where": [{"sink": "k1"}, {"sink": "k2"}],
               "steps": [{"filter": {"topic": "orders", "header": "region", "equals": "eu"}},
                         {"rename": {"prefix": "eu."}}, {"add_headers": {"a": "1", "b": "2"}},
                         {"drop_headers": ["x"]}, {"sample": {"one_in": 4}}]},
        "keys": {"topics": ["orders"], "from": [{"source": "f1"}], "where": [{"sink": "k2"}],
                 "steps": [{"rekey": {"header": "customer"}}, {"rename": {"to": "orders.by-customer"}}]},
        "other": {"topics": ["orders"], "from": [{"source": "f1"}], "where": [{"sink": "k1"}], "router": "second"},
    },
}


def test_the_plan_resolves_renames_and_topic_filters_per_source_topic() -> None:
    mapping = Mapping.from_document(DOC)
    p = plan(mapping, "main", {("k1", "eu.orders"): 6, ("k2", "eu.orders"): 4})
    assert p.sinks == ("k1", "k2") and sorted(p.sources) == ["f1", "f2"]
    f1 = p.sources["f1"]
    assert f1.rules == ("eu", "keys") and f1.topics == ["orders", "refunds"]
    eu_orders, keys_orders = f1.programs["orders"]
    assert eu_orders == {"rule": 0, "topic": "eu.orders", "dead_letter": "eu.dead-letter",
                         "sinks": [(0, 6), (1, 4)],
                         "steps": [("filter", None, "region", b"eu"), ("add_header", "a", b"1"),
                                   ("add_header", "b", b"2"), ("drop_header", "x"), ("sample", 4)]}
    assert keys_orders["topic"] == "orders.by-customer" and keys_orders["sinks"] == [(1, 0)]
    assert keys_orders["steps"] == [("rekey", "customer")]
    # refunds fails eu's filter on the topic name: read, and every record counted as filtered
    assert f1.programs["refunds"] == [{"rule": 0, "topic": "refunds", "dead_letter": "eu.dead-letter",
                                       "sinks": [(0, 0), (1, 0)], "steps": [("reject",)]}]
    assert p.sources["f2"].rules == ("eu",)
    assert p.targets() == {("k1", "eu.orders"), ("k2", "eu.orders"), ("k2", "orders.by-customer")}
    assert plan(mapping, "second", {}).sources["f1"].rules == ("other",)
    assert plan(mapping, "nobody", {}).sources == {}


def test_a_plan_compiles_into_a_table(producers: list[Any]) -> None:
    p = plan(Mapping.from_document(DOC), "main", {})
    by_name = {"k1": producers[0], "k2": producers[1]}
    for source, sp in p.sources.items():
        table = meshcore.build_router_table(source, 3, [by_name[s] for s in p.sinks], list(sp.rules), sp.programs)
        assert table.topics_read == tuple(sp.topics)


def test_native_steps_refuse_a_rename() -> None:
    from sidecar.mapping.router import Rename

    with pytest.raises(ValueError, match="not a runtime step"):
        native_steps((Rename(prefix="x."),))


def test_router_settings() -> None:
    s = RouterSettings.build({"etcd": "http://127.0.0.1:2379", "name": "eu", "instance": "h-1"}, env={})
    assert (s.name, s.group, s.instance) == ("eu", "kafka-mesh.router.default.eu", "h-1")
    with pytest.raises(UsageError, match="no mapping source"):
        RouterSettings.build({}, env={})
    with pytest.raises(UsageError, match="either --etcd or --mapping"):
        RouterSettings.build({"etcd": "http://x:1", "mapping_file": "m.json"}, env={})
    with pytest.raises(UsageError, match="invalid router name"):
        RouterSettings.build({"etcd": "http://x:1", "name": "no spaces"}, env={})
    with pytest.raises(UsageError, match="max-inflight-records must be at least 1"):
        RouterSettings.build({"etcd": "http://x:1", "max_inflight_records": "0"}, env={})
