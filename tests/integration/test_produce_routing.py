"""Produce through the real sidecar process: records land where the mapping in etcd routes them."""

from __future__ import annotations

from typing import Any

from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import read_all
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace, produce


def _ids(sandbox: Sandbox, cluster: int, topic: str, expected: int) -> list[str]:
    return sorted(m.value().decode() for m in read_all(sandbox.clusters[cluster].bootstrap, topic, expected,
                                                        timeout=30 if expected else 3))


def test_topics_land_in_their_routed_clusters_and_a_two_sink_route_writes_both(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    t1, t3, both, other = (f"{topic}-{s}" for s in ("t1", "t3", "both", "other"))
    apply(sandbox, ns, {
        "clusters": clusters_doc(sandbox),
        "producer": {
            t1: {"where": [{"sink": "c1"}]},
            t3: {"where": [{"sink": "c2"}]},
            both: {"where": [{"sink": "c1"}, {"sink": "c2"}]},
            "__default__": {"where": [{"sink": "c3"}]},
        },
    })
    sc = sidecar_factory(ns)
    topics = [t1, t3, both, other]
    requests = [batch(b, [(topics[i % 4], f"{b}-{i}") for i in range(400)]) for b in range(5)]
    responses = produce(sc.target, requests)
    assert sorted(responses) == list(range(5))
    assert all(r.ok_count == 400 and not r.errors for r in responses.values())
    want = {t: sorted(f"{b}-{i}" for b in range(5) for i in range(400) if topics[i % 4] == t) for t in topics}
    assert _ids(sandbox, 0, t1, 500) == want[t1]
    assert _ids(sandbox, 1, t3, 500) == want[t3]
    assert _ids(sandbox, 2, other, 500) == want[other]
    assert _ids(sandbox, 0, both, 500) == want[both] == _ids(sandbox, 1, both, 500)
    # and nowhere else
    assert _ids(sandbox, 1, t1, 0) == [] and _ids(sandbox, 0, t3, 0) == [] and _ids(sandbox, 0, other, 0) == []


def test_a_mapping_file_replaces_etcd(sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: Any) -> None:
    import json

    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"clusters": clusters_doc(sandbox),
                                "producer": {"__default__": {"where": [{"sink": "c2"}]}}}))
    sc = sidecar_factory("unused", "--mapping", str(path), etcd=None)
    [resp] = produce(sc.target, [batch(1, [(topic, "via-file")])]).values()
    assert (resp.ok_count, resp.mapping_revision) == (1, 0)
    assert _ids(sandbox, 1, topic, 1) == ["via-file"]
    assert "serving mapping from file" in sc.log.read_text()
