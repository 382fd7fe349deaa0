"""The CLI's answers to bad input: one line, the right exit code, nothing started."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys


def _cli(*args: str, state: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_MESH_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_zero_clusters_is_a_one_line_usage_error(tmp_path: pathlib.Path) -> None:
    r = _cli("dev", "up", "--clusters", "0", state=tmp_path / "s")
    assert r.returncode == 2
    assert r.stderr == "kafka-mesh: error: --clusters must be between 1 and 16, got 0\n"
    assert not (tmp_path / "s").exists()


def test_port_in_use_is_a_one_line_usage_error(tmp_path: pathlib.Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = _cli("dev", "up", "--clusters", "1", "--port-base", str(busy), state=tmp_path / "s")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"kafka-mesh: error: port {busy} on 127.0.0.1 is in use (the sandbox needs {busy}..{busy + 3})"]


def test_down_and_status_with_nothing_running_say_so(tmp_path: pathlib.Path) -> None:
    r = _cli("dev", "down", state=tmp_path / "s")
    assert (r.returncode, r.stdout) == (0, f"no sandbox is running (state dir {tmp_path / 's'}); nothing to stop\n")
    r = _cli("dev", "status", "--json", state=tmp_path / "s")
    assert r.returncode == 0 and '"running": false' in r.stdout


def test_help_has_examples() -> None:
    r = subprocess.run([sys.executable, "-m", "sidecar.cli", "dev", "up", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "kafka-mesh dev up --clusters 3" in r.stdout and "--brokers-per-cluster" in r.stdout


def test_mapping_help_has_examples_and_the_file_format() -> None:
    r = subprocess.run([sys.executable, "-m", "sidecar.cli", "mapping", "apply", "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0
    assert "kafka-mesh mapping apply mapping.json --etcd http://127.0.0.1:2379" in r.stdout
    assert '"__default__": {"where": [{"sink": "c1"}, {"sink": "c2"}]}' in r.stdout and "KAFKA_MESH_ETCD" in r.stdout


def test_mapping_without_an_etcd_endpoint_is_a_one_line_usage_error(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_MESH_ETCD"}
    r = subprocess.run([sys.executable, "-m", "sidecar.cli", "mapping", "show"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "kafka-mesh: error: no etcd endpoint: give --etcd URL or set KAFKA_MESH_ETCD\n"


def test_mapping_file_with_a_json_error_names_file_and_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{\n  "clusters": {"c1": {"bootstrap": "h:1"},}\n}\n')
    r = _cli("mapping", "apply", str(path), "--etcd", "http://127.0.0.1:1", state=tmp_path / "s")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"kafka-mesh: error: {path}:2:43: not valid JSON: Expecting property name enclosed in "
                        "double quotes\n")


def test_mapping_validate_needs_no_etcd_and_names_the_file_and_key(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"clusters": {"c1": {"bootstrap": "127.0.0.1:9092"}}, "producer": {"t1, t2": {"where": '
                    '[{"sink": "c1"}]}}, "consumer": {"t1": [{"vip": "c1"}]}}')
    r = _cli("mapping", "validate", str(good), state=tmp_path / "s")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, f"{good}: valid (clusters: 1, producer routes: 1, consumer routes: 1)\n", "")
    partial = tmp_path / "partial.json"
    partial.write_text('{"producer": {"t1": {"where": [{"sink": "c9"}]}}}')
    r = _cli("mapping", "validate", str(partial), "--json", state=tmp_path / "s")
    assert r.returncode == 0 and '"references_checked": false' in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"clusters": {"c1": {"bootstrap": "127.0.0.1:9092"}}, "producer": {"t1": {"where": '
                   '[{"sink": "c9"}]}}}')
    r = _cli("mapping", "validate", str(bad), state=tmp_path / "s")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"kafka-mesh: error: {bad}: producer.t1.where[0].sink: unknown cluster 'c9'\n"


def test_clusters_add_refuses_bad_input_before_contacting_etcd(tmp_path: pathlib.Path) -> None:
    nowhere = ["--etcd", "http://127.0.0.1:9"]          # nothing listens: a refusal must come first
    cases = {
        ("c1", "--bootstrap", "nohost"): "cluster 'c1': clusters.c1.bootstrap: 'nohost' is not HOST:PORT",
        ("bad/name", "--bootstrap", "h:1"): "invalid cluster name 'bad/name': use 1-128 characters of "
                                            "[A-Za-z0-9._-], starting with a letter or digit",
        ("c1", "--bootstrap", "h:1", "--config", "linger.ms"): "--config 'linger.ms': expected KEY=VALUE, a "
                                                               "librdkafka property and its value",
        ("c1", "--bootstrap", "h:1", "--config", "no.such.property=1"): "cluster 'c1': librdkafka property "
                                                                        "'no.such.property': No such configuration "
                                                                        "property: \"no.such.property\"",
        ("c1", "--bootstrap", "h:1", "--config", "acks=2", "--config", "acks=1"): "--config: 'acks' is given twice",
    }
    for args, message in cases.items():
        r = _cli("clusters", "add", *args, *nowhere, state=tmp_path / "s")
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"kafka-mesh: error: {message}\n"), args
    r = _cli("clusters", "add", "c1", "--bootstrap", "h:1", "--role", "leader", *nowhere, state=tmp_path / "s")
    assert r.returncode == 2 and "invalid choice: 'leader'" in r.stderr


def test_argument_errors_are_one_line_naming_the_command(tmp_path: pathlib.Path) -> None:
    nowhere = ["--etcd", "http://127.0.0.1:9"]
    cases = {
        ("topic", "create", "t", "--cluster", "c1", "--partitions", "3", "--partitions-per-broker", "2", *nowhere):
            "kafka-mesh topic create: error: argument --partitions-per-broker: not allowed with argument "
            "--partitions (see kafka-mesh topic create --help)",
        ("topic", "create", "t", "--cluster", "c1", "--partitions", "0", *nowhere):
            "kafka-mesh topic create: error: argument --partitions: expected 1 or more, got 0 (see kafka-mesh "
            "topic create --help)",
        ("status", "--watch", "abc", *nowhere):
            "kafka-mesh status: error: argument --watch: expected seconds, got 'abc' (see kafka-mesh status --help)",
        ("topic", "move", "t", *nowhere):
            "kafka-mesh topic move: error: the following arguments are required: --to (see kafka-mesh topic move "
            "--help)",
        ("bogus",): "kafka-mesh: error: argument COMMAND: invalid choice: 'bogus' (choose from 'dev', 'mapping', "
                    "'clusters', 'topic', 'status', 'sidecar', 'router') (see kafka-mesh --help)",
    }
    for args, line in cases.items():
        r = _cli(*args, state=tmp_path / "s")
        assert (r.returncode, r.stdout, r.stderr) == (2, "", line + "\n"), args
