"""broker-pause: what a producer spends while its broker answers late.

10,000 records/s (a 100-record batch every 10 ms) go to c1 for RUN_S seconds; PAUSE_AT_S into the run c1's broker is
stopped (SIGSTOP) for PAUSE_MS, then continued. The CPU of the producing process is sampled every SAMPLE_S from
/proc, and the figures are the cores it kept busy before the pause and during it. Four variants: through the sidecar
and with confluent-kafka directly (in a child process of its own), each with librdkafka's idempotent producer (the
sidecar's default) and without it (`"enable.idempotence": "false"` in the cluster's config). Every record is still
acknowledged in each variant (asserted); what is measured is the cost of waiting.

Run: python -m pytest benchmarks/test_broker_pause.py --benchmark-only
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshcore
from benchmarks.procstat import cpu_s
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

RUN_S = 4.0
PAUSE_AT_S = 2.0
PAUSE_MS = 300
SAMPLE_S = 0.05
BATCH = 100
INTERVAL_S = 0.01            # a batch every 10 ms: 10,000 records/s
VALUE = b"x" * 100
RUNS = 3
RUNNING = "3 sandbox Kafka clusters (1 broker each; c1 takes the load), etcd, the producing process, this benchmark"


def _sample(pid: int, started: float, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    while not stop.is_set():
        out.append((time.monotonic() - started, cpu_s(pid)))
        time.sleep(SAMPLE_S)


def _cores(samples: list[tuple[float, float]], lo: float, hi: float) -> float:
    inside = [(t, c) for t, c in samples if lo <= t <= hi]
    if len(inside) < 2:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _pause_broker(pid: int, started: float) -> None:
    time.sleep(max(0.0, PAUSE_AT_S - (time.monotonic() - started)))
    os.kill(pid, signal.SIGSTOP)
    time.sleep(PAUSE_MS / 1000)
    os.kill(pid, signal.SIGCONT)


def _measure(producer_pid: int, broker_pid: int, drive: Any) -> dict[str, float]:
    """Run drive(started) (which produces for RUN_S) while sampling producer_pid and pausing the broker."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    started = time.monotonic()
    sampler = threading.Thread(target=_sample, args=(producer_pid, started, stop, samples), daemon=True)
    pauser = threading.Thread(target=_pause_broker, args=(broker_pid, started), daemon=True)
    sampler.start()
    pauser.start()
    try:
        drive(started)
    finally:
        pauser.join()
        stop.set()
        sampler.join()
    pause = PAUSE_MS / 1000
    return {"cores_before": _cores(samples, 0.5, PAUSE_AT_S),
            "cores_during_pause": _cores(samples, PAUSE_AT_S, PAUSE_AT_S + pause),
            "cores_after": _cores(samples, PAUSE_AT_S + pause + 0.2, RUN_S - 0.1)}


def _sidecar_drive(target: str, topic: str) -> Any:
    def drive(started: float) -> None:
        def requests() -> Iterator[bytes]:
            n = 0
            while time.monotonic() - started < RUN_S:
                yield meshcore.encode_records(n, topic, [VALUE] * BATCH, [str(i).encode() for i in range(BATCH)])
                n += 1
                time.sleep(max(0.0, started + n * INTERVAL_S - time.monotonic()))

        with grpc.insecure_channel(target) as ch:
            ok = sum(mesh_pb2.ProduceResponse.FromString(r).ok_count
                     for r in ch.stream_stream("/kafkamesh.v1.Mesh/Produce")(requests(), timeout=120))
        assert ok >= RUN_S / INTERVAL_S * BATCH * 0.9, ok
    return drive


def _direct_child(bootstrap: str, topic: str, idempotent: bool, go: Any, done: Any) -> None:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": "5", "log_level": "3",
                  "enable.idempotence": "true" if idempotent else "false"})
    acked = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            acked[0] += 1

    go.wait()
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < RUN_S:
        for i in range(BATCH):
            p.produce(topic, VALUE, str(i).encode(), on_delivery=on_delivery)
        p.poll(0)
        n += 1
        time.sleep(max(0.0, started + n * INTERVAL_S - time.monotonic()))
    p.flush(60)
    done.put(acked[0])


@pytest.fixture(scope="module")
def pause_topic(sandbox: Sandbox) -> str:
    topic = f"pause-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=3)
    return topic


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
def test_sidecar_cpu_while_the_broker_pauses(benchmark: Any, sandbox: Sandbox, pause_topic: str,
                                             tmp_path: Any, idempotent: bool) -> None:
    c1 = sandbox.clusters[0]
    config = {} if idempotent else {"c1": {"enable.idempotence": "false"}}
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox, **config),
                        "producer": {pause_topic: {"where": [{"sink": "c1"}]}}})
    proc = SidecarProc(sandbox, tmp_path, ns).start()
    assert proc.proc is not None
    runs: list[dict[str, float]] = []
    try:
        def run() -> None:
            runs.append(_measure(proc.proc.pid, c1.brokers[0].proc.pid, _sidecar_drive(proc.target, pause_topic)))
            time.sleep(1)

        benchmark.pedantic(run, rounds=RUNS, warmup_rounds=0)
    finally:
        proc.stop()
    benchmark.group = "broker-pause"
    benchmark.extra_info.update(_summary(runs, "sidecar process", idempotent))


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
def test_confluent_kafka_cpu_while_the_broker_pauses(benchmark: Any, sandbox: Sandbox, pause_topic: str,
                                                     idempotent: bool) -> None:
    c1 = sandbox.clusters[0]
    ctx = multiprocessing.get_context("spawn")
    runs: list[dict[str, float]] = []

    def run() -> None:
        go, done = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_direct_child, args=(c1.bootstrap, pause_topic, idempotent, go, done))
        child.start()
        time.sleep(2)                        # the child imports and connects before the clock starts
        assert child.pid is not None

        def drive(started: float) -> None:
            go.set()
            acked = done.get(timeout=120)
            assert acked >= RUN_S / INTERVAL_S * BATCH * 0.9, acked

        runs.append(_measure(child.pid, c1.brokers[0].proc.pid, drive))
        child.join(30)
        time.sleep(1)

    benchmark.pedantic(run, rounds=RUNS, warmup_rounds=0)
    benchmark.group = "broker-pause"
    benchmark.extra_info.update(_summary(runs, "confluent-kafka producer process", idempotent))


def _summary(runs: list[dict[str, float]], who: str, idempotent: bool) -> dict[str, Any]:
    return {
        "what": f"{who}: 10,000 records/s to c1, its broker stopped for {PAUSE_MS} ms; idempotence "
                f"{'on' if idempotent else 'off'}; cores from /proc every {SAMPLE_S * 1000:.0f} ms, per run",
        **{k: [round(r[k], 2) for r in runs] for k in ("cores_before", "cores_during_pause", "cores_after")},
        "median_during_pause": round(statistics.median(r["cores_during_pause"] for r in runs), 2),
        "librdkafka": meshcore.librdkafka_version(), "running": RUNNING,
    }
