"""kafka-mesh's error hierarchy (control plane). Each error names its cause; the CLI prints it as one line."""

from __future__ import annotations


class MeshError(Exception):
    """Base of every kafka-mesh error."""


class UsageError(MeshError):
    """Bad arguments or settings given by the user."""


class SandboxError(MeshError):
    """The local sandbox could not be started, inspected or stopped."""


class EtcdError(MeshError):
    """etcd could not be reached or answered with an error."""


class MappingError(MeshError):
    """A mapping document (or a value read from etcd) is invalid; the message names the key and the reason."""


class ConflictError(MappingError):
    """The mapping changed after a change to it was checked against it (another writer, or --expect-revision)."""


class MoveError(MeshError):
    """A topic move cannot go on as asked (it stays where it is); the message says why and what to do."""
