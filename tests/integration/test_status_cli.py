"""`kafka-mesh status` against the sandbox: a live sidecar with the revision it applied and its in-flight counts by
cluster, a sidecar that is behind, and a cluster that does not answer."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from sidecar.dev import ports
from sidecar.dev.sandbox import Sandbox
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace


def _status(sandbox: Sandbox, ns: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kafka-mesh", "status", "--etcd", sandbox.etcd_endpoint, "--namespace", ns, *extra],
                          capture_output=True, text=True, env=dict(os.environ), timeout=60)


def _until(sandbox: Sandbox, ns: str, pred: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = _status(sandbox, ns, "--json")
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        if pred(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)


def test_status_lists_live_sidecars_and_cluster_reachability(sandbox: Sandbox, sidecar_factory: Any) -> None:
    ns = new_namespace()
    dead = ports.allocate(1)[0]
    rev = apply(sandbox, ns, {"clusters": {**clusters_doc(sandbox), "gone": {"bootstrap": f"127.0.0.1:{dead}"}},
                              "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    doc = _until(sandbox, ns, lambda d: [s.get("revision") for s in d["sidecars"]] == [rev])
    [entry] = doc["sidecars"]
    assert doc["revision"] == rev and entry["host"] == f"test-{ns}" and entry["revision"] == rev
    assert set(entry["in_flight"]) == {"c1", "c2", "c3", "gone"} and entry["in_flight"]["c1"] == 0
    reach = {c["name"]: c for c in doc["clusters"]}
    assert [reach[c]["brokers"] for c in ("c1", "c2", "c3")] == [1, 1, 1]
    assert reach["gone"]["brokers"] == 0 and reach["gone"]["error"]

    human = _status(sandbox, ns)
    lines = human.stdout.splitlines()
    assert lines[0] == f"namespace {ns}, mapping revision {rev}, 1 live sidecar(s), 0 live router process(es)"
    assert lines[2].split()[:3] == [f"test-{ns}", str(rev), "0"]
    assert f"cluster c1 ({sandbox.clusters[0].bootstrap}): reachable, 1 broker(s)" in lines
    assert any(line.startswith(f"cluster gone (127.0.0.1:{dead}): UNREACHABLE: ") for line in lines), lines

    # A sidecar gone: its entry goes with its lease (revoked at an orderly stop).
    sc.stop()
    assert _until(sandbox, ns, lambda d: not d["sidecars"])["sidecars"] == []


def test_status_watch_follows_a_change_until_interrupted(sandbox: Sandbox, sidecar_factory: Any) -> None:
    """--watch --json: an object a line at each interval, a mapping change seen in a later one; Ctrl-C ends it
    with exit 0."""
    import signal

    ns = new_namespace()
    rev = apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [
        {"sink": "c1"}]}}})
    watch = subprocess.Popen(["kafka-mesh", "status", "--etcd", sandbox.etcd_endpoint, "--namespace", ns, "--watch",
                              "0.5", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ))
    time.sleep(2)
    later = apply(sandbox, ns, {"producer": {"__default__": {"where": [{"sink": "c2"}]}}})
    time.sleep(2)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    revisions = [json.loads(line)["revision"] for line in out.splitlines()]
    assert len(revisions) >= 4 and revisions[0] == rev and revisions[-1] == later, revisions
