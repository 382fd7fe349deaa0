"""The mapping's data model: clusters (and, with the produce issue, routes), parsed from JSON with checks that
name the key and the reason of every refusal."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import MappingError

ROLES = ("fronting", "consumer")
_BOOTSTRAP = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


@dataclass(frozen=True)
class Cluster:
    """A Kafka cluster in the registry: where it is, what it does, and librdkafka overrides for it."""

    name: str
    bootstrap: str
    role: str = "fronting"
    config: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"bootstrap": self.bootstrap, "role": self.role, "config": dict(self.config)}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def parse(cls, name: str, data: Any, where: str = "clusters") -> Cluster:
        key = f"{where}.{name}"
        if not isinstance(data, dict):
            raise MappingError(f"{key}: must be an object with 'bootstrap', got {type(data).__name__}")
        unknown = set(data) - {"bootstrap", "role", "config"}
        if unknown:
            raise MappingError(f"{key}: unknown field(s) {', '.join(sorted(unknown))}")
        bootstrap = data.get("bootstrap")
        if not isinstance(bootstrap, str) or not bootstrap:
            raise MappingError(f"{key}.bootstrap: required, a comma-separated list of HOST:PORT")
        for server in bootstrap.split(","):
            if not _BOOTSTRAP.match(server.strip()):
                raise MappingError(f"{key}.bootstrap: {server.strip()!r} is not HOST:PORT")
        role = data.get("role", "fronting")
        if role not in ROLES:
            raise MappingError(f"{key}.role: must be one of {', '.join(ROLES)}, got {role!r}")
        config = data.get("config", {})
        if not isinstance(config, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in config.items()):
            raise MappingError(f"{key}.config: must map librdkafka property names to string values")
        return cls(name=name, bootstrap=bootstrap, role=role, config=dict(config))

    @classmethod
    def decode(cls, name: str, raw: bytes) -> Cluster:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MappingError(f"clusters.{name}: not valid JSON ({e})") from e
        return cls.parse(name, data)
