"""kafka-mesh's etcd client against the sandbox's real etcd: put, get, prefix reads, one-revision transactions,
watches, and the cluster registry that `dev up` fills."""

from __future__ import annotations

import asyncio
import uuid

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev.sandbox import Sandbox
from sidecar.manage import clusters as registry
from sidecar.mapping.model import Cluster


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_put_get_and_prefix_read(sandbox: Sandbox) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/"

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            assert await etcd.get(prefix + "a") is None
            rev = await etcd.put(prefix + "a", b"1")
            assert await etcd.get(prefix + "a") == (b"1", rev)
            await etcd.put(prefix + "b", b"2")
            items, read_rev = await etcd.get_prefix(prefix)
            assert items == {prefix + "a": b"1", prefix + "b": b"2"}
            assert read_rev > rev

    _run(go())


def test_put_all_is_one_revision_and_replaces_a_prefix(sandbox: Sandbox) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/"

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            await etcd.put(prefix + "old", b"x")
            rev = await etcd.put_all({prefix + "n1": b"1", prefix + "n2": b"2"}, delete_prefixes=(prefix,))
            items, _ = await etcd.get_prefix(prefix)
            assert items == {prefix + "n1": b"1", prefix + "n2": b"2"}
            assert (await etcd.get(prefix + "n1"))[1] == rev == (await etcd.get(prefix + "n2"))[1]  # type: ignore[index]

    _run(go())


def test_watch_sees_every_change_in_order_from_a_revision(sandbox: Sandbox) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/"

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            first = await etcd.put(prefix + "k", b"v0")
            for i in range(1, 4):
                await etcd.put(prefix + "k", f"v{i}".encode())
            await etcd.put_all({}, delete_prefixes=(prefix,))
            events = []
            # Resuming from a past revision replays what happened since, as a sidecar does after losing etcd.
            async for ev in etcd.watch_prefix(prefix, start_revision=first):
                events.append((ev.kind, ev.key, ev.value))
                if ev.kind == "DELETE":
                    break
            assert events == [("PUT", prefix + "k", b"v0"), ("PUT", prefix + "k", b"v1"),
                              ("PUT", prefix + "k", b"v2"), ("PUT", prefix + "k", b"v3"),
                              ("DELETE", prefix + "k", b"")]

    _run(asyncio.wait_for(go(), 30))


def test_live_watch_sees_a_put_made_after_it_started(sandbox: Sandbox) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/"

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd, Etcd(sandbox.etcd_endpoint) as writer:
            _, now = await etcd.get_prefix(prefix)

            async def put_later() -> None:
                await asyncio.sleep(0.2)
                await writer.put(prefix + "late", b"hello")

            task = asyncio.create_task(put_later())
            async for ev in etcd.watch_prefix(prefix, start_revision=now + 1):
                assert (ev.kind, ev.key, ev.value) == ("PUT", prefix + "late", b"hello")
                break
            await task

    _run(asyncio.wait_for(go(), 30))


def test_sandbox_registered_its_clusters(sandbox: Sandbox) -> None:
    async def go() -> list[Cluster]:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            clusters, _ = await registry.list_clusters(etcd, Keys(sandbox.namespace))
            return clusters

    got = _run(go())
    assert got == [Cluster(c.name, c.bootstrap, "fronting", {}) for c in sandbox.clusters]
