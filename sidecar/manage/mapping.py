"""The mapping in etcd: apply a mapping document, and load what is in force.

A mapping change is one etcd revision (README, "The mapping"; docs/mapping-storage.md): `apply` validates the
document against what etcd holds and stores the whole mapping through sidecar/control/mapstore.py, whose last step
is one compare-and-swap of the pointer key, so a sidecar sees the change whole or not at all, and two applies never
overwrite each other unseen. This module never writes a mapping that from_document would refuse to read back.

The functions run on the caller's event loop, through sidecar/control/etcd.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.control import mapstore
from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import ConflictError, MappingError
from sidecar.mapping.model import REDACTED, SECTIONS, Mapping, is_secret


@dataclass(frozen=True)
class Plan:
    """What applying a document would do: the document it would store (the mapping in force with the document's
    sections in place of its own, checked whole), and the revision of the mapping in force it was checked against."""

    mapping: Mapping
    stored: dict[str, Any]
    read_at: int
    current: dict[str, Any] | None         # the document in force (None: no mapping yet)


@dataclass(frozen=True)
class Difference:
    """One entry that applying would add (+), remove (-) or change (~); values in the seed's format."""

    op: str
    section: str
    key: str
    before: Any
    after: Any


async def plan(etcd: Etcd, keys: Keys, doc: dict[str, Any], expect_revision: int | None = None) -> Plan:
    """Check doc against the mapping in force. Sections doc leaves out stay as they are in etcd, and doc is checked
    against them (a producer-only file must name clusters that etcd holds). With expect_revision, refuse
    (ConflictError) unless the mapping in force is still the one of that revision."""
    present = tuple(s for s in SECTIONS if s in doc)
    if not present:
        raise MappingError(f"mapping: no {', '.join(SECTIONS)} section; nothing to apply")
    current, read_at = await mapstore.read(etcd, keys)
    if expect_revision is not None and expect_revision != read_at:
        raise ConflictError(f"the mapping is at revision {read_at}, not {expect_revision} as expected: it "
                            "changed since; look at it again (`kafka-mesh mapping show`) and retry")
    # Only the sections kept are read from etcd: a document may replace a section that etcd holds in a bad state.
    kept = {s: (current or {}).get(s, {}) for s in SECTIONS if s not in present}
    base = Mapping.from_document(kept, check_references=False)
    mapping = Mapping.from_document(doc, base, check_references=False)
    mapping.check_clusters_exist(present)
    for section in ("producer", "consumer", "router"):
        if section not in present:
            try:
                mapping.check_clusters_exist((section,))
            except MappingError as e:
                raise MappingError(f"{e} (in the {section} section that etcd holds at revision {read_at}, which "
                                   "this document leaves as it is)") from None
    return Plan(dataclasses.replace(mapping, revision=read_at), mapping.to_document(), read_at, current)


def _redacted(section: str, value: Any) -> Any:
    """value as printed: a cluster's secret settings as REDACTED (value as etcd holds it, not necessarily valid)."""
    if section == "clusters" and isinstance(value, dict) and isinstance(value.get("config"), dict):
        return {**value, "config": {k: REDACTED if is_secret(str(k)) else v for k, v in value["config"].items()}}
    return value


async def differences(etcd: Etcd, keys: Keys, doc: dict[str, Any]) -> tuple[list[Difference], Plan]:
    """What applying doc would change, entry by entry, in the sections doc has (section order, then key order), and
    the plan it was computed from. Compared with what etcd holds as it is, so a section etcd holds in a state that
    does not parse (which apply replaces whole) is shown entry by entry too. Secret cluster settings read REDACTED:
    a change of one shows as a change of its cluster."""
    p = await plan(etcd, keys, doc)
    out: list[Difference] = []
    for section in (s for s in SECTIONS if s in doc):
        old = (p.current or {}).get(section) or {}
        new = p.stored.get(section, {})         # the router section is stored only when it has rules
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                out.append(Difference("-", section, key, _redacted(section, old[key]), None))
            elif key not in old:
                out.append(Difference("+", section, key, None, _redacted(section, new[key])))
            elif old[key] != new[key]:
                out.append(Difference("~", section, key, _redacted(section, old[key]), _redacted(section, new[key])))
    return out, p


async def apply_mapping(etcd: Etcd, keys: Keys, doc: dict[str, Any],
                        expect_revision: int | None = None) -> Mapping:
    """Apply doc (checked as plan checks it) and return the mapping now in force, its revision that of the change.
    Refused (ConflictError) when another apply lands between this one's read and its write, or, with
    expect_revision, when the mapping in force is no longer that of expect_revision."""
    p = await plan(etcd, keys, doc, expect_revision)
    revision = await mapstore.write(etcd, keys, p.stored, p.read_at)
    return dataclasses.replace(p.mapping, revision=revision)


#: How often edit() reads and tries again when other changes keep landing between its read and its write.
EDIT_ATTEMPTS = 10


async def edit(etcd: Etcd, keys: Keys, change: Callable[[Mapping], dict[str, Any]]) -> Mapping:
    """Apply the document change makes of the mapping in force (change raises to refuse), guarded by that mapping's
    revision; when another change lands in between, read again and retry. Returns the mapping now in force."""
    for attempt in range(EDIT_ATTEMPTS):
        current = await load(etcd, keys)
        try:
            return await apply_mapping(etcd, keys, change(current), current.revision)
        except ConflictError:
            if attempt == EDIT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def apply(etcd: Etcd, keys: Keys, doc: dict[str, Any]) -> int:
    """Validate doc against etcd and make it the mapping in force at one revision; returns that revision."""
    return (await apply_mapping(etcd, keys, doc)).revision


async def load(etcd: Etcd, keys: Keys) -> Mapping:
    """The mapping in force, its revision that of the change that made it (0: no mapping was ever applied). An
    invalid one raises MappingError naming the pointer key and its revision."""
    doc, revision = await mapstore.read(etcd, keys)
    if doc is None:
        return Mapping()
    try:
        mapping = Mapping.from_document(doc)
    except MappingError as e:
        raise MappingError(f"{keys.pointer} at revision {revision}: {e}") from None
    return dataclasses.replace(mapping, revision=revision)
