"""The sidecar's Subscribe path against confluent-kafka's consumer used directly, in one run on the same clusters.

- subscribe-rate: the same preloaded records (100-byte values, 3 partitions, PRELOAD per cluster) read by one
  Subscribe stream over [c1, c2, c3]; by three confluent-kafka Consumers reading c1-c3 at the same time, in three
  processes (the strongest direct setup on one host) and in one process with a thread each (what one application
  would do); and by a Consumer reading each cluster alone, one after another, with the whole machine to itself (the
  sum of those three rates is reported too, and the stream's ratio to it);
- subscribe-latency: produce to receive at 10,000 records/s over the three clusters (the producer in a process of
  its own), after a warm-up pass, alternating four passes through three direct consumers (one thread each) and
  four through one stream; each latency also split at the broker's append time into produce and consume sides;
- subscribe-idle-rate, subscribe-idle-latency: a busy topic on c1 read alone, with two idle clusters in its route, and
  with an idle second topic in the same subscription, interleaved so that drift weighs on each alike;
- subscribe-rss: the resident memory of a sidecar with the three clusters and 20 streams reading, and idle.
Every client here does what a real one does: each response is parsed with protobuf, every record's value is read,
each RecordBatch is acked as offset ranges and its records and bytes are granted back as credit. Figures are printed
in the terminal summary (each test's extra_info at its end); nothing here asserts a time.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import pathlib
import statistics
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
import grpc
import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import AdminClient, NewTopic

import meshcore
from benchmarks.procstat import CpuMeter, mib, proc_status
from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.sidecar_proc import SidecarProc, apply, clusters_doc, new_namespace

M = mesh_pb2
SUBSCRIBE = "/kafkamesh.v1.Mesh/Subscribe"
CLUSTERS = ("c1", "c2", "c3")
PARTITIONS = 3
VALUE_BYTES = 100
# Records per cluster in the rate topics. The direct consumers keep confluent-kafka's defaults, under which a backlog
# larger than a consumer's prefetch (queued.min.messages, 100,000 records) is read in stops and goes (after a full
# prefetch queue, the next fetch waits fetch.queue.backoff.ms, 1 s by default): 100,000 stays within it, so a round
# measures the paths, not that pause (benchmarks/test_subscribe_catchup.py measures the pause). Each round's longest
# gap between two deliveries is reported (max_gap_ms).
PRELOAD = 100_000
IDLE_PRELOAD = 100_000         # records on c1 in each idle-rate topic; not more, for the same reason as PRELOAD: at
                               # 400,000 every variant stopped and went (gaps of 0.85 s)
IDLE_ROUNDS = 7                # ~0.2 s each, ~0.13 s of it before the first record: one slow group join or fetch
                               # moves a round by 10-20%
RSS_PRELOAD = 100_000          # records per cluster in the RSS topic (each consumer may prefetch all of them)
RATE_ROUNDS = 3
LAT_RATE = 10_000              # records/s, over every (cluster, topic) the producer writes to
LAT_SECONDS = 10.0
LAT_PASSES = 4                 # direct, sidecar, direct, sidecar, ...: drift in the machine's load weighs on both alike
LAT_WARMUP_SECONDS = 30.0      # a pass each way before those, not counted (15 s was not always enough)
IDLE_SECONDS = 5.0             # per pass; each idle variant runs two passes
LINGER_MS = 5                  # the paced producer's linger.ms: the client's default
RSS_STREAMS = 20
RSS_SECONDS = 10.0
# Every value starts with its send time (time.time_ns(): producer and receivers share the host's clock), its kind and
# a sequence number, then padding up to VALUE_BYTES.
HEAD = struct.Struct(">qBI")
SPLITS = ("latency", "produce_side", "consume_side")
WARM, MEASURED = 0, 1
PAD = b"x" * (VALUE_BYTES - HEAD.size)
RUNNING = "3 sandbox Kafka clusters (1 broker each), etcd, one sidecar process (Unix socket), this benchmark client"
VERSIONS = {"confluent_kafka": confluent_kafka.__version__, "client_librdkafka": confluent_kafka.libversion()[0],
            "sidecar_librdkafka": meshcore.librdkafka_version()}

# Figures one test hands to a later one (the direct rates to the stream's ratio).
_RESULTS: dict[str, Any] = {}


def _value(kind: int, seq: int = 0) -> bytes:
    return HEAD.pack(time.time_ns(), kind, seq) + PAD


def _context() -> dict[str, Any]:
    return {**VERSIONS, "cpus": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}


def _lat_stats(samples_ns: list[int]) -> dict[str, Any]:
    if len(samples_ns) < 2:
        return {"n": len(samples_ns)}
    qs = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return {"p50_ms": round(statistics.median(samples_ns) / 1e6, 3), "p99_ms": round(qs[98] / 1e6, 3),
            "max_ms": round(max(samples_ns) / 1e6, 3), "n": len(samples_ns)}


def _split_stats(samples: dict[str, list[int]]) -> dict[str, Any]:
    """_lat_stats of the whole latencies, with those of each side under its SPLITS name."""
    return {**_lat_stats(samples["latency"]), **{k: _lat_stats(samples[k]) for k in SPLITS if k != "latency"}}


# -- the sandbox side: topics, mapping, sidecar ----------------------------------------------------------------------


@dataclass
class Mesh:
    sandbox: Sandbox
    proc: SidecarProc
    doc: dict[str, Any]                                   # the mapping applied, for a second sidecar (RSS)
    topics: dict[str, str]                                # role -> topic name
    bootstrap: dict[str, str]                             # cluster -> bootstrap

    def cpu_groups(self) -> dict[str, list[int]]:
        """Processes for a CpuMeter: the module's sidecar, every broker, this client process."""
        assert self.proc.proc is not None
        return {"sidecar": [self.proc.proc.pid],
                "brokers": [b.proc.pid for c in self.sandbox.clusters for b in c.brokers],
                "client": [os.getpid()]}


# role -> (the clusters the topic exists on, which its consumer route names; records preloaded per cluster). The
# idle-rate topics ("ir-") hold records on c1 only: in "ir-trio", c2 and c3 are the idle clusters. The latency topics
# start empty and are each read once ("lat-" by test_end_to_end_latency, "il-" by the idle latency passes).
PACED = ("lat-", "il-")      # the paced runs' topics (LogAppendTime)
TOPICS: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "rate": (CLUSTERS, {c: PRELOAD for c in CLUSTERS}),
    "rss": (CLUSTERS, {c: RSS_PRELOAD for c in CLUSTERS}),
    **{f"lat-{path}-{i}": (CLUSTERS, {}) for path in ("direct", "sidecar") for i in range(LAT_PASSES + 1)},
    "ir-solo": (("c1",), {"c1": IDLE_PRELOAD}),
    "ir-trio": (CLUSTERS, {"c1": IDLE_PRELOAD}),
    "ir-pair": (("c1",), {"c1": IDLE_PRELOAD}),
    "ir-idle": (("c1",), {}),                              # the idle second topics of the "pair" variants
    "il-idle": (("c1",), {}),
    **{f"il-{v}-{p}": (CLUSTERS if v == "trio" else ("c1",), {}) for v in ("solo", "trio", "pair") for p in (0, 1)},
}


def _create_topics(bootstrap: str, topics: list[str], append_time: set[str]) -> None:
    """The topics of `append_time` stamp each record with the broker's clock when it appends it (LogAppendTime), which
    splits a latency into its produce side (send to append) and its consume side (append to receive)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "4"})
    new = [NewTopic(t, PARTITIONS, 1, config={"message.timestamp.type": "LogAppendTime"} if t in append_time else {})
           for t in topics]
    for future in admin.create_topics(new).values():
        future.result(timeout=60)


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Best effort: a reused sandbox should not keep every run's preloaded records."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": "4"})
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        try:
            future.result(timeout=60)
        except Exception:   # cleanup never fails the run
            pass


def _preload(bootstrap: str, topic: str, n: int) -> None:
    """n records spread evenly over the partitions; idempotent, so every partition's offsets run 0, 1, ... ."""
    p = CKProducer({"bootstrap.servers": bootstrap, "enable.idempotence": "true", "acks": "all",
                    "linger.ms": "20", "log_level": "4"})
    failed: list[object] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            failed.append(err)

    value = HEAD.pack(0, WARM, 0) + PAD
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, partition=i % PARTITIONS, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0, f"preload of {topic} on {bootstrap} not flushed"
    assert not failed, f"preload of {topic} on {bootstrap}: {failed[:3]}"


@pytest.fixture(scope="module")
def mesh(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    suffix = uuid.uuid4().hex[:8]
    topics = {role: f"sub-{role}-{suffix}" for role in TOPICS}
    bootstrap = {c.name: c.bootstrap for c in sandbox.clusters}
    per_cluster = {c: [topics[role] for role, (clusters, _) in TOPICS.items() if c in clusters] for c in CLUSTERS}
    try:
        for c in CLUSTERS:
            _create_topics(bootstrap[c], per_cluster[c], {topics[role] for role in TOPICS if role.startswith(PACED)})
        for role, (_, preload) in TOPICS.items():
            for c, n in preload.items():
                _preload(bootstrap[c], topics[role], n)
        doc = {"clusters": clusters_doc(sandbox),
               "producer": {"__default__": {"where": [{"sink": "c1"}]}},
               "consumer": {topics[role]: [{"vip": c} for c in clusters] for role, (clusters, _) in TOPICS.items()}}
        ns = new_namespace()
        apply(sandbox, ns, doc)
        proc = SidecarProc(sandbox, tmp_path_factory.mktemp("bench-subscribe"), ns).start()
        try:
            yield Mesh(sandbox, proc, doc, topics, bootstrap)
        finally:
            proc.stop()
    finally:
        for c in CLUSTERS:
            _delete_topics(bootstrap[c], per_cluster[c])


# -- clients ---------------------------------------------------------------------------------------------------------


class Stream:
    """One raw Subscribe stream, driven as a real client drives it: each response parsed with protobuf, each
    RecordBatch acked as offset ranges and its records and bytes granted back as credit once the caller has handled
    it (at least once: the ack follows the work). Acks and credit go out together, as sidecar.client's consumer
    sends them: within ACK_INTERVAL_S of the first one pending, or at once when a quarter of the default credit
    window is waiting to be granted. Events are skipped. close() half-closes, and the sidecar ends the stream cleanly
    once it has closed the stream's consumers; a stream it has not ended after CLOSE_TIMEOUT_S is cancelled, and
    `cancelled` says so."""

    CLOSE_TIMEOUT_S = 15.0
    ACK_INTERVAL_S = 0.02
    FLUSH_RECORDS = 10_000 // 4         # a quarter of the server's default credit
    FLUSH_BYTES = (16 << 20) // 4

    def __init__(self, channel: grpc.Channel, sub: M.Subscription, timeout: float = 600) -> None:
        self._first = M.SubscribeRequest(subscription=sub).SerializeToString()
        self._cond = threading.Condition()
        self._ranges: list[Any] = []
        self._records = 0
        self._bytes = 0
        self._since: float | None = None       # when the oldest pending ack was added
        self._closing = False
        self._timer: threading.Timer | None = None
        self.cancelled = False
        self._call = channel.stream_stream(SUBSCRIBE)(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[bytes]:
        yield self._first
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._ranges and (self._closing or self._records >= self.FLUSH_RECORDS
                                         or self._bytes >= self.FLUSH_BYTES
                                         or now - (self._since or now) >= self.ACK_INTERVAL_S):
                        msg = M.SubscribeRequest(acks=M.Acks(ranges=self._ranges),
                                                 credit=M.Credit(records=self._records, bytes=self._bytes))
                        self._ranges, self._records, self._bytes, self._since = [], 0, 0, None
                        break
                    if self._closing:
                        return
                    self._cond.wait(None if self._since is None else self._since + self.ACK_INTERVAL_S - now)
            yield msg.SerializeToString()

    def batches(self) -> Iterator[tuple[int, Any]]:
        """(time.time_ns() once parsed, RecordBatch) per RecordBatch, until the stream ends (also when close() had to
        cancel it)."""
        try:
            for raw in self._call:
                resp = M.SubscribeResponse.FromString(raw)
                now = time.time_ns()
                if resp.WhichOneof("kind") != "records":
                    continue
                yield now, resp.records
                self._settle(resp.records, len(raw))
        except grpc.RpcError as e:
            if not (self.cancelled and e.code() == grpc.StatusCode.CANCELLED):
                raise
        if self._timer is not None:
            self._timer.cancel()

    def _settle(self, batch: Any, nbytes: int) -> None:
        ranges = []
        n = 0
        for g in batch.partitions:
            recs = g.records
            n += len(recs)
            ranges.append(M.AckRange(cluster=g.cluster, topic=g.topic, partition=g.partition,
                                     first_offset=recs[0].offset, last_offset=recs[-1].offset))
        with self._cond:
            self._ranges += ranges
            self._records += n
            self._bytes += nbytes
            if self._since is None:
                self._since = time.monotonic()
                self._cond.notify()
            elif self._records >= self.FLUSH_RECORDS or self._bytes >= self.FLUSH_BYTES:
                self._cond.notify()

    def close(self, drain: bool) -> None:
        """Half-close. With drain, read what is still in flight until the sidecar ends the stream (for a caller that
        stopped reading batches()); without, a thread still reading batches() sees the end."""
        self._timer = threading.Timer(self.CLOSE_TIMEOUT_S, self._cancel)
        self._timer.daemon = True
        self._timer.start()
        with self._cond:
            self._closing = True
            self._cond.notify()
        if drain:
            for _ in self.batches():
                pass

    def _cancel(self) -> None:
        self.cancelled = True
        self._call.cancel()


def _direct_consumer(bootstrap: str, group: str) -> CKConsumer:
    # The defaults a user would keep: auto commit on, the client's own fetch and prefetch settings.
    return CKConsumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})


def _group() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


class _Thread(threading.Thread):
    """A daemon thread that keeps its exception for the main thread to raise."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as e:   # handed to the main thread by check()
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error


# -- subscribe-rate --------------------------------------------------------------------------------------------------


@dataclass
class _Round:
    """One read-everything round: its client (closed by the teardown, outside the timed part) and timings."""

    group: str = field(default_factory=_group)
    cluster: str = ""
    meter: CpuMeter | None = None
    close: Callable[[], None] | None = None
    cancelled: bool = False     # the sidecar did not end the stream after the half-close: it was cancelled
    started: float = 0.0
    first: float = 0.0
    last: float = 0.0
    max_gap: float = 0.0        # the longest wait between two deliveries after the first
    records: int = 0
    value_bytes: int = 0

    def begin(self) -> None:
        self.started = time.perf_counter()
        if self.meter is not None:
            self.meter.start()

    def end(self) -> None:
        self.last = time.perf_counter()
        if self.meter is not None:
            self.meter.stop()

    def delivered(self) -> None:
        now = time.perf_counter()
        if not self.first:
            self.first = now
        else:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now


def _teardown(r: _Round) -> None:
    if r.close is not None:
        r.close()
    time.sleep(0.5)             # the closed client's leave and commit (and the sidecar's session close) stay out
                                # of the next round


def _rates(rounds: list[_Round], records: int) -> dict[str, Any]:
    """Medians over the rounds: the rate over the whole round (client creation and group join included), the rate
    from the first record to the last, the time to the first record, the longest gap between deliveries, and the
    CPU time per record of each process group the rounds metered."""
    out: dict[str, Any] = {
        "rps": round(statistics.median(records / (r.last - r.started) for r in rounds)),
        "first_to_last_rps": round(statistics.median(records / (r.last - r.first) for r in rounds)),
        "first_record_ms": round(statistics.median(r.first - r.started for r in rounds) * 1e3, 1),
        "max_gap_ms": round(statistics.median(r.max_gap for r in rounds) * 1e3, 1)}
    meters = [r.meter for r in rounds if r.meter is not None]
    if meters:
        out["cpu_us_per_record"] = {name: round(statistics.median(m.used[name] for m in meters) / records * 1e6, 2)
                                    for name in meters[0].used}
    return out


def _read_stream(channel: grpc.Channel, topics: list[str], want: int, r: _Round) -> None:
    """One Subscribe stream over topics, a fresh group from the earliest offset, server-default batching and credit,
    until `want` records arrived; checks that every record came exactly once (the topics' offsets start at 0)."""
    r.begin()
    stream = Stream(channel, M.Subscription(group=r.group, topics=topics, start=M.START_POSITION_EARLIEST))

    def close() -> None:
        stream.close(drain=True)
        r.cancelled = stream.cancelled

    r.close = close
    ends: dict[tuple[str, str, int], int] = {}
    for _, batch in stream.batches():
        r.delivered()
        for g in batch.partitions:
            for rec in g.records:
                r.value_bytes += len(rec.value)
            r.records += len(g.records)
            ends[(g.cluster, g.topic, g.partition)] = g.records[-1].offset + 1
        if r.records >= want:
            break
    r.end()
    assert r.records == want and sum(ends.values()) == want, (r.records, ends)
    assert r.value_bytes == want * VALUE_BYTES


def _consume(c: CKConsumer, r: _Round, want: int, limit_s: float = 120) -> None:
    """consume(1000, 1.0) until `want` records arrived or limit_s passed, reading every value into r."""
    deadline = time.monotonic() + limit_s
    while r.records < want and time.monotonic() < deadline:
        msgs = c.consume(num_messages=min(1000, want - r.records), timeout=1.0)
        if msgs:
            r.delivered()
        for m in msgs:
            if m.error() is None:
                r.records += 1
                r.value_bytes += len(m.value())


def test_confluent_kafka_consume_each_cluster_alone(benchmark: Any, mesh: Mesh) -> None:
    """The direct baseline: a fresh group's confluent-kafka Consumer reads one cluster's PRELOAD records with
    consume(num_messages=1000, timeout=1.0), client creation and group join included; rounds go c1, c2, c3, c1, ...
    The target compares the stream with the sum of the per-cluster rates, so extra_info["records"] is 3 x PRELOAD
    although a round reads PRELOAD: records / median round = 3 x the median per-cluster rate, the summed baseline
    the summary's ratio then divides by (the exact sum is in extra_info)."""
    topic = mesh.topics["rate"]
    order = itertools.cycle(CLUSTERS)
    done: list[_Round] = []

    def setup() -> tuple[tuple[_Round], dict[str, Any]]:
        return (_Round(cluster=next(order), meter=CpuMeter(mesh.cpu_groups())),), {}

    def read_cluster(r: _Round) -> None:
        r.begin()
        c = _direct_consumer(mesh.bootstrap[r.cluster], r.group)
        r.close = c.close
        c.subscribe([topic])
        _consume(c, r, PRELOAD)
        assert r.records == PRELOAD, f"{r.cluster}: {r.records} of {PRELOAD} records in 120 s"
        r.end()
        assert r.value_bytes == PRELOAD * VALUE_BYTES
        done.append(r)

    benchmark.group = "subscribe-rate"
    benchmark.extra_info["records"] = len(CLUSTERS) * PRELOAD
    benchmark.pedantic(read_cluster, setup=setup, teardown=_teardown, rounds=3 * RATE_ROUNDS, warmup_rounds=1)
    measured = done[1:]                                                  # the first was the warm-up round
    per_cluster = {c: _rates([r for r in measured if r.cluster == c], PRELOAD) for c in CLUSTERS}
    summed = {k: sum(v[k] for v in per_cluster.values()) for k in ("rps", "first_to_last_rps")}
    _RESULTS["direct_sum"] = summed
    benchmark.extra_info.update({
        "what": "confluent-kafka Consumer.consume(1000, 1.0), each cluster alone, fresh group, auto commit on; every "
                "value read; rps = PRELOAD / (creation to last record), median of 3 rounds per cluster",
        "records_per_round": PRELOAD, "per_cluster": per_cluster,
        "sum_of_direct_rps": summed["rps"], "sum_of_direct_first_to_last_rps": summed["first_to_last_rps"],
        "running": RUNNING + " (the sidecar idle)", **_context(),
    })


def _rate_rounds(benchmark: Any, read_all: Callable[[_Round], None], setup: Callable[[], Any], done: list[_Round],
                 total: int) -> dict[str, Any]:
    """RATE_ROUNDS measured rounds of read_all after one warm-up round, in the subscribe-rate group; their _rates."""
    benchmark.group = "subscribe-rate"
    benchmark.extra_info["records"] = total
    benchmark.pedantic(read_all, setup=setup, teardown=_teardown, rounds=RATE_ROUNDS, warmup_rounds=1)
    return _rates(done[1:], total)


def test_confluent_kafka_consume_three_clusters_at_once(benchmark: Any, mesh: Mesh) -> None:
    """What an application reading the topic from c1, c2 and c3 itself would do: three confluent-kafka Consumers in
    one process, each read by a thread of its own with consume(num_messages=1000, timeout=1.0) (the GIL is released
    while librdkafka waits), fresh groups, client creation and group join included; a round ends when all
    3 x PRELOAD records arrived. Unlike the each-alone baseline, the three share the machine, as the stream does."""
    topic = mesh.topics["rate"]
    total = len(CLUSTERS) * PRELOAD
    done: list[_Round] = []

    def setup() -> tuple[tuple[_Round], dict[str, Any]]:
        return (_Round(meter=CpuMeter(mesh.cpu_groups())),), {}

    def read_all(r: _Round) -> None:
        lock = threading.Lock()
        consumers: list[CKConsumer] = []

        def read(cluster: str) -> None:
            c = _direct_consumer(mesh.bootstrap[cluster], r.group)
            with lock:
                consumers.append(c)
            c.subscribe([topic])
            got = 0
            deadline = time.monotonic() + 120
            while got < PRELOAD:
                msgs = c.consume(num_messages=min(1000, PRELOAD - got), timeout=1.0)
                nbytes = sum(len(m.value()) for m in msgs if m.error() is None)
                got += sum(1 for m in msgs if m.error() is None)
                with lock:
                    if msgs:
                        r.delivered()
                    r.records += len(msgs)
                    r.value_bytes += nbytes
                assert time.monotonic() < deadline, f"{cluster}: {got} of {PRELOAD} records in 120 s"

        r.begin()
        threads = [_Thread(lambda c=c: read(c), f"direct-{c}") for c in CLUSTERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
            t.check()
        r.end()
        r.close = lambda: [c.close() for c in consumers] and None
        assert r.records == total and r.value_bytes == total * VALUE_BYTES
        done.append(r)

    rates = _RESULTS["direct_together"] = _rate_rounds(benchmark, read_all, setup, done, total)
    benchmark.extra_info.update({
        "what": "three confluent-kafka Consumers in one process, a thread each, consume(1000, 1.0), fresh groups, auto "
                "commit on; every value read; rps = 3 x PRELOAD / (creation to the last record of all), median round",
        **rates, "running": RUNNING + " (the sidecar idle)", **_context(),
    })


def _read_cluster_process(bootstrap: str, topic: str, group: str, want: int, ready: Any, go: Any,
                          result: Any) -> None:
    """Runs in a process of its own (spawned): once `go` is set, a fresh group's confluent-kafka Consumer reads `want`
    records of one cluster with consume(1000, 1.0), reading every value, and puts a _Round with its timings on
    `result` (time.perf_counter() is CLOCK_MONOTONIC on Linux: every process of the host reads the same clock)."""
    ready.set()
    if not go.wait(120):
        return
    r = _Round()
    c = _direct_consumer(bootstrap, group)
    c.subscribe([topic])
    _consume(c, r, want)
    result.put(r)
    c.close()


def test_confluent_kafka_consume_three_clusters_three_processes(benchmark: Any, mesh: Mesh) -> None:
    """The strongest direct setup on one host: three processes, each with one confluent-kafka Consumer reading one
    cluster with consume(num_messages=1000, timeout=1.0), all started at once (no GIL shared); fresh groups, client
    creation and group join included; a round ends when all 3 x PRELOAD records arrived. The processes are spawned
    and imported before the round starts. Like the stream, and unlike the each-alone rounds, the three readers share
    the machine: the sum of their rates is what reading c1-c3 directly gives on this host."""
    topic = mesh.topics["rate"]
    total = len(CLUSTERS) * PRELOAD
    ctx = multiprocessing.get_context("spawn")
    done: list[_Round] = []
    pending: dict[int, tuple[list[Any], Any, Any]] = {}

    def setup() -> tuple[tuple[_Round], dict[str, Any]]:
        r = _Round(meter=CpuMeter(mesh.cpu_groups()))
        go, result = ctx.Event(), ctx.Queue()
        readies = [ctx.Event() for _ in CLUSTERS]
        procs = [ctx.Process(target=_read_cluster_process, daemon=True, name=f"direct-{c}",
                             args=(mesh.bootstrap[c], topic, r.group, PRELOAD, ready, go, result))
                 for c, ready in zip(CLUSTERS, readies, strict=True)]
        for proc in procs:
            proc.start()
        for ready in readies:
            assert ready.wait(60), "a reader process did not start"
        r.meter = CpuMeter({**mesh.cpu_groups(), "readers": [proc.pid for proc in procs if proc.pid is not None]})
        pending[id(r)] = (procs, go, result)
        return (r,), {}

    def read_all(r: _Round) -> None:
        procs, go, result = pending.pop(id(r))
        r.begin()
        go.set()
        reports = [result.get(timeout=180) for _ in procs]
        r.end()

        def close() -> None:
            for proc in procs:
                proc.join(30)

        r.close = close
        r.first = min(x.first for x in reports)
        r.last = max(x.last for x in reports)
        r.max_gap = max(x.max_gap for x in reports)
        r.records = sum(x.records for x in reports)
        r.value_bytes = sum(x.value_bytes for x in reports)
        assert r.records == total and r.value_bytes == total * VALUE_BYTES, \
            [(x.records, x.value_bytes) for x in reports]
        done.append(r)

    rates = _RESULTS["direct_processes"] = _rate_rounds(benchmark, read_all, setup, done, total)
    benchmark.extra_info.update({
        "what": "three processes, one confluent-kafka Consumer each (c1, c2, c3), consume(1000, 1.0), fresh groups, "
                "auto commit on; every value read; rps = 3 x PRELOAD / (the start signal to the last record of all), "
                "median round; cpu_us_per_record.readers: the three processes",
        **rates, "running": RUNNING + " (the sidecar idle) and the three reader processes", **_context(),
    })


def test_sidecar_subscribe_3_clusters(benchmark: Any, mesh: Mesh) -> None:
    """One Subscribe stream over the rate topic on [c1, c2, c3], a fresh group a round, from the earliest offset,
    server-default credit (10,000 records, 16 MiB) and batching; a round ends when all 3 x PRELOAD records arrived."""
    topic = mesh.topics["rate"]
    total = len(CLUSTERS) * PRELOAD
    channel = grpc.insecure_channel(mesh.proc.target)
    done: list[_Round] = []

    def setup() -> tuple[tuple[_Round], dict[str, Any]]:
        return (_Round(meter=CpuMeter(mesh.cpu_groups())),), {}

    def read_all(r: _Round) -> None:
        _read_stream(channel, [topic], total, r)
        done.append(r)

    rates = _rate_rounds(benchmark, read_all, setup, done, total)
    channel.close()
    info: dict[str, Any] = {
        "what": "one Subscribe stream over [c1, c2, c3], fresh group, START_POSITION_EARLIEST, default credit and "
                "batching; protobuf parse, every value read, ack + credit per batch; rps = 3 x PRELOAD / (call to "
                "last record), median round",
        "sidecar_rps": rates["rps"], "sidecar_first_to_last_rps": rates["first_to_last_rps"],
        **{k: v for k, v in rates.items() if k not in ("rps", "first_to_last_rps")},
        "streams_cancelled": sum(r.cancelled for r in done),
        "running": RUNNING, **_context(),
    }
    processes = _RESULTS.get("direct_processes")
    if processes:
        info["ratio_to_direct_three_processes"] = round(rates["rps"] / processes["rps"], 3)
        info["ratio_to_direct_three_processes_first_to_last"] = round(
            rates["first_to_last_rps"] / processes["first_to_last_rps"], 3)
    together = _RESULTS.get("direct_together")
    if together:
        info["ratio_to_direct_three_at_once"] = round(rates["rps"] / together["rps"], 3)
        info["ratio_to_direct_three_at_once_first_to_last"] = round(
            rates["first_to_last_rps"] / together["first_to_last_rps"], 3)
    direct = _RESULTS.get("direct_sum")
    if direct:
        info["ratio_to_sum_of_direct"] = round(rates["rps"] / direct["rps"], 3)
        info["ratio_to_sum_of_direct_first_to_last"] = round(
            rates["first_to_last_rps"] / direct["first_to_last_rps"], 3)
    benchmark.extra_info.update(info)


# -- paced latency ---------------------------------------------------------------------------------------------------


def _paced_producer(targets: list[tuple[str, str]], warm: list[tuple[str, str]], rate: float, seconds: float,
                    ready: Any, go: Any, result: Any) -> None:
    """Runs in a process of its own (spawned), so that neither its pacing nor its GIL touch the receivers' timing.
    Writes one WARM record to every partition of every (bootstrap, topic) of `warm`, then, once `go` is set, `rate`
    records a second for `seconds` over `targets` in turn (record i to targets[i % len], partitions in turn), each
    stamped with time.time_ns() just before produce(). Paced in ticks of about 1 ms: each tick sends the records due
    by then (about 10 at 10,000/s).

    Not idempotent: the idempotent producer caps librdkafka at five in-flight requests per partition, and whenever a
    broker answered late its threads spun at the cap, up to 1.75 of this host's 2 cores, stalling brokers, sidecar and
    receivers alike for 0.3-1.2 s. A retry may then duplicate a record: the figures count duplicates."""
    conf = {"acks": "all", "linger.ms": str(LINGER_MS), "log_level": "4"}
    failed = [0]

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            failed[0] += 1

    producers = {b: CKProducer({"bootstrap.servers": b, **conf, "on_delivery": on_delivery})
                 for b in {b for b, _ in targets + warm}}
    for b, t in warm:
        for p in range(PARTITIONS):
            producers[b].produce(t, _value(WARM), partition=p)
    for prod in producers.values():
        prod.flush(60)
    ready.set()
    if not go.wait(180):
        return
    total = int(rate * seconds)
    sends = [(producers[b].produce, t) for b, t in targets]
    polls = [prod.poll for prod in producers.values()]
    behind = 0.0
    start = time.perf_counter()
    i = 0
    while i < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        behind = max(behind, now - (start + i / rate))
        while i < due:
            produce, topic = sends[i % len(sends)]
            produce(topic, _value(MEASURED, i), partition=(i // len(sends)) % PARTITIONS)
            i += 1
        for poll in polls:
            poll(0)
        time.sleep(max(0.001, start + i / rate - time.perf_counter()))
    elapsed = time.perf_counter() - start
    unflushed = sum(prod.flush(60) for prod in producers.values())
    result.put({"sent": total, "failed": failed[0] + unflushed, "seconds": round(elapsed, 3),
                "max_behind_schedule_ms": round(behind * 1e3, 3)})


class _Receiver:
    """Collects produce-to-receive latencies of MEASURED records and counts WARM ones, from any thread. Each latency
    is also split at the record's timestamp, the broker's append time on the paced topics (LogAppendTime): its produce
    side (send to append) and its consume side (append to receive; the path measured). The split is good to a
    millisecond (Kafka's timestamps are), and the broker stamps a batch before appending it, so a broker that stalls
    mid-append shows up on the consume side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.warm = 0
        self.lat_ns: list[int] = []
        self.produce_ns: list[int] = []
        self.consume_ns: list[int] = []
        self.seqs: set[int] = set()
        self.first_ns = 0
        self.last_ns = 0
        self.responses = 0          # RecordBatches received (the sidecar path)
        self.threads: list[_Thread] = []

    def take(self, recv_ns: int, records: Iterable[tuple[bytes, int]]) -> None:
        """records: (value, timestamp in ms) each."""
        warm = 0
        lat = []
        produce = []
        consume = []
        seqs = []
        for v, ts_ms in records:
            sent_ns, kind, seq = HEAD.unpack_from(v)
            if kind == MEASURED:
                lat.append(recv_ns - sent_ns)
                produce.append(ts_ms * 1_000_000 - sent_ns)
                consume.append(recv_ns - ts_ms * 1_000_000)
                seqs.append(seq)
            else:
                warm += 1
        with self._lock:
            self.warm += warm
            if lat:
                self.lat_ns += lat
                self.produce_ns += produce
                self.consume_ns += consume
                self.seqs.update(seqs)
                self.first_ns = self.first_ns or recv_ns
                self.last_ns = recv_ns

    def distinct(self) -> int:
        with self._lock:
            return len(self.seqs)

    def check(self) -> None:
        for t in self.threads:
            t.check()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class SidecarReceiver(_Receiver):
    """One Subscribe stream (fresh group, earliest, server-default batching and credit), read by one thread."""

    def __init__(self, target: str, topics: list[str]) -> None:
        super().__init__()
        self._channel = grpc.insecure_channel(target)
        self._sub = M.Subscription(group=_group(), topics=topics, start=M.START_POSITION_EARLIEST)
        self._stream: Stream | None = None

    def start(self) -> None:
        stream = self._stream = Stream(self._channel, self._sub)

        def run() -> None:
            for recv_ns, batch in stream.batches():
                self.responses += 1
                for g in batch.partitions:
                    self.take(recv_ns, [(r.value, r.timestamp_ms) for r in g.records])

        self.threads.append(_Thread(run, "subscribe-receiver"))
        self.threads[-1].start()

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.close(drain=False)
        for t in self.threads:
            t.join(Stream.CLOSE_TIMEOUT_S + 15)
        self._channel.close()

    @property
    def cancelled(self) -> bool:
        return self._stream is not None and self._stream.cancelled


class DirectReceiver(_Receiver):
    """A confluent-kafka Consumer per cluster, each polled by a thread of its own with poll(0.1), the call that returns
    a record as soon as it is there (consume(n, t) returns only once it has n records or t passed)."""

    def __init__(self, bootstraps: list[str], topic: str) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._consumers = [_direct_consumer(b, _group()) for b in bootstraps]
        self._topic = topic

    def start(self) -> None:
        for i, c in enumerate(self._consumers):
            c.subscribe([self._topic])

            def run(c: CKConsumer = c) -> None:
                while not self._stop.is_set():
                    m = c.poll(0.1)
                    if m is not None and m.error() is None:
                        self.take(time.time_ns(), ((m.value(), m.timestamp()[1]),))

            self.threads.append(_Thread(run, f"direct-receiver-{i}"))
            self.threads[-1].start()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(30)
        for c in self._consumers:
            c.close()


def _settle(brokers: list[int], idle_cores: float = 0.1, limit_s: float = 60.0) -> float:
    """Wait until the brokers kept less than idle_cores busy over a second (a preload, a JIT-compiling new JVM or a
    previous test's groups leaving would otherwise weigh on the next measurement); returns the seconds waited."""
    t0 = time.monotonic()
    meter = CpuMeter({"brokers": brokers})
    while time.monotonic() - t0 < limit_s:
        meter.start()
        time.sleep(1.0)
        meter.stop()
        if meter.cores()["brokers"] < idle_cores:
            break
    return round(time.monotonic() - t0, 1)


def _paced_run(receiver: _Receiver, targets: list[tuple[str, str]], warm: list[tuple[str, str]],
               seconds: float, cpu: dict[str, list[int]], rate: float = LAT_RATE,
               ) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Start the receiver, then the paced producer; measure once every partition the receiver reads has delivered
    its warm-up record (group joins and first fetches are over); wait for every measured record (up to 30 s).
    Returns the figures, with the cores each of the `cpu` process groups and the producer kept busy meanwhile, and
    the samples (ns) by SPLITS.

    This process's cyclic garbage collector is off for the pass: it is the measuring instrument of both paths, and
    its full collections (~60 ms over everything pytest, grpc and protobuf hold) stopped every receiver thread at
    once. What the receivers allocate has no cycles; reference counting frees it."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, result = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_paced_producer, args=(targets, warm, rate, seconds, ready, go, result),
                       name="paced-producer", daemon=True)
    gc.collect()
    gc.disable()
    receiver.start()
    proc.start()
    assert proc.pid is not None
    meter = CpuMeter({**cpu, "producer": [proc.pid]})
    try:
        assert ready.wait(90), "the paced producer did not start"
        deadline = time.monotonic() + 60
        while receiver.warm < len(warm) * PARTITIONS:
            receiver.check()
            assert time.monotonic() < deadline, f"{receiver.warm} of {len(warm) * PARTITIONS} warm-up records"
            time.sleep(0.02)
        settled_s = _settle(cpu["brokers"])
        meter.start()
        go.set()
        report: dict[str, Any] = result.get(timeout=seconds + 90)
        deadline = time.monotonic() + 30
        while receiver.distinct() < report["sent"] and time.monotonic() < deadline:
            receiver.check()
            time.sleep(0.05)
        meter.stop()
    finally:
        receiver.stop()
        gc.enable()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    receiver.check()
    span = (receiver.last_ns - receiver.first_ns) / 1e9
    distinct = receiver.distinct()
    samples = {"latency": receiver.lat_ns, "produce_side": receiver.produce_ns, "consume_side": receiver.consume_ns}
    figures = {**_split_stats(samples),
               "sent": report["sent"], "missing": report["sent"] - distinct,
               "duplicates": len(receiver.lat_ns) - distinct,
               "received_rps": round(distinct / span) if span > 0 else None,
               "cpu_cores": meter.cores(), "waited_for_idle_brokers_s": settled_s,
               "producer": {k: v for k, v in report.items() if k != "sent"}}
    if isinstance(receiver, SidecarReceiver):
        figures["responses_per_s"] = round(receiver.responses / span) if span > 0 else None
        figures["records_per_response"] = round(len(receiver.lat_ns) / max(1, receiver.responses), 1)
        figures["stream_cancelled"] = receiver.cancelled
    return figures, samples


def test_end_to_end_latency_at_10000_per_s(benchmark: Any, mesh: Mesh) -> None:
    """Produce to receive at LAT_RATE records/s over c1, c2, c3 for LAT_SECONDS, LAT_PASSES times each way,
    alternating: three direct consumers (one thread each), then one Subscribe stream over the three clusters
    (server-default batching and credit); each pass on a topic of its own, so that every pass starts from empty
    partitions. Figures per pass, and over the samples of every pass of a path, whole and split at the broker's
    append (_Receiver)."""
    results: dict[str, Any] = {}
    samples: dict[str, dict[str, list[int]]] = {path: {k: [] for k in SPLITS} for path in ("direct", "sidecar")}
    passes: dict[str, list[dict[str, Any]]] = {"direct": [], "sidecar": []}

    def keep(path: str, i: int, figures: dict[str, Any], got: dict[str, list[int]]) -> None:
        if i:
            results[f"{path}_pass{i}"] = figures
            passes[path].append(figures)
            for k in SPLITS:
                samples[path][k] += got[k]

    def run() -> None:
        # Pass 0 warms both paths up and is not counted: brokers whose JIT has not yet compiled the paths of small
        # produce and fetch requests (a new sandbox; the preload sends big batches) took ~1 core at this rate for
        # their first half minute or so, and both paths' p99 went to hundreds of ms.
        for i in range(LAT_PASSES + 1):
            seconds = LAT_SECONDS if i else LAT_WARMUP_SECONDS
            topic = mesh.topics[f"lat-direct-{i}"]
            targets = [(mesh.bootstrap[c], topic) for c in CLUSTERS]
            keep("direct", i, *_paced_run(DirectReceiver([mesh.bootstrap[c] for c in CLUSTERS], topic), targets,
                                          targets, seconds, mesh.cpu_groups()))
            topic = mesh.topics[f"lat-sidecar-{i}"]
            targets = [(mesh.bootstrap[c], topic) for c in CLUSTERS]
            keep("sidecar", i, *_paced_run(SidecarReceiver(mesh.proc.target, [topic]), targets, targets, seconds,
                                           mesh.cpu_groups()))
        for path in ("direct", "sidecar"):
            results[path] = {**_split_stats(samples[path]),
                             "passes_p99_ms": [p.get("p99_ms") for p in passes[path]],
                             "passes_consume_side_p99_ms": [p["consume_side"].get("p99_ms") for p in passes[path]]}

    benchmark.group = "subscribe-latency"
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(results)
    benchmark.extra_info.update({
        "what": f"{LAT_RATE}/s for {LAT_SECONDS:g} s over c1-c3 (a third each), {VALUE_BYTES}-byte values, "
                f"{LAT_PASSES} passes each way after a {LAT_WARMUP_SECONDS:g} s warm-up pass each; latency = receive "
                "time.time_ns() (after parsing) - send time.time_ns() (just before produce()); produce_side: send to "
                "the broker's append (LogAppendTime), consume_side: append to receive; direct and sidecar: over every "
                "pass's samples; the client's cyclic GC is off during a pass",
        "producer_setup": f"a spawned process: one confluent-kafka Producer per cluster, acks=all, not idempotent, "
                          f"linger.ms={LINGER_MS}, paced in ~1 ms ticks",
        "direct_setup": "3 confluent-kafka Consumers, fresh groups, each polled by its own thread with poll(0.1)",
        "sidecar_setup": "1 Subscribe stream over [c1, c2, c3], fresh group, START_POSITION_EARLIEST, max_records and "
                         "max_wait_ms 0 (the server's defaults), default credit; ack + credit per batch",
        "running": RUNNING + " and the paced producer process; direct and sidecar passes alternate",
        "cpu_cores_meaning": "average cores each process kept busy while measuring (client: this pytest process)",
        **_context(),
    })


# -- an idle cluster or topic never slows a busy one -----------------------------------------------------------------

IDLE_VARIANTS = ("busy_only", "busy_plus_2_idle_clusters", "busy_plus_idle_topic")


def _idle_variant(mesh: Mesh, variant: str, busy: str, idle: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(the subscription's topics, every (bootstrap, topic) it reads) for a variant whose busy topic on c1 is
    `busy`: busy_only reads it alone on c1; busy_plus_2_idle_clusters reads it on c1, c2 and c3 (its consumer route),
    where only c1 holds records; busy_plus_idle_topic subscribes to it and to `idle`, a topic of c1 with no records
    (or only the paced runs' warm-up records)."""
    b = mesh.bootstrap
    if variant == "busy_only":
        return [busy], [(b["c1"], busy)]
    if variant == "busy_plus_2_idle_clusters":
        return [busy], [(b[c], busy) for c in CLUSTERS]
    return [busy, idle], [(b["c1"], busy), (b["c1"], idle)]


def test_idle_clusters_and_topics_rate(benchmark: Any, mesh: Mesh) -> None:
    """IDLE_PRELOAD records on c1 read through one stream, fresh group a round, in three variants (_idle_variant);
    1 + IDLE_ROUNDS rounds of the three, interleaved and in rotating order (the first round is a warm-up)."""
    busy = {"busy_only": "ir-solo", "busy_plus_2_idle_clusters": "ir-trio", "busy_plus_idle_topic": "ir-pair"}
    channel = grpc.insecure_channel(mesh.proc.target)
    done: dict[str, list[_Round]] = {v: [] for v in IDLE_VARIANTS}
    cancelled = [0]

    def run() -> None:
        for k in range(1 + IDLE_ROUNDS):
            for variant in IDLE_VARIANTS[k % 3:] + IDLE_VARIANTS[:k % 3]:
                topics, _ = _idle_variant(mesh, variant, mesh.topics[busy[variant]], mesh.topics["ir-idle"])
                r = _Round(meter=CpuMeter(mesh.cpu_groups()))
                try:
                    _read_stream(channel, topics, IDLE_PRELOAD, r)
                finally:
                    _teardown(r)
                if k:
                    done[variant].append(r)
                cancelled[0] += r.cancelled

    benchmark.group = "subscribe-idle-rate"
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    channel.close()
    rates = {v: _rates(rounds, IDLE_PRELOAD) for v, rounds in done.items()}
    base = rates["busy_only"]
    benchmark.extra_info.update({
        **rates,
        "relative_to_busy_only": {v: {"rps": round(r["rps"] / base["rps"], 3),
                                      "first_to_last_rps": round(r["first_to_last_rps"] / base["first_to_last_rps"], 3),
                                      "sidecar_cpu_per_record": round(r["cpu_us_per_record"]["sidecar"]
                                                                      / base["cpu_us_per_record"]["sidecar"], 3)}
                                  for v, r in rates.items()},
        "what": f"{IDLE_PRELOAD} records preloaded on c1 only, read from the earliest offset by a fresh group; "
                f"median of {IDLE_ROUNDS} interleaved rounds per variant; server-default batching and credit",
        "streams_cancelled": cancelled[0],
        "running": RUNNING, **_context(),
    })


def test_idle_clusters_and_topics_latency(benchmark: Any, mesh: Mesh) -> None:
    """Paced at LAT_RATE records/s to the busy topic on c1 only, read through one stream, in the three variants
    (_idle_variant); two passes of IDLE_SECONDS each, in the order A B C C B A, each pass on fresh topics and group;
    each variant's figures pool its two passes."""
    samples: dict[str, list[int]] = {v: [] for v in IDLE_VARIANTS}
    passes: dict[str, list[dict[str, Any]]] = {v: [] for v in IDLE_VARIANTS}
    short = {"busy_only": "solo", "busy_plus_2_idle_clusters": "trio", "busy_plus_idle_topic": "pair"}

    def run() -> None:
        for n, variant in enumerate(IDLE_VARIANTS + IDLE_VARIANTS[::-1]):
            busy = mesh.topics[f"il-{short[variant]}-{n // 3}"]
            topics, reads = _idle_variant(mesh, variant, busy, mesh.topics["il-idle"])
            figures, got = _paced_run(SidecarReceiver(mesh.proc.target, topics), [reads[0]], reads, IDLE_SECONDS,
                                      mesh.cpu_groups())
            passes[variant].append(figures)
            samples[variant] += got["latency"]

    benchmark.group = "subscribe-idle-latency"
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update({
        v: {**_lat_stats(samples[v]), "passes_p99_ms": [p.get("p99_ms") for p in passes[v]],
            "missing": sum(p["missing"] for p in passes[v]), "duplicates": sum(p["duplicates"] for p in passes[v]),
            "received_rps": [p["received_rps"] for p in passes[v]],
            "records_per_response": [p.get("records_per_response") for p in passes[v]],
            "sidecar_cores": [p["cpu_cores"].get("sidecar") for p in passes[v]]}
        for v in IDLE_VARIANTS
    })
    benchmark.extra_info.update({
        "what": f"{LAT_RATE}/s to one topic on c1, 2 passes x {IDLE_SECONDS:g} s per variant (A B C C B A); "
                "server-default batching and credit; each idle partition held one warm-up record",
        "producer_setup": f"a spawned process, confluent-kafka, acks=all, not idempotent, linger.ms={LINGER_MS}",
        "running": RUNNING + " and the paced producer process", **_context(),
    })


# -- RSS with 3 clusters and 20 streams ------------------------------------------------------------------------------


@pytest.mark.parametrize("credit_bytes", [0, 1 << 20], ids=["default-credit", "1MiB-credit"])
def test_sidecar_rss_3_clusters_20_streams(benchmark: Any, mesh: Mesh, tmp_path: pathlib.Path,
                                           credit_bytes: int) -> None:
    """A sidecar of its own (same mapping, a namespace of its own): VmRSS idle, then with RSS_STREAMS streams, each a
    fresh group over the RSS topic on [c1, c2, c3] (3 x RSS_PRELOAD records; 3 consumers a stream) with the default
    credit (10,000 records, 16 MiB: 16 MiB of prefetched payload per consumer at most) or 1 MiB of byte credit (1
    MiB of prefetch), for RSS_SECONDS, VmRSS sampled every 0.5 s; and 3 and 12 s after the streams ended (each
    half-closed, then ended by the sidecar)."""
    ns = new_namespace()
    apply(mesh.sandbox, ns, mesh.doc)
    proc = SidecarProc(mesh.sandbox, tmp_path, ns).start()
    assert proc.proc is not None
    pid = proc.proc.pid
    results: dict[str, Any] = {}
    topic = mesh.topics["rss"]

    def run() -> None:
        time.sleep(2)
        idle = proc_status(pid)
        streams: list[Stream] = []
        counts = [0] * RSS_STREAMS
        threads: list[_Thread] = []
        channels = [grpc.insecure_channel(proc.target) for _ in range(RSS_STREAMS)]   # one per app
        for i, ch in enumerate(channels):
            s = Stream(ch, M.Subscription(group=_group(), topics=[topic], start=M.START_POSITION_EARLIEST,
                                          credit=M.Credit(bytes=credit_bytes)))
            streams.append(s)

            def read(s: Stream = s, i: int = i) -> None:
                for _, batch in s.batches():
                    counts[i] += sum(len(g.records) for g in batch.partitions)

            threads.append(_Thread(read, f"rss-stream-{i}"))
            threads[-1].start()
        peak = idle
        started = time.monotonic()
        while time.monotonic() - started < RSS_SECONDS:
            time.sleep(0.5)
            now = proc_status(pid)
            if now["VmRSS"] > peak["VmRSS"]:
                peak = now
        end = proc_status(pid)
        received = sum(counts)
        closing = time.monotonic()
        for s in streams:
            s.close(drain=False)
        for t in threads:
            t.join(Stream.CLOSE_TIMEOUT_S + 15)
            t.check()
        closed_s = time.monotonic() - closing
        for ch in channels:
            ch.close()
        time.sleep(3)
        after = proc_status(pid)
        time.sleep(9)
        later = proc_status(pid)
        results.update({
            "idle_rss_mib": mib(idle["VmRSS"]), "idle_threads": idle["Threads"],
            "streams_rss_mib_at_end": mib(end["VmRSS"]), "streams_rss_mib_peak_sampled": mib(peak["VmRSS"]),
            "streams_vmhwm_mib": mib(end["VmHWM"]), "streams_threads": end["Threads"],
            "streams_end_s": round(closed_s, 2), "streams_cancelled": sum(s.cancelled for s in streams),
            "rss_mib_3s_after_end": mib(after["VmRSS"]), "rss_mib_12s_after_end": mib(later["VmRSS"]),
            "threads_12s_after_end": later["Threads"],
            "records_received": received,
            "streams_done_reading": sum(c >= len(CLUSTERS) * RSS_PRELOAD for c in counts),
        })

    benchmark.group = "subscribe-rss"
    try:
        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    finally:
        proc.stop()
    benchmark.extra_info.update(results)
    benchmark.extra_info.update({
        "what": f"{RSS_STREAMS} Subscribe streams (one channel and one thread each; protobuf parse, ack + credit per "
                f"batch) over one topic on c1-c3 holding {len(CLUSTERS) * RSS_PRELOAD} records, for {RSS_SECONDS:g} s, "
                f"byte credit {credit_bytes or 'default (16 MiB)'}",
        "running": RUNNING.replace("one sidecar process", "a second sidecar process (measured; the module's idle)"),
        **_context(),
    })
