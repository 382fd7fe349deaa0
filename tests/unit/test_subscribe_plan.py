"""What a Subscribe stream reads where: the cluster plan from a mapping, and the prefetch bound per consumer."""

from __future__ import annotations

import pytest

from sidecar.consume.consumers import group_protocol, prefetch
from sidecar.mapping.model import Mapping
from sidecar.subscribe.session import PlanError, clusters_by_topic

DOC = {
    "clusters": {n: {"bootstrap": f"127.0.0.1:{9092 + i}", "role": "fronting"}
                 for i, n in enumerate(["c1", "c2", "c3"])},
    "producer": {"t1, t2": {"where": [{"sink": "c1"}]}, "multi": {"where": [{"sink": "c2"}, {"sink": "c3"}]}},
    "consumer": {"foo": [{"vip": "c1"}, {"vip": "c2"}]},
}


def test_a_consumer_route_names_the_clusters_and_producer_routes_stand_in_without_one() -> None:
    m = Mapping.from_document(DOC)
    assert clusters_by_topic(m, ["foo", "t1", "multi"]) == {"c1": ["foo", "t1"], "c2": ["foo", "multi"],
                                                            "c3": ["multi"]}


def test_a_topic_with_no_route_at_all_is_a_plan_error_naming_it() -> None:
    m = Mapping.from_document(DOC)
    with pytest.raises(PlanError, match="topic 'nowhere' has no consumer route"):
        clusters_by_topic(m, ["foo", "nowhere"])


def test_a_default_route_catches_the_rest() -> None:
    m = Mapping.from_document({**DOC, "producer": {"__default__": {"where": [{"sink": "c3"}]}}})
    assert clusters_by_topic(m, ["anything"]) == {"c3": ["anything"]}


@pytest.mark.parametrize("nbytes, kb", [
    (16 << 20, 256),            # the default credit
    (128 << 20, 2048),
    (0, 256),
    (1 << 30, 4096),
])
def test_prefetch_fetches_again_once_empty_and_a_response_follows_the_byte_credit(nbytes: int, kb: int) -> None:
    assert prefetch(nbytes, fetch_backoff=True) == {
        "queued.max.messages.kbytes": str(kb), "queued.min.messages": "1", "fetch.queue.backoff.ms": "1"}


@pytest.mark.parametrize("nbytes, kb", [(0, 1024), (4 << 20, 4096), (16 << 20, 16384), (1 << 30, 16384)])
def test_before_librdkafka_2_2_prefetch_is_the_byte_credit_within_1_to_16_mib(nbytes: int, kb: int) -> None:
    # No fetch.queue.backoff.ms there: a bound reached stops fetching for about a second, so it stays large.
    assert prefetch(nbytes, fetch_backoff=False) == {"queued.max.messages.kbytes": str(kb)}


def test_the_linked_librdkafka_decides() -> None:
    import meshcore

    expected = "fetch.queue.backoff.ms" in prefetch(16 << 20, fetch_backoff=True)
    version = tuple(int(x) for x in meshcore.librdkafka_version().split(".")[:2])
    assert ("fetch.queue.backoff.ms" in prefetch(16 << 20)) == (expected and version >= (2, 2))


def test_kip_848_groups_where_librdkafka_has_them_production_ready() -> None:
    assert group_protocol("2.16.0") == group_protocol("2.12.1") == {"group.protocol": "consumer"}
    assert group_protocol("2.11.1") == group_protocol("2.0.2") == {}
