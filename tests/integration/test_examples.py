"""The examples in other languages, run as a user runs them against a real sidecar on real clusters: each produces a
batch with one bad record, reads its records back through Subscribe and prints them; every record id it produced is
among them, and the bad record's error names its cause."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
from typing import Any

from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _sidecar_for(sandbox: Sandbox, sidecar_factory: Any, topic: str, *extra: str) -> Any:
    ns = new_namespace()
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=3)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    return sidecar_factory(ns, *extra)


def _check(run: subprocess.CompletedProcess[str], topic: str, count: int) -> None:
    assert run.returncode == 0, run.stdout + run.stderr
    read = [json.loads(line) for line in run.stdout.splitlines()]
    values = [r["value"] for r in read]
    produced = {v for v in values if v and v.rsplit("-", 1)[-1].isdigit()}
    assert len(produced) == count and len(values) == count, values        # each once: the group was new
    assert {(r["cluster"], r["topic"]) for r in read} == {("c1", topic)}
    assert sorted(int(v.rsplit("-", 1)[1]) for v in produced) == list(range(count))
    assert (f"record {count}: ERROR_CODE_INVALID_TOPIC: invalid topic name 'not a topic': it must be 1 to 249 "
            "characters") in run.stderr, run.stderr


def test_the_node_example(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    assert (ROOT / "examples/node/node_modules/@grpc/grpc-js").is_dir(), "scripts/setup.sh installs examples/node"
    sc = _sidecar_for(sandbox, sidecar_factory, topic)
    run = subprocess.run(["node", str(ROOT / "examples/node/mesh.js"), "--target", sc.target, "--topic", topic,
                          "--count", "20"], capture_output=True, text=True, timeout=120)
    _check(run, topic, 20)


def test_the_go_example(sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: pathlib.Path) -> None:
    assert (ROOT / "examples/go/gen/kafkamesh/v1/mesh.pb.go").is_file(), "scripts/setup.sh generates the Go stubs"
    binary = tmp_path / "example"
    build = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=ROOT / "examples/go", capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    sc = _sidecar_for(sandbox, sidecar_factory, topic)
    run = subprocess.run([str(binary), "-target", sc.target, "-topic", topic, "-count", "20"], capture_output=True,
                         text=True, timeout=120)
    _check(run, topic, 20)


def test_the_java_example(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    # Offline: scripts/setup.sh fetched the plugin, protoc and the dependencies; this builds what the tree has now.
    build = subprocess.run(["mvn", "-q", "-o", "package"], cwd=ROOT / "examples/java", capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    with socket.socket() as s:            # a free port: grpc-java reaches the sidecar over TCP here
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sc = _sidecar_for(sandbox, sidecar_factory, topic, "--listen", f"127.0.0.1:{port}")
    run = subprocess.run(["java", "-jar", str(ROOT / "examples/java/target/kafka-mesh-example.jar"),
                          f"127.0.0.1:{port}", topic, "20"], capture_output=True, text=True, timeout=120)
    assert sc.alive()
    _check(run, topic, 20)


def test_the_python_examples(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    """examples/python: produce.py writes 5 records each of three ways (and one that fails alone, on purpose),
    consume.py reads the 15 back."""
    sc = _sidecar_for(sandbox, sidecar_factory, topic)
    produced = subprocess.run([sys.executable, str(ROOT / "examples/python/produce.py"), "--target", sc.target,
                               "--topic", topic, "--count", "5"], capture_output=True, text=True, timeout=120)
    assert produced.returncode == 0, produced.stdout + produced.stderr
    assert produced.stdout.count(": written (batch") == 10 and "send_batch of 5: 5 written" in produced.stdout
    assert "send to 'not a topic!' (on purpose): failed: INVALID_TOPIC: invalid topic name 'not a topic!'" in \
        produced.stdout, produced.stdout
    read = subprocess.run([sys.executable, str(ROOT / "examples/python/consume.py"), "--target", sc.target,
                           "--group", f"py-{topic}", "--start", "earliest", "--count", "15", topic],
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stdout + read.stderr
    for i in range(5):
        assert f"record {i}" in read.stdout and f"fast {i}" in read.stdout, read.stdout
    assert read.stdout.count('value={"customer":"customer-') == 5, read.stdout
