"""The names a mapping holds (Kafka topics; clusters, namespaces and the like) and the checks that refuse bad ones.

Its own module so that every section's model (sidecar/mapping/model.py, sidecar/mapping/router.py) checks names
the same way without importing one another. Pure.
"""

from __future__ import annotations

import re
from typing import Any

from sidecar.errors import MappingError, UsageError

#: The most clusters one route may write every record to (the data plane's fixed bound).
MAX_SINKS = 16
# Kafka's own rule for topic names (kafka.common.internals.Topic): legal characters, at most 249 of them.
TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
TOPIC_RULE = "use 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    """name, or UsageError when it cannot name a cluster or namespace."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"invalid {kind} name {name!r}: use 1-128 characters of [A-Za-z0-9._-], "
                         "starting with a letter or digit")
    return name


def check_topic(where: str, topic: str) -> str:
    """topic, or MappingError naming where it was found when Kafka would refuse it as a topic name."""
    if not TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise MappingError(f"{where}: invalid topic name {topic!r}: {TOPIC_RULE}")
    return topic


def type_name(data: Any) -> str:
    """The JSON-ish name of a parsed value's type, for refusals ("got null", "got list")."""
    return "null" if data is None else type(data).__name__
