"""Apache Kafka's MirrorMaker 2, run as the benchmarks' reference copier, and the measurement any copier is put to.

- classpath(): MirrorMaker 2's jars (`org.apache.kafka:connect-mirror` and what Maven resolves with it: the Connect
  runtime, the mirror client, kafka-clients...) at the sandbox's Kafka version, resolved once with Maven into a
  cache folder next to the broker's (`<cache_dir>/mm2-<version>/libs`), like sidecar/dev/kafka_dist.py;
- run_mm2(): one dedicated MirrorMaker 2 process (`org.apache.kafka.connect.mirror.MirrorMaker`) copying topics from
  cluster `src` to cluster `dst` under the same names (IdentityReplicationPolicy), with no heartbeats, checkpoints,
  config or ACL syncing, and producer/consumer settings of a tuned copier;
- wait_copied(): polls the sum of a topic's end offsets on the target (end_offsets(): each partition's);
- measure_copy(): starts a copier, times it from start until every record is on the target and over the steady part
  (from the first record seen on the target), and reads its CPU time from /proc. A copier is anything with a `pid`
  and a `stop()` (the Copier protocol): MirrorMaker 2 here, the router's `kafka-mesh router` process later.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from benchmarks.procstat import cpu_s
from sidecar.config import DevSettings
from sidecar.dev import kafka_dist, procs
from sidecar.errors import SandboxError

MAIN_CLASS = "org.apache.kafka.connect.mirror.MirrorMaker"
IDENTITY_POLICY = "org.apache.kafka.connect.mirror.IdentityReplicationPolicy"
SOURCE, TARGET = "src", "dst"

# connect-mirror brings the Connect runtime, the mirror client and kafka-clients, and with them slf4j-api 1.7 and
# log4j2 (the runtime's logger admin uses it). slf4j-simple binds slf4j, which nearly all of MirrorMaker logs
# through, to stderr, which run_mm2 sends to the log file; its level is set on the java command line.
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafka-mesh.sandbox</groupId><artifactId>kafka-mirror-maker</artifactId><version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-mirror</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
"""

Progress = Callable[[str], None]


def _print(message: str) -> None:
    print(f"[mm2] {message}", file=sys.stderr, flush=True)


def settings_for(version: str) -> DevSettings:
    """The environment's DevSettings (cache folder, java, mvn) at the given Kafka version: the sandbox's brokers'
    (Sandbox.kafka_version), so that MirrorMaker 2 runs the same release as the clusters it copies between."""
    base = DevSettings.from_env()
    return DevSettings(state_dir=base.state_dir, cache_dir=base.cache_dir, kafka_version=version,
                       kafka_home=base.kafka_home, etcd_bin=base.etcd_bin, java_bin=base.java_bin,
                       mvn_bin=base.mvn_bin, broker_heap_mb=base.broker_heap_mb)


def classpath(settings: DevSettings, progress: Progress = _print) -> str:
    """MirrorMaker 2's Java classpath at settings.kafka_version; resolves the jars with Maven on first use.

    With KAFKA_HOME set (an unpacked Kafka distribution, which ships MirrorMaker 2), its libs/ are used instead."""
    if settings.kafka_home is not None:
        libs = settings.kafka_home / "libs"
        if not any(libs.glob("connect-mirror-[0-9]*.jar")):
            raise SandboxError(f"KAFKA_HOME={settings.kafka_home} has no libs/connect-mirror-*.jar: "
                               "not a Kafka distribution")
        return f"{libs}/*"
    if shutil.which(settings.java_bin) is None:
        raise SandboxError(f"Java was not found ({settings.java_bin!r}); install a JDK 17 "
                           "(apt-get install openjdk-17-jre-headless)")
    home = settings.cache_dir / f"mm2-{settings.kafka_version}"
    if not (home / ".complete").exists():
        _resolve(settings, home, progress)
    return f"{home / 'libs'}/*"


def _resolve(settings: DevSettings, home: pathlib.Path, progress: Progress) -> None:
    kafka_dist.resolve_jars(settings, home, _POM.format(version=settings.kafka_version),
                            "org.apache.kafka:connect-mirror", "connect-mirror-[0-9]*.jar",
                            f"MirrorMaker 2 (connect-mirror {settings.kafka_version}) jars", progress)


class Copier(Protocol):
    """What measure_copy needs of a copier it started: the process whose CPU time it reads, and a way to stop it.
    A `log` attribute (path), when there is one, is named in errors."""

    @property
    def pid(self) -> int: ...

    def stop(self) -> None: ...


def mm2_properties(source_bootstrap: str, target_bootstrap: str, topics: Sequence[str], *,
                   tasks: int = 2, offset_syncs: bool = True, run_id: str = "",
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """mm2.properties for one flow src->dst of `topics`, kept under their names on dst.

    run_id (default: a fresh one) names the Connect worker's group and its config, offset and status topics on dst,
    so that every run starts as a new deployment: MirrorMaker 2's defaults (src-mm2, mm2-*.src.internal) would make
    a run read the connector configs and group of the one before.

    offset_syncs=False stops the source tasks from writing offset syncs (`emit.offset-syncs.enabled`), which only
    the (disabled) checkpoints read; MirrorMaker 2 writes them by default."""
    flow = f"{SOURCE}->{TARGET}"
    run_id = run_id or uuid.uuid4().hex[:8]
    props = {
        "clusters": f"{SOURCE}, {TARGET}",
        f"{SOURCE}.bootstrap.servers": source_bootstrap,
        f"{TARGET}.bootstrap.servers": target_bootstrap,
        f"{flow}.enabled": "true",
        f"{TARGET}->{SOURCE}.enabled": "false",
        f"{flow}.topics": ",".join(topics),
        f"{flow}.tasks.max": str(tasks),
        "replication.policy.class": IDENTITY_POLICY,
        # Find the connectors by their ServiceLoader manifests rather than by scanning every class on the classpath,
        # as MirrorMaker 2 itself advises at start (a scan each for the top-level config and the herder's worker: about
        # 4 s of start-up on 2 cores).
        "plugin.discovery": "service_load",
        f"{TARGET}.plugin.discovery": "service_load",
        # Only the copy: no heartbeats (which would also start a dst->src herder), checkpoints, group offsets,
        # topic configs or ACLs. MirrorMaker 2 still submits its checkpoint connector, and logs as an ERROR that the
        # connector refused to run without checkpoints: harmless.
        "emit.heartbeats.enabled": "false",
        "emit.checkpoints.enabled": "false",
        "sync.group.offsets.enabled": "false",
        "refresh.groups.enabled": "false",
        "sync.topic.configs.enabled": "false",
        "sync.topic.acls.enabled": "false",
        f"{TARGET}.group.id": f"mm2-{run_id}",
        "config.storage.topic": f"mm2-configs.{run_id}.internal",
        "offset.storage.topic": f"mm2-offsets.{run_id}.internal",
        "status.storage.topic": f"mm2-status.{run_id}.internal",
        "offset.storage.partitions": "1",   # of 25 and 5 by default: a sandbox broker makes fewer at each start
        "status.storage.partitions": "1",
        # One broker per sandbox cluster: every topic MirrorMaker 2 or its Connect worker creates has one replica.
        "replication.factor": "1",
        "checkpoints.topic.replication.factor": "1",
        "heartbeats.topic.replication.factor": "1",
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        # The source tasks' consumers (on src).
        f"{SOURCE}.consumer.max.poll.records": "2000",
        # The Connect worker's producer, which the source tasks write dst through. Connect's own defaults are
        # acks=all and one request in flight per connection; a tuned copier keeps order with idempotence and 5.
        f"{TARGET}.producer.acks": "all",
        f"{TARGET}.producer.enable.idempotence": "true",
        f"{TARGET}.producer.max.in.flight.requests.per.connection": "5",
        f"{TARGET}.producer.linger.ms": "5",
        f"{TARGET}.producer.batch.size": str(256 << 10),
        f"{TARGET}.producer.compression.type": "none",
    }
    if offset_syncs:
        props["offset-syncs.topic.replication.factor"] = "1"
    else:
        # Without offset syncs the source connector refuses any other offset-syncs.* setting, and the (disabled)
        # checkpoint connector logs that it cannot run without them.
        props["emit.offset-syncs.enabled"] = "false"
    props.update(extra or {})
    return props


def jvm_args(heap: str) -> list[str]:
    """A small JVM for a 2-core machine the brokers share: the serial collector (no collector threads beside the
    application's) and two JIT compiler threads."""
    return [
        f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:CICompilerCount=2", "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        # slf4j-simple: warnings and errors only, but MirrorMaker 2's own start-up lines and the tasks' progress.
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.connect.mirror=info",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
    ]


@dataclass
class Mm2Process:
    """A running MirrorMaker 2 (a Copier)."""

    pid: int
    log: pathlib.Path
    properties: pathlib.Path
    run_id: str
    _proc: procs.Proc = field(repr=False)
    _popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def internal_topics(self) -> list[str]:
        """The Connect worker's topics on the target that only this run uses (delete_topics them when done)."""
        return [f"mm2-{kind}.{self.run_id}.internal" for kind in ("configs", "offsets", "status")]

    def alive(self) -> bool:
        return self._popen.poll() is None

    def cpu_s(self) -> float:
        """CPU time (user + system, every thread) the process used so far."""
        return cpu_s(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (MirrorMaker 2 stops its connectors and commits), then SIGKILL after timeout."""
        if self._popen.poll() is None:
            self._proc.signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.signal(signal.SIGKILL)
                self._popen.wait(10)


def run_mm2(source_bootstrap: str, target_bootstrap: str, topics: Sequence[str], work_dir: pathlib.Path,
            heap: str = "256m", *, settings: DevSettings | None = None, tasks: int = 2, offset_syncs: bool = True,
            extra: Mapping[str, str] | None = None) -> Mm2Process:
    """Start a dedicated MirrorMaker 2 copying topics from source to target; its properties and log in work_dir.

    It dies with this process (as the test sandbox's servers do). settings default to the environment's at the
    default Kafka version: pass settings_for(sandbox.kafka_version) to match the brokers."""
    settings = settings or DevSettings.from_env()
    cp = classpath(settings)
    work_dir.mkdir(parents=True, exist_ok=True)
    props_file = work_dir / "mm2.properties"
    run_id = uuid.uuid4().hex[:8]
    props = mm2_properties(source_bootstrap, target_bootstrap, topics, tasks=tasks, offset_syncs=offset_syncs,
                           run_id=run_id, extra=extra)
    props_file.write_text("".join(f"{k} = {v}\n" for k, v in props.items()))
    log = work_dir / "mm2.log"
    argv = [settings.java_bin, *jvm_args(heap), "-cp", cp, MAIN_CLASS, str(props_file)]
    proc, popen = procs.spawn("mm2", argv, log, work_dir, detach=False)
    return Mm2Process(proc.pid, log, props_file, run_id, proc, popen)


def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Delete topics (absent ones skipped): a benchmark's copies are large, and the sandbox keeps its logs in memory."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    present = set(admin.list_topics(timeout=10).topics)
    wanted = [t for t in topics if t in present]
    if wanted:
        for future in admin.delete_topics(wanted, operation_timeout=30).values():
            future.result(timeout=60)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _describe(copier: Copier) -> str:
    log = getattr(copier, "log", None)
    return f"copier pid {copier.pid}" + (f" (log: {log})" if log else "")


def _high_watermarks(consumer: Consumer, topic: str, partitions: int) -> list[int]:
    return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in range(partitions)]


def end_offsets(bootstrap: str, topic: str) -> list[int]:
    """The high watermark of each of topic's partitions: the records on each, for a topic that was never trimmed
    nor written by transactions."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"mm2-watch-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        return _high_watermarks(consumer, topic, _partitions(consumer, topic))
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str) -> int:
    meta = consumer.list_topics(topic, timeout=10)
    t = meta.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise RuntimeError(f"topic {topic!r} not found on the target ({t.error if t else 'absent'})")
    return len(t.partitions)


def wait_copied(target_bootstrap: str, topic: str, expected: int, timeout: float, *, interval: float = 0.05,
                on_poll: Callable[[float, int], None] | None = None) -> float:
    """Poll the sum of topic's end offsets on the target until it reaches expected; the seconds it took.

    on_poll(time.monotonic(), count) is called after every poll (it may raise to give up). The topic must exist on
    the target (the benchmarks create it with the source's partitions)."""
    t0 = time.monotonic()
    consumer = Consumer({"bootstrap.servers": target_bootstrap, "group.id": f"mm2-watch-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        partitions = _partitions(consumer, topic)
        count = 0
        while True:
            count = sum(_high_watermarks(consumer, topic, partitions))
            now = time.monotonic()
            if on_poll is not None:
                on_poll(now, count)
            if count >= expected:
                return now - t0
            if now - t0 > timeout:
                raise TimeoutError(f"{count} of {expected} records on {topic} after {timeout:.0f} s")
            time.sleep(interval)
    finally:
        consumer.close()


def measure_copy(start_copier: Callable[[], Copier], target_bootstrap: str, topic: str, n: int, *,
                 timeout: float = 600.0, startup_timeout: float = 120.0,
                 also: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Start a copier and time it until n records of topic are on the target, then stop it.

    - wall_s: from the start to the last record on the target (JVM or interpreter start-up included);
    - startup_s: from the start to the first poll that saw records on the target;
    - steady_s: from that poll to the last record; rate = the records copied in it / steady_s: the rate to quote;
    - cpu_s / cpu_per_million: the copier's CPU over wall_s (everything, start-up included), and steady_cpu_s /
      steady_cpu_per_million over steady_s;
    - host_busy_cores: the machine's busy cores over the steady window (/proc/stat), and unaccounted_cores: those
      of them not used by the copier nor the processes in `also`: what else ran;
    - also: {name: pids} of other processes (the brokers), whose CPU over both windows is reported the same way.

    The target topic must exist and be empty; the start's cost (JVM start, group joins) is inside wall_s. Gives up
    when no record reached the target startup_timeout after the start, or not all of them after timeout."""
    others = {name: list(pids) for name, pids in (also or {}).items()}

    def others_cpu() -> dict[str, float]:
        return {name: sum(cpu_s(p) for p in pids) for name, pids in others.items()}

    host0 = host_busy()
    others0 = others_cpu()
    t0 = time.monotonic()
    copier = start_copier()
    first: dict[str, Any] = {}
    try:
        def on_poll(now: float, count: int) -> None:
            if count and not first:
                first.update(t=now, count=count, cpu=cpu_s(copier.pid), host=host_busy(), others=others_cpu())
            if not _alive(copier.pid):
                raise RuntimeError(f"{_describe(copier)} exited with {count} of {n} records copied")
            if not first and now - t0 > startup_timeout:
                raise TimeoutError(f"no record of {topic} on the target {startup_timeout:.0f} s after the start")

        try:
            wait_copied(target_bootstrap, topic, n, timeout, on_poll=on_poll)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; {_describe(copier)}") from e
        t_end = time.monotonic()
        cpu_end = cpu_s(copier.pid)
        host_end = host_busy()
        others_end = others_cpu()
    finally:
        copier.stop()
    wall, steady = t_end - t0, t_end - first["t"]
    steady_records = n - first["count"]
    out: dict[str, Any] = {
        "records": n,
        "wall_s": round(wall, 3),
        "startup_s": round(first["t"] - t0, 3),
        "steady_s": round(steady, 3),
        "steady_records": steady_records,
        "rate": round(steady_records / steady) if steady > 0 else float("nan"),
        "wall_rate": round(n / wall),
        "cpu_s": round(cpu_end, 2),
        "cpu_per_million": round(cpu_end / n * 1e6, 2),
        "steady_cpu_s": round(cpu_end - first["cpu"], 2),
        "steady_cpu_per_million": round((cpu_end - first["cpu"]) / steady_records * 1e6, 2) if steady_records
        else float("nan"),
        "host_busy_cores": round(busy_cores(first["host"], host_end), 2),
        "host_busy_cores_wall": round(busy_cores(host0, host_end), 2),
    }
    for name in others:
        out[f"{name}_cpu_s"] = round(others_end[name] - others0[name], 2)
        out[f"{name}_steady_cpu_s"] = round(others_end[name] - first["others"][name], 2)
    if steady > 0:
        # The cores busy in the steady window with none of the processes measured: anything else on the machine.
        accounted = cpu_end - first["cpu"] + sum(others_end[k] - first["others"][k] for k in others)
        out["unaccounted_cores"] = round(out["host_busy_cores"] - accounted / steady, 2)
    return out


def host_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def busy_cores(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Busy cores on average between two host_busy() readings."""
    total = b[1] - a[1]
    return (b[0] - a[0]) / total * (os.cpu_count() or 1) if total > 0 else float("nan")
