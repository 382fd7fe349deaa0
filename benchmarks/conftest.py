"""Benchmarks run against the same sandbox as the integration tests (started once per session, or reused with
KAFKA_MESH_TEST_STATE_DIR), and print each group's throughput side by side as ratios to the direct
confluent-kafka baseline. Run with: python -m pytest benchmarks --benchmark-only"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from sidecar.dev.sandbox import Sandbox
from tests.integration.conftest import sandbox, topic  # noqa: F401  (fixtures)


def _topics(admin: AdminClient) -> set[str]:
    return {t for t in admin.list_topics(timeout=30).topics if not t.startswith("__")}


@pytest.fixture(scope="module", autouse=True)
def topics_deleted_after(sandbox: Sandbox) -> Iterator[None]:  # noqa: F811  (the fixture imported above)
    """Every topic a benchmark module made is deleted once it is done: they write gigabytes, and the sandbox keeps
    its brokers' logs in memory (a few runs of the whole folder filled it)."""
    admins = {c.name: AdminClient({"bootstrap.servers": c.bootstrap}) for c in sandbox.clusters}
    before = {name: _topics(admin) for name, admin in admins.items()}
    yield
    for name, admin in admins.items():
        made = sorted(_topics(admin) - before[name])
        for future in (admin.delete_topics(made, operation_timeout=30).values() if made else ()):
            try:
                future.result(timeout=60)
            except KafkaException as e:         # deleted by the module itself meanwhile
                if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        records = bench.extra_info.get("records")
        if records:
            groups.setdefault(bench.group or "", {})[bench.name] = records / bench.stats.median
    tr = terminalreporter
    tr.section("throughput (records/s, median round) and ratio to the direct baseline")
    for group, rates in groups.items():
        base = next((v for k, v in rates.items() if "confluent" in k), None)
        for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
            ratio = f"{rate / base:5.2f}x" if base else "  n/a"
            tr.write_line(f"{group:<24} {name:<48} {rate:>12,.0f}  {ratio}")
    for bench in session.benchmarks:
        extra = {k: v for k, v in bench.extra_info.items() if k != "records"}
        if extra:
            tr.write_line(f"{bench.name}: {extra}")
