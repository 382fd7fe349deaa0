"""Exceptions raised by the native core. Plain Python, so that the control plane maps them to gRPC status codes
in one place without importing any native module."""

from __future__ import annotations


class CoreError(Exception):
    """Base of every error the core raises."""


class WireError(CoreError):
    """Malformed protobuf bytes from an application; `offset` is the byte where parsing stopped."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"malformed request: {reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


class ConfigError(CoreError):
    """A librdkafka configuration property was unknown or had an invalid value."""


class KafkaError(CoreError):
    """A librdkafka error code, with its name (e.g. ``_MSG_TIMED_OUT``) and description."""

    def __init__(self, code: int, name: str, description: str) -> None:
        super().__init__(f"{name}: {description}")
        self.code = code
        self.name = name
        self.description = description


class HandleClosedError(CoreError):
    """A method was called on a handle after close()."""
