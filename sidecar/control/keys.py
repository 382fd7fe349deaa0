"""The etcd key layout of one kafka-mesh namespace (DESIGN.md section 2).

    /kafka-mesh/<namespace>/clusters/<name>     JSON: bootstrap, role, librdkafka config
    /kafka-mesh/<namespace>/producer/<route>    JSON: the seed's producer route value
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

    @property
    def consumer(self) -> str:
        return self.root + "consumer/"

    @property
    def status(self) -> str:
        return self.root + "status/"
