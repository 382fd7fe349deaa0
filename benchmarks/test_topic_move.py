"""topic-move: `kafka-mesh topic move` under a steady 10,000 records/s.

One sidecar process produces a topic of 3 partitions on c1 at 10,000 records/s (a 100-record batch of 100-byte
values every 10 ms, each batch's latency from its send to its answer) while one Subscribe stream reads it through
the same sidecar (a consumer group, acking every batch); STEADY_S seconds in, `kafka-mesh topic move` moves the topic
to c2; the load goes on until AFTER_S seconds after the move finished. Figures: the move's wall time, per phase and
without the drain (the wait for consumer groups, which is theirs to shorten), batches failed (none expected), and the
produce latency p50/p99 of the batches sent in the STEADY_S before the move against those sent within SWITCH_S of the
producer switch (from the switch written to the sidecar's report that nothing is left in flight for c1). Every record
acknowledged is read by the group (asserted).

Run: python -m pytest benchmarks/test_topic_move.py --benchmark-only
"""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2, mesh_pb2_grpc
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace
from tests.integration.subscribe_stream import SubStream

RATE_BATCHES = 100           # per second, of BATCH records: 10,000 records/s
BATCH = 100
STEADY_S = 15.0
AFTER_S = 5.0
SWITCH_S = 1.0
ROUNDS = 3
RUNNING = "3 sandbox Kafka clusters (1 broker each), etcd, one sidecar, the move's CLI, this benchmark (2 cores)"
PHASE_LINES = {
    "switch written": "producers write to the new cluster",
    "switched": "switched: no sidecar has records in flight",
    "fenced": "fenced:",
    "drained": "drained:",
    "done": "done: ",
}


class _Load(threading.Thread):
    """The paced producer: one Produce stream, one batch every 1/RATE_BATCHES s (on schedule, not after the last
    answer), each batch's send and answer time kept."""

    def __init__(self, target: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.target, self.topic = target, topic
        self.stop = threading.Event()
        self.sent: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self.failed: list[Any] = []
        self.acked: set[str] = set()
        self.error: Exception | None = None

    def run(self) -> None:
        value = b"v" * 100

        def requests() -> Iterator[mesh_pb2.ProduceRequest]:
            start = time.monotonic()
            b = 0
            while not self.stop.is_set():
                wait = start + b / RATE_BATCHES - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                req = mesh_pb2.ProduceRequest(batch_id=b)
                for i in range(BATCH):
                    req.records.add(topic=self.topic, key=f"{b}-{i}".encode(), value=value)
                self.sent[b] = time.monotonic()
                yield req
                b += 1

        try:
            with grpc.insecure_channel(self.target) as ch:
                for r in mesh_pb2_grpc.MeshStub(ch).Produce(requests(), timeout=900):
                    self.answered[r.batch_id] = time.monotonic()
                    if r.ok_count == BATCH:
                        self.acked.update(f"{r.batch_id}-{i}" for i in range(BATCH))
                    else:
                        self.failed.append(r)
        except Exception as e:   # reported by the benchmark
            self.error = e

    def latencies_ms(self, lo: float, hi: float) -> list[float]:
        return [(self.answered[b] - t) * 1000 for b, t in list(self.sent.items())
                if lo <= t < hi and b in self.answered]


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else float("nan")


def _move(sandbox: Sandbox, ns: str, topic: str) -> tuple[dict[str, float], str]:
    """Run the move; when each phase's line arrived (time.monotonic()), and the output."""
    proc = subprocess.Popen(["kafka-mesh", "topic", "move", topic, "--to", "c2", "--timeout", "300",
                             "--etcd", sandbox.etcd_endpoint, "--namespace", ns], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    at = {"start": time.monotonic()}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        for phase, text in PHASE_LINES.items():
            if text in line and phase not in at:
                at[phase] = time.monotonic()
    assert proc.wait(60) == 0, "".join(lines)
    at["end"] = time.monotonic()
    return at, "".join(lines)


def test_a_move_under_steady_load(benchmark: Any, sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    runs: list[dict[str, Any]] = []

    def run() -> None:
        ns, topic = new_namespace(), f"bench-move-{uuid.uuid4().hex[:8]}"
        create_topic(sandbox.clusters[0].bootstrap, topic, partitions=3)
        apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
        workdir = tmp_path / ns
        workdir.mkdir()
        sidecar = SidecarProc(sandbox, workdir, ns).start()
        sub = SubStream(sidecar.target, f"bench-{ns}", [topic], credit_records=5000, credit_bytes=4 << 20)
        load = _Load(sidecar.target, topic)
        try:
            load.start()
            time.sleep(STEADY_S)
            at, out = _move(sandbox, ns, topic)
            time.sleep(AFTER_S)
            load.stop.set()
            load.join(60)
            assert load.error is None, load.error
            sub.wait(lambda s: len(s.consumed) >= len(load.acked) and
                     load.acked <= {c.key.decode() for c in s.consumed}, 120, "every acked record")
        finally:
            sub.close()
            sidecar.stop()
        steady = load.latencies_ms(at["start"] - STEADY_S + 2, at["start"])
        switch = load.latencies_ms(at["switch written"] - SWITCH_S, at["switched"] + SWITCH_S)
        runs.append({
            "move_s": at["end"] - at["start"],
            "move_without_drain_s": at["end"] - at["start"] - (at["drained"] - at["fenced"]),
            "phases_s": {p: round(at[p] - at["start"], 2) for p in PHASE_LINES},
            "failed_batches": len(load.failed),
            "batches": len(load.answered),
            "steady_p50_ms": statistics.median(steady), "steady_p99_ms": _pct(steady, 99),
            "switch_p50_ms": statistics.median(switch), "switch_p99_ms": _pct(switch, 99),
            "switch_batches": len(switch), "switch_max_ms": max(switch),
            # The slowest batches around the switch: when they were sent (s after the switch was written), how long.
            "switch_slowest": [(round(t - at["switch written"], 3), round(ms, 1)) for t, ms in sorted(
                ((t, (load.answered[b] - t) * 1000) for b, t in list(load.sent.items())
                 if b in load.answered and at["switch written"] - SWITCH_S <= t < at["switched"] + SWITCH_S),
                key=lambda x: -x[1])[:3]],
            "output": out,
        })

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=0)
    benchmark.group = "topic-move"
    print(runs[0]["output"])
    for r in runs:
        r.pop("output")
        r["switch_p99_over_steady_p99"] = r["switch_p99_ms"] / r["steady_p99_ms"]
    benchmark.extra_info.update({
        "rounds": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
        "failed_batches": sum(r["failed_batches"] for r in runs),
        "worst_switch_p99_over_steady_p99": round(max(r["switch_p99_over_steady_p99"] for r in runs), 2),
        "median_move_without_drain_s": round(statistics.median(r["move_without_drain_s"] for r in runs), 2),
        "running": RUNNING,
    })
