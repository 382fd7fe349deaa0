"""The mapping's data model (README, "The mapping"): clusters, producer routes and consumer routes, parsed from the
one-file JSON document or from the etcd keys of a namespace, with checks that name the key and the reason of every
refusal.

Every section keeps the seed's own format verbatim:

    clusters:  "NAME": {"bootstrap": "HOST:PORT,...", "role": "fronting" | "consumer", "config": {...}}
    producer:  "t1, t2": {"where": [{"sink": "CLUSTER"}, ...]}      and "__default__" for every other topic
    consumer:  "foo": [{"vip": "CLUSTER"}, ...]

This module is pure: it reads no file, talks to no server and holds no state beyond immutable values, so it can be
used from any thread. Reading files and etcd is sidecar/manage/mapping.py's job.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sidecar.control.keys import Keys, check_name
from sidecar.errors import MappingError, UsageError

ROLES = ("fronting", "consumer")
SECTIONS = ("clusters", "producer", "consumer")
DEFAULT_ROUTE = "__default__"
#: The most clusters one producer route may write every record to (the data plane's fixed bound).
MAX_SINKS = 16
_BOOTSTRAP = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
# Kafka's own rule for topic names (kafka.common.internals.Topic): legal characters, at most 249 of them.
_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_TOPIC_RULE = "use 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'"


# librdkafka properties whose values are secrets (its own sensitive ones, and any *.password / *.secret), never to be
# printed or logged.
_SECRET_KEYS = frozenset({"ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "ssl.keystore.password",
                          "ssl.key.password", "sasl.password", "sasl.oauthbearer.client.secret"})


#: What a secret's value is replaced with where the mapping is printed (`mapping show` without --show-secrets). A
#: document holding it cannot be applied: the secret itself is needed.
REDACTED = "<redacted>"


def is_secret(key: str) -> bool:
    """Whether a librdkafka property's value is a secret."""
    return key in _SECRET_KEYS or key.endswith((".password", ".secret", "_password", "_secret"))


def _type(data: Any) -> str:
    return "null" if data is None else type(data).__name__


def check_topic(where: str, topic: str) -> str:
    """topic, or MappingError naming where it was found when Kafka would refuse it as a topic name."""
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise MappingError(f"{where}: invalid topic name {topic!r}: {_TOPIC_RULE}")
    return topic


@dataclass(frozen=True)
class Cluster:
    """A Kafka cluster in the registry: where it is, what it does, and librdkafka overrides for it."""

    name: str
    bootstrap: str
    role: str = "fronting"
    config: dict[str, str] = field(default_factory=dict)

    def to_json(self, redact: bool = False) -> dict[str, Any]:
        config = {k: REDACTED if redact and is_secret(k) else v for k, v in self.config.items()}
        return {"bootstrap": self.bootstrap, "role": self.role, "config": config}

    def secrets(self) -> list[str]:
        """The values of the secret properties of the cluster's config."""
        return [v for k, v in self.config.items() if is_secret(k) and v]

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
        redacted = sorted(k for k, v in config.items() if v == REDACTED)
        if redacted:
            raise MappingError(f"{key}.config: {', '.join(redacted)} hold(s) {REDACTED!r}, the placeholder of a "
                               f"redacted printout; give the values themselves (`kafka-mesh mapping show "
                               f"--show-secrets` prints them)")
        return cls(name=name, bootstrap=bootstrap, role=role, config=dict(config))

    @classmethod
    def decode(cls, name: str, raw: bytes) -> Cluster:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MappingError(f"clusters.{name}: not valid JSON ({e})") from e
        return cls.parse(name, data)


@dataclass(frozen=True)
class ProducerRoute:
    """One producer route: the topics its key names (none for __default__) and the clusters every record of them is
    written to (an ack needs all of them)."""

    key: str                      # exactly as written: "t1, t2", "t1,t2" or "__default__"
    topics: tuple[str, ...]       # the topics the key names, in order; () for __default__
    sinks: tuple[str, ...]        # cluster names, in order, no duplicates

    @property
    def is_default(self) -> bool:
        return self.key == DEFAULT_ROUTE

    def to_json(self) -> dict[str, Any]:
        return {"where": [{"sink": s} for s in self.sinks]}

    @staticmethod
    def topics_of(key: str) -> tuple[str, ...]:
        """The topics a route key names: one topic or a comma-separated list (spaces around names ignored);
        () for __default__."""
        where = f"producer.{key}"
        names = [part.strip() for part in key.split(",")]
        if DEFAULT_ROUTE in names:
            if len(names) > 1:
                raise MappingError(f"{where}: '{DEFAULT_ROUTE}' must be a key of its own, not part of a list")
            if key != DEFAULT_ROUTE:
                raise MappingError(f"{where}: write the default route's key as exactly '{DEFAULT_ROUTE}'")
            return ()
        seen: set[str] = set()
        for name in names:
            check_topic(where, name)
            if name in seen:
                raise MappingError(f"{where}: topic {name!r} is named twice")
            seen.add(name)
        return tuple(names)

    @classmethod
    def parse(cls, key: str, data: Any) -> ProducerRoute:
        """A route from its key and its value in the seed's format, {"where": [{"sink": CLUSTER}, ...]}. Whether
        the sinks exist is Mapping's check, not this one."""
        where = f"producer.{key}"
        topics = cls.topics_of(key)
        if not isinstance(data, dict):
            raise MappingError(f"{where}: must be an object with 'where', got {_type(data)}")
        unknown = set(data) - {"where", "spread"}
        if unknown:
            raise MappingError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if "spread" in data:
            raise MappingError(f"{where}.spread: not supported yet")
        targets = data.get("where")
        if not isinstance(targets, list):
            raise MappingError(f"{where}.where: required, a list of {{\"sink\": CLUSTER}}, got {_type(targets)}")
        if not targets:
            raise MappingError(f"{where}.where: needs at least one {{\"sink\": CLUSTER}}")
        if len(targets) > MAX_SINKS:
            raise MappingError(f"{where}.where: at most {MAX_SINKS} sinks, got {len(targets)}")
        sinks: list[str] = []
        for i, target in enumerate(targets):
            at = f"{where}.where[{i}]"
            if not isinstance(target, dict):
                raise MappingError(f"{at}: must be an object {{\"sink\": CLUSTER}}, got {_type(target)}")
            unknown = set(target) - {"sink"}
            if unknown:
                raise MappingError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
            sink = target.get("sink")
            if not isinstance(sink, str) or not sink:
                raise MappingError(f"{at}.sink: required, a cluster name")
            if sink in sinks:
                raise MappingError(f"{at}.sink: cluster {sink!r} is listed twice")
            sinks.append(sink)
        return cls(key=key, topics=topics, sinks=tuple(sinks))


def _parse_consumer_route(topic: str, data: Any) -> tuple[str, ...]:
    """The clusters of a consumer route in the seed's format, [{"vip": CLUSTER}, ...]."""
    where = f"consumer.{topic}"
    if topic == DEFAULT_ROUTE:
        raise MappingError(f"{where}: a consumer route names one topic; '{DEFAULT_ROUTE}' is for producer routes "
                           "(a topic without a consumer route is read from its producer sinks)")
    check_topic(where, topic)
    if not isinstance(data, list):
        raise MappingError(f"{where}: must be a list of {{\"vip\": CLUSTER}}, got {_type(data)}")
    if not data:
        raise MappingError(f"{where}: needs at least one {{\"vip\": CLUSTER}}")
    vips: list[str] = []
    for i, entry in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise MappingError(f"{at}: must be an object {{\"vip\": CLUSTER}}, got {_type(entry)}")
        unknown = set(entry) - {"vip"}
        if unknown:
            raise MappingError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        vip = entry.get("vip")
        if not isinstance(vip, str) or not vip:
            raise MappingError(f"{at}.vip: required, a cluster name")
        if vip in vips:
            raise MappingError(f"{at}.vip: cluster {vip!r} is listed twice")
        vips.append(vip)
    return tuple(vips)


def _parse_cluster(name: str, data: Any) -> Cluster:
    try:
        check_name("cluster", name)
    except UsageError as e:
        raise MappingError(f"clusters.{name}: {e}") from None
    return Cluster.parse(name, data)


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc[name]
    if not isinstance(value, dict):
        raise MappingError(f"{name}: must be an object, got {_type(value)}")
    return value


def _route_order(route: ProducerRoute) -> tuple[bool, str]:
    return route.is_default, route.key        # sorted by key, __default__ last: the order show prints


# Cross-entry checks. Each looks at one entry, so that a caller can say where that entry came from (an etcd key).

def _check_sinks(route: ProducerRoute, clusters: dict[str, Cluster]) -> None:
    for i, sink in enumerate(route.sinks):
        if sink not in clusters:
            raise MappingError(f"producer.{route.key}.where[{i}].sink: unknown cluster {sink!r}")


def _check_vips(topic: str, vips: tuple[str, ...], clusters: dict[str, Cluster]) -> None:
    for i, vip in enumerate(vips):
        if vip not in clusters:
            raise MappingError(f"consumer.{topic}[{i}].vip: unknown cluster {vip!r}")


def _check_overlap(route: ProducerRoute, owner: dict[str, str]) -> None:
    """Refuse a topic that an earlier route already names; records the topics route names in owner. (There is
    never a second __default__: its key is exactly "__default__", and keys are unique in JSON and in etcd.)"""
    for topic in route.topics:
        other = owner.get(topic)
        if other is not None:
            raise MappingError(f"producer.{route.key}: topic {topic!r} is also in route {other!r}; a topic may be "
                               "in one producer route only")
        owner[topic] = route.key


@dataclass(frozen=True)
class Mapping:
    """The whole mapping of a namespace at one etcd revision (0 when it comes from a file).

    The constructor checks nothing; build a Mapping with from_document or from_etcd, which refuse an invalid one."""

    clusters: dict[str, Cluster] = field(default_factory=dict)
    producer: tuple[ProducerRoute, ...] = ()
    consumer: dict[str, tuple[str, ...]] = field(default_factory=dict)
    revision: int = 0

    # -- routing -------------------------------------------------------------------------------------------------

    def producer_table(self) -> dict[str, tuple[str, ...]]:
        """topic -> sinks, one entry for every topic a route names (the default route is default_sinks)."""
        return {topic: route.sinks for route in self.producer for topic in route.topics}

    @property
    def default_sinks(self) -> tuple[str, ...] | None:
        for route in self.producer:
            if route.is_default:
                return route.sinks
        return None

    def sinks_for(self, topic: str) -> tuple[str, ...] | None:
        """The clusters a record of topic is written to: its own route's, else the default route's, else None."""
        for route in self.producer:
            if topic in route.topics:
                return route.sinks
        return self.default_sinks

    def clusters_for_consumer(self, topic: str) -> tuple[str, ...] | None:
        """The clusters a subscriber to topic reads: its consumer route's, else where its producers write."""
        return self.consumer.get(topic) or self.sinks_for(topic)

    # -- the one-file format ---------------------------------------------------------------------------------------

    @classmethod
    def from_document(cls, doc: Any, base: Mapping | None = None, *,
                      check_references: bool = True) -> Mapping:
        """The mapping a document describes. A section the document leaves out is base's (empty without a base).
        With check_references=False only each section's own form is checked, not that the clusters its routes name
        exist (for a partial document whose other sections are still to be read)."""
        if not isinstance(doc, dict):
            raise MappingError(f"mapping: must be an object with {', '.join(SECTIONS)}, got {_type(doc)}")
        unknown = [k for k in doc if k not in SECTIONS]
        if unknown:
            raise MappingError(f"{', '.join(unknown)}: unknown section(s); a mapping has only "
                               f"{', '.join(SECTIONS)}")
        base = base or cls()
        clusters = base.clusters
        if "clusters" in doc:
            clusters = {name: _parse_cluster(name, v) for name, v in sorted(_section(doc, "clusters").items())}
        producer = base.producer
        if "producer" in doc:
            routes = [ProducerRoute.parse(k, v) for k, v in _section(doc, "producer").items()]
            owner: dict[str, str] = {}
            for route in routes:         # document order, so that the error names the first key as the other one
                _check_overlap(route, owner)
            producer = tuple(sorted(routes, key=_route_order))
        consumer = base.consumer
        if "consumer" in doc:
            consumer = {t: _parse_consumer_route(t, v) for t, v in sorted(_section(doc, "consumer").items())}
        mapping = cls(clusters=dict(clusters), producer=producer, consumer=dict(consumer), revision=0)
        if check_references:
            mapping.check_clusters_exist()
        return mapping

    def check_clusters_exist(self, sections: Iterable[str] = ("producer", "consumer")) -> None:
        """Refuse a sink or vip, in the routes of sections, that is not one of the mapping's clusters."""
        if "producer" in sections:
            for route in self.producer:
                _check_sinks(route, self.clusters)
        if "consumer" in sections:
            for topic, vips in self.consumer.items():
                _check_vips(topic, vips, self.clusters)

    def to_document(self, redact: bool = False) -> dict[str, Any]:
        """The one-file format; from_document(to_document()) gives this mapping back (revision aside). With redact,
        secret config values read REDACTED (for printing; such a document is refused by from_document)."""
        return {
            "clusters": {name: c.to_json(redact) for name, c in self.clusters.items()},
            "producer": {route.key: route.to_json() for route in self.producer},
            "consumer": {topic: [{"vip": v} for v in vips] for topic, vips in self.consumer.items()},
        }

    # -- the etcd layout (sidecar/control/keys.py) -------------------------------------------------------------------

    @classmethod
    def from_etcd(cls, items: dict[str, bytes], keys: Keys, revision: int, *,
                  check_references: bool = True) -> Mapping:
        """The mapping held by the etcd keys under keys.root (as read at revision). Keys outside the three sections
        (status/, ...) are ignored; an invalid value is refused with a MappingError that names its etcd key."""
        clusters: dict[str, Cluster] = {}
        routes: list[ProducerRoute] = []
        consumer: dict[str, tuple[str, ...]] = {}
        where: dict[tuple[str, str], str] = {}          # (section, entry) -> etcd key, to name it in errors

        for key in sorted(items):
            section, _, name = key[len(keys.root):].partition("/") if key.startswith(keys.root) else ("", "", "")
            if section not in SECTIONS:
                continue
            with _naming(key):
                try:
                    data = json.loads(items[key])
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise MappingError(f"{section}.{name}: not valid JSON ({e})") from e
                if section == "clusters":
                    clusters[name] = _parse_cluster(name, data)
                elif section == "producer":
                    routes.append(ProducerRoute.parse(name, data))
                else:
                    consumer[name] = _parse_consumer_route(name, data)
            where[section, name] = key

        owner: dict[str, str] = {}
        for route in routes:
            with _naming(where["producer", route.key]):
                _check_overlap(route, owner)
                if check_references:
                    _check_sinks(route, clusters)
        if check_references:
            for topic, vips in consumer.items():
                with _naming(where["consumer", topic]):
                    _check_vips(topic, vips, clusters)
        return cls(clusters=clusters, producer=tuple(sorted(routes, key=_route_order)), consumer=consumer,
                   revision=revision)

    def etcd_items(self, keys: Keys, sections: Iterable[str] = SECTIONS) -> dict[str, bytes]:
        """The etcd keys and values of the given sections: each value is that entry in the seed's format."""
        sections = set(sections)
        items: dict[str, bytes] = {}
        if "clusters" in sections:
            items.update({keys.cluster(name): c.encode() for name, c in self.clusters.items()})
        if "producer" in sections:
            items.update({keys.producer_route(r.key): _encode(r.to_json()) for r in self.producer})
        if "consumer" in sections:
            items.update({keys.consumer_route(t): _encode([{"vip": v} for v in vips])
                          for t, vips in self.consumer.items()})
        return items

    def counts(self) -> dict[str, int]:
        return {"clusters": len(self.clusters), "producer_routes": len(self.producer),
                "consumer_routes": len(self.consumer)}


def _encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


@contextlib.contextmanager
def _naming(etcd_key: str) -> Iterator[None]:
    """Prefix the message of a MappingError raised in the block with the etcd key whose value it is about."""
    try:
        yield
    except MappingError as e:
        raise MappingError(f"etcd key {etcd_key}: {e}") from e
