"""Settings: one typed object per command, built once from defaults, environment and flags, then passed down.

No other module reads the environment. Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.errors import UsageError

#: The Apache Kafka release the sandbox runs (KRaft). See README "Kafka version" for why 4.1.
KAFKA_VERSION = "4.1.1"
DEFAULT_NAMESPACE = "default"


def _home(env: Mapping[str, str]) -> pathlib.Path:
    return pathlib.Path(env.get("HOME") or os.path.expanduser("~"))


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
