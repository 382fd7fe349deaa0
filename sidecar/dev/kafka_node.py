"""One Kafka node in KRaft mode: its configuration, storage format and command line.

Every node of a sandbox cluster is a combined broker and controller, and the controller quorum is all of the
cluster's nodes (static voters), so a cluster of B nodes needs no other process.
"""

from __future__ import annotations

import base64
import pathlib
import subprocess
import uuid
from dataclasses import dataclass

from sidecar.config import DevSettings
from sidecar.dev import procs
from sidecar.dev.ports import HOST
from sidecar.errors import SandboxError


@dataclass(frozen=True)
class NodeSpec:
    cluster: str
    node_id: int
    port: int              # client listener
    controller_port: int
    data_dir: pathlib.Path

    @property
    def name(self) -> str:
        return f"{self.cluster}-broker-{self.node_id}"


def new_cluster_id() -> str:
    """A Kafka cluster id: a base64url UUID. Like Kafka's Uuid.randomUuid(), never one that starts with '-', which
    the storage tool's command line would take for an option."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def server_properties(node: NodeSpec, voters: list[NodeSpec]) -> str:
    rf = min(3, len(voters))
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(f"{v.node_id}@{HOST}:{v.controller_port}" for v in voters),
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.data_dir / "log"),
        "num.partitions": "3",
        "default.replication.factor": str(rf),
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": "1",
        "min.insync.replicas": "1",
        # A sandbox wants groups to form at once, not after the production default of 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # KIP-848 groups hand partitions over by heartbeats (every 5 s by default): a sandbox moves them within 0.5 s.
        "group.consumer.heartbeat.interval.ms": "500",
        "group.consumer.min.heartbeat.interval.ms": "500",
        # A member that stops heartbeating (its sidecar killed, not stopped) keeps its partitions for the session
        # timeout: 45 s by default, and 45 s is also the lowest a client may ask. The sidecar's consumers heartbeat
        # from librdkafka's own thread, never held up by an app, so 10 s is safe: what README advises for clusters
        # that serve sidecars.
        "group.consumer.session.timeout.ms": "10000",
        "group.consumer.min.session.timeout.ms": "6000",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.cleaner.threads": "1",
        # The cleaner's dedupe map is allocated whole at start (128 MiB by default): it would be most of a sandbox
        # broker's live heap, and old-generation space the young collections scan. A sandbox compacts little.
        "log.cleaner.dedupe.buffer.size": str(16 << 20),
        "num.recovery.threads.per.data.dir": "1",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def prepare(node: NodeSpec, voters: list[NodeSpec], cluster_id: str, cp: str, settings: DevSettings) -> pathlib.Path:
    """Write the node's server.properties and format its storage; returns the properties file."""
    node.data_dir.mkdir(parents=True, exist_ok=True)
    props = node.data_dir / "server.properties"
    props.write_text(server_properties(node, voters))
    fmt = subprocess.run(
        [settings.java_bin, "-Xmx128m", "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id,
         "-c", str(props), "--ignore-formatted"],
        capture_output=True, text=True, env=procs.server_env(),
    )
    if fmt.returncode != 0:
        log = node.data_dir / "format.log"
        log.write_text(fmt.stdout + fmt.stderr)
        raise SandboxError(f"formatting the storage of {node.name} failed (exit {fmt.returncode}); log: {log}")
    return props


def command(props: pathlib.Path, cp: str, settings: DevSettings) -> list[str]:
    heap = settings.broker_heap_mb
    return [
        settings.java_bin, f"-Xms{heap}m", f"-Xmx{heap}m",
        # ZGC: a broker serving a few thousand records a second allocates tens of MB a second, and a stop-the-world
        # collector pauses it for that: the serial collector's young pauses (15-100 ms every few seconds, longer
        # when the other servers have the cores) were nearly all of the produce-to-consume p99 in the benchmarks.
        # ZGC collects concurrently, with pauses under a millisecond. It maps the heap three times, so the RSS that
        # ps shows for a broker is about three heaps although the memory used is one. A heap committed and touched
        # up front never pauses to grow or to fault its pages in.
        "-XX:+UseZGC", "-XX:+AlwaysPreTouch", "-XX:-UsePerfData", "-Djava.awt.headless=true",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.log.kafka.request.logger=warn",
        "-cp", cp, "kafka.Kafka", str(props),
    ]
