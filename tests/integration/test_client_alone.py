"""The Python client installed alone (clients/python: the kafka-mesh-client distribution) into a fresh virtual
environment, with no librdkafka, no native core and no confluent-kafka, produces through a real sidecar."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import textwrap
from typing import Any

from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: grpcio's and protobuf's wheels, fetched by scripts/setup.sh: the venv is installed from them, offline.
WHEELS = ROOT / ".tools/wheels"

SCRIPT = textwrap.dedent("""
    import importlib.util, sys
    missing = [m for m in ("meshcore", "confluent_kafka") if importlib.util.find_spec(m) is not None]
    assert not missing, f"installed in the venv: {missing}"
    from sidecar.client import Producer
    from sidecar.client import producer as module
    assert module._native_encode is None
    target, topic = sys.argv[1], sys.argv[2]
    with Producer(target) as p:
        one = [p.send(topic, f"alone-{i}".encode(), key=b"k") for i in range(5)]
        batch = p.send_batch(topic, [f"alone-batch-{i}".encode() for i in range(5)])
    results = [f.result() for f in one]
    print(sum(1 for r in results), batch.result().ok_count)
""")


def test_the_client_alone_installs_into_a_fresh_venv_and_produces(
        sandbox: Sandbox, sidecar_factory: Any, topic: str, tmp_path: pathlib.Path) -> None:
    assert any(WHEELS.glob("grpcio-*.whl")), "scripts/setup.sh fetches the client's dependencies into .tools/wheels"
    wheel_dir = tmp_path / "wheel"
    try:
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT / "clients/python"), "-w",
                                str(wheel_dir), "--no-deps", "--no-build-isolation", "-q"], capture_output=True,
                               text=True, timeout=300)
    finally:
        shutil.rmtree(ROOT / "clients/python/build", ignore_errors=True)      # setuptools builds in the tree
    assert built.returncode == 0, built.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(WHEELS),
                                "--find-links", str(wheel_dir), "kafka-mesh-client"], capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr

    ns = new_namespace()
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=2)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    run = subprocess.run([str(venv / "bin/python"), "-c", SCRIPT, sc.target, topic], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)      # not the checkout: the venv's own sidecar.client
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["5", "5"]
    assert sorted(m.value().decode() for m in read_all(sandbox.clusters[0].bootstrap, topic, 10)) == sorted(
        [f"alone-{i}" for i in range(5)] + [f"alone-batch-{i}" for i in range(5)])
