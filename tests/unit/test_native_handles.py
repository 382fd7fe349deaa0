"""Lifecycle of the core's C handles: factories only, explicit close, use after close, unclosed warnings, and
delivery failures counted in C. No broker is needed: the bootstrap address refuses connections."""

from __future__ import annotations

import gc
import time

import pytest

import meshcore
from sidecar.api.kafkamesh.v1 import mesh_pb2

NOWHERE = {"bootstrap.servers": "127.0.0.1:9", "log_level": "0"}


def test_handles_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError, match="create_producer"):
        meshcore.Producer()
    with pytest.raises(TypeError, match="create_consumer"):
        meshcore.Consumer()


def test_producer_close_is_idempotent_and_use_after_close_raises() -> None:
    p = meshcore.create_producer("p1", dict(NOWHERE))
    assert not p.closed
    assert p.close() == 0
    assert p.close() == 0
    assert p.closed
    with pytest.raises(meshcore.HandleClosedError, match="producer 'p1' is closed"):
        p.produce_request(b"")
    with pytest.raises(meshcore.HandleClosedError):
        p.flush(10)
    assert (p.delivered, p.failed) == (0, 0)     # the counters stay readable: metrics must not drop


def test_consumer_close_is_idempotent_and_use_after_close_raises() -> None:
    c = meshcore.create_consumer("c1", {**NOWHERE, "group.id": "g"})
    c.close()
    c.close()
    with pytest.raises(meshcore.HandleClosedError, match="consumer 'c1' is closed"):
        c.poll_records(1, 0)


def test_unknown_or_invalid_property_names_the_property() -> None:
    with pytest.raises(meshcore.ConfigError, match="'no.such.property'"):
        meshcore.create_producer("p", {"no.such.property": "1"})
    with pytest.raises(meshcore.ConfigError, match="'acks'"):
        meshcore.create_producer("p", {"acks": "banana"})
    with pytest.raises(meshcore.ConfigError, match="must map a str to a str"):
        meshcore.create_producer("p", {"linger.ms": 5})  # type: ignore[dict-item]
    with pytest.raises(meshcore.ConfigError, match="group.id"):
        meshcore.create_consumer("c", dict(NOWHERE))


def test_unclosed_handle_warns_and_is_still_freed() -> None:
    p = meshcore.create_producer("leaky", dict(NOWHERE))
    with pytest.warns(ResourceWarning, match="unclosed <meshcore.Producer 'leaky' open>"):
        del p
        gc.collect()


def test_records_to_an_unreachable_cluster_fail_with_timed_out_after_the_delivery_timeout() -> None:
    p = meshcore.create_producer("p", {**NOWHERE, "message.timeout.ms": "300"})
    try:
        req = mesh_pb2.ProduceRequest(batch_id=7)
        for i in range(10):
            req.records.add(topic="t", value=str(i).encode())
        assert p.produce_request(req.SerializeToString()) == (7, 10, 0)
        deadline = time.monotonic() + 10
        while p.failed < 10 and time.monotonic() < deadline:
            p.poll(100)
        assert (p.delivered, p.failed, p.last_error) == (0, 10, "_MSG_TIMED_OUT")
    finally:
        assert p.close(flush_timeout_ms=0) == 0


def test_invalid_topic_names_are_rejected_per_record() -> None:
    p = meshcore.create_producer("p", dict(NOWHERE))
    try:
        req = mesh_pb2.ProduceRequest(batch_id=1)
        req.records.add(topic="", value=b"x")
        req.records.add(topic="ok", value=b"x")
        req.records.add(topic="t" * 250, value=b"x")
        assert p.produce_request(req.SerializeToString()) == (1, 1, 2)
        assert p.failed == 2
        assert p.last_error == "TOPIC_EXCEPTION"
    finally:
        p.close(flush_timeout_ms=0)


def test_malformed_request_enqueues_nothing() -> None:
    p = meshcore.create_producer("p", dict(NOWHERE))
    try:
        good = mesh_pb2.ProduceRequest(batch_id=1)
        good.records.add(topic="t", value=b"x")
        raw = good.SerializeToString() + b"\x12\x05ab"   # a valid record, then a truncated one
        with pytest.raises(meshcore.WireError, match="runs past the end"):
            p.produce_request(raw)
        # Nothing was enqueued. The out-queue length librdkafka reports also counts events waiting to be served
        # (the refused connection's errors), so serve them first: an enqueued record would stay outstanding until
        # its message timeout, far past this wait.
        deadline = time.monotonic() + 2.0
        while p.flush(0) and time.monotonic() < deadline:
            p.poll(50)
        assert p.flush(0) == 0
    finally:
        p.close(flush_timeout_ms=0)


def test_debug_counts_report_every_kind() -> None:
    counts = meshcore.debug_counts()
    assert set(counts) == {"rd_kafka_t(producer)", "rd_kafka_t(consumer)", "produce_request_view", "route_table",
                           "produce_batch", "produce_stream", "topic_rules", "router_table"}
    if meshcore.DEBUG:
        before = counts["rd_kafka_t(producer)"]
        meshcore.create_producer("p", dict(NOWHERE)).close()
        assert meshcore.debug_counts()["rd_kafka_t(producer)"] == (before[0] + 1, before[1] + 1)
