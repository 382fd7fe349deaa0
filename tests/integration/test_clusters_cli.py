"""`kafka-mesh clusters add|list|remove` from a shell against the sandbox's real etcd, in a namespace of its own."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from sidecar.dev.sandbox import Sandbox
from tests.integration.sidecar_proc import apply, new_namespace


def _cli(sandbox: Sandbox, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kafka-mesh", "clusters", *args, "--etcd", sandbox.etcd_endpoint, "--namespace", ns],
                          capture_output=True, text=True, env=dict(os.environ), timeout=60)


def _listed(sandbox: Sandbox, ns: str) -> dict[str, Any]:
    r = _cli(sandbox, ns, "list", "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_add_list_and_remove_with_secrets_never_printed(sandbox: Sandbox) -> None:
    ns = new_namespace()
    boot = sandbox.clusters[0].bootstrap
    r = _cli(sandbox, ns, "add", "c4", "--bootstrap", boot, "--role", "consumer", "--config", "linger.ms=5",
             "--config", "sasl.password=hunter2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"registered cluster c4 (bootstrap {boot}, role consumer) at mapping revision ")
    listed = _listed(sandbox, ns)
    assert listed["clusters"] == [{"name": "c4", "bootstrap": boot, "role": "consumer",
                                   "config": {"linger.ms": "5", "sasl.password": "***"},
                                   "producer_routes": 0, "consumer_routes": 0}]
    human = _cli(sandbox, ns, "list")
    assert human.stdout.splitlines()[1].split() == ["c4", "consumer", boot, "0", "producer,", "0", "consumer",
                                                    "linger.ms=5", "sasl.password=***"]
    assert "hunter2" not in r.stdout + human.stdout + human.stderr

    again = _cli(sandbox, ns, "add", "c4", "--bootstrap", boot)
    assert (again.returncode, again.stderr) == (2, f"kafka-mesh: error: cluster 'c4' is already registered (bootstrap "
                                                   f"{boot}); `kafka-mesh clusters add --replace` redefines it\n")
    assert _cli(sandbox, ns, "add", "c4", "--bootstrap", boot, "--replace").returncode == 0
    assert _listed(sandbox, ns)["clusters"][0]["role"] == "fronting"

    apply(sandbox, ns, {"producer": {"t1": {"where": [{"sink": "c4"}]}}, "consumer": {"t2": [{"vip": "c4"}]}})
    assert [(c["producer_routes"], c["consumer_routes"]) for c in _listed(sandbox, ns)["clusters"]] == [(1, 1)]
    used = _cli(sandbox, ns, "remove", "c4")
    assert (used.returncode, used.stderr) == (2, "kafka-mesh: error: cluster 'c4' is still named by 2 route(s): "
                                                 "producer.t1, consumer.t2; move them (or change the mapping) "
                                                 "first\n")
    apply(sandbox, ns, {"producer": {}, "consumer": {}})
    gone = _cli(sandbox, ns, "remove", "c4", "--json")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["removed"] == "c4" and _listed(sandbox, ns)["clusters"] == []
    unknown = _cli(sandbox, ns, "remove", "c4")
    assert (unknown.returncode, unknown.stderr) == (
        2, f"kafka-mesh: error: no cluster 'c4' in namespace {ns} (registered: none)\n")


def test_remove_is_refused_while_a_router_rule_names_the_cluster(sandbox: Sandbox) -> None:
    ns = new_namespace()
    boot = sandbox.clusters[0].bootstrap
    for name in ("c4", "c5"):
        assert _cli(sandbox, ns, "add", name, "--bootstrap", boot).returncode == 0
    apply(sandbox, ns, {"producer": {"t1": {"where": [{"sink": "c5"}]}},
                        "router": {"copy": {"topics": ["t1"], "from": [{"source": "c4"}], "where": [{"sink": "c5"}]}}})
    source = _cli(sandbox, ns, "remove", "c4")
    assert (source.returncode, source.stderr) == (2, "kafka-mesh: error: cluster 'c4' is still named by 1 router "
                                                     "rule(s): router.copy; move them (or change the mapping) first\n")
    sink = _cli(sandbox, ns, "remove", "c5")
    assert (sink.returncode, sink.stderr) == (2, "kafka-mesh: error: cluster 'c5' is still named by 1 route(s) and 1 "
                                                 "router rule(s): router.copy, producer.t1; move them (or change the "
                                                 "mapping) first\n")
    apply(sandbox, ns, {"router": {}})
    gone = _cli(sandbox, ns, "remove", "c4")
    assert gone.returncode == 0, gone.stderr
