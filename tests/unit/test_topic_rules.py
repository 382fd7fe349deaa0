"""A topic's rule from its DescribeConfigs entries (and a broker's defaults), as the data plane will check it."""

from __future__ import annotations

import pytest

from sidecar.config import SidecarSettings
from sidecar.errors import UsageError
from sidecar.topic_rules import Rule, rule_from_config

LONG_MAX = str(2**63 - 1)


def test_kafka_4_defaults_bound_only_timestamps_ahead() -> None:
    topic = {"cleanup.policy": "delete", "message.timestamp.type": "CreateTime",
             "message.timestamp.before.max.ms": LONG_MAX, "message.timestamp.after.max.ms": "3600000",
             "max.message.bytes": "1048588"}
    assert rule_from_config(topic) == Rule(False, True, None, 3_600_000, 1_048_588)


def test_a_compacted_topic_requires_a_key_and_log_append_time_skips_timestamps() -> None:
    assert rule_from_config({"cleanup.policy": "compact,delete", "message.timestamp.type": "LogAppendTime"}) == Rule(
        True, False, None, None, None)
    assert rule_from_config({"cleanup.policy": "delete, compact"}).requires_key
    assert not rule_from_config({"cleanup.policy": "delete"}).requires_key


def test_brokers_defaults_use_their_own_names() -> None:
    broker = {"log.cleanup.policy": "compact", "log.message.timestamp.type": "CreateTime",
              "log.message.timestamp.before.max.ms": "86400000", "log.message.timestamp.after.max.ms": LONG_MAX,
              "message.max.bytes": "1048588", "max.message.bytes": "5"}
    assert rule_from_config(broker, broker=True) == Rule(True, True, 86_400_000, None, 1_048_588)


def test_the_old_difference_setting_bounds_both_sides_when_before_and_after_are_absent() -> None:
    assert rule_from_config({"message.timestamp.difference.max.ms": "60000"}) == Rule(False, True, 60_000, 60_000,
                                                                                       None)
    assert rule_from_config({"message.timestamp.difference.max.ms": "60000",
                             "message.timestamp.after.max.ms": "5"}) == Rule(False, True, 60_000, 5, None)


def test_a_value_that_is_not_a_number_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ValueError):
        rule_from_config({"max.message.bytes": "lots"})


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), ("TRUE", True), (True, True)])
def test_topic_checks_setting(raw: object, expected: bool) -> None:
    assert SidecarSettings._typed({"cache_dir": "/c", "topic_checks": raw}).topic_checks is expected


def test_topic_checks_setting_refuses_nonsense() -> None:
    with pytest.raises(UsageError, match="topic-checks must be true or false, got 'maybe'"):
        SidecarSettings._typed({"cache_dir": "/c", "topic_checks": "maybe"})
