"""Argument types the command families share."""

from __future__ import annotations

import argparse

from sidecar.errors import UsageError


def whole(text: str) -> int:
    """An argparse type: a whole number (its range is the command's to check, with a message of its own)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    value = whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def key_values(pairs: list[str], what: str) -> dict[str, str]:
    """Repeated --config KEY=VALUE options as a dict; what names the keys in errors ("a librdkafka property")."""
    config: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--config {pair!r}: expected KEY=VALUE, {what} and its value")
        if key.strip() in config:
            raise UsageError(f"--config: {key.strip()!r} is given twice")
        config[key.strip()] = value
    return config


def add_process_flags(p: argparse.ArgumentParser, metrics_help: str) -> None:
    """The flags of a long-running process (the sidecar, the router): its log level and its metrics."""
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info (default), warning or error")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help=f"serve Prometheus metrics at http://HOST:PORT/metrics ({metrics_help}default: off; :PORT "
                        "means 127.0.0.1)")
    p.add_argument("--statistics-interval-ms", metavar="MS",
                   help="with --metrics-listen, how often librdkafka's statistics (queue depths, broker round "
                        "trips) are taken (default 15000; 0: none)")
