"""The cluster registry in etcd: the clusters section of a namespace's mapping, changed like any mapping change (read,
edit, compare-and-swap: manage/mapping.edit)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import UsageError
from sidecar.manage.mapping import edit, load
from sidecar.mapping.model import Cluster, Mapping

#: How many of the routes that still name a cluster a refusal to remove it lists.
NAMED = 5


@dataclass(frozen=True)
class Registered:
    """A cluster in the registry, and the routes and router rules that name it."""

    cluster: Cluster
    producer_routes: list[str]
    consumer_routes: list[str]
    router_rules: list[str] = field(default_factory=list)      # as a source or as a sink


def users(mapping: Mapping, name: str) -> Registered:
    return Registered(mapping.clusters[name],
                      sorted(key for key, sinks in mapping.routes.items() if name in sinks),
                      sorted(topic for topic, vips in mapping.consumer.items() if name in vips),
                      sorted(rule.name for rule in mapping.router.values() if name in rule.sources + rule.sinks))


def _section(mapping: Mapping) -> dict[str, Any]:
    return {name: c.to_json() for name, c in mapping.clusters.items()}


async def register(etcd: Etcd, keys: Keys, clusters: Iterable[Cluster]) -> int:
    """Add (or redefine) clusters in the registry, at one revision; returns it."""
    added = {c.name: c.to_json() for c in clusters}
    return (await edit(etcd, keys, lambda m: {"clusters": {**_section(m), **added}})).revision


async def add(etcd: Etcd, keys: Keys, cluster: Cluster, replace: bool = False) -> Mapping:
    """Register cluster; one of that name already there is refused unless replace. Returns the mapping now in
    force."""
    def change(mapping: Mapping) -> dict[str, Any]:
        old = mapping.clusters.get(cluster.name)
        if old is not None and not replace:
            raise UsageError(f"cluster {cluster.name!r} is already registered (bootstrap {old.bootstrap}); "
                             "`kafka-mesh clusters add --replace` redefines it")
        return {"clusters": {**_section(mapping), cluster.name: cluster.to_json()}}

    return await edit(etcd, keys, change)


async def remove(etcd: Etcd, keys: Keys, name: str) -> Mapping:
    """Take a cluster out of the registry: refused while a route or a router rule names it. Returns the mapping now
    in force."""
    def change(mapping: Mapping) -> dict[str, Any]:
        if name not in mapping.clusters:
            known = ", ".join(sorted(mapping.clusters)) or "none"
            raise UsageError(f"no cluster {name!r} in namespace {keys.namespace} (registered: {known})")
        used = users(mapping, name)
        # Router rules first: they are few, and each matters more than one more of what may be thousands of routes.
        named = ([f"router.{r}" for r in used.router_rules] + [f"producer.{k}" for k in used.producer_routes]
                 + [f"consumer.{t}" for t in used.consumer_routes])
        if named:
            more = f" and {len(named) - NAMED} more" if len(named) > NAMED else ""
            routes = len(used.producer_routes) + len(used.consumer_routes)
            counted = " and ".join(([f"{routes} route(s)"] if routes else []) +
                                   ([f"{len(used.router_rules)} router rule(s)"] if used.router_rules else []))
            raise UsageError(f"cluster {name!r} is still named by {counted}: "
                             f"{', '.join(named[:NAMED])}{more}; move them (or change the mapping) first")
        return {"clusters": {k: v for k, v in _section(mapping).items() if k != name}}

    return await edit(etcd, keys, change)


async def list_clusters(etcd: Etcd, keys: Keys) -> tuple[list[Registered], int]:
    """Every registered cluster with the routes that name it, by name; and the mapping's revision."""
    mapping = await load(etcd, keys)
    return [users(mapping, name) for name in sorted(mapping.clusters)], mapping.revision
