"""The cluster registry in etcd: register and list the Kafka clusters of a namespace."""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.mapping.model import Cluster


async def register(etcd: Etcd, keys: Keys, clusters: Iterable[Cluster]) -> int:
    """Put every cluster in one transaction; returns the etcd revision that holds them all."""
    return await etcd.put_all({keys.cluster(c.name): c.encode() for c in clusters})


async def list_clusters(etcd: Etcd, keys: Keys) -> tuple[list[Cluster], int]:
    items, revision = await etcd.get_prefix(keys.clusters)
    clusters = [Cluster.decode(k[len(keys.clusters):], v) for k, v in sorted(items.items())]
    return clusters, revision
