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
