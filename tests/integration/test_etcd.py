"""kafka-mesh's etcd client against the sandbox's real etcd: put, get, prefix reads, batched transactions, swaps,
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


def test_batched_puts_and_deletes_and_a_compare_and_swap(sandbox: Sandbox) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/"

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            # 300 keys: more than one transaction may hold under etcd's default limit of 128 operations.
            await etcd.put_batched({f"{prefix}k{i:03}": b"v" * 10 for i in range(300)}, max_ops=64, max_bytes=1 << 20)
            assert len(await etcd.keys_under(prefix)) == 300
            await etcd.delete_batched([f"{prefix}k{i:03}" for i in range(250)], max_ops=64)
            assert sorted(await etcd.keys_under(prefix)) == [f"{prefix}k{i:03}" for i in range(250, 300)]
            rev = await etcd.swap(prefix + "ptr", b"a", 0)
            assert rev is not None and await etcd.swap(prefix + "ptr", b"b", 0) is None
            assert await etcd.swap(prefix + "ptr", b"c", rev) is not None
            assert (await etcd.get(prefix + "ptr"))[0] == b"c"  # type: ignore[index]

    _run(go())


def test_watch_sees_every_change_in_order_from_a_revision(sandbox: Sandbox) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/"

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            first = await etcd.put(prefix + "k", b"v0")
            for i in range(1, 4):
                await etcd.put(prefix + "k", f"v{i}".encode())
            await etcd.delete_batched([prefix + "k"], max_ops=64)
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
            registered, _ = await registry.list_clusters(etcd, Keys(sandbox.namespace))
            return [r.cluster for r in registered]

    got = _run(go())
    assert got == [Cluster(c.name, c.bootstrap, "fronting", {}) for c in sandbox.clusters]
