"""README's grpcurl lines ("From any language"), run as pasted (with this test's topic and group in place of orders
and demo) against a real sidecar: health, a Produce with one per-record error, and a Subscribe that reads back."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import uuid
from typing import Any

from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    """The shell commands of the first sh block of README's "From any language", one per entry, comments left out:
    a command runs from a line that starts it to the next blank or comment line."""
    text = (ROOT / "README.md").read_text().split("## From any language", 1)[1]
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "no sh block under 'From any language'"
    commands, current = [], []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith("#"):
            if current:
                commands.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current:
        commands.append("\n".join(current))
    return commands


def test_the_readme_grpcurl_lines_work_as_pasted(sandbox: Sandbox, sidecar_factory: Any) -> None:
    grpcurl = ROOT / ".tools/bin/grpcurl"
    assert grpcurl.is_file(), "scripts/setup.sh installs grpcurl into .tools/bin"
    ns, topic, group = new_namespace(), f"orders-{uuid.uuid4().hex[:8]}", f"demo-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=1)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    env = dict(os.environ, SOCK=str(sc.socket), PATH=f"{grpcurl.parent}:{os.environ['PATH']}")
    health, produce, subscribe = _commands()
    out = []
    for command in (health, produce, subscribe):
        command = command.replace('"orders"', f'"{topic}"').replace('"demo"', f'"{group}"')
        run = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (command, run.stdout, run.stderr)
        out.append(run.stdout)
    assert '"status": "SERVING"' in out[0]
    assert '"ok_count": 1' in out[1] and '"code": "ERROR_CODE_INVALID_TOPIC"' in out[1]
    assert "invalid topic name 'not a topic'" in out[1]
    assert '"key": "azE="' in out[2] and '"value": "aGVsbG8="' in out[2] and '"offset": "0"' in out[2], out[2]
