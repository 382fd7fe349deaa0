"""How far a consumer group is from a move's fence, partition by partition (pure: no Kafka)."""

from __future__ import annotations

from sidecar.manage.drain import lag
from sidecar.manage.status import behind


def test_lag_counts_what_each_group_has_left_below_the_fence() -> None:
    fence = {0: 100, 1: 50, 2: 0, 3: 40}
    low = {0: 0, 1: 0, 2: 0, 3: 40}           # partition 2 empty; partition 3's records all deleted by retention
    groups = {"done": {0: 100, 1: 50}, "half": {0: 60, 1: 50}, "never": {}, "past": {0: 120, 1: 70, 2: 5}}
    assert lag(fence, low, groups) == {"half": {0: 40}, "never": {0: 100, 1: 50}}


def test_behind_names_the_sidecars_that_have_not_applied_a_revision() -> None:
    entries = [{"host": "a", "revision": 7}, {"host": "b", "revision": 9}, {"host": "c"}]
    assert behind(entries, 8) == ["a", "c"] and behind(entries, 7) == ["c"]
