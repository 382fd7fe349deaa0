"""The mapping in etcd as immutable, content-addressed blobs under one pointer key: a mapping of any size is
written within etcd's default request limits (128 operations a transaction, 1.5 MiB a request) and still changes
atomically, at the one revision that swaps the pointer.

Layout (under /kafka-mesh/<namespace>/):

    mapping            the pointer, JSON: {"format": 1, "parts": {part name: [blob id, ...]}}
    blobs/<id>         zlib-compressed JSON of one part (or a piece of one); <id> is the SHA-256 of those bytes

A part is the clusters section, the router section (its rules are few), or the routes of one of 256 buckets of a
section ("producer/3a": the producer routes whose route key hashes to 0x3a; "consumer/07" likewise by topic). A
change of one route therefore makes one new blob of a few kilobytes, whatever the mapping's size; a reader that keeps
the parts it has parsed reads and parses only the blobs it does not have yet. A part larger than MAX_BLOB bytes
compressed is cut into several blobs.

Writing: the blobs the pointer in force does not name first, even those etcd holds already (in as many
transactions as the limits need; nothing reads them yet), then one transaction that swaps the pointer if it is still
the one the document was checked against, then the blobs that neither the new pointer nor the one before it names
are deleted, each only if unchanged since the writer looked (a reader that read the previous pointer just before the
swap still finds its blobs; a blob another writer has written again since is that writer's). Reading: the pointer,
then the blobs it names (one range read of blobs/ when many); every blob is checked against its id, and a blob gone
meanwhile (two swaps and a clean-up between the two reads) makes the read start over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import ConflictError, EtcdError, MappingError
from sidecar.mapping.model import SECTIONS

#: The sections stored whole, each as one part of its own name; the others are cut into buckets.
WHOLE = ("clusters", "router")

log = logging.getLogger("kafka_mesh.mapping")

FORMAT = 1
BUCKETS = 256
#: The largest blob: a part compressed to more is cut into pieces. Under etcd's default request limit (1.5 MiB)
#: with room for the key and the transaction's framing.
MAX_BLOB = 1 << 20
#: What one transaction of blob puts or deletes may hold: etcd refuses more than 128 operations by default.
MAX_TXN_OPS = 64
MAX_TXN_BYTES = 1 << 20
#: How often a read starts over when blobs vanish under it (a writer swapping twice between its two reads).
READ_ATTEMPTS = 5
#: Up to this many new blobs are read one by one (a change of a few routes); more, in one range read of blobs/.
FEW_BLOBS = 16


def bucket(name: str) -> str:
    """The bucket of a route key or topic: two hex digits, stable across processes and versions."""
    return hashlib.sha256(name.encode()).hexdigest()[:2]


def blob_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pack(value: Any) -> bytes:
    return zlib.compress(json.dumps(value, sort_keys=True, separators=(",", ":")).encode(), 6)


@dataclass(frozen=True)
class Stored:
    """A mapping document as the store holds it: the pointer's parts, and the blobs they name."""

    parts: dict[str, list[str]]
    blobs: dict[str, bytes]

    def pointer(self) -> bytes:
        return json.dumps({"format": FORMAT, "parts": self.parts}, sort_keys=True, separators=(",", ":")).encode()


def split(doc: dict[str, Any]) -> Stored:
    """The parts and blobs of a mapping document ({"clusters": {...}, "producer": {...}, "consumer": {...}}, and
    "router": {...} when it has rules)."""
    parts: dict[str, Any] = {}
    for section in WHOLE:
        if doc.get(section):
            parts[section] = doc[section]
    for section in ("producer", "consumer"):
        for key, value in (doc.get(section) or {}).items():
            parts.setdefault(f"{section}/{bucket(key)}", {})[key] = value
    names: dict[str, list[str]] = {}
    blobs: dict[str, bytes] = {}
    for name, value in sorted(parts.items()):
        packed = _pack(value)
        pieces = [packed[i:i + MAX_BLOB] for i in range(0, len(packed), MAX_BLOB)]
        names[name] = [blob_id(p) for p in pieces]
        blobs.update(zip(names[name], pieces, strict=True))
    return Stored(names, blobs)


def parse_pointer(raw: bytes, where: str) -> dict[str, list[str]]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MappingError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT or not isinstance(value.get("parts"), dict):
        raise MappingError(f"{where}: not a kafka-mesh mapping pointer of format {FORMAT}")
    parts: dict[str, list[str]] = {}
    for name, ids in value["parts"].items():
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) and len(i) == 64 for i in ids)):
            raise MappingError(f"{where}: part {name!r} must list blob ids")
        parts[str(name)] = [str(i) for i in ids]
    return parts


def decode_part(name: str, ids: list[str], blobs: Mapping[str, bytes], where: str) -> dict[str, Any]:
    """The entries of one part (route key or cluster name -> value in the seed's format), from its blobs."""
    data = b"".join(blobs[i] for i in ids)
    try:
        value = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError) as e:
        raise MappingError(f"{where}: part {name!r} does not decode: {e}") from None
    if not isinstance(value, dict):
        raise MappingError(f"{where}: part {name!r} is not an object")
    return value


def section_of(name: str, where: str) -> str:
    section = name.partition("/")[0]
    if section not in SECTIONS:
        raise MappingError(f"{where}: unknown part {name!r}")
    return section


def join(parts: dict[str, list[str]], blobs: Mapping[str, bytes], where: str) -> dict[str, Any]:
    """The mapping document of parts, from blobs (every id named must be there and match its bytes). Its router
    section is there only when a part holds it, as Mapping.to_document writes it."""
    doc: dict[str, Any] = {section: {} for section in SECTIONS if section != "router"}
    for name, ids in sorted(parts.items()):
        if any(blob_id(blobs[i]) != i for i in ids):
            raise MappingError(f"{where}: a blob of part {name!r} does not match its id")
        doc.setdefault(section_of(name, where), {}).update(decode_part(name, ids, blobs, where))
    return doc


async def blobs_for(etcd: Etcd, keys: Keys, parts: dict[str, list[str]],
                    have: Mapping[str, bytes]) -> dict[str, bytes] | None:
    """Every blob parts names, reading from etcd only those not in have (one by one when few, else in one range
    read); None when one is gone (the pointer moved on twice and its blobs were cleaned up). A blob read is checked
    against its id."""
    wanted = {i for ids in parts.values() for i in ids}
    out = {i: have[i] for i in wanted if i in have}
    missing = sorted(wanted - out.keys())
    if len(missing) > FEW_BLOBS:
        items, _ = await etcd.get_prefix(keys.blobs)
        found = {k[len(keys.blobs):]: v for k, v in items.items()}
    else:
        got = await asyncio.gather(*(etcd.get(keys.blob(i)) for i in missing))
        found = {i: g[0] for i, g in zip(missing, got, strict=True) if g is not None}
    for i in missing:
        data = found.get(i)
        if data is None:
            return None
        if blob_id(data) != i:
            raise MappingError(f"{keys.blob(i)}: its bytes do not match its id")
        out[i] = data
    return out


async def write(etcd: Etcd, keys: Keys, doc: dict[str, Any], expect_mod_revision: int) -> int:
    """Store doc and make it the mapping in force if the pointer's mod_revision is still expect_mod_revision (0: no
    mapping yet); returns the revision of the swap. Raises ConflictError when another writer was first."""
    stored = split(doc)
    return await commit(etcd, keys, stored, await prepare(etcd, keys, stored, expect_mod_revision))


@dataclass(frozen=True)
class Prepared:
    """What prepare saw and did: the pointer it builds on, and the blobs etcd held then (id -> mod_revision)."""

    base: bytes | None
    base_revision: int
    seen: dict[str, int]


async def prepare(etcd: Etcd, keys: Keys, stored: Stored, expect_mod_revision: int) -> Prepared:
    """Write every blob of stored that the pointer in force (at expect_mod_revision) does not name, even one etcd
    holds already: such a blob may be another writer's stale one, which that writer's clean-up is about to delete
    (it deletes only blobs unchanged since it looked, and this write changes it). Nothing reads these blobs until a
    pointer names them. Raises ConflictError early when the pointer is no longer at expect_mod_revision."""
    got = await etcd.get(keys.pointer)
    found = got[1] if got else 0
    if found != expect_mod_revision:
        raise ConflictError(f"the mapping changed meanwhile: it is at revision {found}, not {expect_mod_revision}; "
                            "read it again and retry")
    named: set[str] = set()
    if got is not None:
        try:
            named = {i for ids in parse_pointer(got[0], keys.pointer).values() for i in ids}
        except MappingError:
            pass            # an unreadable pointer protects nothing: write everything
    seen = {k[len(keys.blobs):]: rev for k, rev in (await etcd.keys_under(keys.blobs)).items()}
    await etcd.put_batched({keys.blob(i): b for i, b in stored.blobs.items() if i not in named}, MAX_TXN_OPS,
                           MAX_TXN_BYTES)
    return Prepared(got[0] if got else None, found, seen)


async def commit(etcd: Etcd, keys: Keys, stored: Stored, prepared: Prepared) -> int:
    """Swap the pointer to stored (prepared) and clean up after it; returns the revision of the swap."""
    revision = await swap(etcd, keys, stored, prepared)
    await clean_up(etcd, keys, stored, prepared, revision)
    return revision


async def swap(etcd: Etcd, keys: Keys, stored: Stored, prepared: Prepared) -> int:
    """Swap the pointer to stored if it is still where prepare found it; returns the revision of the swap: the
    revision of the change."""
    revision = await etcd.swap(keys.pointer, stored.pointer(), prepared.base_revision)
    if revision is None:
        now = await etcd.get(keys.pointer)
        raise ConflictError(f"the mapping changed meanwhile: it is at revision {now[1] if now else 0}, not "
                            f"{prepared.base_revision}; read it again and retry")
    return revision


async def clean_up(etcd: Etcd, keys: Keys, stored: Stored, prepared: Prepared, revision: int) -> None:
    """Delete the blobs that neither stored nor the pointer before it names, each only if unchanged since prepare
    looked (a blob written since is another writer's). Best effort: the change is made once the swap is, and blobs
    left now are deleted by a later change."""
    keep = {i for ids in stored.parts.values() for i in ids}
    if prepared.base is not None:
        try:
            keep |= {i for ids in parse_pointer(prepared.base, keys.pointer).values() for i in ids}
        except MappingError:
            pass            # an unreadable previous pointer protects nothing
    stale = {keys.blob(i): rev for i, rev in prepared.seen.items() if i not in keep}
    try:
        await etcd.delete_unchanged(stale, MAX_TXN_OPS)
    except EtcdError as e:
        log.warning("mapping revision %d is in force; deleting its stale blobs failed (a later change retries): %s",
                    revision, e)


async def read(etcd: Etcd, keys: Keys) -> tuple[dict[str, Any] | None, int]:
    """The mapping document in force and the pointer's mod_revision ((None, 0) when no mapping was ever written)."""
    for _ in range(READ_ATTEMPTS):
        got = await etcd.get(keys.pointer)
        if got is None:
            return None, 0
        raw, revision = got
        parts = parse_pointer(raw, keys.pointer)
        blobs = await blobs_for(etcd, keys, parts, {})
        if blobs is not None:
            return join(parts, blobs, f"{keys.pointer} at revision {revision}"), revision
    raise MappingError(f"{keys.pointer}: {READ_ATTEMPTS} reads in a row found a blob it names missing (the last at "
                       f"revision {revision}): writers racing, or a blob deleted by hand")
