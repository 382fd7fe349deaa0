"""`kafka-mesh mapping apply|diff|show` from a shell against the sandbox's real etcd, each test in a namespace of its
own (the sandbox's own clusters are registered in namespace "default", which these tests leave alone)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import uuid
from typing import Any

import pytest

from sidecar.control import mapstore
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev import ports
from sidecar.dev.sandbox import Sandbox


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kafka-mesh", *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=60)


def _read(endpoint: str, prefix: str) -> dict[str, tuple[bytes, int]]:
    """Every key under prefix (or the key itself) with its value and mod_revision."""
    async def go() -> dict[str, tuple[bytes, int]]:
        async with Etcd(endpoint) as etcd:
            items, _ = await etcd.get_prefix(prefix)
            got = {k: await etcd.get(k) for k in items}
            return {k: v for k, v in got.items() if v is not None}

    return asyncio.run(go())


@pytest.fixture
def ns() -> str:
    return f"ns{uuid.uuid4().hex[:8]}"


def _mapping(sandbox: Sandbox) -> dict[str, Any]:
    c1, c2, _ = sandbox.clusters
    return {
        "clusters": {
            "c1": {"bootstrap": c1.bootstrap, "role": "fronting", "config": {"linger.ms": "5"}},
            "c2": {"bootstrap": c2.bootstrap, "role": "consumer", "config": {}},
        },
        "producer": {
            "t1, t2": {"where": [{"sink": "c1"}]},
            "t3": {"where": [{"sink": "c2"}]},
            "__default__": {"where": [{"sink": "c1"}, {"sink": "c2"}]},
        },
        "consumer": {"foo": [{"vip": "c1"}, {"vip": "c2"}]},
    }


def _apply(sandbox: Sandbox, ns: str, path: pathlib.Path, doc: dict[str, Any],
           *extra: str) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(doc, indent=2))
    return _cli("mapping", "apply", str(path), "--etcd", sandbox.etcd_endpoint, "--namespace", ns, *extra)


def _show(sandbox: Sandbox, ns: str) -> dict[str, Any]:
    r = _cli("mapping", "show", "--etcd", sandbox.etcd_endpoint, "--namespace", ns, "--json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_apply_then_show_returns_the_mapping_at_that_revision(sandbox: Sandbox, ns: str,
                                                              tmp_path: pathlib.Path) -> None:
    doc = _mapping(sandbox)
    r = _apply(sandbox, ns, tmp_path / "m.json", doc)
    assert r.returncode == 0, r.stderr
    revision = int(r.stdout.split("revision ")[1].split()[0])
    assert r.stdout == (f"applied mapping at revision {revision} (clusters: 2, producer routes: 3, "
                        "consumer routes: 1)\n")
    # The revision is the apply's own, whatever else etcd stored since (another test's sidecar, the sandbox).
    shown = _show(sandbox, ns)
    assert shown == {"revision": revision, "mapping": doc}

    human = _cli("mapping", "show", "--namespace", ns, env={"KAFKA_MESH_ETCD": sandbox.etcd_endpoint})
    assert human.returncode == 0, human.stderr
    assert json.loads(human.stdout) == doc              # stdout alone is a document that apply takes back
    assert human.stderr == f"kafka-mesh: mapping of namespace {ns} at revision {revision} (under /kafka-mesh/{ns}/)\n"


def test_one_apply_is_one_pointer_swap_over_content_addressed_blobs(sandbox: Sandbox, ns: str,
                                                                   tmp_path: pathlib.Path) -> None:
    r = _apply(sandbox, ns, tmp_path / "m.json", _mapping(sandbox), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"revision": out["revision"], "namespace": ns, "clusters": 2, "producer_routes": 3,
                   "consumer_routes": 1, "router_rules": 0}
    keys = Keys(ns)
    stored = _read(sandbox.etcd_endpoint, keys.root)
    pointer = json.loads(stored.pop(keys.pointer)[0])
    # The pointer is the last write, at the apply's revision; the blobs came before it.
    assert (stored and max(rev for _, rev in stored.values())) < out["revision"] == _read(
        sandbox.etcd_endpoint, keys.pointer)[keys.pointer][1]
    assert pointer["format"] == 1 and sorted(pointer["parts"]) == sorted(
        ["clusters", *(f"producer/{mapstore.bucket(k)}" for k in ("t1, t2", "t3", "__default__")),
         f"consumer/{mapstore.bucket('foo')}"])
    assert sorted(stored) == sorted(keys.blob(i) for ids in pointer["parts"].values() for i in ids)
    assert all(mapstore.blob_id(v) == k.rsplit("/", 1)[1] for k, (v, _) in stored.items())


def test_expect_revision_refuses_a_mapping_changed_since(sandbox: Sandbox, ns: str, tmp_path: pathlib.Path) -> None:
    doc = _mapping(sandbox)
    first = _apply(sandbox, ns, tmp_path / "m.json", doc, "--json", "--expect-revision", "0")
    assert first.returncode == 0, first.stderr
    revision = json.loads(first.stdout)["revision"]
    doc["producer"]["t3"] = {"where": [{"sink": "c1"}]}
    stale = _apply(sandbox, ns, tmp_path / "m.json", doc, "--expect-revision", str(revision - 1))
    assert (stale.returncode, stale.stdout) == (3, "")
    assert stale.stderr == (f"kafka-mesh: error: the mapping is at revision {revision}, not {revision - 1} as "
                            "expected: it changed since; look at it again (`kafka-mesh mapping show`) and retry\n")
    assert _show(sandbox, ns)["revision"] == revision
    ok = _apply(sandbox, ns, tmp_path / "m.json", doc, "--json", "--expect-revision", str(revision))
    assert ok.returncode == 0, ok.stderr
    assert _show(sandbox, ns) == {"revision": json.loads(ok.stdout)["revision"], "mapping": doc}


def test_diff_prints_what_apply_would_change_and_the_revision_to_expect(sandbox: Sandbox, ns: str,
                                                                      tmp_path: pathlib.Path) -> None:
    doc = _mapping(sandbox)
    doc["clusters"]["c1"]["config"]["sasl.password"] = "old-secret"
    first = _apply(sandbox, ns, tmp_path / "m.json", doc, "--json")
    assert first.returncode == 0, first.stderr
    revision = json.loads(first.stdout)["revision"]
    doc["clusters"]["c1"]["config"]["sasl.password"] = "new-secret"
    doc["producer"]["t3"] = {"where": [{"sink": "c1"}]}
    doc["producer"]["t9"] = {"where": [{"sink": "c2"}]}
    del doc["consumer"]["foo"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    args = ["--etcd", sandbox.etcd_endpoint, "--namespace", ns]
    human = _cli("mapping", "diff", str(path), *args)
    assert human.returncode == 0, human.stderr
    c1 = {"bootstrap": doc["clusters"]["c1"]["bootstrap"], "config": {"linger.ms": "5", "sasl.password": "***"},
          "role": "fronting"}
    assert human.stdout.splitlines() == [
        f"~ clusters.c1  {json.dumps(c1)} -> {json.dumps(c1)}",       # a secret changed: shown, never printed
        '~ producer.t3  {"where": [{"sink": "c2"}]} -> {"where": [{"sink": "c1"}]}',
        '+ producer.t9  {"where": [{"sink": "c2"}]}',
        '- consumer.foo  [{"vip": "c1"}, {"vip": "c2"}]']
    assert human.stderr == (f"kafka-mesh: 4 change(s) against the mapping at revision {revision}; apply with: "
                            f"kafka-mesh mapping apply {path} --expect-revision {revision}\n")
    assert "secret" not in human.stdout + human.stderr
    as_json = json.loads(_cli("mapping", "diff", str(path), *args, "--json").stdout)
    assert as_json["revision"] == revision and [(c["op"], c["section"], c["key"]) for c in as_json["changes"]] == [
        ("~", "clusters", "c1"), ("~", "producer", "t3"), ("+", "producer", "t9"), ("-", "consumer", "foo")]
    assert _show(sandbox, ns)["revision"] == revision                 # diff wrote nothing
    applied = _apply(sandbox, ns, path, doc, "--json", "--expect-revision", str(revision))
    assert applied.returncode == 0, applied.stderr
    again = _cli("mapping", "diff", str(path), *args)
    assert (again.stdout, again.stderr) == ("", f"kafka-mesh: no changes against the mapping at revision "
                                                f"{json.loads(applied.stdout)['revision']}\n")


def test_second_apply_that_drops_a_route_removes_it(sandbox: Sandbox, ns: str, tmp_path: pathlib.Path) -> None:
    doc = _mapping(sandbox)
    assert _apply(sandbox, ns, tmp_path / "m.json", doc).returncode == 0
    del doc["producer"]["t3"]
    del doc["consumer"]["foo"]
    doc["producer"]["t1,t2,t3"] = doc["producer"].pop("t1, t2")       # a renamed key is a new key
    r = _apply(sandbox, ns, tmp_path / "m.json", doc, "--json")
    assert r.returncode == 0, r.stderr
    revision = json.loads(r.stdout)["revision"]
    assert _show(sandbox, ns) == {"revision": revision, "mapping": doc}
    pointer = json.loads(_read(sandbox.etcd_endpoint, Keys(ns).pointer)[Keys(ns).pointer][0])
    assert sorted(pointer["parts"]) == sorted(["clusters", f"producer/{mapstore.bucket('__default__')}",
                                               f"producer/{mapstore.bucket('t1,t2,t3')}"])


def test_producer_only_file_is_checked_against_the_clusters_in_etcd(sandbox: Sandbox, ns: str,
                                                                    tmp_path: pathlib.Path) -> None:
    doc = _mapping(sandbox)
    assert _apply(sandbox, ns, tmp_path / "m.json", doc).returncode == 0

    ok = _apply(sandbox, ns, tmp_path / "p.json", {"producer": {"t9": {"where": [{"sink": "c2"}]}}})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.endswith("(clusters: 2, producer routes: 1, consumer routes: 1)\n")   # the rest as it was
    before = _read(sandbox.etcd_endpoint, Keys(ns).root)

    bad = _apply(sandbox, ns, tmp_path / "p.json", {"producer": {"t1": {"where": [{"sink": "c9"}]}}})
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "kafka-mesh: error: producer.t1.where[0].sink: unknown cluster 'c9'\n"
    assert _read(sandbox.etcd_endpoint, Keys(ns).root) == before      # nothing written, nothing deleted

    # A clusters-only file may not drop a cluster that a route it leaves in etcd still uses.
    gone = _apply(sandbox, ns, tmp_path / "c.json", {"clusters": {"c1": doc["clusters"]["c1"]}})
    assert gone.returncode == 2
    assert gone.stderr.startswith("kafka-mesh: error: producer.t9.where[0].sink: unknown cluster 'c2' (in the "
                                  "producer section that etcd holds at revision ")
    assert _read(sandbox.etcd_endpoint, Keys(ns).root) == before


def _rule(source: str, sink: str, **fields: Any) -> dict[str, Any]:
    """A router rule written out in full, as `show` prints it."""
    return {"topics": ["orders", "refunds"], "from": [{"source": source}], "where": [{"sink": sink}],
            "steps": [{"filter": {"header": "region", "equals": "eu"}}, {"rename": {"prefix": "eu."}}],
            "dead_letter": "orders-eu.dead-letter", "router": "main", **fields}


def test_a_router_section_is_applied_read_back_from_etcd_and_diffed(sandbox: Sandbox, ns: str,
                                                                    tmp_path: pathlib.Path) -> None:
    doc = {**_mapping(sandbox), "router": {"orders-eu": _rule("c1", "c2")}}
    r = _apply(sandbox, ns, tmp_path / "m.json", doc)
    assert r.returncode == 0, r.stderr
    revision = int(r.stdout.split("revision ")[1].split()[0])
    assert r.stdout == (f"applied mapping at revision {revision} (clusters: 2, producer routes: 3, "
                        "consumer routes: 1, router rules: 1)\n")
    assert _show(sandbox, ns) == {"revision": revision, "mapping": doc}
    # In etcd: one part of its own, holding the section as written.
    keys = Keys(ns)
    stored = _read(sandbox.etcd_endpoint, keys.root)
    parts = json.loads(stored[keys.pointer][0])["parts"]
    blobs = {k.rsplit("/", 1)[1]: v for k, (v, _) in stored.items() if k != keys.pointer}
    assert mapstore.decode_part("router", parts["router"], blobs, "test") == doc["router"]

    # A file without the section leaves it as it is; defaults are filled as the rule is stored.
    ok = _apply(sandbox, ns, tmp_path / "p.json", {"producer": {"t9": {"where": [{"sink": "c2"}]}}})
    assert ok.returncode == 0 and ok.stdout.endswith("router rules: 1)\n"), ok.stderr
    assert _show(sandbox, ns)["mapping"]["router"] == doc["router"]
    # A file without the section may not drop a cluster that a rule it leaves in etcd reads.
    gone = _apply(sandbox, ns, tmp_path / "c.json", {"clusters": {"c2": doc["clusters"]["c2"]}, "producer": {},
                                                     "consumer": {}})
    assert gone.returncode == 2
    assert gone.stderr.startswith("kafka-mesh: error: router.orders-eu.from[0].source: unknown cluster 'c1' (in the "
                                  "router section that etcd holds at revision ")

    # A router-only file: its rules are diffed one by one, each written out in full (defaults filled).
    changed = {"router": {"orders-eu": _rule("c1", "c1"),
                          "audit": {"topics": ["audit"], "from": [{"source": "c2"}], "where": [{"sink": "c1"}]}}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(changed))
    args = ["--etcd", sandbox.etcd_endpoint, "--namespace", ns]
    diff = _cli("mapping", "diff", str(path), *args)
    assert diff.returncode == 0, diff.stderr
    audit = {"dead_letter": "audit.dead-letter", "from": [{"source": "c2"}], "router": "main", "steps": [],
             "topics": ["audit"], "where": [{"sink": "c1"}]}
    before, after = (json.dumps(d, sort_keys=True) for d in (_rule("c1", "c2"), _rule("c1", "c1")))
    assert diff.stdout.splitlines() == [
        f"+ router.audit  {json.dumps(audit)}",
        f"~ router.orders-eu  {before} -> {after}"]
    applied = _apply(sandbox, ns, path, changed, "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["router_rules"] == 2
    assert _show(sandbox, ns)["mapping"]["router"] == {"audit": audit, "orders-eu": _rule("c1", "c1")}

    # Rules that copy records in a cycle are refused, and nothing is written.
    before_cycle = _read(sandbox.etcd_endpoint, keys.root)
    cycle = {"router": {"there": {"topics": ["x"], "from": [{"source": "c1"}], "where": [{"sink": "c2"}]},
                        "back": {"topics": ["x"], "from": [{"source": "c2"}], "where": [{"sink": "c1"}]}}}
    bad = _apply(sandbox, ns, tmp_path / "r.json", cycle)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == ("kafka-mesh: error: router: rule(s) there, back copy records in a cycle (c1/x -[there]-> "
                          "c2/x -[back]-> c1/x, as cluster/topic); records would be copied forever\n")
    assert _read(sandbox.etcd_endpoint, keys.root) == before_cycle


def test_invalid_file_is_refused_before_etcd_is_contacted(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"producer": {"t1": {"where": [{"sink": "c1"}], "spread": true}}}')
    r = _cli("mapping", "apply", str(path), "--etcd", f"http://127.0.0.1:{ports.allocate(1)[0]}")
    assert (r.returncode, r.stderr) == (2, "kafka-mesh: error: producer.t1.spread: not supported yet\n")


def test_unreachable_etcd_is_exit_1_naming_the_endpoint(tmp_path: pathlib.Path) -> None:
    endpoint = f"http://127.0.0.1:{ports.allocate(1)[0]}"          # nothing listens there
    path = tmp_path / "m.json"
    path.write_text('{"clusters": {"c1": {"bootstrap": "127.0.0.1:9092"}}}')
    for args in (["apply", str(path)], ["show"]):
        r = _cli("mapping", *args, "--etcd", endpoint)
        assert r.returncode == 1, r.stderr
        assert r.stdout == ""
        assert len(r.stderr.splitlines()) == 1
        assert r.stderr.startswith(f"kafka-mesh: error: etcd at {endpoint}: ")
