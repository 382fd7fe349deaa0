"""The mapping's one-file form: read a JSON mapping document from a file, with errors that name the file and line.

Synchronous and pure apart from the one read of the file.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

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
