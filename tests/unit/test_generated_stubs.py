"""The stubs under sidecar/api are exactly what proto/ generates."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_committed_stubs_match_proto() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
