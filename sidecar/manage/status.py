"""What runs in a namespace: every live sidecar (its status entry, under a lease), and whether each cluster of the
mapping answers. Read by `kafka-mesh status`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.manage.mapping import load
from sidecar.manage.topics import admin
from sidecar.mapping.model import Cluster, Mapping

#: How long a cluster has to answer a metadata request before it is shown unreachable.
REACH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Reach:
    cluster: str
    bootstrap: str
    brokers: int          # that answered; 0 when unreachable
    error: str = ""


async def _entries(etcd: Etcd, prefix: str, name_field: str) -> list[dict[str, Any]]:
    """The status entries under prefix, by key (an entry that does not parse is shown as such, named by its key)."""
    items, _ = await etcd.get_prefix(prefix)
    out: list[dict[str, Any]] = []
    for key, raw in sorted(items.items()):
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError as e:
            entry = {name_field: key[len(prefix):], "error": f"unreadable status entry: {e}"}
        out.append(entry)
    return out


async def sidecars(etcd: Etcd, keys: Keys) -> list[dict[str, Any]]:
    """The status entries of the live sidecars, by host id."""
    return await _entries(etcd, keys.status, "host")


async def routers(etcd: Etcd, keys: Keys) -> list[dict[str, Any]]:
    """The status entries of the live router processes, by router name and instance."""
    return await _entries(etcd, keys.routers, "instance")


def _reach(cluster: Cluster) -> Reach:
    try:
        brokers = len(admin(cluster).list_topics(timeout=REACH_TIMEOUT_S).brokers)
    except Exception as e:
        return Reach(cluster.name, cluster.bootstrap, 0, str(e))
    return Reach(cluster.name, cluster.bootstrap, brokers)


async def reachability(mapping: Mapping) -> list[Reach]:
    """Each cluster of the mapping asked for its brokers at once (in worker threads)."""
    return list(await asyncio.gather(*(asyncio.to_thread(_reach, mapping.clusters[name])
                                       for name in sorted(mapping.clusters))))


@dataclass(frozen=True)
class Snapshot:
    mapping: Mapping
    sidecars: list[dict[str, Any]]
    routers: list[dict[str, Any]]
    reach: list[Reach]


async def snapshot(etcd: Etcd, keys: Keys) -> Snapshot:
    mapping = await load(etcd, keys)
    found, routing, reach = await asyncio.gather(sidecars(etcd, keys), routers(etcd, keys), reachability(mapping))
    return Snapshot(mapping, found, routing, reach)


def behind(entries: list[dict[str, Any]], revision: int) -> list[str]:
    """The live sidecars (by host id) that have not applied revision yet."""
    return sorted(str(e.get("host", "?")) for e in entries if int(e.get("revision", -1)) < revision)
