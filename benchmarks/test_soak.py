"""Soak: SOAK_S seconds (default 600) at SOAK_RATE records/s (default 20,000) through two sidecars, with a broker
killed (-9) and restarted, etcd killed and restarted, and one sidecar killed (-9) and restarted, on a sandbox of its
own (two clusters of one broker each, and etcd; the dev sandbox is never touched).

Four producer apps (two per sidecar, one per topic and cluster; the Python client's send_batch, 100-record batches
paced to a quarter of the rate each, catching up after a stall as an app with a backlog would) write 8-byte record
ids; a record whose batch failed (its fate unknown: the stream broke, or the cluster timed out) is sent again. One
consumer app reads both topics through the second sidecar with a Subscribe group, acking what it took; when its
stream ends (its sidecar was killed) it subscribes again.

Checked at the end, record id by record id: every acked record is in Kafka (read straight from the brokers) and was
read by the group; a record is in Kafka twice only if it was sent twice (its first batch's fate unknown); a record
read twice by the group was first read within a few seconds before a fault (delivered, not yet committed).

Run: python -m pytest benchmarks/test_soak.py -s --benchmark-only (KAFKA_MESH_SOAK_S=90 for a short run). Not
part of CI.
"""

from __future__ import annotations

import array
import os
import pathlib
import shutil
import signal
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer

from benchmarks.procstat import mib, proc_status
from sidecar.client import ClientError, Consumer, Producer, StreamError
from sidecar.dev import procs
from sidecar.dev import sandbox as sandbox_mod
from sidecar.dev.sandbox import Sandbox
from tests.integration.conftest import sandbox_settings
from tests.integration.kafka_helpers import create_topic
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc

SOAK_S = float(os.environ.get("KAFKA_MESH_SOAK_S", "600"))
RATE = int(os.environ.get("KAFKA_MESH_SOAK_RATE", "20000"))
BATCH = 100
TOPICS = ("soak-c1", "soak-c2")      # one per cluster
DOWN_S = 15.0                        # how long a killed broker or etcd stays down
SIDECAR_DOWN_S = 5.0
#: A record read twice must have been first read at most this long before a fault began (the sidecar commits acked
#: offsets every second; a killed broker or sidecar loses what was acked since the last commit, and the records
#: delivered but not yet acked).
REDELIVERY_WINDOW_S = 10.0


def _rid(app: int, seq: int) -> bytes:
    return struct.pack(">Q", (app << 40) | seq)


def _parse(raw: bytes) -> tuple[int, int]:
    v = struct.unpack(">Q", raw)[0]
    return v >> 40, v & ((1 << 40) - 1)


class Ledger:
    """Per app: how many records it made, which were acked, how often each was sent, in Kafka and read."""

    def __init__(self, apps: int, capacity: int) -> None:
        self.made = [0] * apps
        self.acked = [bytearray(capacity) for _ in range(apps)]
        self.sent = [bytearray(capacity) for _ in range(apps)]
        self.in_kafka = [bytearray(capacity) for _ in range(apps)]
        self.read = [bytearray(capacity) for _ in range(apps)]
        # When each record was first read (seconds since t0): 4 bytes a record, not a Python object.
        self.first_read = [array.array("f", bytes(4 * capacity)) for _ in range(apps)]
        self.t0 = time.monotonic()
        self.lock = threading.Lock()


def _bump(counts: bytearray, i: int) -> None:
    if counts[i] < 255:
        counts[i] += 1


class ProducerApp(threading.Thread):
    def __init__(self, app: int, sidecar: SidecarProc, topic: str, ledger: Ledger, rate: float,
                 stop: threading.Event) -> None:
        super().__init__(name=f"soak-producer-{app}", daemon=True)
        self.app, self.sidecar, self.topic, self.ledger, self.rate, self.stop_ = app, sidecar, topic, ledger, rate, stop
        self.resend: list[int] = []
        self.latencies: list[float] = []
        self.stream_breaks = 0
        self.batch_failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:       # reported by the test
            self.error = e

    def _producer(self) -> Producer:
        while True:
            try:
                return Producer(self.sidecar.target, connect_timeout=5, max_inflight_batches=256)
            except StreamError:
                if self.stop_.is_set() and not self.resend:
                    raise
                time.sleep(0.5)

    def _run(self) -> None:
        p = self._producer()
        interval = BATCH / self.rate
        next_at = time.monotonic()
        pending: list[Any] = []
        while not self.stop_.is_set() or self.resend:
            seqs = self.resend[:BATCH] if self.resend else []
            del self.resend[:len(seqs)]
            if not seqs:
                if self.stop_.is_set():
                    break
                seqs = list(range(self.ledger.made[self.app], self.ledger.made[self.app] + BATCH))
                self.ledger.made[self.app] += BATCH
            for s in seqs:
                _bump(self.ledger.sent[self.app], s)
            try:
                fut = p.send_batch(self.topic, [_rid(self.app, s) for s in seqs], timeout=30)
            except (StreamError, TimeoutError):
                self.resend.extend(seqs)
                self._drain(pending, wait=True)
                p = self._reopen(p)
                continue
            pending.append((fut, seqs, time.monotonic()))
            self._drain(pending, wait=False)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # else behind (a fault held the app up): the backlog goes as fast as the sidecar takes it
        self._drain(pending, wait=True)
        while self.resend:                          # what failed in the last batches
            seqs = self.resend[:BATCH]
            del self.resend[:BATCH]
            for s in seqs:
                _bump(self.ledger.sent[self.app], s)
            pending.append((p.send_batch(self.topic, [_rid(self.app, s) for s in seqs], timeout=60), seqs,
                            time.monotonic()))
            self._drain(pending, wait=True)
        p.close(timeout=120)

    def _reopen(self, p: Producer) -> Producer:
        self.stream_breaks += 1
        try:
            p.close(timeout=1)
        except Exception:
            pass
        return self._producer()

    def _drain(self, pending: list[Any], wait: bool) -> None:
        keep = []
        for fut, seqs, t0 in pending:
            if not wait and not fut.done():
                keep.append((fut, seqs, t0))
                continue
            try:
                res = fut.result(timeout=180)
            except StreamError:
                self.resend.extend(seqs)           # fate unknown: sent again (a duplicate, maybe)
                continue
            self.latencies.append((t0, time.monotonic() - t0))
            failed = set(res.errors)
            if failed:
                self.batch_failures += 1
            for i, s in enumerate(seqs):
                if i in failed:
                    self.resend.append(s)
                else:
                    self.ledger.acked[self.app][s] = 1
        pending[:] = keep


class ConsumerApp(threading.Thread):
    def __init__(self, sidecar: SidecarProc, ledger: Ledger, group: str, done: threading.Event) -> None:
        super().__init__(name="soak-consumer", daemon=True)
        self.sidecar, self.ledger, self.group, self.done = sidecar, ledger, group, done
        self.total = 0
        self.reconnects = 0
        self.error: BaseException | None = None
        self.last_read = time.monotonic()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                try:
                    with Consumer(self.sidecar.target, group=self.group, start="earliest") as c:
                        c.subscribe(TOPICS)
                        while not self.done.is_set():
                            got = c.poll(timeout=0.5)
                            now = time.monotonic()
                            for r in got:
                                app, seq = _parse(r.value)
                                counts = self.ledger.read[app]
                                if counts[seq] == 0:
                                    self.ledger.first_read[app][seq] = now - self.ledger.t0
                                _bump(counts, seq)
                            if got:
                                self.total += len(got)
                                self.last_read = now
                                c.ack(got)
                except (ClientError, OSError):
                    self.reconnects += 1
                    time.sleep(1.0)
        except BaseException as e:
            self.error = e


@pytest.fixture(scope="module")
def soak_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    # On disk, not in memory: ten minutes at 20,000 records/s is gigabytes of Kafka log.
    settings = sandbox_settings(tmp_path_factory.mktemp("soak") / "state")
    box, _ = sandbox_mod.up(settings, clusters=2, brokers_per_cluster=1, detach=False,
                            progress=lambda m: print(f"[sandbox] {m}"))
    try:
        yield box
    finally:
        procs.stop_all(box.procs())      # the servers restarted by the test are not in the sandbox's state file
        sandbox_mod.down(settings)
        shutil.rmtree(settings.state_dir, ignore_errors=True)


def _read_kafka(box: Sandbox, ledger: Ledger) -> int:
    total = 0
    for cluster, topic in zip(box.clusters, TOPICS, strict=True):
        c = KafkaConsumer({"bootstrap.servers": cluster.bootstrap, "group.id": f"verify-{uuid.uuid4().hex}",
                           "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 10:
            msgs = c.consume(10000, 1.0)
            for m in msgs:
                if m.error() is None:
                    app, seq = _parse(m.value())
                    _bump(ledger.in_kafka[app], seq)
                    total += 1
            if msgs:
                idle_since = time.monotonic()
        c.close()
    return total


@pytest.mark.timeout(2 * SOAK_S + 900)      # the run, the catch-up, and reading every record back from Kafka
def test_soak_two_sidecars_through_broker_etcd_and_sidecar_kills(
        soak_sandbox: Sandbox, tmp_path: pathlib.Path, benchmark: Any) -> None:
    box = soak_sandbox
    ns = f"soak{uuid.uuid4().hex[:8]}"
    for cluster, topic in zip(box.clusters, TOPICS, strict=True):
        create_topic(cluster.bootstrap, topic, partitions=3)
    apply(box, ns, {"clusters": clusters_doc(box),
                    "producer": {TOPICS[0]: {"where": [{"sink": "c1"}]}, TOPICS[1]: {"where": [{"sink": "c2"}]}},
                    "consumer": {TOPICS[0]: [{"vip": "c1"}], TOPICS[1]: [{"vip": "c2"}]}})
    sidecars = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        sidecars.append(SidecarProc(box, workdir, ns).start())
    capacity = int(RATE * SOAK_S * 1.1 / 4) + 10 * BATCH
    ledger = Ledger(4, capacity)
    stop, done = threading.Event(), threading.Event()
    producers = [ProducerApp(i, sidecars[i // 2], TOPICS[i % 2], ledger, RATE / 4, stop) for i in range(4)]
    consumer = ConsumerApp(sidecars[1], ledger, f"soak-{uuid.uuid4().hex[:6]}", done)
    faults: list[tuple[str, float, float]] = []       # (what, began, ended), monotonic
    peak_rss = [0, 0]

    def fault_schedule(t0: float) -> None:
        def at(frac: float) -> None:
            while time.monotonic() < t0 + frac * SOAK_S:
                for i, sc in enumerate(sidecars):
                    if sc.alive():
                        peak_rss[i] = max(peak_rss[i], proc_status(sc.proc.pid)["VmRSS"])   # type: ignore[union-attr]
                time.sleep(0.5)

        at(0.2)
        began = time.monotonic()
        broker = box.clusters[0].brokers[0]
        broker.proc = _restart_after(broker.proc, DOWN_S)
        faults.append(("broker c1 killed", began, time.monotonic()))
        at(0.45)
        began = time.monotonic()
        box.etcd = _restart_after(box.etcd, DOWN_S)
        faults.append(("etcd killed", began, time.monotonic()))
        at(0.7)
        began = time.monotonic()
        sidecars[1].stop(signal.SIGKILL)
        time.sleep(SIDECAR_DOWN_S)
        sidecars[1].start()
        faults.append(("sidecar b killed", began, time.monotonic()))
        at(1.0)

    def run() -> dict[str, Any]:
        t0 = time.monotonic()
        for t in [*producers, consumer]:
            t.start()
        fault_schedule(t0)
        stop.set()
        for p in producers:
            p.join(600)
        produced_s = time.monotonic() - t0
        acked = sum(sum(a) for a in ledger.acked)
        # The group catches up: every acked record read, or nothing new for 60 s.
        while consumer.total < acked and time.monotonic() - consumer.last_read < 60:
            time.sleep(1)
        done.set()
        consumer.join(60)
        return {"produced_s": produced_s, "acked": acked}

    try:
        out = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        stop.set()
        done.set()
        for sc in sidecars:
            if sc.alive():
                sc.stop(signal.SIGKILL)
    for p in producers:
        assert p.error is None, repr(p.error)
    assert consumer.error is None, repr(consumer.error)
    in_kafka = _read_kafka(box, ledger)

    lost_kafka = lost_read = dup_kafka_unexplained = dup_read_unexplained = 0
    dup_kafka = dup_read = 0
    for app in range(4):
        acked, sent, kafka, read = ledger.acked[app], ledger.sent[app], ledger.in_kafka[app], ledger.read[app]
        for s in range(ledger.made[app]):
            if acked[s]:
                lost_kafka += kafka[s] == 0
                lost_read += read[s] == 0
            if kafka[s] > 1:
                dup_kafka += 1
                dup_kafka_unexplained += kafka[s] > sent[s]
            if read[s] > kafka[s] and kafka[s] >= 1:
                dup_read += 1
                first = ledger.t0 + ledger.first_read[app][s]
                if not any(start - REDELIVERY_WINDOW_S <= first <= end for _, start, end in faults):
                    dup_read_unexplained += 1
    latencies = sorted(x for p in producers for _, x in p.latencies)
    # Batches sent away from any fault (outside [began, ended + 5 s]): the latency an app sees on a quiet day.
    calm = sorted(x for p in producers for t0, x in p.latencies
                  if not any(began <= t0 <= ended + 5 for _, began, ended in faults))
    figures = {
        "seconds": round(out["produced_s"]), "target_rate": RATE,
        "acked": out["acked"], "rate": round(out["acked"] / out["produced_s"]), "in_kafka": in_kafka,
        "read_by_group": consumer.total, "lost_in_kafka": lost_kafka, "lost_to_group": lost_read,
        "dup_in_kafka": dup_kafka, "dup_read": dup_read, "consumer_reconnects": consumer.reconnects,
        "stream_breaks": sum(p.stream_breaks for p in producers),
        "failed_batches_resent": sum(p.batch_failures for p in producers),
        "ack_latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "ack_latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "ack_latency_max_ms": round(latencies[-1] * 1000, 1),
        "ack_latency_calm_p50_ms": round(calm[len(calm) // 2] * 1000, 1),
        "ack_latency_calm_p99_ms": round(calm[int(len(calm) * 0.99)] * 1000, 1),
        "sidecar_peak_rss_mib": [mib(x) for x in peak_rss],
        "faults": [(what, round(end - began, 1)) for what, began, end in faults],
    }
    benchmark.extra_info.update(figures)
    print(f"\nsoak figures: {figures}")
    assert lost_kafka == 0 and lost_read == 0, figures
    assert dup_kafka_unexplained == 0 and dup_read_unexplained == 0, figures
    assert len(faults) == 3


def _restart_after(proc: procs.Proc, down_s: float) -> procs.Proc:
    """Kill a sandbox server with SIGKILL, wait down_s, and start it again with the same command line, folder and
    log (its data is kept: a crash, not a new server)."""
    argv = pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    cwd = os.readlink(f"/proc/{proc.pid}/cwd")
    proc.signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(down_s)
    return procs.spawn(proc.name, [a.decode() for a in argv], pathlib.Path(proc.log), pathlib.Path(cwd),
                       detach=False)[0]

