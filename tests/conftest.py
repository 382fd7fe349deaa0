"""Fixtures for every test: markers by folder, and the native-handle balance check of the debug build."""

from __future__ import annotations

import gc
import pathlib
import signal
from collections.abc import Iterator

import pytest

import meshcore

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = pathlib.Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if kind in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, kind))


def pytest_sessionstart(session: pytest.Session) -> None:
    # A SIGTERM (CI's timeout, a killed terminal) becomes KeyboardInterrupt so that fixtures still stop the servers
    # they started; servers started for tests also die with this process (see sidecar/dev/procs.py).
    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(autouse=True)
def native_handles_balanced() -> Iterator[None]:
    """In the debug build of meshcore, every C handle a test creates must be destroyed by the end of the test."""
    if not meshcore.DEBUG:
        yield
        return
    before = meshcore.debug_counts()
    yield
    gc.collect()
    after = meshcore.debug_counts()
    for kind, (created, destroyed) in after.items():
        c0, d0 = before.get(kind, (0, 0))
        assert created - c0 == destroyed - d0, (
            f"{kind}: {created - c0} created but {destroyed - d0} destroyed during this test")
