"""Many sidecars on one etcd: 200 watchers of one namespace's mapping, each the sidecar's own watch code (a
MappingSource with its own etcd connection) and its own status entry under a lease (a StatusReporter, refreshed as a
sidecar does), all asyncio tasks of this one process. A one-route change is written as `mapping apply` writes it
(new blobs, then the pointer swap); measured: from the swap to each watcher's having applied it (p50, p99 over every
watcher and round), and etcd's CPU per change and at rest (leases only).

The mapping has 1,000 topics. The 200 watchers share this process's one core, so each one's own work on a change
(its watch event, reading the new blob, applying, its status entry and cache) adds up here: the last watcher's time
is about 200 times one watcher's CPU, which the benchmark reports too; in production each sidecar is its own process.

Run: python -m pytest benchmarks/test_mapping_watchers.py --benchmark-only
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import pathlib
import statistics
import time
from typing import Any

from benchmarks.procstat import cpu_s
from sidecar.config import SidecarSettings
from sidecar.control import mapstore
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.control.source import MappingSource
from sidecar.control.status import StatusReporter
from sidecar.dev.sandbox import Sandbox
from sidecar.mapping.model import Mapping
from tests.integration.sidecar_proc import clusters_doc, new_namespace

WATCHERS = 200
TOPICS = 1_000
ROUNDS = 20
IDLE_S = 10.0


def test_one_route_change_reaches_200_watchers(benchmark: Any, sandbox: Sandbox,
                                               tmp_path: pathlib.Path) -> None:
    ns = new_namespace()
    keys = Keys(ns)
    sinks = [c.name for c in sandbox.clusters]
    doc = Mapping.from_document({
        "clusters": clusters_doc(sandbox),
        "producer": {f"w-{i:05d}": {"where": [{"sink": sinks[i % len(sinks)]}]} for i in range(TOPICS)},
        "consumer": {f"w-{i:05d}": [{"vip": sinks[i % len(sinks)]}] for i in range(TOPICS)}}).to_document()
    other = copy.deepcopy(doc)
    other["producer"]["w-00000"] = {"where": [{"sink": sinks[1]}]}
    stored = [mapstore.split(doc), mapstore.split(other)]
    applied: list[dict[int, float]] = [{} for _ in range(WATCHERS)]
    arrived = asyncio.Event()
    loop = asyncio.new_event_loop()
    etcd = loop.run_until_complete(Etcd(sandbox.etcd_endpoint).__aenter__())
    revision = loop.run_until_complete(mapstore.write(etcd, keys, doc, 0))

    def settings(i: int) -> SidecarSettings:
        return SidecarSettings(etcd=sandbox.etcd_endpoint, namespace=ns, host_id=f"watcher-{i:03d}",
                               cache_dir=tmp_path / f"cache-{i:03d}")

    reporters = [StatusReporter(settings(i)) for i in range(WATCHERS)]

    def on_apply(i: int, mapping: Mapping) -> None:
        applied[i][mapping.revision] = time.perf_counter()
        reporters[i].applied(mapping)
        arrived.set()

    sources = [MappingSource(settings(i), lambda m, i=i: on_apply(i, m)) for i in range(WATCHERS)]

    async def start() -> None:
        await asyncio.gather(*(s.start() for s in sources))
        await asyncio.gather(*(r.start() for r in reporters))
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in sources)), 120)

    async def idle() -> float:
        used = cpu_s(sandbox.etcd.pid)
        await asyncio.sleep(IDLE_S)
        return (cpu_s(sandbox.etcd.pid) - used) / IDLE_S

    latencies: list[float] = []
    last_of_each: list[float] = []

    async def change() -> None:
        nonlocal revision
        target = stored[(len(last_of_each) + 1) % 2]
        prepared = await mapstore.prepare(etcd, keys, target, revision)
        swapped_at = time.perf_counter()
        revision = await mapstore.commit(etcd, keys, target, prepared)
        deadline = time.monotonic() + 60
        while not all(revision in a for a in applied):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(revision in a for a in applied)} of {WATCHERS} watchers applied "
                                   f"revision {revision} within 60 s")
            arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(arrived.wait(), 1)
        got = [a[revision] - swapped_at for a in applied]
        latencies.extend(got)
        last_of_each.append(max(got))

    try:
        loop.run_until_complete(start())
        etcd_idle = loop.run_until_complete(idle())
        cpu_before, own_before = cpu_s(sandbox.etcd.pid), cpu_s(os.getpid())
        t0 = time.monotonic()
        benchmark.group = "one-route change to 200 watchers"
        benchmark.pedantic(lambda: loop.run_until_complete(change()), rounds=ROUNDS, warmup_rounds=1)
        etcd_busy = cpu_s(sandbox.etcd.pid) - cpu_before
        own_busy = cpu_s(os.getpid()) - own_before
        wall = time.monotonic() - t0
    finally:
        async def stop() -> None:
            await asyncio.gather(*(s.stop() for s in sources), *(r.stop() for r in reporters))

        loop.run_until_complete(stop())
        loop.run_until_complete(etcd.__aexit__(None, None, None))
        loop.close()
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    benchmark.extra_info.update({
        "watchers": WATCHERS, "topics": TOPICS, "changes": len(last_of_each),
        "p50_ms": round(statistics.median(latencies) * 1e3, 1), "p99_ms": round(qs[98] * 1e3, 1),
        "last_watcher_p50_ms": round(statistics.median(last_of_each) * 1e3, 1),
        "max_ms": round(max(latencies) * 1e3, 1),
        "etcd_cpu_idle_cores": round(etcd_idle, 3),
        # beyond what the leases cost meanwhile
        "etcd_cpu_ms_per_change": round((etcd_busy - etcd_idle * wall) / len(last_of_each) * 1e3, 1),
        "etcd_cpu_cores_during": round(etcd_busy / wall, 3),
        # what one watcher spends on one change (this process's CPU over every watcher and change)
        "watcher_cpu_ms_per_change": round(own_busy / (len(last_of_each) * WATCHERS) * 1e3, 2)})
