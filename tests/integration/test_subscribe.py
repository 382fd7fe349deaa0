"""Subscribe through the real sidecar: one aggregated stream from several clusters, acks, and refusals."""

from __future__ import annotations

import queue
import time
from typing import Any

import grpc
import pytest

from sidecar.api.kafkamesh.v1 import mesh_pb2
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import committed, create_topic
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace, produce

M = mesh_pb2


def _subscribe(target: str, sub: M.Subscription, want: int, ack: bool = True,
               timeout: float = 60) -> list[tuple[str, str, int, int, bytes]]:
    """Read until `want` records arrived (acking each batch when ack), then end the stream."""
    outbox: queue.Queue[M.SubscribeRequest | None] = queue.Queue()
    outbox.put(M.SubscribeRequest(subscription=sub))

    def requests() -> Any:
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item.SerializeToString()

    got: list[tuple[str, str, int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        call = ch.stream_stream("/kafkamesh.v1.Mesh/Subscribe")(requests(), timeout=timeout)
        try:
            for raw in call:
                resp = M.SubscribeResponse.FromString(raw)
                if resp.WhichOneof("kind") != "records":
                    continue
                ranges = []
                for g in resp.records.partitions:
                    got += [(g.cluster, g.topic, g.partition, r.offset, r.value) for r in g.records]
                    ranges.append(M.AckRange(cluster=g.cluster, topic=g.topic, partition=g.partition,
                                             first_offset=g.records[0].offset, last_offset=g.records[-1].offset))
                if ack:
                    outbox.put(M.SubscribeRequest(acks=M.Acks(ranges=ranges)))
                outbox.put(M.SubscribeRequest(credit=M.Credit(records=len(ranges) and sum(
                    len(g.records) for g in resp.records.partitions), bytes=len(raw))))
                if len(got) >= want or time.monotonic() > deadline:
                    break
        finally:
            time.sleep(1.5)            # let the acks reach the sidecar before the stream ends
            outbox.put(None)
            call.cancel()
    return got


def test_a_subscriber_receives_every_record_of_both_clusters_and_commits_what_it_acked(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    for c in sandbox.clusters[:2]:
        create_topic(c.bootstrap, topic, partitions=3)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox),
                        "producer": {topic: {"where": [{"sink": "c1"}]}},
                        "consumer": {topic: [{"vip": "c1"}, {"vip": "c2"}]}})
    sc = sidecar_factory(ns)
    # c1 through the sidecar's route; c2 written directly so both clusters hold records
    produce(sc.target, [batch(b, [(topic, f"c1-{b}-{i}") for i in range(100)]) for b in range(3)])
    apply(sandbox, ns, {"producer": {topic: {"where": [{"sink": "c2"}]}}})
    time.sleep(1)
    produce(sc.target, [batch(10 + b, [(topic, f"c2-{b}-{i}") for i in range(100)]) for b in range(2)])
    group = f"g-{topic}"
    sub = M.Subscription(group=group, topics=[topic], start=M.START_POSITION_EARLIEST,
                         credit=M.Credit(records=200, bytes=1 << 20))
    got = _subscribe(sc.target, sub, want=500)
    values = sorted(v.decode() for *_, v in got)
    assert values == sorted([f"c1-{b}-{i}" for b in range(3) for i in range(100)] +
                            [f"c2-{b}-{i}" for b in range(2) for i in range(100)])
    assert {c for c, *_ in got} == {"c1", "c2"}
    assert all(v.decode().startswith(c) for c, _, _, _, v in got)        # each record names its own cluster
    for c in sandbox.clusters[:2]:
        ends = {}
        for cl, _, p, off, _ in got:
            if cl == c.name:
                ends[p] = max(ends.get(p, 0), off + 1)
        assert committed(c.bootstrap, group, topic, 3) == {p: ends.get(p, -1001) for p in range(3)}


@pytest.mark.parametrize("first, message", [
    (M.SubscribeRequest(subscription=M.Subscription(group="g")).SerializeToString(),
     "subscription.topics is empty"),
    (M.SubscribeRequest(subscription=M.Subscription(topics=["t"])).SerializeToString(),
     "subscription.group is empty"),
    (M.SubscribeRequest(credit=M.Credit(records=1)).SerializeToString(),
     "the first message must be a subscription, got credit"),
    (b"\x0a\x05ab", "malformed SubscribeRequest"),
    (M.SubscribeRequest(subscription=M.Subscription(group="g", topics=["t"]),
                        credit=M.Credit(records=1)).SerializeToString(),
     "the first message carries the subscription only, got credit with it"),
    (M.SubscribeRequest(subscription=M.Subscription(group="g", topics=["bad topic"])).SerializeToString(),
     "subscription.topics[0]"),
    # start = 7: an enum value a newer client might send (proto3 keeps unknown enum values as numbers)
    (b"\x0a\x08" + b"\x0a\x01g\x12\x01t\x18\x07",
     "subscription.start 7 is not a StartPosition this sidecar knows: START_POSITION_UNSPECIFIED (0), "
     "START_POSITION_EARLIEST (1), START_POSITION_LATEST (2)"),
])
def test_a_bad_first_message_is_invalid_argument(sandbox: Sandbox, sidecar_factory: Any,
                                                 first: bytes, message: str) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    sc = sidecar_factory(ns)
    with grpc.insecure_channel(sc.target) as ch:
        call = ch.stream_stream("/kafkamesh.v1.Mesh/Subscribe")
        with pytest.raises(grpc.RpcError) as e:
            list(call(iter([first]), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(message), e.value.details()
    assert sc.alive()
