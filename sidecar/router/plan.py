"""What one router process does at one mapping revision: which clusters it reads, which it writes, and for each source
cluster the compiled programs of its rules (meshcore.build_router_table's input).

A rule's static part (renames, filters on the topic name) is resolved here, per source topic, so the core runs only
what depends on the record. Pure: the partition counts of the target topics are given (the service asks the
clusters), and no server is contacted.
"""

from __future__ import annotations

from collections.abc import Mapping as ReadOnly
from dataclasses import dataclass, field
from typing import Any

from sidecar.mapping.model import Mapping
from sidecar.mapping.router import AddHeaders, DropHeaders, Filter, Rekey, RouterRule, Sample, Step


@dataclass(frozen=True)
class SourcePlan:
    """The rules reading one source cluster: the topics to subscribe, and each topic's programs."""

    source: str
    rules: tuple[str, ...]                               # counter order of the compiled table
    programs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # source topic -> programs

    @property
    def topics(self) -> list[str]:
        return sorted(self.programs)


@dataclass(frozen=True)
class Plan:
    revision: int
    rules: tuple[RouterRule, ...]
    sinks: tuple[str, ...]                   # the producers, in the programs' index order
    sources: dict[str, SourcePlan]

    def targets(self) -> set[tuple[str, str]]:
        """(sink, topic) of every topic written, dead-letter topics aside: whose partition counts place records
        without a key."""
        return {(sink, rule_topic) for rule in self.rules for topic in rule.topics
                if (rule_topic := rule.target_topic(topic) or "") for sink in rule.sinks}


def native_steps(steps: tuple[Step, ...]) -> list[tuple[Any, ...]]:
    """The core's form of the steps that depend on the record (RouterRule.runtime_steps)."""
    out: list[tuple[Any, ...]] = []
    for step in steps:
        if isinstance(step, Filter):
            out.append(("filter", step.key_prefix, step.header, step.equals))
        elif isinstance(step, Rekey):
            out.append(("rekey", step.header))
        elif isinstance(step, DropHeaders):
            out += [("drop_header", name) for name in step.names]
        elif isinstance(step, AddHeaders):
            out += [("add_header", name, value) for name, value in step.headers]
        elif isinstance(step, Sample):
            out.append(("sample", step.one_in))
        else:       # a Rename never reaches the core: its effect is the target topic
            raise ValueError(f"not a runtime step: {step!r}")
    return out


def plan(mapping: Mapping, router: str, partitions: ReadOnly[tuple[str, str], int]) -> Plan:
    """The plan of the router named router at mapping's revision. partitions: (sink, topic) -> the topic's partition
    count on that cluster, where known."""
    rules = tuple(mapping.rules_for(router))
    sinks = tuple(sorted({s for rule in rules for s in rule.sinks}))
    index = {name: i for i, name in enumerate(sinks)}
    sources: dict[str, SourcePlan] = {}
    for source in sorted({s for rule in rules for s in rule.sources}):
        reading = [rule for rule in rules if source in rule.sources]
        counters = tuple(rule.name for rule in reading)
        programs: dict[str, list[dict[str, Any]]] = {}
        for i, rule in enumerate(reading):
            for topic in rule.topics:
                target = rule.target_topic(topic)
                programs.setdefault(topic, []).append({
                    "rule": i,
                    "topic": target or topic,
                    "dead_letter": rule.dead_letter,
                    "sinks": [(index[s], partitions.get((s, target or topic), 0)) for s in rule.sinks],
                    # A topic the rule's own topic filter refuses is still read (another rule may want it), and
                    # every record of it counts as filtered.
                    "steps": native_steps(rule.runtime_steps(topic)) if target is not None else [("reject",)],
                })
        sources[source] = SourcePlan(source, counters, programs)
    return Plan(mapping.revision, rules, sinks, sources)
