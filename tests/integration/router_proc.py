"""Run real router processes for a test (`kafka-mesh router`) against the sandbox's etcd, in a namespace of the
test's own, and read back what routers publish under routers/ and what they wrote to the clusters."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev.sandbox import Sandbox


class RouterProc:
    def __init__(self, sandbox: Sandbox, workdir: pathlib.Path, namespace: str, name: str = "main",
                 instance: str = "r1", *extra: str) -> None:
        self.sandbox = sandbox
        self.workdir = workdir
        self.namespace = namespace
        self.name = name
        self.instance = instance
        self.log = workdir / f"router-{instance}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 60) -> RouterProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = ["kafka-mesh", "router", "--etcd", self.sandbox.etcd_endpoint, "--namespace", self.namespace,
                "--name", self.name, "--instance", self.instance, "--cache-dir", str(self.workdir / "cache"),
                "--commit-interval-ms", "200", *self.extra]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        if wait:
            self.wait_for(lambda doc: doc.get("revision", -1) > 0, timeout, "its status entry")
        return self

    def status(self) -> dict[str, Any] | None:
        return status_of(self.sandbox, self.namespace).get((self.name, self.instance))

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited with {self.proc.returncode}:\n{self.log.read_text()}")
            doc = self.status()
            if doc is not None and check(doc):
                return doc
            time.sleep(0.3)
        raise AssertionError(f"router {self.instance}: no {what} after {timeout}s; last status {doc}\n"
                             f"{self.log.read_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def status_of(sandbox: Sandbox, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(router name, instance) -> its status entry, for every live router of the namespace."""
    async def go() -> dict[tuple[str, str], dict[str, Any]]:
        keys = Keys(namespace)
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            items, _ = await etcd.get_prefix(keys.routers)
        out = {}
        for key, raw in items.items():
            name, _, instance = key[len(keys.routers):].partition("/")
            out[(name, instance)] = json.loads(raw)
        return out

    return asyncio.run(go())


def produce_records(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Write records ({"value", "key", "headers", "partition"}) straight to a cluster, acknowledged by all replicas."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "enable.idempotence": True})
    failed: list[str] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    for r in records:
        kw: dict[str, Any] = {"value": r["value"], "on_delivery": done}
        for k in ("key", "headers", "partition"):
            if r.get(k) is not None:
                kw[k] = r[k]
        while True:
            try:
                p.produce(topic, **kw)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0
    assert not failed, failed[:3]
