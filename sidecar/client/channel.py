"""The gRPC channel both halves of the client open to the sidecar."""

from __future__ import annotations

import grpc

#: No receive limit: the peer is the host's own sidecar, whose responses are bounded by the sidecar itself (Produce
#: answers under 4 MiB; a Subscribe response under its max_response_bytes, or one record larger than that alone),
#: and a record Kafka holds must never be refused by the client that asked for it.
OPTIONS = [("grpc.max_receive_message_length", -1)]


def open_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=OPTIONS)
