"""Settings: one typed object per command, built once from defaults, environment and flags, then passed down.

No other module reads the environment. Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.errors import UsageError
from sidecar.local_socket import parse_mode

#: The Apache Kafka release the sandbox runs (KRaft). See README "Kafka version" for why 4.1.
KAFKA_VERSION = "4.1.1"
DEFAULT_NAMESPACE = "default"


def _home(env: Mapping[str, str]) -> pathlib.Path:
    return pathlib.Path(env.get("HOME") or os.path.expanduser("~"))


def _number(values: Mapping[str, object], cls: type, name: str, kind: type[int] | type[float],
            low: float) -> int | float:
    """Setting name (a flag, variable or file value, else cls's default) as a number of at least low."""
    raw = values.get(name, getattr(cls, name))
    try:
        value = kind(str(raw))
    except (TypeError, ValueError):
        raise UsageError(f"{name.replace('_', '-')} must be a number, got {raw!r}") from None
    if value < low:
        raise UsageError(f"{name.replace('_', '-')} must be at least {low}, got {raw!r}")
    return value


@dataclass(frozen=True)
class DevSettings:
    """Where the local sandbox keeps its files and which binaries it runs."""

    state_dir: pathlib.Path          # KAFKA_MESH_STATE_DIR: sandbox.json, logs and data of running servers
    cache_dir: pathlib.Path          # KAFKA_MESH_CACHE_DIR: downloaded Kafka jars, reused across sandboxes
    kafka_version: str = KAFKA_VERSION
    kafka_home: pathlib.Path | None = None   # KAFKA_HOME: use this Kafka distribution's libs/ instead of Maven
    etcd_bin: str = "etcd"                   # ETCD_BIN
    java_bin: str = "java"                   # JAVA (a java binary; default: java on PATH)
    mvn_bin: str = "mvn"                     # MVN
    broker_heap_mb: int = 384                # KAFKA_MESH_BROKER_HEAP_MB: small, so three clusters fit on 2 cores
    namespace: str = DEFAULT_NAMESPACE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DevSettings:
        """From env (default: this process's environment)."""
        env = os.environ if env is None else env
        home = _home(env)
        state = env.get("KAFKA_MESH_STATE_DIR") or str(
            pathlib.Path(env.get("XDG_STATE_HOME") or home / ".local" / "state") / "kafka-mesh" / "sandbox")
        cache = env.get("KAFKA_MESH_CACHE_DIR") or str(
            pathlib.Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "kafka-mesh")
        heap = env.get("KAFKA_MESH_BROKER_HEAP_MB", "384")
        if not heap.isdigit() or int(heap) < 128:
            raise ValueError(f"KAFKA_MESH_BROKER_HEAP_MB must be a whole number of MB >= 128, got {heap!r}")
        return cls(
            state_dir=pathlib.Path(state),
            cache_dir=pathlib.Path(cache),
            kafka_home=pathlib.Path(env["KAFKA_HOME"]) if env.get("KAFKA_HOME") else None,
            etcd_bin=env.get("ETCD_BIN", "etcd"),
            java_bin=env.get("JAVA", "java"),
            mvn_bin=env.get("MVN", "mvn"),
            broker_heap_mb=int(heap),
        )


@dataclass(frozen=True)
class ControlSettings:
    """How a management command reaches the mapping: the etcd endpoint and the namespace under /kafka-mesh/."""

    etcd_endpoint: str                       # --etcd, else KAFKA_MESH_ETCD; required
    namespace: str = DEFAULT_NAMESPACE       # --namespace, else KAFKA_MESH_NAMESPACE, else "default"

    @classmethod
    def build(cls, etcd: str | None = None, namespace: str | None = None,
              env: Mapping[str, str] | None = None) -> ControlSettings:
        """From the flags given (None when not given) over env (default: this process's environment)."""
        env = os.environ if env is None else env
        endpoint = etcd or env.get("KAFKA_MESH_ETCD")
        if not endpoint:
            raise UsageError("no etcd endpoint: give --etcd URL or set KAFKA_MESH_ETCD")
        return cls(etcd_endpoint=endpoint,
                   namespace=namespace or env.get("KAFKA_MESH_NAMESPACE") or DEFAULT_NAMESPACE)


def default_memory_budget() -> int:
    """A quarter of the host's physical memory, at least 512 MiB and at most 8 GiB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 4 << 30
    return max(512 << 20, min(8 << 30, total // 4))


def _runtime_dir(env: Mapping[str, str]) -> pathlib.Path:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return pathlib.Path(runtime) / "kafka-mesh"
    return pathlib.Path("/tmp") / f"kafka-mesh-{os.getuid()}"


@dataclass(frozen=True)
class SidecarSettings:
    """Everything `kafka-mesh sidecar` needs. Each field can come from the config file (TOML, same names), an
    environment variable (KAFKA_MESH_ + the name in capitals) or a flag (--the-name-with-dashes); a flag beats the
    environment, which beats the file, which beats the default."""

    etcd: str | None = None                  # etcd endpoint; None with mapping_file
    namespace: str = DEFAULT_NAMESPACE
    listen: tuple[str, ...] = ()             # unix:PATH or HOST:PORT; default: a Unix socket and 127.0.0.1:7420
    socket_mode: int = 0o600                 # the Unix socket's permissions (600: this user; 660: its group too)
    mapping_file: pathlib.Path | None = None # serve this mapping file instead of etcd
    cache_dir: pathlib.Path = pathlib.Path(".")   # where the last applied mapping is cached
    host_id: str = ""                        # this sidecar's name under status/ (default: the host name)
    max_inflight_bytes: int = 64 << 20       # per Produce stream: stop reading the stream past this
    memory_budget_bytes: int = 0             # the process's; 0: a quarter of the host's memory, 512 MiB-8 GiB
    max_request_bytes: int = 64 << 20        # largest ProduceRequest accepted
    delivery_timeout_ms: int = 60_000        # a record not acknowledged by then fails with CLUSTER_UNAVAILABLE
    max_timestamp_ahead_ms: int = 3_600_000  # a record timestamped further ahead fails alone; 0: no check
    topic_checks: bool = True                # check records by their topic's config (DescribeConfigs) before Kafka
    shutdown_grace_s: float = 30.0           # on SIGTERM: how long in-flight batches may take to finish
    commit_interval_ms: int = 1000           # Subscribe: how often acked offsets are committed to Kafka
    drain_timeout_s: float = 10.0            # Subscribe: how long a cluster leaving a stream waits for its acks
    etcd_timeout_s: float = 5.0
    status_ttl_s: int = 10
    log_level: str = "info"
    metrics_listen: str = ""                 # HOST:PORT of GET /metrics (Prometheus); "": no metrics listener
    metrics_topics: int = 1000               # topics the metrics name (the mapping's first); the rest: __default__
    statistics_interval_ms: int = 15_000     # librdkafka's statistics, with metrics on; 0: none
    http_listen: str = ""                    # HOST:PORT of HTTP produce; "": none
    http_max_body_bytes: int = 16 << 20      # the largest HTTP produce request body

    @classmethod
    def build(cls, flags: Mapping[str, object], env: Mapping[str, str] | None = None) -> SidecarSettings:
        """flags: the command line's values (None when not given), by field name, plus "config" (a file path)."""
        import socket
        import tomllib

        env = os.environ if env is None else env
        values: dict[str, object] = {
            "listen": (f"unix:{_runtime_dir(env) / 'sidecar.sock'}", "127.0.0.1:7420"),
            "cache_dir": str(pathlib.Path(env.get("XDG_CACHE_HOME") or _home(env) / ".cache") / "kafka-mesh"),
            "host_id": socket.gethostname(),
        }
        names = set(cls.__dataclass_fields__)
        config = flags.get("config") or env.get("KAFKA_MESH_CONFIG")
        if config:
            try:
                with open(str(config), "rb") as f:
                    doc = tomllib.load(f)
            except OSError as e:
                raise UsageError(f"cannot read the config file {config}: {e.strerror}") from e
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"config file {config}: {e}") from e
            unknown = sorted(set(doc) - names)
            if unknown:
                raise UsageError(f"config file {config}: unknown setting(s) {', '.join(unknown)}")
            values.update(doc)
        for name in names:
            raw = env.get(f"KAFKA_MESH_{name.upper()}")
            if raw:
                values[name] = raw.split(",") if name == "listen" else raw
        for name in names:
            if flags.get(name) not in (None, [], ()):
                values[name] = flags[name]
        return cls._typed(values)

    @classmethod
    def _typed(cls, values: Mapping[str, object]) -> SidecarSettings:
        def num(name: str, kind: type[int] | type[float], low: float) -> int | float:
            return _number(values, cls, name, kind, low)

        def flag(name: str) -> bool:
            raw = values.get(name, getattr(cls, name))
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise UsageError(f"{name.replace('_', '-')} must be true or false, got {raw!r}")
            return text in ("true", "1", "yes")

        raw_listen = values.get("listen") or ()
        listen: list[object] = [raw_listen] if isinstance(raw_listen, str) else list(raw_listen)  # type: ignore[call-overload]
        mapping_file = values.get("mapping_file")
        etcd = values.get("etcd")
        if etcd and mapping_file:
            raise UsageError("give either --etcd or --mapping, not both")
        level = str(values.get("log_level", "info")).lower()
        if level not in ("debug", "info", "warning", "error"):
            raise UsageError(f"log-level must be debug, info, warning or error, got {level!r}")
        return cls(
            etcd=str(etcd) if etcd else None,
            namespace=str(values.get("namespace") or DEFAULT_NAMESPACE),
            listen=tuple(str(x).strip() for x in listen if str(x).strip()),
            socket_mode=parse_mode(values.get("socket_mode", "600")),
            mapping_file=pathlib.Path(str(mapping_file)) if mapping_file else None,
            cache_dir=pathlib.Path(str(values["cache_dir"])),
            host_id=str(values.get("host_id") or "sidecar"),
            max_inflight_bytes=int(num("max_inflight_bytes", int, 1024)),
            memory_budget_bytes=int(num("memory_budget_bytes", int, 0)) or default_memory_budget(),
            max_request_bytes=int(num("max_request_bytes", int, 1024)),
            delivery_timeout_ms=int(num("delivery_timeout_ms", int, 100)),
            max_timestamp_ahead_ms=int(num("max_timestamp_ahead_ms", int, 0)),
            topic_checks=flag("topic_checks"),
            shutdown_grace_s=float(num("shutdown_grace_s", float, 0)),
            commit_interval_ms=int(num("commit_interval_ms", int, 10)),
            drain_timeout_s=float(num("drain_timeout_s", float, 0)),
            etcd_timeout_s=float(num("etcd_timeout_s", float, 0.1)),
            status_ttl_s=int(num("status_ttl_s", int, 2)),
            log_level=level,
            metrics_listen=_listener(values, "metrics_listen"),
            metrics_topics=int(num("metrics_topics", int, 0)),
            statistics_interval_ms=int(num("statistics_interval_ms", int, 0)),
            http_listen=_listener(values, "http_listen"),
            http_max_body_bytes=int(num("http_max_body_bytes", int, 1024)),
        )


def _listener(values: Mapping[str, object], name: str) -> str:
    spec = str(values.get(name) or "")
    if spec:
        from sidecar.metrics import parse_listen

        parse_listen(spec, "--" + name.replace("_", "-"))     # refused at start, with the reason
    return spec


@dataclass(frozen=True)
class RouterSettings:
    """Everything `kafka-mesh router` needs. A field comes from an environment variable (KAFKA_MESH_ + the name in
    capitals) or a flag (--the-name-with-dashes); a flag beats the environment, which beats the default."""

    etcd: str | None = None                  # etcd endpoint; None with mapping_file
    namespace: str = DEFAULT_NAMESPACE
    name: str = "main"                       # runs the mapping's router rules of this name; the consumer group's
    mapping_file: pathlib.Path | None = None # route by this mapping file instead of etcd
    cache_dir: pathlib.Path = pathlib.Path(".")   # where the last applied mapping is cached
    instance: str = ""                       # this process's name under routers/NAME/ (default: host-pid)
    commit_interval_ms: int = 1000           # how often acknowledged source offsets are committed
    max_inflight_records: int = 20_000       # per source partition: pause it past this many unacknowledged records
    max_inflight_bytes: int = 16 << 20       # per source partition: pause it past this many unacknowledged bytes
    drain_timeout_s: float = 10.0            # at stop: how long records in flight may take to be acknowledged
    etcd_timeout_s: float = 5.0
    status_ttl_s: int = 10
    log_level: str = "info"
    metrics_listen: str = ""                 # HOST:PORT of GET /metrics (Prometheus); "": no metrics listener
    statistics_interval_ms: int = 15_000     # librdkafka's statistics, with metrics on; 0: none

    @property
    def group(self) -> str:
        """The consumer group the router's processes share on every source cluster."""
        return f"kafka-mesh.router.{self.namespace}.{self.name}"

    @classmethod
    def build(cls, flags: Mapping[str, object], env: Mapping[str, str] | None = None) -> RouterSettings:
        import socket

        from sidecar.mapping.names import check_name

        env = os.environ if env is None else env
        values: dict[str, object] = {
            "cache_dir": str(pathlib.Path(env.get("XDG_CACHE_HOME") or _home(env) / ".cache") / "kafka-mesh"),
            "instance": f"{socket.gethostname()}-{os.getpid()}",
        }
        names = set(cls.__dataclass_fields__)
        for name in names:
            raw = env.get(f"KAFKA_MESH_{name.upper()}")
            if raw and name not in ("name", "instance"):      # KAFKA_MESH_NAME would be too easy to set by mistake
                values[name] = raw
        for name in names:
            if flags.get(name) not in (None, [], ()):
                values[name] = flags[name]

        def num(name: str, kind: type[int] | type[float], low: float) -> int | float:
            return _number(values, cls, name, kind, low)

        etcd, mapping_file = values.get("etcd"), values.get("mapping_file")
        if etcd and mapping_file:
            raise UsageError("give either --etcd or --mapping, not both")
        if not etcd and not mapping_file:
            raise UsageError("no mapping source: give --etcd URL (or KAFKA_MESH_ETCD) or --mapping FILE")
        level = str(values.get("log_level", "info")).lower()
        if level not in ("debug", "info", "warning", "error"):
            raise UsageError(f"log-level must be debug, info, warning or error, got {level!r}")
        return cls(
            etcd=str(etcd) if etcd else None,
            namespace=check_name("namespace", str(values.get("namespace") or DEFAULT_NAMESPACE)),
            name=check_name("router", str(values.get("name") or "main")),
            mapping_file=pathlib.Path(str(mapping_file)) if mapping_file else None,
            cache_dir=pathlib.Path(str(values["cache_dir"])),
            instance=check_name("router instance", str(values.get("instance"))),
            commit_interval_ms=int(num("commit_interval_ms", int, 10)),
            max_inflight_records=int(num("max_inflight_records", int, 1)),
            max_inflight_bytes=int(num("max_inflight_bytes", int, 1024)),
            drain_timeout_s=float(num("drain_timeout_s", float, 0)),
            etcd_timeout_s=float(num("etcd_timeout_s", float, 0.1)),
            status_ttl_s=int(num("status_ttl_s", int, 2)),
            log_level=level,
            metrics_listen=_listener(values, "metrics_listen"),
            statistics_interval_ms=int(num("statistics_interval_ms", int, 0)),
        )
