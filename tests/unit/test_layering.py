"""The arrows between the control plane's rooms run one way: what a lower room imports of a higher one is a defect
(the etcd layer does not know the operator's commands; the mapping model knows neither etcd nor the commands; the
native core knows nothing of the control plane)."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from tests.conftest import ROOT

#: room -> the rooms it must never import
FORBIDDEN = {
    "sidecar/control": ("sidecar.manage", "sidecar.commands", "sidecar.servicers", "sidecar.router"),
    "sidecar/mapping": ("sidecar.control", "sidecar.manage", "sidecar.commands", "sidecar.servicers"),
    "sidecar/manage": ("sidecar.commands", "sidecar.servicers"),
    "csrc/meshcore": ("sidecar",),
}


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_native_core_imports_nothing_of_the_control_plane() -> None:
    """Cython sources are not Python to parse: their import lines are read as text."""
    wrong = [f"{path.name}: {line.strip()}" for path in sorted((ROOT / "csrc/meshcore").glob("*.p[yx]*"))
             for line in path.read_text().splitlines()
             if re.match(r"\s*(from|import|cimport)\s+sidecar\b", line) or re.match(r"\s*from\s+\S+\s+cimport", line)
             and " sidecar" in line]
    assert wrong == []


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_above_it(room: str) -> None:
    wrong = {f"{path.relative_to(ROOT)} imports {name}"
             for path in sorted((ROOT / room).rglob("*.py")) for name in _imports(path)
             if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[room])}
    assert wrong == set()
