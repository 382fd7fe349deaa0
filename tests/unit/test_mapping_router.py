"""The mapping's router section: every step parsed, every refusal with the key path and the reason, what a rule does
to a topic's name before any record is read (target_topic, runtime_steps), cycles across rules, and the section
through the document, the store's parts, the sidecar's watch and its on-disk cache."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest

from sidecar.config import SidecarSettings
from sidecar.control import mapstore
from sidecar.control.source import MappingSource, parse_changes, parse_whole
from sidecar.errors import MappingError
from sidecar.mapping.model import SECTIONS, Mapping
from sidecar.mapping.router import (
    DEFAULT_ROUTER,
    AddHeaders,
    DropHeaders,
    Filter,
    Rekey,
    Rename,
    RouterRule,
    Sample,
    check_rules,
)

# The README's example, verbatim.
EXAMPLE = """
    {
      "orders-eu": {
        "topics": ["orders", "refunds"],
        "from": [{"source": "fronting-1"}],
        "where": [{"sink": "consumer-1"}, {"sink": "consumer-2"}],
        "steps": [
          {"filter": {"header": "region", "equals": "eu"}},
          {"rename": {"prefix": "eu."}}
        ],
        "dead_letter": "orders-eu.dead-letter",
        "router": "main"
      }
    }
"""
CLUSTERS = {name: {"bootstrap": f"127.0.0.1:{9092 + i}"}
            for i, name in enumerate(["fronting-1", "fronting-2", "consumer-1", "consumer-2"])}


def _doc(router: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"clusters": copy.deepcopy(CLUSTERS), "producer": {"t1": {"where": [{"sink": "fronting-1"}]}},
            "consumer": {}, "router": json.loads(EXAMPLE) if router is None else router}


def _rule(**fields: Any) -> dict[str, Any]:
    """A minimal valid rule, with fields in place of its own."""
    return {"topics": ["orders"], "from": [{"source": "fronting-1"}], "where": [{"sink": "consumer-1"}], **fields}


def _refused(name: str, value: Any) -> str:
    with pytest.raises(MappingError) as e:
        RouterRule.parse(name, value)
    return str(e.value)


def test_the_readme_example_parses_with_every_field() -> None:
    m = Mapping.from_document(_doc())
    assert m.router == {"orders-eu": RouterRule(
        name="orders-eu", topics=("orders", "refunds"), sources=("fronting-1",), sinks=("consumer-1", "consumer-2"),
        steps=(Filter(header="region", equals=b"eu"), Rename(prefix="eu.")),
        dead_letter="orders-eu.dead-letter", router="main")}
    assert m.counts() == {"clusters": 4, "producer_routes": 1, "consumer_routes": 0, "router_rules": 1}
    assert "router" in SECTIONS


def test_the_readme_shows_this_example() -> None:
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("### The `router` section", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads("{" + block + "}") == {"router": json.loads(EXAMPLE)}


def test_defaults_are_filled_and_written_out() -> None:
    rule = RouterRule.parse("r1", _rule())
    assert rule == RouterRule("r1", ("orders",), ("fronting-1",), ("consumer-1",), (), "r1.dead-letter", "main")
    assert DEFAULT_ROUTER == "main"
    assert rule.to_json() == {"topics": ["orders"], "from": [{"source": "fronting-1"}],
                              "where": [{"sink": "consumer-1"}], "steps": [], "dead_letter": "r1.dead-letter",
                              "router": "main"}
    # Made directly, without parse: its dead-letter topic is written as parse would have filled it.
    assert RouterRule("r1", ("orders",), ("fronting-1",), ("consumer-1",)).to_json() == rule.to_json()


@pytest.mark.parametrize("step, parsed", [
    ({"filter": {"topic": "orders"}}, Filter(topic="orders")),
    ({"filter": {"key_prefix": "cust-é"}}, Filter(key_prefix="cust-é".encode())),
    ({"filter": {"key_prefix": ""}}, Filter(key_prefix=b"")),
    ({"filter": {"header": "region"}}, Filter(header="region")),
    ({"filter": {"header": "region", "equals": ""}}, Filter(header="region", equals=b"")),
    ({"filter": {"topic": "orders", "key_prefix": "k", "header": "h", "equals": "v"}},
     Filter(topic="orders", key_prefix=b"k", header="h", equals=b"v")),
    ({"rename": {"to": "orders-copy"}}, Rename(to="orders-copy")),
    ({"rename": {"prefix": "eu."}}, Rename(prefix="eu.")),
    ({"rekey": {"header": "customer"}}, Rekey("customer")),
    ({"drop_headers": ["trace", "span"]}, DropHeaders(("trace", "span"))),
    ({"add_headers": {"copied-by": "router", "zone": "ü"}}, AddHeaders((("copied-by", b"router"),
                                                                        ("zone", "ü".encode())))),
    ({"sample": {"one_in": 1}}, Sample(1)),
    ({"sample": {"one_in": 2**31 - 1}}, Sample(2**31 - 1)),
])
def test_every_step_parses_and_round_trips(step: dict[str, Any], parsed: Any) -> None:
    rule = RouterRule.parse("r1", _rule(steps=[step]))
    assert rule.steps == (parsed,)
    assert rule.to_json()["steps"] == [step]
    assert RouterRule.parse("r1", rule.to_json()) == rule


R = "router.r1"


@pytest.mark.parametrize("name, value, message", [
    # the rule and its fields
    ("a/b", _rule(), "router.a/b: invalid router rule name 'a/b': use 1-128 characters of [A-Za-z0-9._-], starting "
                     "with a letter or digit"),
    ("r1", [], f"{R}: must be an object with 'topics', 'from' and 'where', got list"),
    ("r1", _rule(to="x"), f"{R}: unknown field(s) to"),
    ("r1", {"from": [{"source": "a"}], "where": [{"sink": "b"}]},
     f"{R}.topics: required, a list of topic names, got null"),
    ("r1", _rule(topics=[]), f"{R}.topics: needs at least one topic"),
    ("r1", _rule(topics=["orders", 7]), f"{R}.topics[1]: must be a topic name, got int"),
    ("r1", _rule(topics=["orders", "a b"]),
     f"{R}.topics[1]: invalid topic name 'a b': use 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'"),
    ("r1", _rule(topics=["orders", "orders"]), f"{R}.topics[1]: topic 'orders' is listed twice"),
    ("r1", _rule(**{"from": None}), f'{R}.from: required, a list of {{"source": CLUSTER}}, got null'),
    ("r1", _rule(**{"from": []}), f'{R}.from: needs at least one {{"source": CLUSTER}}'),
    ("r1", _rule(**{"from": ["a"]}), f'{R}.from[0]: must be an object {{"source": CLUSTER}}, got str'),
    ("r1", _rule(**{"from": [{"source": "a", "lag": 1}]}), f"{R}.from[0]: unknown field(s) lag"),
    ("r1", _rule(**{"from": [{"source": ""}]}), f"{R}.from[0].source: required, a cluster name"),
    ("r1", _rule(**{"from": [{"source": "a"}, {"source": "a"}]}), f"{R}.from[1].source: cluster 'a' is listed twice"),
    ("r1", _rule(where={"sink": "a"}), f'{R}.where: required, a list of {{"sink": CLUSTER}}, got dict'),
    ("r1", _rule(where=[]), f'{R}.where: needs at least one {{"sink": CLUSTER}}'),
    ("r1", _rule(where=[{"sink": f"c{i}"} for i in range(17)]), f"{R}.where: at most 16 sinks, got 17"),
    ("r1", _rule(where=[{"sink": "a"}, {"sink": "a"}]), f"{R}.where[1].sink: cluster 'a' is listed twice"),
    ("r1", _rule(where=[{}]), f"{R}.where[0].sink: required, a cluster name"),
    ("r1", _rule(steps={}), f"{R}.steps: must be a list of steps, got dict"),
    ("r1", _rule(dead_letter=None), f"{R}.dead_letter: must be a topic name, got null"),
    ("r1", _rule(dead_letter=".."), f"{R}.dead_letter: invalid topic name '..'"),
    ("r1", _rule(router=1), f"{R}.router: must be a router name, got int"),
    ("r1", _rule(router="-x"), f"{R}.router: invalid router name '-x': use 1-128 characters"),
    # steps
    ("r1", _rule(steps=[{"rename": {"to": "x"}}, {"sample": {"one_in": 2}}, {"foo": {}}]),
     f"{R}.steps[2]: unknown step 'foo'; steps are filter, rename, rekey, drop_headers, add_headers, sample"),
    ("r1", _rule(steps=[{}]), f"{R}.steps[0]: must be an object of one key, the step's name (filter, rename, rekey, "
                              "drop_headers, add_headers, sample), got 0 keys"),
    ("r1", _rule(steps=[{"rekey": {"header": "h"}, "sample": {"one_in": 2}}]),
     f"{R}.steps[0]: must be an object of one key, the step's name"),
    ("r1", _rule(steps=["filter"]), f"{R}.steps[0]: must be an object of one key, the step's name (filter, rename, "
                                    "rekey, drop_headers, add_headers, sample), got str"),
    ("r1", _rule(steps=[{"filter": []}]), f"{R}.steps[0].filter: must be an object with one or more of 'topic', "
                                          "'key_prefix', 'header' (and 'equals'), got list"),
    ("r1", _rule(steps=[{"filter": {}}]), f"{R}.steps[0].filter: needs at least one of 'topic', 'key_prefix', "
                                          "'header'"),
    ("r1", _rule(steps=[{"filter": {"value": "x"}}]), f"{R}.steps[0].filter: unknown field(s) value"),
    ("r1", _rule(steps=[{"filter": {"equals": "eu"}}]),
     f"{R}.steps[0].filter.equals: needs 'header', the header whose value it compares"),
    ("r1", _rule(steps=[{"filter": {"key_prefix": "k", "equals": "eu"}}]),
     f"{R}.steps[0].filter.equals: needs 'header', the header whose value it compares"),
    ("r1", _rule(steps=[{"filter": {"topic": "a b"}}]), f"{R}.steps[0].filter.topic: invalid topic name 'a b'"),
    ("r1", _rule(steps=[{"filter": {"topic": 1}}]), f"{R}.steps[0].filter.topic: must be a topic name, got int"),
    ("r1", _rule(steps=[{"filter": {"key_prefix": 1}}]), f"{R}.steps[0].filter.key_prefix: must be a string, got int"),
    ("r1", _rule(steps=[{"filter": {"key_prefix": "\ud800"}}]),
     f"{R}.steps[0].filter.key_prefix: not valid UTF-8 (a lone surrogate escape)"),
    ("r1", _rule(steps=[{"filter": {"header": ""}}]),
     f"{R}.steps[0].filter.header: must be a header name, a non-empty string, got ''"),
    ("r1", _rule(steps=[{"filter": {"header": "h", "equals": None}}]),
     f"{R}.steps[0].filter.equals: must be a string, got null"),
    ("r1", _rule(steps=[{"rename": {}}]), f"{R}.steps[0].rename: give exactly one of 'to' (the new topic name) and "
                                          "'prefix' (put before the topic's name), got 0"),
    ("r1", _rule(steps=[{"rename": {"to": "a", "prefix": "b"}}]), f"{R}.steps[0].rename: give exactly one of 'to'"),
    ("r1", _rule(steps=[{"rename": {"suffix": "b"}}]), f"{R}.steps[0].rename: unknown field(s) suffix"),
    ("r1", _rule(steps=[{"rename": {"to": "a:b"}}]), f"{R}.steps[0].rename.to: invalid topic name 'a:b'"),
    ("r1", _rule(steps=[{"rename": {"prefix": ""}}]), f"{R}.steps[0].rename.prefix: must be a non-empty string of "
                                                      "[a-zA-Z0-9._-] (it begins a topic name), got ''"),
    ("r1", _rule(steps=[{"rename": {"prefix": "eu/"}}]), f"{R}.steps[0].rename.prefix: must be a non-empty string"),
    ("r1", _rule(steps=[{"rekey": {}}]),
     f"{R}.steps[0].rekey.header: required, the header whose value becomes the record's key"),
    ("r1", _rule(steps=[{"rekey": {"header": "h", "key": "k"}}]), f"{R}.steps[0].rekey: unknown field(s) key"),
    ("r1", _rule(steps=[{"drop_headers": []}]),
     f"{R}.steps[0].drop_headers: must be a non-empty list of header names, got []"),
    ("r1", _rule(steps=[{"drop_headers": "trace"}]),
     f"{R}.steps[0].drop_headers: must be a non-empty list of header names, got 'trace'"),
    ("r1", _rule(steps=[{"drop_headers": ["a", ""]}]),
     f"{R}.steps[0].drop_headers[1]: must be a header name, a non-empty string, got ''"),
    ("r1", _rule(steps=[{"drop_headers": ["a", "a"]}]), f"{R}.steps[0].drop_headers[1]: header 'a' is listed twice"),
    ("r1", _rule(steps=[{"add_headers": {}}]),
     f"{R}.steps[0].add_headers: must be a non-empty object of header name to string value, got {{}}"),
    ("r1", _rule(steps=[{"add_headers": {"a": 1}}]), f"{R}.steps[0].add_headers.a: must be a string, got int"),
    ("r1", _rule(steps=[{"add_headers": {"": "v"}}]),
     f"{R}.steps[0].add_headers.: must be a header name, a non-empty string, got ''"),
    ("r1", _rule(steps=[{"sample": {"one_in": 0}}]), f"{R}.steps[0].sample.one_in: required, an integer from 1 to "
                                                     "2147483647 (one record in that many is kept), got 0"),
    ("r1", _rule(steps=[{"sample": {"one_in": 2**31}}]), f"{R}.steps[0].sample.one_in: required, an integer from 1"),
    ("r1", _rule(steps=[{"sample": {"one_in": True}}]), f"{R}.steps[0].sample.one_in: required, an integer from 1 to "
                                                        "2147483647 (one record in that many is kept), got True"),
    ("r1", _rule(steps=[{"sample": {"one_in": 2.0}}]), f"{R}.steps[0].sample.one_in: required, an integer"),
    ("r1", _rule(steps=[{"sample": {}}]), f"{R}.steps[0].sample.one_in: required, an integer from 1 to 2147483647 "
                                          "(one record in that many is kept), got None"),
    ("r1", _rule(steps=[{"sample": {"one_in": 2, "seed": 1}}]), f"{R}.steps[0].sample: unknown field(s) seed"),
    # what the steps do to the names
    ("r1", _rule(topics=["orders", "x" * 247], steps=[{"rename": {"prefix": "eu."}}]),
     f"{R}.steps[0].rename.prefix: renames topic '{'x' * 247}' to a name of 250 characters; a topic name has at "
     "most 249"),
    ("r1", _rule(topics=["orders", "refunds"], steps=[{"filter": {"topic": "audit"}}]),
     f"{R}: no topic of orders, refunds passes the steps' topic filters; the rule would copy nothing"),
    ("r1", _rule(where=[{"sink": "consumer-1"}, {"sink": "fronting-1"}]),
     f"{R}: topic 'orders' would be copied from cluster 'fronting-1' onto itself (the cluster is both a source and a "
     "sink, and the steps keep the topic's name); records would be copied forever"),
    ("r1", _rule(topics=["orders", "eu"], steps=[{"rename": {"to": "eu"}}], where=[{"sink": "fronting-1"}]),
     f"{R}: topic 'eu' would be copied from cluster 'fronting-1' onto itself"),
    ("r1", _rule(dead_letter="orders"), f"{R}.dead_letter: 'orders' is a topic the rule copies records to; records "
                                        "a step cannot process need a topic of their own"),
    ("r1", _rule(dead_letter="eu.orders", steps=[{"rename": {"prefix": "eu."}}]),
     f"{R}.dead_letter: 'eu.orders' is a topic the rule copies records to"),
    ("r1", _rule(topics=["orders", "refunds"], dead_letter="refunds", steps=[{"rename": {"prefix": "eu."}}],
                 where=[{"sink": "fronting-1"}]),
     f"{R}.dead_letter: 'refunds' is a topic the rule reads, and cluster 'fronting-1' is both a source and a sink: a "
     "record a step cannot process would be read back and fail again, forever"),
])
def test_invalid_rule_is_refused_naming_key_path_and_reason(name: str, value: Any, message: str) -> None:
    assert _refused(name, value).startswith(message)


def test_a_rename_with_a_topic_filter_is_checked_only_for_the_topics_that_reach_it() -> None:
    # The long topic never reaches the prefix: the filter before it keeps only "orders".
    rule = RouterRule.parse("r1", _rule(topics=["orders", "x" * 247], steps=[
        {"filter": {"topic": "orders"}}, {"rename": {"prefix": "eu."}}]))
    assert rule.target_topic("x" * 247) is None and rule.target_topic("orders") == "eu.orders"
    # A sink that is also a source is fine once a rename gives the copy a name of its own.
    assert RouterRule.parse("r1", _rule(where=[{"sink": "fronting-1"}], steps=[{"rename": {"prefix": "copy."}}]))


def test_the_static_part_of_the_steps_and_the_runtime_part() -> None:
    rule = RouterRule.parse("r1", _rule(topics=["orders", "refunds", "audit"], steps=[
        {"rename": {"prefix": "eu."}},
        {"filter": {"topic": "eu.orders", "header": "region", "equals": "eu"}},   # the name as it is at this step
        {"rekey": {"header": "customer"}},
        {"rename": {"to": "all-eu"}},
        {"filter": {"topic": "all-eu"}},                                         # always passes: gone at runtime
        {"drop_headers": ["trace"]},
        {"sample": {"one_in": 10}},
    ]))
    assert rule.target_topic("orders") == "all-eu"
    assert rule.target_topic("refunds") is None             # "eu.refunds" is not "eu.orders"
    assert rule.runtime_steps("orders") == (Filter(header="region", equals=b"eu"), Rekey("customer"),
                                            DropHeaders(("trace",)), Sample(10))
    assert rule.runtime_steps("refunds") == ()
    plain = RouterRule.parse("r2", _rule(steps=[{"filter": {"key_prefix": "k"}}, {"add_headers": {"a": "b"}}]))
    assert plain.target_topic("orders") == "orders"
    assert plain.runtime_steps("orders") == plain.steps
    assert RouterRule.parse("r3", _rule()).runtime_steps("orders") == ()


def test_rules_round_trip_through_the_document() -> None:
    router = json.loads(EXAMPLE)
    router["copy-all"] = _rule(topics=["t1", "t2"], steps=[
        {"filter": {"topic": "t1", "key_prefix": "k"}}, {"rekey": {"header": "h"}}, {"drop_headers": ["a"]},
        {"add_headers": {"b": "c"}}, {"sample": {"one_in": 3}}, {"rename": {"to": "merged"}}], router="edge-2")
    m = Mapping.from_document(_doc(router))
    doc = m.to_document()
    assert list(doc) == ["clusters", "producer", "consumer", "router"]
    assert list(doc["router"]) == ["copy-all", "orders-eu"]                 # sorted by name
    assert doc["router"]["orders-eu"] == json.loads(EXAMPLE)["orders-eu"]
    assert doc["router"]["copy-all"] == {**router["copy-all"], "dead_letter": "copy-all.dead-letter"}
    assert Mapping.from_document(doc) == m
    assert [r.name for r in m.rules_for("main")] == ["orders-eu"]
    assert [r.name for r in m.rules_for("edge-2")] == ["copy-all"] and m.rules_for("other") == []
    # A mapping without rules writes no router section: documents of before the section stay as they were.
    assert "router" not in Mapping.from_document({**_doc(), "router": {}}).to_document()


def test_left_out_router_section_is_the_base_s_and_cluster_changes_are_checked_against_it() -> None:
    base = Mapping.from_document(_doc())
    m = Mapping.from_document({"producer": {"t2": {"where": [{"sink": "consumer-1"}]}}}, base)
    assert m.router == base.router
    clusters = {k: v for k, v in CLUSTERS.items() if k != "consumer-2"}
    with pytest.raises(MappingError, match=r"^router\.orders-eu\.where\[1\]\.sink: unknown cluster 'consumer-2'$"):
        Mapping.from_document({"clusters": clusters}, base)
    # Routes changed one by one keep the rules.
    assert base.updated({"t9": {"where": [{"sink": "consumer-1"}]}}, {}, 2).router == base.router


def test_unknown_clusters_are_refused_only_when_references_are_checked() -> None:
    doc = _doc({"r1": _rule(**{"from": [{"source": "fronting-1"}, {"source": "c9"}]})})
    with pytest.raises(MappingError, match=r"^router\.r1\.from\[1\]\.source: unknown cluster 'c9'$"):
        Mapping.from_document(doc)
    assert Mapping.from_document(doc, check_references=False).router["r1"].sources == ("fronting-1", "c9")
    doc = _doc({"r1": _rule(where=[{"sink": "c8"}])})
    with pytest.raises(MappingError, match=r"^router\.r1\.where\[0\]\.sink: unknown cluster 'c8'$"):
        Mapping.from_document(doc)
    partial = Mapping.from_document({"router": doc["router"]}, check_references=False)
    partial.check_clusters_exist(("producer", "consumer"))          # the router section not asked for
    with pytest.raises(MappingError, match=r"^router\.r1\.from\[0\]\.source: unknown cluster 'fronting-1'$"):
        partial.check_clusters_exist()


def _cycle_refused(router: dict[str, Any]) -> str:
    with pytest.raises(MappingError) as e:
        Mapping.from_document(_doc(router))
    return str(e.value)


def test_a_cycle_across_rules_is_refused_naming_them() -> None:
    there = _rule(where=[{"sink": "consumer-1"}])
    back = _rule(**{"from": [{"source": "consumer-1"}]}, where=[{"sink": "fronting-1"}])
    assert _cycle_refused({"there": there, "back": back}) == (
        "router: rule(s) back, there copy records in a cycle (consumer-1/orders -[back]-> fronting-1/orders "
        "-[there]-> consumer-1/orders, as cluster/topic); records would be copied forever")
    # Three rules, through renames: fronting-1/a -> consumer-1/b -> consumer-2/c -> fronting-1/a.
    three = {
        "r-a": _rule(topics=["a"], where=[{"sink": "consumer-1"}], steps=[{"rename": {"to": "b"}}]),
        "r-b": _rule(topics=["b"], **{"from": [{"source": "consumer-1"}]}, where=[{"sink": "consumer-2"}],
                     steps=[{"rename": {"to": "c"}}]),
        "r-c": _rule(topics=["c"], **{"from": [{"source": "consumer-2"}]}, where=[{"sink": "fronting-1"}],
                     steps=[{"rename": {"to": "a"}}]),
    }
    assert _cycle_refused(three) == (
        "router: rule(s) r-b, r-c, r-a copy records in a cycle (consumer-1/b -[r-b]-> consumer-2/c -[r-c]-> "
        "fronting-1/a -[r-a]-> consumer-1/b, as cluster/topic); records would be copied forever")
    # The same rules with the chain broken are fine: a rename, a topic filter that stops the way back, another topic.
    assert Mapping.from_document(_doc({"there": there, "back": {**back, "steps": [{"rename": {"prefix": "x."}}]}}))
    stopped = {**back, "steps": [{"filter": {"topic": "never"}}], "topics": ["orders", "never"]}
    assert Mapping.from_document(_doc({"there": there, "back": stopped}))
    assert Mapping.from_document(_doc({"there": there, "back": {**back, "topics": ["refunds"]}}))


def test_check_rules_follows_long_chains_without_recursion() -> None:
    rules = {f"r{i:04d}": RouterRule.parse(f"r{i:04d}", {
        "topics": [f"t{i}"], "from": [{"source": "a"}], "where": [{"sink": "a"}],
        "steps": [{"rename": {"to": f"t{i + 1}"}}]}) for i in range(5000)}
    check_rules(rules)                                           # a chain, no cycle
    rules["last"] = RouterRule.parse("last", {"topics": ["t5000"], "from": [{"source": "a"}],
                                              "where": [{"sink": "a"}], "steps": [{"rename": {"to": "t0"}}]})
    with pytest.raises(MappingError, match=r"^router: rule\(s\) r0000, r0001, .* copy records in a cycle"):
        check_rules(rules)


def test_the_store_keeps_the_router_section_as_one_part() -> None:
    doc = Mapping.from_document(_doc()).to_document()
    stored = mapstore.split(doc)
    assert sorted(stored.parts) == ["clusters", f"producer/{mapstore.bucket('t1')}", "router"]
    assert mapstore.join(mapstore.parse_pointer(stored.pointer(), "p"), stored.blobs, "p") == doc
    # Without rules there is no router part, and the document read back has no router section, as before.
    plain = Mapping.from_document({**_doc(), "router": {}}).to_document()
    assert "router" not in mapstore.split(plain).parts
    assert mapstore.join(mapstore.split(plain).parts, mapstore.split(plain).blobs, "p") == plain


def test_from_parts_takes_a_router_piece_and_checks_it() -> None:
    doc = Mapping.from_document(_doc()).to_document()
    m = Mapping.from_parts(doc["clusters"], [("producer", doc["producer"]), ("router", doc["router"])])
    assert m == Mapping.from_document(doc)
    with pytest.raises(MappingError, match=r"^router\.orders-eu\.where\[0\]\.sink: unknown cluster 'consumer-1'$"):
        Mapping.from_parts({"fronting-1": CLUSTERS["fronting-1"]}, [("router", doc["router"])])
    there, back = _rule(), _rule(**{"from": [{"source": "consumer-1"}]}, where=[{"sink": "fronting-1"}])
    with pytest.raises(MappingError, match=r"^router: rule\(s\) back, there copy records in a cycle"):
        Mapping.from_parts(doc["clusters"], [("router", {"there": there}), ("router", {"back": back})])


def test_a_router_change_in_etcd_is_parsed_whole_and_the_cache_keeps_it(tmp_path: pathlib.Path) -> None:
    before = Mapping.from_document(_doc()).to_document()
    after = copy.deepcopy(before)
    after["router"]["orders-eu"]["where"] = [{"sink": "consumer-2"}]
    after["router"]["audit"] = _rule(topics=["audit"], router="edge")
    a, b = mapstore.split(before), mapstore.split(after)
    assert [n for n in b.parts if b.parts[n] != a.parts.get(n)] == ["router"]
    old = parse_whole(a.parts, a.blobs, 10, "test")
    assert old.mapping.router == Mapping.from_document(before).router
    assert parse_changes(old, b.parts, b.blobs, 11, "test") is None         # a router change: parsed whole
    new = parse_whole(b.parts, b.blobs, 11, "test")
    assert new.mapping.revision == 11
    assert new.mapping.to_document() == Mapping.from_document(after).to_document()
    assert [r.name for r in new.mapping.rules_for("edge")] == ["audit"]
    # A route change beside the rules is applied route by route, and keeps them.
    routed = copy.deepcopy(after)
    routed["producer"]["t1"] = {"where": [{"sink": "consumer-1"}]}
    c = mapstore.split(routed)
    changed = parse_changes(new, c.parts, c.blobs, 12, "test")
    assert changed is not None and changed.mapping.router == new.mapping.router
    # The rules that refuse a rule refuse it from etcd too, naming the pointer.
    bad = copy.deepcopy(after)
    bad["router"]["audit"]["where"] = [{"sink": "c9"}]
    d = mapstore.split(bad)
    with pytest.raises(MappingError, match=r"^ptr: router\.audit\.where\[0\]\.sink: unknown cluster 'c9'$"):
        parse_whole(d.parts, d.blobs, 13, "ptr")

    source = MappingSource(SidecarSettings(cache_dir=tmp_path), lambda _: None)
    source._write_cache_file(new)
    cached = source._read_cache()
    assert cached is not None and cached.mapping == new.mapping and cached.mapping.router == new.mapping.router
