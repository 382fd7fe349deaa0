"""`kafka-mesh topic create|describe` from a shell: balanced partitions on a cluster of three brokers (a sandbox of
its own: `dev up --clusters 1 --brokers-per-cluster 3`), refusals with their reasons, and describe across clusters."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kafka-mesh", *args], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=300)


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """A sandbox of one cluster (c1) of three brokers: the environment that points the CLI at its etcd, and c1's
    bootstrap."""
    env = {"KAFKA_MESH_STATE_DIR": str(tmp_path_factory.mktemp("three") / "state")}
    up = _run(env, "dev", "up", "--clusters", "1", "--brokers-per-cluster", "3", "--json")
    try:
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)
        yield {**env, "KAFKA_MESH_ETCD": doc["etcd"]["endpoint"]}, doc["clusters"][0]["bootstrap"]
    finally:
        _run(env, "dev", "down")


def _json(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_create_gives_a_multiple_of_the_brokers_with_leaders_spread_evenly(
        three_brokers: tuple[dict[str, str], str]) -> None:
    env, bootstrap = three_brokers
    name = f"bal-{uuid.uuid4().hex[:8]}"
    made = _json(_run(env, "topic", "create", name, "--cluster", "c1", "--json"))
    assert made == {"topic": name, "cluster": "c1", "partitions": 6, "replication": 3, "brokers": 3,
                    "leaders": {"1": 2, "2": 2, "3": 2}}
    nine = f"bal-{uuid.uuid4().hex[:8]}"
    human = _run(env, "topic", "create", nine, "--cluster", "c1", "--partitions", "9", "--replication", "2")
    assert human.stdout == (f"created topic {nine} on cluster c1: 9 partitions over 3 broker(s), replication 2; "
                            "leaders broker 1: 3, broker 2: 3, broker 3: 3\n"), human.stderr
    # What Kafka reports, not what the command planned: every broker leads a third of the partitions.
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(30):
        p.produce(name, key=str(i).encode(), value=b"x")
    assert p.flush(30) == 0
    described = _json(_run(env, "topic", "describe", name, "--json"))
    [c1] = described["clusters"]
    assert (c1["cluster"], c1["partitions"], c1["leaders"], c1["records"]) == ("c1", 6, {"1": 2, "2": 2, "3": 2}, 30)
    assert described["routes"] == {"producer": None, "producer_sinks": [], "consumer": None, "read_from": []}


def test_refusals_name_the_reason(three_brokers: tuple[dict[str, str], str]) -> None:
    env, _ = three_brokers
    name = f"ref-{uuid.uuid4().hex[:8]}"
    cases = {
        ("--partitions", "4"): "--partitions 4 is not a multiple of cluster c1's 3 broker(s): only a multiple gives "
                               "every broker the same share; use 3 or --partitions-per-broker K",
        ("--replication", "4"): "--replication 4 is out of range: cluster c1 has 3 broker(s)",
    }
    for args, message in cases.items():
        r = _run(env, "topic", "create", name, "--cluster", "c1", *args)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"kafka-mesh: error: {message}\n"), args
    r = _run(env, "topic", "create", name, "--cluster", "c9")
    assert (r.returncode, r.stderr) == (2, "kafka-mesh: error: no cluster 'c9' in namespace default (registered: "
                                           "c1)\n")
    r = _run(env, "topic", "create", "not a topic", "--cluster", "c1")
    assert r.returncode == 2 and "invalid topic name 'not a topic'" in r.stderr
    assert _run(env, "topic", "create", name, "--cluster", "c1").returncode == 0
    again = _run(env, "topic", "create", name, "--cluster", "c1")
    assert again.returncode == 1 and again.stderr.startswith(f"kafka-mesh: error: topic {name} on cluster c1: ")
    assert "already exists" in again.stderr, again.stderr
