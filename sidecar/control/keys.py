"""The etcd key layout of one kafka-mesh namespace (README, "The mapping").

    /kafka-mesh/<namespace>/clusters/<name>     JSON: bootstrap, role, librdkafka config
    /kafka-mesh/<namespace>/producer/<route>    JSON: the seed's producer route value; <route> is the route key as
                                                written: "t1", "t1, t2" or "__default__"
    /kafka-mesh/<namespace>/consumer/<topic>    JSON: the seed's consumer route value
    /kafka-mesh/<namespace>/status/<host-id>    JSON, under a lease: what one sidecar has applied
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"invalid {kind} name {name!r}: use 1-128 characters of [A-Za-z0-9._-], "
                         "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Keys:
    namespace: str

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)

    @property
    def root(self) -> str:
        return f"/kafka-mesh/{self.namespace}/"

    @property
    def clusters(self) -> str:
        return self.root + "clusters/"

    def cluster(self, name: str) -> str:
        return self.clusters + check_name("cluster", name)

    @property
    def producer(self) -> str:
        return self.root + "producer/"

    def producer_route(self, route_key: str) -> str:
        """The key of one producer route: its route key exactly as written ("t1, t2", "__default__")."""
        return self.producer + route_key

    @property
    def consumer(self) -> str:
        return self.root + "consumer/"

    def consumer_route(self, topic: str) -> str:
        return self.consumer + topic

    @property
    def status(self) -> str:
        return self.root + "status/"

    @property
    def pointer(self) -> str:
        """The mapping in force: which blobs hold it (sidecar/control/mapstore.py)."""
        return self.root + "mapping"

    @property
    def blobs(self) -> str:
        return self.root + "blobs/"

    def blob(self, blob_id: str) -> str:
        return self.blobs + blob_id
