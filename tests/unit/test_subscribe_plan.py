"""What a Subscribe stream reads where: the cluster plan from a mapping, and the prefetch bound per consumer."""

from __future__ import annotations

import pytest

from sidecar.mapping.model import Mapping
from sidecar.subscribe.session import PlanError, clusters_by_topic, prefetch_kbytes

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


@pytest.mark.parametrize("credit, kb", [(0, 1024), (100_000, 1024), (4 << 20, 4096), (16 << 20, 16384),
                                        (1 << 30, 16384)])
def test_prefetch_follows_the_byte_credit_within_1_to_16_mib(credit: int, kb: int) -> None:
    assert prefetch_kbytes(credit) == kb


def test_responses_of_several_clusters_merge_into_one_with_every_group_in_order() -> None:
    from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
    from sidecar.subscribe.poller import merge_responses

    def resp(cluster: str, n: int, size: int) -> bytes:
        return M.SubscribeResponse(records=M.RecordBatch(partitions=[M.PartitionRecords(
            cluster=cluster, topic="t", partition=n, records=[M.ConsumedRecord(offset=i, value=b"v" * size)
                                                              for i in range(n)])])).SerializeToString()

    parts = [resp("c1", 1, 10), resp("c2", 3, 300), resp("c3", 2, 70_000)]   # 1-, 2- and 3-byte lengths
    merged = M.SubscribeResponse.FromString(merge_responses(parts))
    assert [(g.cluster, len(g.records)) for g in merged.records.partitions] == [("c1", 1), ("c2", 3), ("c3", 2)]
    assert merge_responses(parts[:1]) == parts[0]
