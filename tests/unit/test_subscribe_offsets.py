"""At-least-once offset tracking: what may be committed after which acks."""

from __future__ import annotations

import random

import pytest

from sidecar.consume.offsets import PartitionOffsets


def test_in_order_acks_move_the_commit_point() -> None:
    p = PartitionOffsets(start=100)
    assert p.committable() == 100
    p.delivered(100, 109)
    assert p.committable() == 100 and p.unacked == 10
    p.ack(100, 104)
    assert p.committable() == 105
    p.ack(105, 109)
    assert p.committable() == 110 and p.unacked == 0


def test_out_of_order_acks_wait_for_the_gap_to_close() -> None:
    p = PartitionOffsets(start=0)
    p.delivered(0, 9)
    assert p.ack(5, 9) == []
    assert p.committable() == 0          # 0..4 not acked: nothing may be committed yet
    p.ack(1, 4)
    assert p.committable() == 0
    p.ack(0, 0)
    assert p.committable() == 10


def test_offsets_kafka_skipped_are_not_waited_for() -> None:
    p = PartitionOffsets(start=0)
    p.delivered(0, 2)
    p.delivered(7, 9)                    # 3..6 compacted away or transaction markers
    p.ack(0, 2)
    assert p.committable() == 7
    p.ack(7, 9)
    assert p.committable() == 10


def test_acks_for_offsets_never_delivered_are_returned_and_ignored() -> None:
    p = PartitionOffsets(start=50)
    p.delivered(50, 59)
    assert p.ack(40, 52) == [(40, 49)]
    assert p.ack(58, 70) == [(60, 70)]
    assert p.ack(80, 90) == [(80, 90)]
    assert p.committable() == 53
    assert p.ack(5, 4) == [(5, 4)]       # an empty range is refused as it is


def test_double_acks_are_harmless() -> None:
    p = PartitionOffsets(start=0)
    p.delivered(0, 4)
    p.ack(0, 2)
    p.ack(0, 2)
    p.ack(1, 1)
    assert p.committable() == 3 and p.unacked == 2


def test_delivery_must_move_forward() -> None:
    p = PartitionOffsets(start=10)
    p.delivered(10, 12)
    with pytest.raises(ValueError, match="does not follow 12"):
        p.delivered(12, 13)


def test_random_ack_orders_commit_exactly_the_acked_prefix() -> None:
    rnd = random.Random(5)
    for _ in range(200):
        p = PartitionOffsets(start=0)
        offsets: list[int] = []
        o = 0
        for _ in range(rnd.randrange(1, 30)):
            o += rnd.choice([1, 1, 1, 2, 5])          # some gaps
            offsets.append(o)
        p = PartitionOffsets(start=offsets[0])
        for x in offsets:
            p.delivered(x, x)
        acked: set[int] = set()
        for x in rnd.sample(offsets, len(offsets)):
            p.ack(x, x)
            acked.add(x)
            prefix = next((y for y in offsets if y not in acked), None)
            assert p.committable() == (prefix if prefix is not None else offsets[-1] + 1)


def test_a_rewind_keeps_unacked_offsets_below_it_and_forgets_what_came_after() -> None:
    p = PartitionOffsets(start=0)
    p.delivered(0, 9)
    p.ack(0, 2)
    p.ack(5, 6)
    p.rewind(6)                          # delivery starts again at 6 (e.g. librdkafka fetched from there again)
    assert p.committable() == 3 and p.delivered_end == 6
    p.delivered(6, 7)
    p.ack(3, 4)
    assert p.committable() == 6          # 5 was acked before the rewind, 6 and 7 were delivered again, not acked
    p.ack(6, 7)
    assert p.committable() == 8 and p.unacked == 0
