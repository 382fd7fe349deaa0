"""The mapping store against the sandbox's etcd, which runs with etcd's default limits (128 operations a
transaction, 1.5 MiB a request): a 100,000-topic mapping is written and read back whole, a writer that checked an
older mapping changes nothing, blobs no pointer needs are cleaned up, and a reader never sees a partly written
mapping while writers swap between two."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sidecar.control import mapstore
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.dev.sandbox import Sandbox
from sidecar.errors import ConflictError
from tests.integration.sidecar_proc import new_namespace


def _doc(n: int, sink: str) -> dict[str, Any]:
    return {"clusters": {"c1": {"bootstrap": "h:1"}, "c2": {"bootstrap": "h:2"}},
            "producer": {f"t{i}": {"where": [{"sink": sink}]} for i in range(n)},
            "consumer": {f"t{i}": [{"vip": sink}] for i in range(n)}}


def test_a_hundred_thousand_topics_are_written_within_default_limits_and_read_back(sandbox: Sandbox) -> None:
    keys = Keys(new_namespace())
    doc = _doc(100_000, "c1")

    async def go() -> tuple[int, dict[str, Any] | None, int, float, float]:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            t0 = time.monotonic()
            revision = await mapstore.write(etcd, keys, doc, 0)
            t1 = time.monotonic()
            got, at = await mapstore.read(etcd, keys)
            return revision, got, at, t1 - t0, time.monotonic() - t1

    revision, got, at, write_s, read_s = asyncio.run(go())
    print(f"100,000 topics: write {write_s:.2f} s, read {read_s:.2f} s")
    assert got == doc and at == revision


def test_a_writer_that_checked_an_older_mapping_changes_nothing(sandbox: Sandbox) -> None:
    keys = Keys(new_namespace())

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            first = await mapstore.write(etcd, keys, _doc(10, "c1"), 0)
            second = await mapstore.write(etcd, keys, _doc(10, "c2"), first)
            with pytest.raises(ConflictError, match=f"not {first}"):
                await mapstore.write(etcd, keys, _doc(10, "c1"), first)
            with pytest.raises(ConflictError):
                await mapstore.write(etcd, keys, _doc(10, "c1"), 0)        # "no mapping yet": there is one
            assert await mapstore.read(etcd, keys) == (_doc(10, "c2"), second)

    asyncio.run(go())


def test_blobs_no_pointer_needs_are_cleaned_up_keeping_the_previous_mappings(sandbox: Sandbox) -> None:
    keys = Keys(new_namespace())

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            revision = 0
            written = []
            for i, sink in enumerate(("c1", "c2", "c1", "c2")):
                doc = _doc(2000, sink)
                doc["consumer"][f"marker-{i}"] = [{"vip": sink}]       # no two writes the same
                revision = await mapstore.write(etcd, keys, doc, revision)
                written.append(mapstore.split(doc))
            stored = {k[len(keys.blobs):] for k in await etcd.keys_under(keys.blobs)}
            assert stored == set(written[-1].blobs) | set(written[-2].blobs)
            assert set(written[0].blobs) - stored         # the first mapping's own blobs are gone

    asyncio.run(go())


def test_a_reader_never_sees_a_partly_written_mapping(sandbox: Sandbox) -> None:
    keys = Keys(new_namespace())
    docs = [_doc(20_000, "c1"), _doc(20_000, "c2")]       # every bucket differs between the two

    async def go() -> tuple[int, int]:
        async with Etcd(sandbox.etcd_endpoint) as writer_etcd, Etcd(sandbox.etcd_endpoint) as reader_etcd:
            revision = await mapstore.write(writer_etcd, keys, docs[0], 0)
            stop = asyncio.Event()
            seen = {0: 0, 1: 0}

            async def reader() -> None:
                while not stop.is_set():
                    got, _ = await mapstore.read(reader_etcd, keys)
                    assert got in docs, "a read saw a mapping that was neither the old nor the new one"
                    seen[docs.index(got)] += 1

            task = asyncio.create_task(reader())
            for i in range(1, 9):
                revision = await mapstore.write(writer_etcd, keys, docs[i % 2], revision)
            stop.set()
            await task
            return seen[0], seen[1]

    old, new = asyncio.run(go())
    assert old + new >= 8, (old, new)


def test_a_writer_reusing_blobs_another_writer_is_cleaning_up_keeps_them(sandbox: Sandbox) -> None:
    """A -> B; writer C swaps to C, and before C's clean-up runs another writer puts A back (its blobs still in etcd,
    about to be deleted as stale by C). C's clean-up must leave them: the mapping in force stays readable."""
    keys = Keys(new_namespace())
    a, b, c = _doc(300, "c1"), _doc(300, "c2"), _doc(300, "c3")

    async def go() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            rev = await mapstore.write(etcd, keys, a, 0)
            rev = await mapstore.write(etcd, keys, b, rev)
            stored_c = mapstore.split(c)
            prepared_c = await mapstore.prepare(etcd, keys, stored_c, rev)
            rev_c = await mapstore.swap(etcd, keys, stored_c, prepared_c)
            rev_a = await mapstore.write(etcd, keys, a, rev_c)           # the revert, while C's clean-up waits
            await mapstore.clean_up(etcd, keys, stored_c, prepared_c, rev_c)
            doc, at = await mapstore.read(etcd, keys)
            assert (doc, at) == (a, rev_a)

    asyncio.run(go())
