"""mirror-copy: the router against Apache Kafka's MirrorMaker 2, each copying a full topic from c1 to c2.

A topic of PARTITIONS partitions is created on c1 and on c2 and N 100-byte records (no key, spread round-robin over
the partitions) are written to c1 with confluent-kafka as fast as it goes, before the copier starts (not timed).
Then one dedicated MirrorMaker 2 process (benchmarks/mm2.py: 2 tasks, IdentityReplicationPolicy, no heartbeats,
checkpoints or config syncing, 256 MiB heap) starts, and measure_copy polls c2's end offsets until all N are there.

Figures (extra_info, printed in the terminal summary):
- rate: records/s from the first record seen on c2 to the last: the rate to quote (it leaves out the JVM's start,
  the Connect worker's group join and the connector's start, which are startup_s);
- wall_s / wall_rate: from the process's start to the last record;
- cpu_per_million: MirrorMaker 2's CPU seconds per million records, start-up included, and steady_cpu_per_million
  over the steady window only; the brokers' and this process's CPU over the same windows (c1_*, c2_*, bench_*),
  the machine's busy cores over them and in 2 s before the start, and unaccounted_cores: the cores busy in the
  steady window outside MirrorMaker 2, the two brokers and this process (what else ran; about 0.2 with nothing
  else running: etcd, c3, the kernel's own threads);
- mm2 and mm2-no-offset-syncs: with MirrorMaker 2's default offset syncs (written to c1 for checkpoints, which are
  off here) and without (emit.offset-syncs.enabled=false), which is closer to a plain copier;
- router: `kafka-mesh router --mapping FILE` with one rule copying the topic from c1 to c2 (no step), its defaults
  otherwise (idempotent producer, acks=all, linger.ms 20; at-least-once commits every second).
Asserts only that c2 ends with exactly c1's records per partition (no loss, no duplicate).

Run: python -m pytest benchmarks/test_mm2.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Producer

from benchmarks.mm2 import (
    Mm2Process,
    busy_cores,
    classpath,
    delete_topics,
    end_offsets,
    host_busy,
    measure_copy,
    run_mm2,
    settings_for,
)
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic

N = 1_000_000
PARTITIONS = 6
VALUE = b"x" * 100
ROUNDS = 1          # a round: N records written (about 2.5 s), then copied (about 7 s, 2 of them start-up)
RUNNING = ("3 sandbox Kafka clusters (1 broker each; c1 source, c2 target, c3 idle), etcd, the copier (MirrorMaker 2 "
           "or the router), this benchmark polling c2's end offsets every 50 ms (2 cores)")


def fill(bootstrap: str, topic: str, n: int, partitions: int) -> float:
    """Write n VALUE records to topic, round-robin over its partitions, as fast as confluent-kafka goes; seconds."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 50, "batch.size": 1 << 20,
                  "queue.buffering.max.kbytes": 256 << 10, "compression.type": "none"})
    failed: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    t0 = time.monotonic()
    for i in range(n):
        while True:
            try:
                p.produce(topic, VALUE, partition=i % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(120) == 0 and not failed, failed[:3]
    return time.monotonic() - t0


@dataclass
class RouterProcess:
    """A running `kafka-mesh router` (a Copier)."""

    pid: int
    log: pathlib.Path
    _popen: subprocess.Popen[bytes]

    def stop(self, timeout: float = 30.0) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(10)


def run_router(sandbox: Sandbox, topic: str, work_dir: pathlib.Path) -> RouterProcess:
    """A router process with a mapping file of one rule: topic from c1 to c2."""
    work_dir.mkdir(parents=True, exist_ok=True)
    mapping = work_dir / "mapping.json"
    mapping.write_text(json.dumps({
        "clusters": {c.name: {"bootstrap": c.bootstrap} for c in sandbox.clusters[:2]},
        "router": {"copy": {"topics": [topic], "from": [{"source": "c1"}], "where": [{"sink": "c2"}],
                            "router": "bench"}}}))
    log = work_dir / "router.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(["kafka-mesh", "router", "--mapping", str(mapping), "--name", "bench",
                                  "--instance", "bench", "--cache-dir", str(work_dir / "cache")],
                                 stdout=out, stderr=subprocess.STDOUT)
    return RouterProcess(popen.pid, log, popen)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("copier", ["router", "mm2", "mm2-no-offset-syncs"])
def test_mirror_copy(benchmark: Any, sandbox: Sandbox, tmp_path: pathlib.Path, copier: str) -> None:
    offset_syncs = copier == "mm2"
    settings = settings_for(sandbox.kafka_version)
    classpath(settings)                      # resolved (first run only) before anything is timed
    src, dst = sandbox.clusters[0], sandbox.clusters[1]
    # Also measured over the same windows: the brokers, and this process (the end-offset polling).
    others = {"c1": [b.proc.pid for b in src.brokers], "c2": [b.proc.pid for b in dst.brokers],
              "bench": [os.getpid()]}
    runs: list[dict[str, Any]] = []

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        topic = f"bench-mm2-{uuid.uuid4().hex[:8]}"
        create_topic(src.bootstrap, topic, partitions=PARTITIONS)
        create_topic(dst.bootstrap, topic, partitions=PARTITIONS)
        fill_s = fill(src.bootstrap, topic, N, PARTITIONS)
        idle = host_busy()
        time.sleep(2)                        # the machine's load with nothing of this benchmark running
        runs.append({"topic": topic, "fill_s": round(fill_s, 2),
                     "host_busy_cores_before": round(busy_cores(idle, host_busy()), 2)})
        return (topic,), {}

    def run(topic: str) -> None:
        def start() -> Mm2Process | RouterProcess:
            if copier == "router":
                return run_router(sandbox, topic, tmp_path / topic)
            mm2 = run_mm2(src.bootstrap, dst.bootstrap, [topic], tmp_path / topic, settings=settings,
                          offset_syncs=offset_syncs)
            runs[-1].update(log=str(mm2.log), internal=mm2.internal_topics)
            return mm2

        runs[-1].update(measure_copy(start, dst.bootstrap, topic, N, also=others))

    try:
        benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=0)
        benchmark.group = "mirror-copy"
        for r in runs:
            print(f"\n{benchmark.name}: {r}")
            assert end_offsets(dst.bootstrap, r["topic"]) == end_offsets(src.bootstrap, r["topic"])
    finally:
        for r in runs:
            delete_topics(src.bootstrap, [r["topic"]])
            delete_topics(dst.bootstrap, [r["topic"], *r.get("internal", [])])
    last = runs[-1]
    benchmark.extra_info.update({
        "n": N,
        "rate": last["rate"],
        "cpu_per_million": last["cpu_per_million"],
        "steady_cpu_per_million": last["steady_cpu_per_million"],
        "startup_s": last["startup_s"],
        "unaccounted_cores": last.get("unaccounted_cores"),
        "rounds": [{k: v for k, v in r.items() if k not in ("topic", "log", "internal")} for r in runs],
        "kafka_version": sandbox.kafka_version,
        "running": RUNNING,
    })
