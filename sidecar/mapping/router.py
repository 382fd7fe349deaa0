"""The mapping's router section (README, "The mapping"): rules by which a router process (`kafka-mesh router --name
R`) copies topics from source clusters to sink clusters, through simple steps.

    router:  "RULE": {"topics": [TOPIC, ...], "from": [{"source": CLUSTER}, ...], "where": [{"sink": CLUSTER}, ...],
                      "steps": [STEP, ...], "dead_letter": TOPIC, "router": NAME}

What a rule does to a topic's name is known before any record is read: renames, and filters on the topic name, depend
on the topic alone. target_topic and runtime_steps split a rule into that static part, which is checked here (valid
names, nothing copied onto itself, no cycle across rules), and the part the router runs record by record.

Pure, like sidecar/mapping/model.py, which holds the section in a Mapping; whether the clusters a rule names exist is
checked there, against the mapping's clusters.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.errors import MappingError, UsageError
from sidecar.mapping.names import MAX_SINKS, check_name, check_topic
from sidecar.mapping.names import type_name as _type

DEFAULT_ROUTER = "main"
#: The step names, in the order refusals list them.
STEP_NAMES = ("filter", "rename", "rekey", "drop_headers", "add_headers", "sample")
#: The largest `sample.one_in`: what a signed 32-bit counter holds.
MAX_ONE_IN = 2**31 - 1
_MAX_TOPIC = 249
# A prefix is put before a valid topic name, so it may hold only characters a topic name may.
_PREFIX = re.compile(r"^[a-zA-Z0-9._-]+$")


@dataclass(frozen=True)
class Filter:
    """Keeps only the records that match every field given: the topic name as it is at this step (after earlier
    renames), the key's prefix, a header's presence, and that header's value."""

    topic: str | None = None
    key_prefix: bytes | None = None
    header: str | None = None
    equals: bytes | None = None


@dataclass(frozen=True)
class Rename:
    """Sets the topic the record is written to: `to` that name, or `prefix` put before the name it has so far."""

    to: str | None = None
    prefix: str | None = None


@dataclass(frozen=True)
class Rekey:
    """The record's key becomes the value of this header."""

    header: str


@dataclass(frozen=True)
class DropHeaders:
    """Removes these headers from the record."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class AddHeaders:
    """Adds these headers (name, value) to the record, in order."""

    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Sample:
    """Keeps one record in one_in."""

    one_in: int


Step = Filter | Rename | Rekey | DropHeaders | AddHeaders | Sample


def default_dead_letter(rule: str) -> str:
    """The dead-letter topic of a rule that names none (a valid topic name: rule names use topic characters)."""
    return f"{rule}.dead-letter"


def _renamed(step: Rename, name: str) -> str:
    return step.to if step.to is not None else f"{step.prefix or ''}{name}"


def _trace(steps: tuple[Step, ...], topic: str) -> tuple[str | None, list[tuple[int, Step, str]]]:
    """What steps do to topic's name: each step reached, with its index and the name it sees; and the name after the
    last step, or None when a filter on the topic name stops it (then no record of topic gets through)."""
    name = topic
    reached: list[tuple[int, Step, str]] = []
    for i, step in enumerate(steps):
        reached.append((i, step, name))
        if isinstance(step, Filter) and step.topic is not None and step.topic != name:
            return None, reached
        if isinstance(step, Rename):
            name = _renamed(step, name)
    return name, reached


def step_to_json(step: Step) -> dict[str, Any]:
    """A step in the document's format, {NAME: value}."""
    if isinstance(step, Filter):
        fields: dict[str, Any] = {}
        if step.topic is not None:
            fields["topic"] = step.topic
        if step.key_prefix is not None:
            fields["key_prefix"] = step.key_prefix.decode()
        if step.header is not None:
            fields["header"] = step.header
        if step.equals is not None:
            fields["equals"] = step.equals.decode()
        return {"filter": fields}
    if isinstance(step, Rename):
        return {"rename": {"to": step.to} if step.to is not None else {"prefix": step.prefix}}
    if isinstance(step, Rekey):
        return {"rekey": {"header": step.header}}
    if isinstance(step, DropHeaders):
        return {"drop_headers": list(step.names)}
    if isinstance(step, AddHeaders):
        return {"add_headers": {name: value.decode() for name, value in step.headers}}
    return {"sample": {"one_in": step.one_in}}


@dataclass(frozen=True)
class RouterRule:
    """One rule of the router section: every record of its topics read from every source cluster is written, through
    its steps, to every sink cluster. Build it with parse, which refuses an invalid one."""

    name: str
    topics: tuple[str, ...]
    sources: tuple[str, ...]
    sinks: tuple[str, ...]
    steps: tuple[Step, ...] = ()
    dead_letter: str = ""        # filled with the default by parse
    router: str = DEFAULT_ROUTER

    def target_topic(self, topic: str) -> str | None:
        """The name a record of topic is written under, after the rule's renames; None when a filter on the topic
        name rejects topic (whatever the record: no record of it is copied)."""
        return _trace(self.steps, topic)[0]

    def runtime_steps(self, topic: str) -> tuple[Step, ...]:
        """The steps that depend on the record, for a record read from topic: the renames and the topic-only filters
        it passes are gone (target_topic says where it goes), and a filter on the topic and on more keeps the rest
        (its topic None). () when target_topic(topic) is None: no record of topic gets to any step."""
        target, reached = _trace(self.steps, topic)
        if target is None:
            return ()
        out: list[Step] = []
        for _, step, _ in reached:
            if isinstance(step, Rename):
                continue
            if isinstance(step, Filter) and step.topic is not None:
                if step.key_prefix is None and step.header is None:    # equals needs header: nothing else to test
                    continue
                step = dataclasses.replace(step, topic=None)
            out.append(step)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {"topics": list(self.topics), "from": [{"source": s} for s in self.sources],
                "where": [{"sink": s} for s in self.sinks], "steps": [step_to_json(s) for s in self.steps],
                "dead_letter": self.dead_letter or default_dead_letter(self.name), "router": self.router}

    @classmethod
    def parse(cls, name: str, data: Any) -> RouterRule:
        """A rule from its name and its value in the document's format, checked on its own (whether its clusters
        exist, and cycles across rules, are check_clusters' and check_rules')."""
        key = f"router.{name}"
        try:
            check_name("router rule", name)
        except UsageError as e:
            raise MappingError(f"{key}: {e}") from None
        fields = _object(key, data, ("topics", "from", "where", "steps", "dead_letter", "router"),
                         "with 'topics', 'from' and 'where'")
        topics = _topics(f"{key}.topics", fields.get("topics"))
        sources = _clusters(f"{key}.from", fields.get("from"), "source", None)
        sinks = _clusters(f"{key}.where", fields.get("where"), "sink", MAX_SINKS)
        steps = fields.get("steps", [])
        if not isinstance(steps, list):
            raise MappingError(f"{key}.steps: must be a list of steps, got {_type(steps)}")
        dead_letter = fields.get("dead_letter", default_dead_letter(name))
        if not isinstance(dead_letter, str):
            raise MappingError(f"{key}.dead_letter: must be a topic name, got {_type(dead_letter)}")
        check_topic(f"{key}.dead_letter", dead_letter)
        router = fields.get("router", DEFAULT_ROUTER)
        if not isinstance(router, str):
            raise MappingError(f"{key}.router: must be a router name, got {_type(router)}")
        try:
            check_name("router", router)
        except UsageError as e:
            raise MappingError(f"{key}.router: {e}") from None
        rule = cls(name=name, topics=topics, sources=sources, sinks=sinks,
                   steps=tuple(_parse_step(f"{key}.steps[{i}]", s) for i, s in enumerate(steps)),
                   dead_letter=dead_letter, router=router)
        _check_names(rule)
        return rule


# -- parsing ----------------------------------------------------------------------------------------------------------

def _object(at: str, data: Any, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MappingError(f"{at}: must be an object {what}, got {_type(data)}")
    unknown = set(data) - set(allowed)
    if unknown:
        raise MappingError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
    return data


def _topics(at: str, data: Any) -> tuple[str, ...]:
    if not isinstance(data, list):
        raise MappingError(f"{at}: required, a list of topic names, got {_type(data)}")
    if not data:
        raise MappingError(f"{at}: needs at least one topic")
    topics: list[str] = []
    for i, topic in enumerate(data):
        if not isinstance(topic, str):
            raise MappingError(f"{at}[{i}]: must be a topic name, got {_type(topic)}")
        check_topic(f"{at}[{i}]", topic)
        if topic in topics:
            raise MappingError(f"{at}[{i}]: topic {topic!r} is listed twice")
        topics.append(topic)
    return tuple(topics)


def _clusters(at: str, data: Any, field: str, most: int | None) -> tuple[str, ...]:
    """The clusters of a `from` ({"source": CLUSTER}) or `where` ({"sink": CLUSTER}) list."""
    shape = f'{{"{field}": CLUSTER}}'
    if not isinstance(data, list):
        raise MappingError(f"{at}: required, a list of {shape}, got {_type(data)}")
    if not data:
        raise MappingError(f"{at}: needs at least one {shape}")
    if most is not None and len(data) > most:
        raise MappingError(f"{at}: at most {most} {field}s, got {len(data)}")
    names: list[str] = []
    for i, entry in enumerate(data):
        entry = _object(f"{at}[{i}]", entry, (field,), shape)
        name = entry.get(field)
        if not isinstance(name, str) or not name:
            raise MappingError(f"{at}[{i}].{field}: required, a cluster name")
        if name in names:
            raise MappingError(f"{at}[{i}].{field}: cluster {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _bytes(at: str, data: Any) -> bytes:
    """A JSON string that the router uses as bytes, encoded as UTF-8."""
    if not isinstance(data, str):
        raise MappingError(f"{at}: must be a string, got {_type(data)}")
    try:
        return data.encode()
    except UnicodeEncodeError:       # a lone surrogate, written as a \\ud800 escape in the JSON
        raise MappingError(f"{at}: not valid UTF-8 (a lone surrogate escape)") from None


def _header(at: str, data: Any) -> str:
    if not isinstance(data, str) or not data:
        raise MappingError(f"{at}: must be a header name, a non-empty string, got {data!r}")
    _bytes(at, data)
    return data


def _filter(at: str, data: Any) -> Filter:
    fields = _object(at, data, ("topic", "key_prefix", "header", "equals"),
                     "with one or more of 'topic', 'key_prefix', 'header' (and 'equals')")
    if not fields:
        raise MappingError(f"{at}: needs at least one of 'topic', 'key_prefix', 'header'")
    topic = fields.get("topic")
    if "topic" in fields:
        if not isinstance(topic, str):
            raise MappingError(f"{at}.topic: must be a topic name, got {_type(topic)}")
        check_topic(f"{at}.topic", topic)
    header = _header(f"{at}.header", fields["header"]) if "header" in fields else None
    if "equals" in fields and header is None:
        raise MappingError(f"{at}.equals: needs 'header', the header whose value it compares")
    return Filter(topic=topic,
                  key_prefix=_bytes(f"{at}.key_prefix", fields["key_prefix"]) if "key_prefix" in fields else None,
                  header=header,
                  equals=_bytes(f"{at}.equals", fields["equals"]) if "equals" in fields else None)


def _rename(at: str, data: Any) -> Rename:
    fields = _object(at, data, ("to", "prefix"), "with 'to' or 'prefix'")
    if len(fields) != 1:
        raise MappingError(f"{at}: give exactly one of 'to' (the new topic name) and 'prefix' (put before the "
                           f"topic's name), got {len(fields)}")
    if "to" in fields:
        to = fields["to"]
        if not isinstance(to, str):
            raise MappingError(f"{at}.to: must be a topic name, got {_type(to)}")
        return Rename(to=check_topic(f"{at}.to", to))
    prefix = fields["prefix"]
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise MappingError(f"{at}.prefix: must be a non-empty string of [a-zA-Z0-9._-] (it begins a topic name), "
                           f"got {prefix!r}")
    return Rename(prefix=prefix)


def _rekey(at: str, data: Any) -> Rekey:
    fields = _object(at, data, ("header",), "with 'header'")
    if "header" not in fields:
        raise MappingError(f"{at}.header: required, the header whose value becomes the record's key")
    return Rekey(_header(f"{at}.header", fields["header"]))


def _drop_headers(at: str, data: Any) -> DropHeaders:
    if not isinstance(data, list) or not data:
        raise MappingError(f"{at}: must be a non-empty list of header names, got {data!r}")
    names: list[str] = []
    for i, name in enumerate(data):
        name = _header(f"{at}[{i}]", name)
        if name in names:
            raise MappingError(f"{at}[{i}]: header {name!r} is listed twice")
        names.append(name)
    return DropHeaders(tuple(names))


def _add_headers(at: str, data: Any) -> AddHeaders:
    if not isinstance(data, dict) or not data:
        raise MappingError(f"{at}: must be a non-empty object of header name to string value, got {data!r}")
    return AddHeaders(tuple((_header(f"{at}.{name}", name), _bytes(f"{at}.{name}", value))
                            for name, value in data.items()))


def _sample(at: str, data: Any) -> Sample:
    fields = _object(at, data, ("one_in",), "with 'one_in'")
    one_in = fields.get("one_in")
    # bool is an int to Python, never to a JSON author: true is refused, not taken as 1.
    if not isinstance(one_in, int) or isinstance(one_in, bool) or not 1 <= one_in <= MAX_ONE_IN:
        raise MappingError(f"{at}.one_in: required, an integer from 1 to {MAX_ONE_IN} (one record in that many is "
                           f"kept), got {one_in!r}")
    return Sample(one_in)


_STEPS: dict[str, Callable[[str, Any], Step]] = {
    "filter": _filter, "rename": _rename, "rekey": _rekey, "drop_headers": _drop_headers,
    "add_headers": _add_headers, "sample": _sample}


def _parse_step(at: str, data: Any) -> Step:
    if not isinstance(data, dict) or len(data) != 1:
        got = f"{len(data)} keys" if isinstance(data, dict) else _type(data)
        raise MappingError(f"{at}: must be an object of one key, the step's name ({', '.join(STEP_NAMES)}), "
                           f"got {got}")
    [(kind, value)] = data.items()
    parse = _STEPS.get(kind)
    if parse is None:
        raise MappingError(f"{at}: unknown step {kind!r}; steps are {', '.join(STEP_NAMES)}")
    return parse(f"{at}.{kind}", value)


# -- checks -----------------------------------------------------------------------------------------------------------

def _check_names(rule: RouterRule) -> None:
    """Refuse a rule whose renames make an invalid topic name, that copies nothing, that copies a topic onto itself,
    or whose dead-letter topic is one it copies to, or one it reads again."""
    key = f"router.{rule.name}"
    # A cluster that is both a source and a sink receives what the rule reads from it.
    both = [c for c in rule.sinks if c in rule.sources]
    targets: set[str] = set()
    for topic in rule.topics:
        target, reached = _trace(rule.steps, topic)
        for i, step, name in reached:
            if isinstance(step, Rename) and step.prefix is not None:
                renamed = _renamed(step, name)
                if len(renamed) > _MAX_TOPIC:
                    raise MappingError(f"{key}.steps[{i}].rename.prefix: renames topic {topic!r} to a name of "
                                       f"{len(renamed)} characters; a topic name has at most {_MAX_TOPIC}")
                check_topic(f"{key}.steps[{i}].rename.prefix: renaming topic {topic!r}", renamed)
        if target is None:
            continue
        if target == topic and both:
            raise MappingError(f"{key}: topic {topic!r} would be copied from cluster {both[0]!r} onto itself (the "
                               "cluster is both a source and a sink, and the steps keep the topic's name); records "
                               "would be copied forever")
        targets.add(target)
    if not targets:
        raise MappingError(f"{key}: no topic of {', '.join(rule.topics)} passes the steps' topic filters; the rule "
                           "would copy nothing")
    if rule.dead_letter in targets:
        raise MappingError(f"{key}.dead_letter: {rule.dead_letter!r} is a topic the rule copies records to; records "
                           "a step cannot process need a topic of their own")
    if rule.dead_letter in rule.topics and both:
        raise MappingError(f"{key}.dead_letter: {rule.dead_letter!r} is a topic the rule reads, and cluster "
                           f"{both[0]!r} is both a source and a sink: a record a step cannot process would be read "
                           "back and fail again, forever")


def check_clusters(rule: RouterRule, clusters: Container[str]) -> None:
    """Refuse a source or sink of rule that is not one of clusters."""
    for i, source in enumerate(rule.sources):
        if source not in clusters:
            raise MappingError(f"router.{rule.name}.from[{i}].source: unknown cluster {source!r}")
    for i, sink in enumerate(rule.sinks):
        if sink not in clusters:
            raise MappingError(f"router.{rule.name}.where[{i}].sink: unknown cluster {sink!r}")


_Node = tuple[str, str]          # (cluster, topic)


def check_rules(rules: Mapping[str, RouterRule]) -> None:
    """Refuse rules that copy records in a cycle: a record written by one to (sink, topic) is read there by another
    (or the same), and so on back to where it started, so it would be copied forever. An edge goes from (source,
    topic) to (sink, target topic) for every rule, topic its topic filters pass, source and sink."""
    edges: dict[_Node, list[tuple[_Node, str]]] = {}
    for name in sorted(rules):
        rule = rules[name]
        for topic in rule.topics:
            target = rule.target_topic(topic)
            if target is None:
                continue
            for source in rule.sources:
                edges.setdefault((source, topic), []).extend(((sink, target), name) for sink in rule.sinks)
    # Depth-first, iterative (a long chain of rules must not exhaust Python's stack), from every node in sorted
    # order, so that the cycle named is the same on every run.
    done: set[_Node] = set()
    for start in sorted(edges):
        if start in done:
            continue
        path: list[tuple[_Node, str]] = [(start, "")]       # each node on the path, and the rule of the edge into it
        on_path = {start}
        pending = [iter(edges.get(start, ()))]
        while pending:
            step = next(pending[-1], None)
            if step is None:
                node, _ = path.pop()
                on_path.discard(node)
                done.add(node)
                pending.pop()
                continue
            node, rule_name = step
            if node in on_path:
                at = next(i for i, (n, _) in enumerate(path) if n == node)
                raise MappingError(_cycle(path[at:] + [(node, rule_name)]))
            if node not in done:
                path.append((node, rule_name))
                on_path.add(node)
                pending.append(iter(edges.get(node, ())))


def _cycle(path: list[tuple[_Node, str]]) -> str:
    names = list(dict.fromkeys(rule for _, rule in path[1:]))
    hops = f"{path[0][0][0]}/{path[0][0][1]}" + "".join(
        f" -[{rule}]-> {cluster}/{topic}" for (cluster, topic), rule in path[1:])
    return (f"router: rule(s) {', '.join(names)} copy records in a cycle ({hops}, as cluster/topic); records would be "
            "copied forever")
