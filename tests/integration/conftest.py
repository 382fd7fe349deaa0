"""Real servers for the integration tests: one sandbox (3 Kafka clusters + etcd) per test session, started by the
same code as `kafka-mesh dev up`, on free loopback ports, and stopped at the end also when tests fail or are
interrupted. Set KAFKA_MESH_TEST_STATE_DIR to the state folder of a sandbox already running (`dev up`) to reuse
it instead; it is then left running.

The sandbox's state (the brokers' logs) is kept in memory, under /dev/shm, when the host has a few GiB there: on the
virtual disks these run on, the kernel's writeback of a preload stalled brokers' appends for up to hundreds of ms,
long after it was written, which made the benchmarks' latency tails measure the disk rather than the paths. Elsewhere
it goes under pytest's temporary folder."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.config import DevSettings
from sidecar.dev import sandbox as sandbox_mod
from sidecar.dev.sandbox import Sandbox


def sandbox_settings(state_dir: pathlib.Path) -> DevSettings:
    base = DevSettings.from_env(os.environ)
    return DevSettings(state_dir=state_dir, cache_dir=base.cache_dir, kafka_home=base.kafka_home,
                       etcd_bin=base.etcd_bin, java_bin=base.java_bin, mvn_bin=base.mvn_bin,
                       broker_heap_mb=base.broker_heap_mb)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    reuse = os.environ.get("KAFKA_MESH_TEST_STATE_DIR")
    if reuse:
        box = sandbox_mod.load(sandbox_settings(pathlib.Path(reuse)))
        assert box is not None, f"KAFKA_MESH_TEST_STATE_DIR={reuse} holds no running sandbox"
        yield box
        return
    memory = _memory_dir()
    settings = sandbox_settings((memory or tmp_path_factory.mktemp("sandbox")) / "state")
    try:
        box, _ = sandbox_mod.up(settings, clusters=3, brokers_per_cluster=1, detach=False,
                                progress=lambda m: print(f"[sandbox] {m}"))
        try:
            yield box
        finally:
            sandbox_mod.down(settings)
    finally:
        if memory is not None:      # also when up() failed: /dev/shm is memory, not to be left behind
            shutil.rmtree(memory, ignore_errors=True)


def _memory_dir(room: int = 4 << 30) -> pathlib.Path | None:
    """A fresh folder under /dev/shm when it has `room` free, else None."""
    shm = pathlib.Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize < room:
            return None
        return pathlib.Path(tempfile.mkdtemp(prefix="kafka-mesh-sandbox-", dir=shm))
    except OSError:
        return None


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sidecar_factory(tmp_path: pathlib.Path, sandbox: Sandbox) -> Iterator[Any]:
    """Start real sidecar processes (kafka-mesh sidecar) for a test; every one is killed at the end."""
    from tests.integration.sidecar_proc import SidecarProc

    started: list[SidecarProc] = []

    def start(namespace: str, *extra: str, wait: bool = True, etcd: str | None = None,
              name: str = "sidecar") -> SidecarProc:
        workdir = tmp_path / f"{name}-{len(started)}"
        workdir.mkdir()
        proc = SidecarProc(sandbox, workdir, namespace, *extra, etcd=etcd)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        if proc.alive():
            proc.stop(signal.SIGKILL)
