"""Errors of the Python client: the per-record error code of the API and the exceptions a producer's futures and
calls and a consumer's calls raise. Plain Python; the producer and the consumer build these from what the sidecar
answers (as asyncpg's exceptions are built from the codes its protocol core hands back). Nothing here talks to the
network."""

from __future__ import annotations

import enum
from typing import Any

import grpc

from sidecar.errors import MeshError


class ErrorCode(enum.IntEnum):
    """Why one record was not written: `kafkamesh.v1.ErrorCode` with the `ERROR_CODE_` prefix dropped.

    Only the record fails; the other records of its batch are unaffected."""

    UNSPECIFIED = 0
    NO_ROUTE = 1               # no producer route for the topic and no __default__ route
    INVALID_TOPIC = 2          # empty, longer than 249 characters, or outside [a-zA-Z0-9._-]
    RECORD_TOO_LARGE = 3
    CLUSTER_UNAVAILABLE = 4    # a target cluster unreachable, or no ack within the sidecar's delivery timeout
    UNKNOWN_PARTITION = 5
    NOT_AUTHORIZED = 6
    QUOTA_EXCEEDED = 7
    INTERNAL = 8
    UNKNOWN_TOPIC = 9
    INVALID_RECORD = 10        # the record breaks a rule: a header name not UTF-8, a negative timestamp

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """The code for a value read from a ProduceResponse; a code newer than this client reads as INTERNAL."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL


class ClientError(MeshError):
    """Base of every error the client raises or sets on a future (besides TypeError, ValueError, TimeoutError for
    misuse and bounds)."""


class RecordError(ClientError):
    """One record was not written. `code` says why (an ErrorCode a program can act on), `message` is the sidecar's
    description; `index` is the record's position in its ProduceRequest and `topic` its topic."""

    def __init__(self, code: ErrorCode, message: str, *, index: int, topic: str) -> None:
        super().__init__(f"{code.name}: {message} (topic {topic!r})")
        self.code = code
        self.message = message
        self.index = index
        self.topic = topic

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_record_error, (self.code, self.message, self.index, self.topic)


def _rebuild_record_error(code: ErrorCode, message: str, index: int, topic: str) -> RecordError:
    return RecordError(code, message, index=index, topic=topic)


class StreamError(ClientError):
    """The Produce stream ended before the records were answered: the sidecar went away, refused the stream
    (INVALID_ARGUMENT for malformed bytes, UNAVAILABLE when it has no mapping yet), or the producer was closed with
    batches still unanswered (CANCELLED). `code` is the gRPC status code (a `grpc.StatusCode`), `details` the
    status message. Whether a record whose future failed with this error was written is unknown."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"the Produce stream ended: {code.name}: {details}")
        self.code = code
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.details)


class ProducerClosedError(ClientError):
    """A send after close() (or during it)."""


class SubscribeError(ClientError):
    """The Subscribe stream ended, or never started: the sidecar refused the subscription (INVALID_ARGUMENT for an
    empty group, an empty topic list or a bad topic name; FAILED_PRECONDITION for a topic with no route; UNAVAILABLE
    when it has no mapping yet or is not there), went away (UNAVAILABLE), or the stream broke. `code` is the gRPC
    status code (a `grpc.StatusCode`), `details` the sidecar's message. The consumer cannot go on; the records it
    received and the application did not ack come again to the group, to a new Consumer."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"the Subscribe stream ended: {code.name}: {details}")
        self.code = code
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.details)


class ConsumerClosedError(ClientError):
    """A poll, ack or subscribe on a consumer after close() (or, for ack, once close() has sent the last acks)."""
