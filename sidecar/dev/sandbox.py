"""The local sandbox: N real Kafka clusters (KRaft) and one etcd on loopback ports, for trying kafka-mesh out and
for the integration tests, which start it with this same code.

State lives in one folder (DevSettings.state_dir): sandbox.json says what runs where, and each server has its data
and log below it. A lock file beside the folder makes concurrent `up`/`down` calls take turns. Everything here is
synchronous and runs on the caller's thread; etcd is spoken to through a short asyncio.run().
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sidecar.config import DevSettings
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev import etcd_node, kafka_dist, kafka_node, ports, procs
from sidecar.dev.procs import Proc
from sidecar.errors import EtcdError, SandboxError, UsageError
from sidecar.manage import clusters as registry
from sidecar.mapping.model import Cluster

Progress = Callable[[str], None]
STATE_FILE = "sandbox.json"
MAX_CLUSTERS = 16
MAX_BROKERS = 5


@dataclass
class Broker:
    node_id: int
    port: int
    controller_port: int
    proc: Proc


@dataclass
class ClusterState:
    name: str
    cluster_id: str
    brokers: list[Broker]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{ports.HOST}:{b.port}" for b in self.brokers)


@dataclass
class Sandbox:
    """What one `dev up` started."""

    state_dir: str
    namespace: str
    kafka_version: str
    etcd_endpoint: str
    etcd: Proc
    clusters: list[ClusterState] = field(default_factory=list)

    def procs(self) -> list[Proc]:
        return [self.etcd] + [b.proc for c in self.clusters for b in c.brokers]

    def to_json(self) -> dict[str, Any]:
        """The document `dev up --json` prints and sandbox.json keeps."""
        return {
            "state_dir": self.state_dir,
            "namespace": self.namespace,
            "kafka_version": self.kafka_version,
            "etcd": {"endpoint": self.etcd_endpoint, **asdict(self.etcd)},
            "clusters": [
                {"name": c.name, "bootstrap": c.bootstrap, "cluster_id": c.cluster_id,
                 "brokers": [{"node_id": b.node_id, "port": b.port, "controller_port": b.controller_port,
                              **asdict(b.proc)} for b in c.brokers]}
                for c in self.clusters
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sandbox:
        e = d["etcd"]
        return cls(
            state_dir=d["state_dir"], namespace=d["namespace"], kafka_version=d["kafka_version"],
            etcd_endpoint=e["endpoint"], etcd=Proc(e["name"], e["pid"], e["started"], e["log"]),
            clusters=[
                ClusterState(c["name"], c["cluster_id"], [
                    Broker(b["node_id"], b["port"], b["controller_port"],
                           Proc(b["name"], b["pid"], b["started"], b["log"])) for b in c["brokers"]])
                for c in d["clusters"]
            ],
        )


@contextlib.contextmanager
def _locked(settings: DevSettings) -> Iterator[None]:
    settings.state_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{settings.state_dir}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def load(settings: DevSettings) -> Sandbox | None:
    path = settings.state_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return Sandbox.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise SandboxError(f"{path} is unreadable ({e}); remove {settings.state_dir} by hand") from e


def up(settings: DevSettings, clusters: int = 3, brokers_per_cluster: int = 1, port_base: int | None = None,
       progress: Progress = lambda _: None, detach: bool = True, timeout: float = 180.0) -> tuple[Sandbox, bool]:
    """Start the sandbox, or return the one already running. Returns (sandbox, started_now)."""
    if not 1 <= clusters <= MAX_CLUSTERS:
        raise UsageError(f"--clusters must be between 1 and {MAX_CLUSTERS}, got {clusters}")
    if not 1 <= brokers_per_cluster <= MAX_BROKERS:
        raise UsageError(f"--brokers-per-cluster must be between 1 and {MAX_BROKERS}, got {brokers_per_cluster}")
    with _locked(settings):
        running = load(settings)
        if running is not None:
            dead = [p for p in running.procs() if not p.alive()]
            if dead:
                raise SandboxError(f"the sandbox in {settings.state_dir} is partly down ({dead[0].name} is not "
                                   f"running; log: {dead[0].log}); run `kafka-mesh dev down` first")
            shape = (len(running.clusters), len(running.clusters[0].brokers))
            if shape != (clusters, brokers_per_cluster):
                raise UsageError(f"a sandbox with {shape[0]} cluster(s) of {shape[1]} broker(s) is already running "
                                 f"in {settings.state_dir}; run `kafka-mesh dev down` first")
            return running, False
        return _start(settings, clusters, brokers_per_cluster, port_base, progress, detach, timeout), True


def _start(settings: DevSettings, n_clusters: int, n_brokers: int, port_base: int | None, progress: Progress,
           detach: bool, timeout: float) -> Sandbox:
    # Ports first: a port in use is the user's to fix, and is told before any download.
    allocated = ports.allocate(2 + 2 * n_clusters * n_brokers, port_base)
    cp = kafka_dist.classpath(settings, progress)
    if settings.state_dir.exists():
        shutil.rmtree(settings.state_dir)   # leftovers (logs) of a sandbox that failed to start
    settings.state_dir.mkdir(parents=True)
    etcd_port, peer_port, *broker_ports = allocated
    endpoint = f"http://{ports.HOST}:{etcd_port}"
    state = settings.state_dir
    started: list[Proc] = []
    popens = []
    try:
        progress(f"starting etcd on {endpoint}")
        argv = etcd_node.command(settings, state / "etcd" / "data", etcd_port, peer_port)
        etcd_proc, popen = procs.spawn("etcd", argv, state / "etcd" / "etcd.log", state, detach=detach)
        started.append(etcd_proc)
        popens.append(popen)
        sandbox = Sandbox(str(state), settings.namespace, settings.kafka_version, endpoint, etcd_proc)

        specs: list[list[kafka_node.NodeSpec]] = []
        for ci in range(n_clusters):
            name = f"c{ci + 1}"
            nodes = []
            for ni in range(n_brokers):
                port, cport = broker_ports[2 * (ci * n_brokers + ni): 2 * (ci * n_brokers + ni) + 2]
                nodes.append(kafka_node.NodeSpec(name, ni + 1, port, cport, state / name / f"broker-{ni + 1}"))
            specs.append(nodes)
        progress(f"formatting storage of {n_clusters * n_brokers} Kafka node(s)")
        cluster_ids = [kafka_node.new_cluster_id() for _ in specs]
        with ThreadPoolExecutor(max_workers=4) as pool:
            props = list(pool.map(lambda a: kafka_node.prepare(a[0], a[1], a[2], cp, settings),
                                  [(node, nodes, cid) for nodes, cid in zip(specs, cluster_ids, strict=True)
                                   for node in nodes]))
        it = iter(props)
        for nodes, cid in zip(specs, cluster_ids, strict=True):
            cluster = ClusterState(nodes[0].cluster, cid, [])
            for node in nodes:
                progress(f"starting Kafka {settings.kafka_version} {node.name} on {ports.HOST}:{node.port}")
                proc, popen = procs.spawn(node.name, kafka_node.command(next(it), cp, settings),
                                          node.data_dir / "broker.log", node.data_dir, detach=detach)
                started.append(proc)
                popens.append(popen)
                cluster.brokers.append(Broker(node.node_id, node.port, node.controller_port, proc))
            sandbox.clusters.append(cluster)
        _save(settings, sandbox)
        _wait_ready(sandbox, progress, timeout)
        revision = asyncio.run(_register(sandbox))
        progress(f"registered {n_clusters} cluster(s) in etcd (namespace {sandbox.namespace}, mapping revision "
                 f"{revision})")
        return sandbox
    except BaseException:
        procs.stop_all(started, timeout=10)
        (state / STATE_FILE).unlink(missing_ok=True)
        raise
    finally:
        for popen in popens:
            popen.returncode = 0   # the processes belong to the sandbox now; Popen must not warn about them


def _save(settings: DevSettings, sandbox: Sandbox) -> None:
    tmp = settings.state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(sandbox.to_json(), indent=2) + "\n")
    tmp.replace(settings.state_dir / STATE_FILE)


def _check_alive(sandbox: Sandbox) -> None:
    for p in sandbox.procs():
        if not p.alive():
            raise SandboxError(f"{p.name} exited during start; log: {p.log}")


def _cluster_ready(cluster: ClusterState) -> bool:
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("kafka-mesh.sandbox.probe")
    quiet.setLevel(logging.CRITICAL)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "socket.connection.setup.timeout.ms": "1000"},
                        logger=quiet)
    try:
        md = admin.list_topics(timeout=2)
    except Exception:
        return False
    return len(md.brokers) == len(cluster.brokers)


async def _etcd_ready(endpoint: str) -> bool:
    try:
        async with Etcd(endpoint, timeout=2) as etcd:
            await etcd.get("/kafka-mesh/")
        return True
    except EtcdError:
        return False


def _wait_ready(sandbox: Sandbox, progress: Progress, timeout: float) -> None:
    """Return once etcd answers and every broker answers a metadata request; fail fast when a server exits."""
    deadline = time.monotonic() + timeout
    pending = {c.name: c for c in sandbox.clusters}
    etcd_up = False
    last_report = 0.0
    while True:
        _check_alive(sandbox)
        if not etcd_up:
            etcd_up = asyncio.run(_etcd_ready(sandbox.etcd_endpoint))
        for name, cluster in list(pending.items()):
            if _cluster_ready(cluster):
                del pending[name]
                progress(f"cluster {name} ready at {cluster.bootstrap}")
        if etcd_up and not pending:
            return
        now = time.monotonic()
        if now > deadline:
            waiting = ", ".join(f"{c.brokers[0].proc.name} (log: {c.brokers[0].proc.log})" for c in pending.values())
            raise SandboxError(f"timed out after {timeout:.0f}s waiting for {waiting or 'etcd'}")
        if now - last_report > 10:
            progress(f"waiting for {len(pending)} cluster(s)" + ("" if etcd_up else " and etcd"))
            last_report = now
        time.sleep(0.5)


async def _register(sandbox: Sandbox) -> int:
    async with Etcd(sandbox.etcd_endpoint) as etcd:
        return await registry.register(etcd, Keys(sandbox.namespace),
                                [Cluster(c.name, c.bootstrap, "fronting") for c in sandbox.clusters])


def status(settings: DevSettings) -> dict[str, Any] | None:
    """What the sandbox runs, with each process's liveness; None when nothing was started."""
    sandbox = load(settings)
    if sandbox is None:
        return None
    doc = sandbox.to_json()
    doc["etcd"]["running"] = sandbox.etcd.alive()
    for c, cd in zip(sandbox.clusters, doc["clusters"], strict=True):
        for b, bd in zip(c.brokers, cd["brokers"], strict=True):
            bd["running"] = b.proc.alive()
        cd["running"] = all(b.proc.alive() for b in c.brokers)
    doc["running"] = doc["etcd"]["running"] and all(cd["running"] for cd in doc["clusters"])
    return doc


def down(settings: DevSettings, progress: Progress = lambda _: None) -> bool:
    """Stop what `up` started and remove its data. False when nothing was running."""
    with _locked(settings):
        sandbox = load(settings)
        if sandbox is None:
            if settings.state_dir.exists():
                shutil.rmtree(settings.state_dir)
            return False
        live = [p for p in sandbox.procs() if p.alive()]
        progress(f"stopping {len(live)} server(s)")
        killed = procs.stop_all(sandbox.procs())
        if killed:
            progress(f"killed after the grace period: {', '.join(killed)}")
        shutil.rmtree(settings.state_dir)
        progress(f"removed {settings.state_dir}")
        return True
