"""The cluster registry in etcd: register and list the Kafka clusters of a namespace (the mapping's clusters
section, changed like any mapping change: read, edit, compare-and-swap)."""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import ConflictError
from sidecar.manage.mapping import apply_mapping, load
from sidecar.mapping.model import Cluster

#: How often register reads and tries again when other writers keep changing the mapping under it.
ATTEMPTS = 5


async def register(etcd: Etcd, keys: Keys, clusters: Iterable[Cluster]) -> int:
    """Add (or redefine) clusters in the registry, at one revision; returns it."""
    clusters = list(clusters)
    for attempt in range(ATTEMPTS):
        current = await load(etcd, keys)
        section = {name: c.to_json() for name, c in current.clusters.items()}
        section.update({c.name: c.to_json() for c in clusters})
        try:
            applied = await apply_mapping(etcd, keys, {"clusters": section}, expect_revision=current.revision)
        except ConflictError:
            if attempt == ATTEMPTS - 1:
                raise
            continue
        return applied.revision
    raise AssertionError("unreachable")


async def list_clusters(etcd: Etcd, keys: Keys) -> tuple[list[Cluster], int]:
    mapping = await load(etcd, keys)
    return [mapping.clusters[name] for name in sorted(mapping.clusters)], mapping.revision
