"""librdkafka's own log lines, routed into Python logging: one logger per cluster (`kafka_mesh.librdkafka.CLUSTER`),
librdkafka's syslog levels mapped to logging's, and the values of a cluster's secret properties (passwords, keys)
replaced by `***` in every line.

The core collects the lines in one bounded ring, off librdkafka's threads and without the GIL (csrc/meshcore/
km_log.h); a task on the event loop drains it every DRAIN_INTERVAL_S and once more at stop. Lines lost while the
ring was full are counted and said once per drain. A cluster's config may raise librdkafka's `log_level` (7 with
`debug`): those lines then reach the logger at DEBUG, which `--log-level debug` shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import meshcore

DRAIN_INTERVAL_S = 0.2
_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR, 4: logging.WARNING,
           5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}

log = logging.getLogger("kafka_mesh.librdkafka")


def scrub(message: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def drain(secrets: Callable[[], Iterable[str]]) -> int:
    """Log every line the core holds; returns how many."""
    total = 0
    hidden: list[str] | None = None
    while True:
        lines, dropped = meshcore.take_logs(64)
        if dropped:
            log.warning("librdkafka log lines dropped=%d (more than the core keeps between drains)", dropped)
        for level, cluster, facility, message in lines:
            if hidden is None:
                hidden = sorted(set(secrets()), key=len, reverse=True)    # a longer secret before its prefixes
            logging.getLogger(f"kafka_mesh.librdkafka.{cluster}").log(
                _LEVELS.get(level, logging.INFO), "%s: %s", facility, scrub(message, hidden))
        total += len(lines)
        if len(lines) < 64:
            return total


async def run(secrets: Callable[[], Iterable[str]]) -> None:
    """Drain until cancelled, then once more."""
    try:
        while True:
            drain(secrets)
            await asyncio.sleep(DRAIN_INTERVAL_S)
    finally:
        drain(secrets)
