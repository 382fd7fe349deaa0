"""The etcd key layout of one kafka-mesh namespace (README, "The mapping").

    /kafka-mesh/<namespace>/mapping             JSON: the mapping in force, as the blobs that hold it
    /kafka-mesh/<namespace>/blobs/<sha256>      zlib JSON: one part of a mapping (sidecar/control/mapstore.py)
    /kafka-mesh/<namespace>/status/<host-id>    JSON, under a lease: what one sidecar has applied
    /kafka-mesh/<namespace>/routers/<name>/<instance>   JSON, under a lease: what one router process does
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.mapping.model import check_name


@dataclass(frozen=True)
class Keys:
    namespace: str

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)

    @property
    def root(self) -> str:
        return f"/kafka-mesh/{self.namespace}/"

    @property
    def status(self) -> str:
        return self.root + "status/"

    @property
    def routers(self) -> str:
        return self.root + "routers/"

    def router(self, name: str, instance: str) -> str:
        return f"{self.routers}{name}/{instance}"

    @property
    def pointer(self) -> str:
        """The mapping in force: which blobs hold it (sidecar/control/mapstore.py)."""
        return self.root + "mapping"

    @property
    def blobs(self) -> str:
        return self.root + "blobs/"

    def blob(self, blob_id: str) -> str:
        return self.blobs + blob_id
