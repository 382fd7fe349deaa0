"""The mapping's data model (README, "The mapping"): clusters, producer routes, consumer routes and router rules,
parsed from the one-file JSON document (which is also what etcd stores), with checks that name the key and the reason
of every refusal.

Every section keeps the seed's own format verbatim:

    clusters:  "NAME": {"bootstrap": "HOST:PORT,...", "role": "fronting" | "consumer", "config": {...}}
    producer:  "t1, t2": {"where": [{"sink": "CLUSTER"}, ...]}      and "__default__" for every other topic
    consumer:  "foo": [{"vip": "CLUSTER"}, ...]
    router:    "RULE": {"topics": [...], "from": [{"source": "CLUSTER"}, ...], "where": [{"sink": "CLUSTER"}, ...],
                        "steps": [...], "dead_letter": "TOPIC", "router": "NAME"}      (sidecar/mapping/router.py)

This module is pure: it reads no file, talks to no server and holds no state beyond immutable values, so it can be
used from any thread. Reading files and etcd is sidecar/manage/mapping.py's job; how etcd stores it,
sidecar/control/mapstore.py's.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import MappingError, UsageError
from sidecar.mapping.names import MAX_SINKS as MAX_SINKS
from sidecar.mapping.names import TOPIC as _TOPIC
from sidecar.mapping.names import check_name as check_name
from sidecar.mapping.names import check_topic as check_topic
from sidecar.mapping.names import type_name as _type
from sidecar.mapping.router import RouterRule, check_rules
from sidecar.mapping.router import check_clusters as _check_rule_clusters

ROLES = ("fronting", "consumer")
SECTIONS = ("clusters", "producer", "consumer", "router")
DEFAULT_ROUTE = "__default__"
_BOOTSTRAP = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


# librdkafka properties whose values are secrets (its own sensitive ones, and any *.password / *.secret), never to be
# printed or logged.
_SECRET_KEYS = frozenset({"ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "ssl.keystore.password",
                          "ssl.key.password", "sasl.password", "sasl.oauthbearer.client.secret"})


#: What a secret's value is replaced with where the mapping is printed (`mapping show` without --show-secrets). A
#: document holding it cannot be applied: the secret itself is needed.
REDACTED = "***"


def is_secret(key: str) -> bool:
    """Whether a librdkafka property's value is a secret."""
    return key in _SECRET_KEYS or key.endswith((".password", ".secret", "_password", "_secret"))


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
            if not _BOOTSTRAP.fullmatch(server.strip()):
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
        if key == DEFAULT_ROUTE:
            return ()
        if "," not in key and key not in (".", "..") and _TOPIC.fullmatch(key):
            return (key,)         # the common case, without a new string
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


def _parse_router(entries: dict[str, Any]) -> dict[str, RouterRule]:
    """The rules of (some of) a router section, each checked on its own, sorted by name."""
    return {name: RouterRule.parse(name, entries[name]) for name in sorted(entries)}


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc[name]
    if not isinstance(value, dict):
        raise MappingError(f"{name}: must be an object, got {_type(value)}")
    return value


#: Equal sink lists share one tuple, across routes and revisions: a mapping of 100,000 routes names a few dozen
#: distinct lists, so its memory is the route keys and their dict slots. Bounded, in case of a pathological mapping.
_SHARED: dict[tuple[str, ...], tuple[str, ...]] = {}
_SHARED_MAX = 65536


def _share(names: tuple[str, ...]) -> tuple[str, ...]:
    got = _SHARED.get(names)
    if got is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        got = _SHARED[names] = tuple(sys.intern(n) for n in names)
    return got


def _route_order(key: str) -> tuple[bool, str]:
    return key == DEFAULT_ROUTE, key        # sorted by key, __default__ last: the order show prints


# Cross-entry checks. Each looks at one entry, so that a caller can say where that entry came from.

def _check_sinks(key: str, sinks: tuple[str, ...], clusters: dict[str, Cluster]) -> None:
    for i, sink in enumerate(sinks):
        if sink not in clusters:
            raise MappingError(f"producer.{key}.where[{i}].sink: unknown cluster {sink!r}")


def _check_vips(topic: str, vips: tuple[str, ...], clusters: dict[str, Cluster]) -> None:
    for i, vip in enumerate(vips):
        if vip not in clusters:
            raise MappingError(f"consumer.{topic}[{i}].vip: unknown cluster {vip!r}")


class _Remove:
    """The value of a route a change removes. Not None: a route whose value is JSON null is invalid, and refused."""

    def __repr__(self) -> str:
        return "REMOVE"


REMOVE: Any = _Remove()


def _edit_routes(routes: dict[str, tuple[str, ...]], listed: dict[str, str], changes: Iterable[tuple[str, Any]],
                 clusters: dict[str, Cluster] | None) -> dict[str, tuple[str, ...] | None]:
    """Apply producer route changes (key, value in the seed's format or REMOVE) to routes and listed, in
    place; returns the topics whose sinks changed (None: the topic has no route of its own any more). Removals go
    first, so that one change may move a topic from a route it removes to one it adds. A topic may be in one route
    only: the error names the route that already has it. With clusters, every sink must be one of them."""
    changes = list(changes)
    changed: dict[str, tuple[str, ...] | None] = {}
    for key, value in changes:
        if value is REMOVE and key in routes:
            del routes[key]
            for topic in ProducerRoute.topics_of(key):
                if listed.get(topic) == key:
                    del listed[topic]
                changed[topic] = None
    for key, value in changes:
        if value is REMOVE:
            continue
        route = ProducerRoute.parse(key, value)
        if clusters is not None:
            _check_sinks(key, route.sinks, clusters)
        old = routes.get(key)
        if old is None:
            for topic in route.topics:
                other = listed.get(topic) or (topic if topic in routes else None)
                if other is not None:
                    raise MappingError(f"producer.{key}: topic {topic!r} is also in route {other!r}; a topic may be "
                                       "in one producer route only")
            if route.topics != (key,):
                listed.update((topic, key) for topic in route.topics)
        if old != route.sinks:
            sinks = routes[key] = _share(route.sinks)
            changed.update((topic, sinks) for topic in route.topics)
    return changed


@dataclass(frozen=True)
class Change:
    """What a mapping made by Mapping.updated changes in the one it was made from: what lets the sidecar update its
    routing table by the topics that changed instead of compiling it whole."""

    base: int                                     # the revision of the mapping it was made from
    topics: dict[str, tuple[str, ...] | None]     # producer topics whose sinks changed (None: now no own route)
    default: bool                                 # whether __default__ changed
    consumer: frozenset[str] = frozenset()        # topics whose consumer route changed


@dataclass(frozen=True)
class Mapping:
    """The whole mapping of a namespace at one revision (0 when it comes from a file).

    Producer routes are held as route key -> sinks (ProducerRoute objects are made only for printing), with equal
    sink lists shared: a mapping costs about its keys' size. The constructor checks nothing; build a Mapping with
    from_document (or updated, from one), which refuse an invalid one."""

    clusters: dict[str, Cluster] = field(default_factory=dict)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)     # producer route key (as written) -> sinks
    consumer: dict[str, tuple[str, ...]] = field(default_factory=dict)   # topic -> clusters read
    revision: int = 0
    #: topic -> its route key, for every topic whose route key is not exactly the topic ("t1, t2", " t1")
    listed: dict[str, str] = field(default_factory=dict, compare=False)
    change: Change | None = field(default=None, compare=False)
    #: rule name -> rule, sorted by name. Last, so that the fields before it keep their positions.
    router: dict[str, RouterRule] = field(default_factory=dict)

    # -- routing -------------------------------------------------------------------------------------------------

    @property
    def producer(self) -> tuple[ProducerRoute, ...]:
        """Every producer route, sorted by key with __default__ last (made anew on each call: for printing)."""
        return tuple(ProducerRoute(k, ProducerRoute.topics_of(k), self.routes[k])
                     for k in sorted(self.routes, key=_route_order))

    def producer_table(self) -> dict[str, tuple[str, ...]]:
        """topic -> sinks, one entry for every topic a route names (the default route is default_sinks)."""
        return {topic: sinks for key, sinks in self.routes.items() for topic in ProducerRoute.topics_of(key)}

    @property
    def default_sinks(self) -> tuple[str, ...] | None:
        return self.routes.get(DEFAULT_ROUTE)

    def route_of(self, topic: str) -> str | None:
        """The key of the route that names topic, or None."""
        key = self.listed.get(topic)
        if key is not None:
            return key
        return topic if topic != DEFAULT_ROUTE and topic in self.routes else None

    def sinks_for(self, topic: str) -> tuple[str, ...] | None:
        """The clusters a record of topic is written to: its own route's, else the default route's, else None."""
        key = self.route_of(topic)
        return self.routes[key] if key is not None else self.default_sinks

    def read_ahead(self, topic: str) -> tuple[str, ...]:
        """The clusters topic's consumer route reads that its producers do not write: during a topic move, the
        cluster it goes to until the producer switch, the one it leaves after it."""
        vips = self.consumer.get(topic, ())
        if len(vips) < 2:
            return ()
        sinks = self.sinks_for(topic) or ()
        return tuple(c for c in vips if c not in sinks)

    def clusters_for_consumer(self, topic: str) -> tuple[str, ...] | None:
        """The clusters a subscriber to topic reads: its consumer route's, else where its producers write."""
        return self.consumer.get(topic) or self.sinks_for(topic)

    def rules_for(self, router: str) -> list[RouterRule]:
        """The rules the router process of that name (`kafka-mesh router --name R`) runs, sorted by name."""
        return [self.router[name] for name in sorted(self.router) if self.router[name].router == router]

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
        routes, listed = base.routes, base.listed
        if "producer" in doc:
            routes, listed = {}, {}
            # document order, so that an overlap names the first key as the other one
            _edit_routes(routes, listed, _section(doc, "producer").items(), None)
        consumer = base.consumer
        if "consumer" in doc:
            consumer = {t: _share(_parse_consumer_route(t, v)) for t, v in _section(doc, "consumer").items()}
        router = base.router
        if "router" in doc:
            router = _parse_router(_section(doc, "router"))
            check_rules(router)
        mapping = cls(clusters=dict(clusters), routes=routes, consumer=consumer, revision=0, listed=listed,
                      router=router)
        if check_references:
            mapping.check_clusters_exist()
        return mapping

    @classmethod
    def from_parts(cls, clusters: Any, pieces: Iterable[tuple[str, dict[str, Any]]]) -> Mapping:
        """The mapping of a clusters section and of route sections given in pieces: (section name, some of its
        entries), each piece checked against the clusters as it comes, then let go. So the JSON values of a whole
        mapping (hundreds of bytes a route) are never all alive at once, which would leave the process's memory
        that much larger for good (freed small objects stay in the allocator's arenas, among the routes kept). A
        "router" piece is taken the same way; cycles across its rules are checked once all pieces are in."""
        base = cls.from_document({"clusters": clusters})
        routes: dict[str, tuple[str, ...]] = {}
        listed: dict[str, str] = {}
        consumer: dict[str, tuple[str, ...]] = {}
        router: dict[str, RouterRule] = {}
        names: dict[str, str] | None = None
        for section, entries in pieces:
            if section == "router":
                for rule in _parse_router(entries).values():
                    _check_rule_clusters(rule, base.clusters)
                    router[rule.name] = rule
            elif section == "producer":
                _edit_routes(routes, listed, entries.items(), base.clusters)
            elif section == "consumer":
                if names is None:
                    # A topic with both routes keeps one copy of its name (given the producer pieces first).
                    names = {key: key for key in routes}
                for topic, value in entries.items():
                    vips = _parse_consumer_route(topic, value)
                    _check_vips(topic, vips, base.clusters)
                    consumer[names.get(topic, topic)] = _share(vips)
            else:
                raise MappingError(f"{section}: not a route section")
        check_rules(router)
        return cls(clusters=base.clusters, routes=routes, consumer=consumer, listed=listed,
                   router={name: router[name] for name in sorted(router)})

    def updated(self, producer: dict[str, Any], consumer: dict[str, Any], revision: int) -> Mapping:
        """This mapping with some routes changed, at revision: producer and consumer map a route key (topic) to its
        new value in the seed's format, or to REMOVE. Costs what the changed routes cost, plus a copy of
        the sections they are in; the result's `change` says which topics' sinks changed. The router rules stay
        (a change of them is parsed whole: they are few)."""
        routes, listed, topics = self.routes, self.listed, {}
        if producer:
            routes, listed = dict(self.routes), dict(self.listed)
            topics = _edit_routes(routes, listed, producer.items(), self.clusters)
        cons = self.consumer
        if consumer:
            cons = dict(self.consumer)
            for topic, value in consumer.items():
                if value is REMOVE:
                    cons.pop(topic, None)
                    continue
                vips = _parse_consumer_route(topic, value)
                _check_vips(topic, vips, self.clusters)
                cons[topic] = _share(vips)
        default = routes.get(DEFAULT_ROUTE) != self.routes.get(DEFAULT_ROUTE)
        return Mapping(self.clusters, routes, cons, revision, listed,
                       Change(self.revision, topics, default, frozenset(consumer)), router=self.router)

    def check_clusters_exist(self, sections: Iterable[str] = ("producer", "consumer", "router")) -> None:
        """Refuse a sink or vip, in the routes of sections, or a source or sink of a router rule, that is not one of
        the mapping's clusters."""
        sections = tuple(sections)
        if "producer" in sections:
            for key in sorted(self.routes, key=_route_order):
                _check_sinks(key, self.routes[key], self.clusters)
        if "consumer" in sections:
            for topic in sorted(self.consumer):
                _check_vips(topic, self.consumer[topic], self.clusters)
        if "router" in sections:
            for name in sorted(self.router):
                _check_rule_clusters(self.router[name], self.clusters)

    def to_document(self, redact: bool = False) -> dict[str, Any]:
        """The one-file format; from_document(to_document()) gives this mapping back (revision aside). With redact,
        secret config values read REDACTED (for printing; such a document is refused by from_document). The router
        section is written only when it has rules: a mapping without any reads as it did before the section
        existed."""
        doc: dict[str, Any] = {
            "clusters": {name: c.to_json(redact) for name, c in self.clusters.items()},
            "producer": {key: {"where": [{"sink": s} for s in self.routes[key]]}
                         for key in sorted(self.routes, key=_route_order)},
            "consumer": {topic: [{"vip": v} for v in self.consumer[topic]] for topic in sorted(self.consumer)},
        }
        if self.router:
            doc["router"] = {name: self.router[name].to_json() for name in sorted(self.router)}
        return doc

    def counts(self) -> dict[str, int]:
        return {"clusters": len(self.clusters), "producer_routes": len(self.routes),
                "consumer_routes": len(self.consumer), "router_rules": len(self.router)}
