"""The mapping in etcd: read a mapping file, apply it as one etcd transaction, and load what is in force.

A mapping change is one etcd revision (README, "The mapping"): `apply` validates the document against what etcd holds
and writes every key of the sections it replaces, and deletes the keys of routes the document no longer has, in one
transaction, so a sidecar watching the namespace sees the change whole. This module never writes a mapping that
from_etcd would refuse to read back.

The file functions are synchronous; the etcd functions run on the caller's event loop, through sidecar/control/etcd.py.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import MappingError, UsageError
from sidecar.mapping.model import SECTIONS, Mapping


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; in a mapping file that silently drops a route, so refuse it.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def read_document(path: str | pathlib.Path) -> dict[str, Any]:
    """The JSON document in path, with each section present checked on its own (whether the clusters its routes
    name exist is checked by apply, against etcd, or by load_file). Errors name the file, and the line of a JSON
    syntax error."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f"cannot read mapping file {path}: {reason}") from None
    try:
        doc = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as e:
        raise MappingError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except ValueError as e:
        raise MappingError(f"{path}: not a valid mapping: {e}") from None
    Mapping.from_document(doc, check_references=False)
    if not any(section in doc for section in SECTIONS):
        raise MappingError(f"{path}: no {', '.join(SECTIONS)} section; nothing to apply")
    return dict(doc)


def load_file(path: str | pathlib.Path) -> Mapping:
    """The whole mapping in one file (a section left out is empty), e.g. for a sidecar that runs without etcd."""
    return Mapping.from_document(read_document(path))


async def apply_mapping(etcd: Etcd, keys: Keys, doc: dict[str, Any]) -> Mapping:
    """Apply doc and return the mapping now in force, its revision that of the transaction. Sections doc leaves
    out stay as they are in etcd, and doc is checked against them (a producer-only file must name clusters that
    etcd holds)."""
    present = tuple(s for s in SECTIONS if s in doc)
    if not present:
        raise MappingError(f"mapping: no {', '.join(SECTIONS)} section; nothing to apply")
    prefixes = {"clusters": keys.clusters, "producer": keys.producer, "consumer": keys.consumer}
    items, read_at = await etcd.get_prefix(keys.root)
    # Only the sections kept are read from etcd: a document may replace a section that etcd holds in a bad state.
    kept = {k: v for k, v in items.items() if not any(k.startswith(prefixes[s]) for s in present)}
    base = Mapping.from_etcd(kept, keys, read_at, check_references=False)
    mapping = Mapping.from_document(doc, base, check_references=False)
    mapping.check_clusters_exist(present)
    for section in ("producer", "consumer"):
        if section not in present:
            try:
                mapping.check_clusters_exist((section,))
            except MappingError as e:
                raise MappingError(f"{e} (in the {section} section that etcd holds at revision {read_at}, which "
                                   "this document leaves as it is)") from None
    revision = await etcd.put_all(mapping.etcd_items(keys, present),
                                  delete_prefixes=tuple(prefixes[s] for s in present))
    return dataclasses.replace(mapping, revision=revision)


async def apply(etcd: Etcd, keys: Keys, doc: dict[str, Any]) -> int:
    """Validate doc against etcd and write the sections it has as one transaction; returns that revision."""
    return (await apply_mapping(etcd, keys, doc)).revision


async def load(etcd: Etcd, keys: Keys) -> tuple[Mapping, int]:
    """The mapping in force, the whole namespace read at one revision (Mapping.revision, which any other write to
    etcd moves on: a sidecar's status lease expiring, another namespace), and the newest revision any key of the
    mapping was written at: what `apply` printed for the last change of a key still there (0 for an empty mapping).
    An invalid value raises MappingError naming its etcd key."""
    items, revision = await etcd.get_prefix_revisions(keys.root)
    sections = tuple(f"{keys.root}{section}/" for section in SECTIONS)
    written = max((mod for key, (_, mod) in items.items() if key.startswith(sections)), default=0)
    return Mapping.from_etcd({key: value for key, (value, _) in items.items()}, keys, revision), written
