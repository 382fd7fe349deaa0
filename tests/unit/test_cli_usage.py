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
