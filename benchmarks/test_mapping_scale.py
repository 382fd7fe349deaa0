"""The sidecar with mappings of 10, 1,000 and 100,000 topics (producer and consumer routes over the sandbox's three
clusters), read from a file (`sidecar --mapping`): time to SERVING, RSS once serving, and produce throughput to one
of the topics, the same records in the same run for each size. The baseline for storing such mappings in etcd
(`kafka-mesh mapping apply` cannot write more than about 125 routes in one etcd transaction yet).

Run: python -m pytest benchmarks/test_mapping_scale.py --benchmark-only
"""

from __future__ import annotations

import json
import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshcore
from benchmarks.procstat import mib, proc_status
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, clusters_doc

SIZES = (10, 1_000, 100_000)
BATCH = 1000
BATCHES = 100
VALUE = b"x" * 100


def _document(sandbox: Sandbox, topic: str, size: int) -> dict[str, Any]:
    names = [c.name for c in sandbox.clusters]
    others = [f"scale-{i:06d}" for i in range(size - 1)]
    producer = {t: {"where": [{"sink": names[i % len(names)]}]} for i, t in enumerate(others)}
    consumer = {t: [{"vip": names[i % len(names)]}] for i, t in enumerate(others)}
    producer[topic] = {"where": [{"sink": "c1"}]}
    consumer[topic] = [{"vip": "c1"}]
    return {"clusters": clusters_doc(sandbox), "producer": producer, "consumer": consumer}


@pytest.fixture(scope="module")
def bench_topic(sandbox: Sandbox) -> str:
    name = f"scale-bench-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, name, partitions=3)
    return name


@pytest.fixture(scope="module", params=SIZES, ids=[f"{n}-topics" for n in SIZES])
def sidecar(request: pytest.FixtureRequest, sandbox: Sandbox, bench_topic: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SidecarProc, int, dict[str, float]]]:
    size = request.param
    workdir = tmp_path_factory.mktemp(f"scale-{size}")
    path = workdir / "mapping.json"
    path.write_text(json.dumps(_document(sandbox, bench_topic, size)))
    proc = SidecarProc(None, workdir, "default", "--mapping", str(path))
    t0 = time.monotonic()
    proc.start(timeout=120)
    serving_s = time.monotonic() - t0
    time.sleep(2)
    assert proc.proc is not None
    rss = proc_status(proc.proc.pid)["VmRSS"]
    try:
        yield proc, size, {"serving_s": round(serving_s, 2), "rss_mib": mib(rss),
                           "file_mib": round(pathlib.Path(path).stat().st_size / 2**20, 1)}
    finally:
        proc.stop()


def test_produce_throughput_by_mapping_size(benchmark: Any, sidecar: tuple[SidecarProc, int, dict[str, float]],
                                           bench_topic: str) -> None:
    proc, size, figures = sidecar
    keys = [str(i).encode() for i in range(BATCH)]
    channel = grpc.insecure_channel(proc.target)
    call = channel.stream_stream("/kafkamesh.v1.Mesh/Produce")

    def run() -> None:
        ok = 0
        requests = (meshcore.encode_records(b, bench_topic, [VALUE] * BATCH, keys) for b in range(BATCHES))
        for raw in call(requests, timeout=120):
            ok += mesh_pb2.ProduceResponse.FromString(raw).ok_count
        assert ok == BATCH * BATCHES

    benchmark.group = "produce by mapping size"
    benchmark.extra_info["records"] = BATCH * BATCHES
    benchmark.extra_info.update({"topics": size, **figures})
    benchmark.pedantic(run, rounds=8, warmup_rounds=2)
    channel.close()
