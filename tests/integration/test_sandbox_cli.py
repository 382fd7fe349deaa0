"""`kafka-mesh dev up|status|down` from a shell, each run in a state folder of its own."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from sidecar.dev.procs import Proc


def _cli(state: pathlib.Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_MESH_STATE_DIR": str(state)}
    return subprocess.run(["kafka-mesh", *args], capture_output=True, text=True, env=env, timeout=timeout)


def _procs(doc: dict[str, Any]) -> list[Proc]:
    e = doc["etcd"]
    procs = [Proc(e["name"], e["pid"], e["started"], e["log"])]
    for c in doc["clusters"]:
        procs += [Proc(b["name"], b["pid"], b["started"], b["log"]) for b in c["brokers"]]
    return procs


def _brokers(bootstrap: str) -> int:
    return len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=20).brokers)


@pytest.fixture
def state(tmp_path: pathlib.Path) -> Any:
    state = tmp_path / "state"
    yield state
    _cli(state, "dev", "down")   # whatever a failed assertion left running


def test_dev_up_three_clusters_json_status_and_down(state: pathlib.Path) -> None:
    up = _cli(state, "dev", "up", "--clusters", "3", "--json")
    assert up.returncode == 0, up.stderr
    doc = json.loads(up.stdout)
    assert doc["etcd"]["endpoint"].startswith("http://127.0.0.1:")
    assert [c["name"] for c in doc["clusters"]] == ["c1", "c2", "c3"]
    for c in doc["clusters"]:
        assert c["bootstrap"].startswith("127.0.0.1:")
        assert _brokers(c["bootstrap"]) == 1          # every broker answers a metadata request
    assert "starting Kafka" in up.stderr and "cluster c3 ready" in up.stderr   # progress on stderr

    shown = _cli(state, "mapping", "show", "--json", "--etcd", doc["etcd"]["endpoint"])
    assert shown.returncode == 0, shown.stderr
    assert sorted(c["bootstrap"] for c in json.loads(shown.stdout)["mapping"]["clusters"].values()) == sorted(
        c["bootstrap"] for c in doc["clusters"])

    again = _cli(state, "dev", "up", "--clusters", "3", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == doc      # the same set, not a second one
    assert "already running" in again.stderr

    st = _cli(state, "dev", "status", "--json")
    assert st.returncode == 0
    status = json.loads(st.stdout)
    assert status["running"] is True and all(c["running"] for c in status["clusters"])
    human = _cli(state, "dev", "status")
    assert human.returncode == 0 and human.stdout.count(" running ") == 4

    procs = _procs(doc)
    assert all(p.alive() for p in procs)
    down = _cli(state, "dev", "down")
    assert down.returncode == 0 and down.stdout == "sandbox stopped\n"
    assert not any(p.alive() for p in procs)
    assert not state.exists()                                               # data removed
    again = _cli(state, "dev", "down")
    assert again.returncode == 0 and "nothing to stop" in again.stdout


def test_multi_broker_cluster_and_a_dead_broker_shows_in_status(state: pathlib.Path) -> None:
    up = _cli(state, "dev", "up", "--clusters", "1", "--brokers-per-cluster", "2", "--json")
    assert up.returncode == 0, up.stderr
    doc = json.loads(up.stdout)
    cluster = doc["clusters"][0]
    assert len(cluster["bootstrap"].split(",")) == 2
    assert _brokers(cluster["bootstrap"]) == 2

    victim = cluster["brokers"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Proc(victim["name"], victim["pid"], victim["started"], victim["log"]).alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    st = _cli(state, "dev", "status")
    assert st.returncode == 1
    assert "NOT RUNNING" in st.stdout
    refused = _cli(state, "dev", "up", "--clusters", "1", "--brokers-per-cluster", "2")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"kafka-mesh: error: the sandbox in {state} is partly down (c1-broker-2 is not "
                                      f"running; log: {victim['log']}); run `kafka-mesh dev down` first")
    assert _cli(state, "dev", "down").returncode == 0
    assert not any(p.alive() for p in _procs(doc))
