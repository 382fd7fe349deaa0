"""RouteState against producers of unreachable clusters (no broker needed): the producers keep the handles of
the topics a move brings to their cluster, following the mapping change by change."""

from __future__ import annotations

import asyncio

from sidecar.mapping.model import REMOVE, Mapping
from sidecar.routing import RouteState

NOWHERE = {"bootstrap": "127.0.0.1:9", "config": {"log_level": "0"}}


def test_producers_hold_the_topics_a_move_brings_to_them() -> None:
    async def run() -> list[dict[str, list[str]]]:
        routes = RouteState(delivery_timeout_ms=1000)
        seen = []

        def held() -> dict[str, list[str]]:
            return {name: entry.producer.held_topics for name, entry in sorted(routes._live.items())}

        m = Mapping.from_document({"clusters": {"c1": NOWHERE, "c2": NOWHERE}, "producer": {
            "t": {"where": [{"sink": "c1"}]}, "u": {"where": [{"sink": "c1"}]}}})
        routes.apply(m)
        seen.append(held())
        m = m.updated({}, {"t": [{"vip": "c1"}, {"vip": "c2"}]}, 2)           # the move reads both
        routes.apply(m)
        seen.append(held())
        m = m.updated({"t": {"where": [{"sink": "c2"}]}}, {}, 3)               # the producer switch
        routes.apply(m)
        seen.append(held())
        m = m.updated({}, {"t": REMOVE}, 4)                                    # done
        routes.apply(m)
        seen.append(held())
        await routes.close(0)
        return seen

    assert asyncio.run(run()) == [
        {"c1": [], "c2": []}, {"c1": [], "c2": ["t"]}, {"c1": ["t"], "c2": []}, {"c1": [], "c2": []}]
