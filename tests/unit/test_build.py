"""The native build's own checks."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_build_without_librdkafka_stops_naming_the_package_to_install() -> None:
    # pkg-config looking in an empty folder finds no librdkafka, as on a machine without librdkafka-dev.
    env = {**os.environ, "PKG_CONFIG_LIBDIR": "/nonexistent", "PKG_CONFIG_PATH": ""}
    r = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "librdkafka >= 2.0.0 was not found by pkg-config" in r.stderr
    assert "apt-get install librdkafka-dev" in r.stderr


def test_the_core_runs_the_one_librdkafka_of_the_confluent_kafka_wheel() -> None:
    import confluent_kafka

    import meshcore

    assert meshcore.LIBRDKAFKA_SOURCE == "wheel"
    assert meshcore.librdkafka_version() == confluent_kafka.libversion()[0]
    # One librdkafka mapped into this process, the wheel's own file: the core and confluent-kafka share it.
    with open("/proc/self/maps") as maps:
        mapped = {line.split()[-1] for line in maps if "librdkafka" in line}
    wheel_libs = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)), "confluent_kafka.libs")
    assert len(mapped) == 1 and os.path.dirname(mapped.pop()) == os.path.realpath(wheel_libs)


def test_a_core_built_for_another_confluent_kafka_refuses_to_import_and_says_how_to_rebuild() -> None:
    # The core as it would be after `pip install -U confluent-kafka` without a rebuild: built for another version.
    code = (
        "import importlib.util, pathlib, sys\n"
        f"path = pathlib.Path({str(ROOT / 'csrc' / 'meshcore' / '_linked.py')!r})\n"
        "spec = importlib.util.spec_from_file_location('meshcore._linked', path)\n"
        "linked = importlib.util.module_from_spec(spec); spec.loader.exec_module(linked)\n"
        "linked.CONFLUENT_KAFKA = '2.99.0'\n"
        "sys.modules['meshcore._linked'] = linked\n"
        "import meshcore\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "meshcore was built against the librdkafka of confluent-kafka 2.99.0" in r.stderr
    assert "rebuild the core with `make build`" in r.stderr


def test_every_package_of_the_tree_is_installed() -> None:
    """A package left out of pyproject.toml works in an editable install and breaks a normal one."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    tree = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "sidecar").rglob("__init__.py")}
    assert tree - listed == set(), "packages missing from pyproject.toml"
    assert "meshcore" in listed
