"""What each cluster's brokers accept per topic, learnt from the topics' configs, so that the data plane fails alone a
record the broker would refuse: a broker refuses the whole batch librdkafka built for a partition, so one app's
keyless record on a compacted topic (or a timestamp outside the topic's bounds, or a record over its
max.message.bytes) would otherwise fail the other apps' records of that partition.

The keeper gives each cluster's producer a meshcore.TopicRules snapshot. The data plane notes the topics a record
went to that the snapshot does not name (checking them meanwhile by the brokers' defaults); the keeper takes those
misses every POLL_S, describes the topics' configs with an admin client (its futures awaited on the loop), and
swaps in the next snapshot. So a topic is checked by its own config from about half a second after its first
record, and every REFRESH_S the known topics are described again (a config changed by an operator). A cluster that
cannot be described (down, or DescribeConfigs not authorized) is retried after RETRY_S; its records are checked by
what was known, or not at all, and the broker's own verdict stands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import meshcore
from sidecar.clientconf import client_defaults
from sidecar.mapping.model import Cluster

log = logging.getLogger("kafka_mesh.topic_rules")

POLL_S = 0.5
REFRESH_S = 300.0
RETRY_S = 30.0
#: A topic found not to exist is described again (when records still go to it) after this long: it may have been
#: created meanwhile, with its own config. Until then the brokers' defaults check it.
ABSENT_RECHECK_S = 10.0
#: Topics described per DescribeConfigs request.
CHUNK = 200
#: The most topics of a cluster's producer routes described as soon as the mapping names them (the rest: at their
#: first record).
PREFETCH_MAX = 10_000
#: The most topics a cluster's snapshot names; misses beyond it are checked by the brokers' defaults.
MAX_TOPICS = 100_000
DESCRIBE_TIMEOUT_S = 10.0
#: librdkafka's defaults for the largest batch a producer builds (batch.size, message.max.bytes).
PRODUCER_BATCH_BYTES = 1_000_000
#: Kafka's "no bound" for a timestamp difference (Long.MAX_VALUE).
NO_BOUND = 2**63 - 1


class Rule(NamedTuple):
    """In meshcore.build_topic_rules' order; None is no bound."""

    requires_key: bool
    create_time: bool
    before_max_ms: int | None
    after_max_ms: int | None
    max_bytes: int | None


def _bound(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    n = int(value)
    return None if n >= NO_BOUND or n < 0 else n


def rule_from_config(config: Mapping[str, str | None], broker: bool = False) -> Rule:
    """The rule of a topic from its DescribeConfigs entries, or (broker=True) the rule of a topic the brokers would
    create with their defaults. message.timestamp.difference.max.ms (removed in Kafka 4) bounds both sides where
    the before/after settings are absent."""
    prefix = "log." if broker else ""
    policy = config.get(f"{prefix}cleanup.policy") or "delete"
    ts_type = config.get(f"{prefix}message.timestamp.type") or "CreateTime"
    difference = _bound(config.get(f"{prefix}message.timestamp.difference.max.ms"))
    before_key, after_key = f"{prefix}message.timestamp.before.max.ms", f"{prefix}message.timestamp.after.max.ms"
    before = _bound(config[before_key]) if config.get(before_key) is not None else difference
    after = _bound(config[after_key]) if config.get(after_key) is not None else difference
    return Rule(
        requires_key="compact" in [p.strip() for p in policy.split(",")],
        create_time=ts_type == "CreateTime",
        before_max_ms=before,
        after_max_ms=after,
        max_bytes=_bound(config.get("message.max.bytes" if broker else "max.message.bytes")),
    )


class _QuietLog:
    """librdkafka's log lines of the admin clients, at DEBUG: connection trouble is the producers' to report."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        log.debug(fmt, *args)


@dataclass
class Described:
    fallback: Rule | None
    topics: dict[str, Rule]
    absent: set[str]


async def describe(admin: Any, topics: Iterable[str], with_fallback: bool) -> Described:
    """Describe topics' configs (and, with_fallback, a broker's defaults) on one cluster. The admin client's calls
    return futures that librdkafka's thread resolves: nothing here blocks the loop, nor a thread that the process
    would wait for at exit. Raises confluent_kafka.KafkaException when the cluster cannot say (a topic that does not
    exist is `absent`)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import ConfigResource, ResourceType

    out = Described(None, {}, set())
    if with_fallback:
        cluster = await asyncio.wrap_future(admin.describe_cluster(request_timeout=DESCRIBE_TIMEOUT_S))
        if cluster.nodes:
            resource = ConfigResource(ResourceType.BROKER, str(min(n.id for n in cluster.nodes)))
            futures = admin.describe_configs([resource], request_timeout=DESCRIBE_TIMEOUT_S)
            entries = await asyncio.wrap_future(futures[resource])
            out.fallback = rule_from_config({k: e.value for k, e in entries.items()}, broker=True)
    names = sorted(set(topics))
    for start in range(0, len(names), CHUNK):
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in names[start:start + CHUNK]]
        for resource, future in admin.describe_configs(resources, request_timeout=DESCRIBE_TIMEOUT_S).items():
            try:
                entries = await asyncio.wrap_future(future)
            except KafkaException as e:
                if e.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    out.absent.add(resource.name)
                    continue
                raise
            out.topics[resource.name] = rule_from_config({k: e.value for k, e in entries.items()})
    admin.poll(0)       # serve the admin client's log lines
    return out


@dataclass
class _ClusterRules:
    cluster: Cluster
    admin: Any
    batch_bytes: int
    producer: meshcore.Producer | None = None      # the cluster's producer in force
    fallback: Rule | None = None
    known: dict[str, Rule] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)
    absent: dict[str, float] = field(default_factory=dict)      # topic -> when it was found not to exist
    snapshot: meshcore.TopicRules = field(default_factory=lambda: meshcore.build_topic_rules(None, {}))
    refreshed_at: float = 0.0
    retry_at: float = 0.0
    warned: set[str] = field(default_factory=set)

    def publish(self) -> None:
        self.snapshot = meshcore.build_topic_rules(self.fallback, dict(self.known))
        if self.producer is not None:
            self.producer.topic_rules = self.snapshot


def _admin_for(cluster: Cluster) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({**client_defaults(), **cluster.config, "bootstrap.servers": cluster.bootstrap,
                        "allow.auto.create.topics": "false"}, logger=_QuietLog())


class TopicRulesKeeper:
    """Keeps every cluster's producers supplied with the cluster's topic rules. Runs on the event loop."""

    def __init__(self, admin_for: Any = _admin_for) -> None:
        self._admin_for = admin_for
        self._clusters: dict[str, _ClusterRules] = {}

    def follow(self, producers: Mapping[str, tuple[Cluster, meshcore.Producer]],
               routed: Mapping[str, Iterable[str]] | None = None) -> None:
        """The clusters and producers of the mapping just applied: a producer gets its cluster's snapshot at once.
        routed: the topics the mapping routes to each cluster, described in the background from now on."""
        for name in set(self._clusters) - set(producers):
            del self._clusters[name]
        for name, (cluster, producer) in producers.items():
            state = self._clusters.get(name)
            if state is None or state.cluster != cluster:
                batch = min(int(cluster.config.get("batch.size", PRODUCER_BATCH_BYTES)),
                            int(cluster.config.get("message.max.bytes", PRODUCER_BATCH_BYTES)))
                state = _ClusterRules(cluster, self._admin_for(cluster), batch)
                self._clusters[name] = state
            state.producer = producer
            producer.topic_rules = state.snapshot
            for topic in (routed or {}).get(name, ()):
                if len(state.wanted) >= PREFETCH_MAX:
                    break
                if topic not in state.known:
                    state.wanted.add(topic)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for name, state in list(self._clusters.items()):
                try:
                    await self._round(name, state)
                except Exception:       # one cluster's trouble must not stop the others' rules
                    log.exception("topic rules round failed cluster=%s", name)

    async def _round(self, name: str, state: _ClusterRules) -> None:
        now = time.monotonic()
        for topic in state.snapshot.take_misses():
            if (topic not in state.known and now - state.absent.get(topic, -ABSENT_RECHECK_S) >= ABSENT_RECHECK_S
                    and len(state.known) + len(state.wanted) < MAX_TOPICS):
                state.wanted.add(topic)
        if len(state.absent) > MAX_TOPICS:
            state.absent.clear()
        full = now - state.refreshed_at >= REFRESH_S
        if now < state.retry_at or not (state.wanted or full or state.fallback is None):
            return
        topics = set(state.wanted) | (set(state.known) if full else set())
        try:
            got = await describe(state.admin, topics, full or state.fallback is None)
        except Exception as e:
            state.retry_at = now + RETRY_S
            log.info("topic configs not described cluster=%s topics=%d error=%s (retry in %gs)", name, len(topics),
                     e, RETRY_S)
            return
        if self._clusters.get(name) is not state:
            return      # the cluster left the mapping (or changed) meanwhile
        if got.fallback is not None:
            state.fallback = got.fallback
        if full:
            state.refreshed_at = now
        # A topic that does not exist (yet) is checked by the brokers' defaults, which it would be created with.
        for topic in got.absent:
            state.known.pop(topic, None)
            state.absent[topic] = now
        for topic in got.topics:
            state.absent.pop(topic, None)
        state.known.update(got.topics)
        state.wanted -= topics
        state.publish()
        for topic, rule in got.topics.items():
            if rule.max_bytes is not None and rule.max_bytes < state.batch_bytes and topic not in state.warned:
                state.warned.add(topic)
                log.warning("topic max.message.bytes below the producer's batch size cluster=%s topic=%s "
                            "max.message.bytes=%d batch.size=%d: a batch of several records may be refused whole; "
                            "set batch.size in the cluster's config to at most the topic's limit", name, topic,
                            rule.max_bytes, state.batch_bytes)
        log.debug("topic rules cluster=%s topics=%d described=%d absent=%d", name, len(state.known), len(got.topics),
                  len(got.absent))
