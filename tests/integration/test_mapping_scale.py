"""The mapping at 100,000 topics against the sandbox's etcd (started with etcd's default request limits): applied
through `kafka-mesh mapping apply`, one route changed while a Produce stream runs, and a whole new mapping that a
watching sidecar only ever sees whole."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import uuid
from typing import Any

from sidecar.config import SidecarSettings
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.control.source import MappingSource
from sidecar.dev.sandbox import Sandbox
from sidecar.manage import mapping as mapping_store
from sidecar.mapping.model import Mapping
from tests.integration.kafka_helpers import read_records
from tests.integration.sidecar_proc import clusters_doc, new_namespace, produce_across_change

TOPICS = 100_000


def _document(sandbox: Sandbox, sinks: list[str], special: dict[str, str] | None = None,
              prefix: str = "scale") -> dict[str, Any]:
    """TOPICS producer and consumer routes, topic prefix-i to sinks[i % len(sinks)]; special: topic -> its one
    sink."""
    producer = {f"{prefix}-{i:06d}": {"where": [{"sink": sinks[i % len(sinks)]}]} for i in range(TOPICS)}
    consumer = {f"{prefix}-{i:06d}": [{"vip": sinks[i % len(sinks)]}] for i in range(TOPICS)}
    for topic, sink in (special or {}).items():
        producer[topic] = {"where": [{"sink": sink}]}
    return {"clusters": clusters_doc(sandbox), "producer": producer, "consumer": consumer}


def _cli_apply(sandbox: Sandbox, ns: str, path: pathlib.Path, doc: dict[str, Any], *extra: str) -> dict[str, Any]:
    path.write_text(json.dumps(doc))
    r = subprocess.run(["kafka-mesh", "mapping", "apply", str(path), "--json", "--etcd", sandbox.etcd_endpoint,
                        "--namespace", ns, *extra], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_a_100k_topic_mapping_applied_by_the_cli_then_one_route_changed_under_produce(
        sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: pathlib.Path) -> None:
    ns = new_namespace()
    doc = _document(sandbox, ["c1", "c2", "c3"], {topic: "c1"})
    first = _cli_apply(sandbox, ns, tmp_path / "m.json", doc)
    assert first == {"revision": first["revision"], "namespace": ns, "clusters": 3, "producer_routes": TOPICS + 1,
                     "consumer_routes": TOPICS, "router_rules": 0}
    sc = sidecar_factory(ns)
    changed: list[dict[str, Any]] = []

    def change() -> None:
        doc["producer"][topic] = {"where": [{"sink": "c2"}]}
        changed.append(_cli_apply(sandbox, ns, tmp_path / "m.json", doc, "--expect-revision",
                                  str(first["revision"])))

    by_rev = produce_across_change(sc.target, [topic], change, per_topic=20)
    rev1, rev2 = first["revision"], changed[0]["revision"]
    assert set(by_rev) == {rev1, rev2}, sorted(by_rev)
    # Every record is where the revision it was routed under said, and nowhere else.
    assert read_records(sandbox.clusters[0].bootstrap, [topic], len(by_rev[rev1])) == by_rev[rev1]
    assert read_records(sandbox.clusters[1].bootstrap, [topic], len(by_rev[rev2])) == by_rev[rev2]
    assert f"revision={rev2} changed_topics=1 " in sc.log.read_text()        # applied by the one route changed


def test_a_watching_sidecar_never_routes_by_a_partly_written_mapping(
        sandbox: Sandbox, sidecar_factory: Any, tmp_path: pathlib.Path) -> None:
    """Every one of 100,000 routes moves from c1 to c2 in one apply, its blobs written in many transactions. A
    sidecar producing to topics spread over every part of the mapping routes each batch wholly by the old mapping or
    wholly by the new, and an in-process watcher (the sidecar's own watch code) applies only those two mappings."""
    ns = new_namespace()
    keys = Keys(ns)
    prefix = f"atomic-{uuid.uuid4().hex[:8]}"            # topics of this run only: Kafka keeps what runs wrote
    sample = [f"{prefix}-{i:06d}" for i in range(0, TOPICS, TOPICS // 40)]
    old, new = _document(sandbox, ["c1"], prefix=prefix), _document(sandbox, ["c2"], prefix=prefix)

    async def apply(doc: dict[str, Any]) -> int:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            return await mapping_store.apply(etcd, keys, doc)

    rev_old = asyncio.run(apply(old))
    sc = sidecar_factory(ns)
    seen: list[tuple[int, int, set[tuple[str, ...]]]] = []

    def record(mapping: Mapping) -> None:
        seen.append((mapping.revision, len(mapping.routes), set(mapping.routes.values())))

    async def watch_while_applying() -> int:
        source = MappingSource(SidecarSettings(etcd=sandbox.etcd_endpoint, namespace=ns,
                                               cache_dir=tmp_path / "cache"), record)
        await source.start()
        try:
            rev = await apply(new)
            for _ in range(600):
                if source.applied_revision >= rev:
                    break
                await asyncio.sleep(0.05)
            return rev
        finally:
            await source.stop()

    revs: list[int] = []
    by_rev = produce_across_change(sc.target, sample, lambda: revs.append(asyncio.run(watch_while_applying())),
                                   pause_s=0.005)
    rev_new = revs[0]
    assert seen == [(rev_old, TOPICS, {("c1",)}), (rev_new, TOPICS, {("c2",)})]
    assert set(by_rev) == {rev_old, rev_new}, sorted(by_rev)
    in_c1 = read_records(sandbox.clusters[0].bootstrap, sample, len(by_rev[rev_old]))
    in_c2 = read_records(sandbox.clusters[1].bootstrap, sample, len(by_rev[rev_new]))
    assert (in_c1, in_c2) == (by_rev[rev_old], by_rev[rev_new])
