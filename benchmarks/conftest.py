"""Benchmarks run against the same sandbox as the integration tests (started once per session, or reused with
KAFKA_MESH_TEST_STATE_DIR), and print each group's throughput side by side as ratios to the direct
confluent-kafka baseline. Run with: python -m pytest benchmarks --benchmark-only"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import sandbox, topic  # noqa: F401  (fixtures)


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
