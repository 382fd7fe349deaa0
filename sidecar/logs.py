"""Logging: one line per event, `key=value` fields after the message, to stderr. INFO is quiet in steady state:
it logs starts, stops and mapping changes, not records or batches."""

from __future__ import annotations

import logging
import sys


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("kafka_mesh")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # grpc logs an exception that escapes a servicer (and its own failures) at ERROR, to a logger it silences.
    grpc_log = logging.getLogger("grpc")
    grpc_log.handlers[:] = [handler]
    grpc_log.setLevel(logging.WARNING)
    grpc_log.propagate = False
