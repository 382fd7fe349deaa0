"""Hostile input against the real sidecar process, while other apps use it: a seeded, bounded corpus of 100,000
messages (mutated Produce requests, hostile records, random bytes, mutated Subscribe subscriptions, acks and
credit). The fuzzed streams may fail (INVALID_ARGUMENT, per-record codes), but the process must stay up and a steady
producing app and a steady consuming app must be served throughout: every steady record acked, and read back.

A crash would kill only the sidecar process under test, which the test notices; the corpus is generated from fixed
seeds, so a failure is reproduced by running the test again."""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace
from tests.integration.subscribe_stream import SubStream
from tests.wire_bytes import int_field, len_field

PRODUCE_MESSAGES = 80_000
SUBSCRIBE_MESSAGES = 20_000
HOSTILE = [b"", b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", "é€😀".encode(), b"a" * 300]


def _record(rnd: random.Random, topics: list[bytes]) -> bytes:
    """A Record that parses, with hostile contents: bad topics, header names that are not UTF-8, out-of-range
    timestamps and partitions, null and empty keys and values, unknown fields."""
    bad_topics = HOSTILE + [b"..", b"bad topic", b"x" * 250]
    out = len_field(1, rnd.choice(topics) if rnd.random() < 0.8 else rnd.choice(bad_topics))
    if rnd.random() < 0.7:
        out += len_field(2, rnd.randbytes(rnd.randrange(0, 40)))
    if rnd.random() < 0.9:
        out += len_field(3, rnd.randbytes(rnd.choice([0, 1, 10, 100, 2000])))
    for _ in range(rnd.choice([0, 0, 1, 3])):
        header = len_field(1, rnd.choice(HOSTILE + [b"trace-id"]))
        if rnd.random() < 0.7:
            header += len_field(2, rnd.randbytes(rnd.randrange(0, 20)))
        out += len_field(4, header)
    if rnd.random() < 0.3:
        out += int_field(5, rnd.choice([0, 1_700_000_000_000, -1, -(2**63), 2**63 - 1, 1_700_000_000_000_000]))
    if rnd.random() < 0.3:
        out += int_field(6, rnd.choice([0, 1, 2, 99, -1, -5, 2**31 - 1]))
    if rnd.random() < 0.05:
        out += int_field(15, rnd.randrange(2**64)) + len_field(99, rnd.randbytes(5))      # unknown fields: skipped
    return out


def _produce_request(rnd: random.Random, batch_id: int, topics: list[bytes]) -> bytes:
    """A request that parses (its records may be refused one by one)."""
    return int_field(1, batch_id) + b"".join(len_field(2, _record(rnd, topics)) for _ in range(rnd.randrange(0, 6)))


def _mutated(rnd: random.Random, raw: bytes) -> bytes:
    """Flipped bytes, random bytes or a truncation: usually malformed, which ends the stream."""
    out = bytearray(raw)
    roll = rnd.random()
    if roll < 0.6 and out:
        for _ in range(rnd.randrange(1, 4)):
            out[rnd.randrange(len(out))] = rnd.randrange(256)
    elif roll < 0.8:
        out = bytearray(rnd.randbytes(rnd.randrange(0, 64)))
    else:
        del out[rnd.randrange(len(out) + 1):]
    return bytes(out)


class Steady(threading.Thread):
    """An app producing small valid batches, one in flight at a time, timing each answer."""

    def __init__(self, target: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.target, self.topic = target, topic
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.slowest = 0.0
        self.problems: list[str] = []
        self._answered = threading.Semaphore(0)

    def _requests(self) -> Iterator[bytes]:
        i = 0
        while not self.stop.is_set():
            req = M.ProduceRequest(batch_id=i)
            for j in range(10):
                req.records.add(topic=self.topic, value=f"steady-{i}-{j}".encode())
            self._sent = time.monotonic()
            yield req.SerializeToString()
            i += 1
            if not self._answered.acquire(timeout=30):
                self.problems.append(f"batch {i - 1} not answered in 30 s")
                return

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as ch:
            try:
                for raw in ch.stream_stream("/kafkamesh.v1.Mesh/Produce")(self._requests()):
                    resp = M.ProduceResponse.FromString(raw)
                    self.slowest = max(self.slowest, time.monotonic() - self._sent)
                    if resp.ok_count != 10 or resp.errors:
                        self.problems.append(f"batch {resp.batch_id}: {resp}")
                    self.acked += [f"steady-{resp.batch_id}-{j}" for j in range(10)]
                    self._answered.release()
            except grpc.RpcError as e:
                self.problems.append(f"stream ended: {e.code()} {e.details()}")


def _fuzz_produce(target: str, rnd: random.Random, topics: list[bytes]) -> dict[str, int]:
    """Send PRODUCE_MESSAGES fuzzed requests, on as many streams as the malformed ones end."""
    counts = {"sent": 0, "answered": 0, "streams": 0, "invalid_argument": 0, "record_errors": 0}
    with grpc.insecure_channel(target) as ch:
        method = ch.stream_stream("/kafkamesh.v1.Mesh/Produce")
        while counts["sent"] < PRODUCE_MESSAGES:
            # A stream of requests that parse, then one mutated: a malformed request ends the stream, so it goes
            # last, and every message counted was read by the sidecar.
            batch = [_produce_request(rnd, counts["sent"] + k, topics)
                     for k in range(min(200, PRODUCE_MESSAGES - counts["sent"]))]
            batch[-1] = _mutated(rnd, batch[-1])
            counts["sent"] += len(batch)
            counts["streams"] += 1
            try:
                for raw in method(iter(batch), timeout=60):
                    resp = M.ProduceResponse.FromString(raw)
                    counts["answered"] += 1
                    counts["record_errors"] += len(resp.errors)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
                counts["invalid_argument"] += 1
    return counts


def _subscription(rnd: random.Random, topic: str) -> bytes:
    sub = M.Subscription(group=f"fz-{rnd.randrange(10**6)}", topics=[topic], start=M.START_POSITION_LATEST,
                         max_records=rnd.choice([0, 1, 10**9]), max_wait_ms=rnd.choice([0, 2**32 - 1]),
                         credit=M.Credit(records=rnd.choice([0, 1, 2**32 - 1]), bytes=rnd.choice([0, 1, 2**64 - 1])),
                         max_response_bytes=rnd.choice([0, 1, 1024, 65 << 20, 2**32 - 1]))
    raw = bytearray(M.SubscribeRequest(subscription=sub).SerializeToString())
    roll = rnd.random()
    if roll < 0.4:
        raw[rnd.randrange(len(raw))] = rnd.randrange(256)
    elif roll < 0.6:
        raw = bytearray(rnd.randbytes(rnd.randrange(0, 40)))
    elif roll < 0.8:
        group, topic_name = rnd.choice(HOSTILE), rnd.choice(HOSTILE + [b"..", b""])
        raw = bytearray(len_field(1, len_field(1, group) + len_field(2, topic_name)))
    return bytes(raw)


def _later_message(rnd: random.Random) -> bytes:
    """An acks or credit message with hostile values."""
    if rnd.random() < 0.5:
        ranges = [M.AckRange(cluster=rnd.choice(["c1", "c9", ""]), topic=rnd.choice(["t", "", "x" * 300]),
                             partition=rnd.choice([0, -1, 2**31 - 1]), first_offset=rnd.choice([0, -5, 2**63 - 1]),
                             last_offset=rnd.choice([0, -1, 10, 2**63 - 1])) for _ in range(rnd.randrange(0, 5))]
        return M.SubscribeRequest(acks=M.Acks(ranges=ranges)).SerializeToString()
    return M.SubscribeRequest(credit=M.Credit(records=rnd.choice([0, 1, 2**32 - 1]),
                                              bytes=rnd.choice([0, 1, 2**64 - 1]))).SerializeToString()


def _fuzz_subscribe(target: str, rnd: random.Random, topic: str) -> dict[str, int]:
    counts = {"sent": 0, "streams": 0, "ended_invalid": 0}
    with grpc.insecure_channel(target) as ch:
        method = ch.stream_stream("/kafkamesh.v1.Mesh/Subscribe")
        first_messages = 0
        while counts["sent"] < SUBSCRIBE_MESSAGES:
            first = _subscription(rnd, topic) if first_messages < 1000 else M.SubscribeRequest(
                subscription=M.Subscription(group=f"fz-{uuid.uuid4().hex[:6]}", topics=[topic])).SerializeToString()
            first_messages += 1
            later = [_later_message(rnd) for _ in range(0 if first_messages < 1000 else 500)]
            if later and rnd.random() < 0.5:
                later[-1] = rnd.randbytes(rnd.randrange(1, 30))      # last: random bytes may end the stream
            outbox: queue.Queue[bytes | None] = queue.Queue()
            for raw in [first, *later]:
                outbox.put(raw)
            outbox.put(None)
            counts["sent"] += 1 + len(later)
            counts["streams"] += 1

            def requests(box: queue.Queue[bytes | None] = outbox) -> Iterator[bytes]:
                while (raw := box.get()) is not None:
                    yield raw

            try:
                for _ in method(requests(), timeout=30):
                    pass
            except grpc.RpcError as e:
                # malformed or out of range; or a mutated topic name that nothing routes
                assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), (
                    e.code(), e.details())
                counts["ended_invalid"] += 1
    return counts


def test_a_fuzzed_corpus_of_100000_messages_leaves_the_sidecar_up_and_other_apps_served(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1 = sandbox.clusters[0].bootstrap
    steady_topic, fuzz_topic = f"{topic}-steady", f"{topic}-fuzz"
    for t in (steady_topic, fuzz_topic):
        create_topic(c1, t, partitions=3)
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox),
                        "producer": {steady_topic: {"where": [{"sink": "c1"}]},
                                     fuzz_topic: {"where": [{"sink": "c1"}, {"sink": "c2"}]}},
                        "consumer": {steady_topic: [{"vip": "c1"}]}})
    sc = sidecar_factory(ns)
    steady = Steady(sc.target, steady_topic)
    steady.start()
    with SubStream(sc.target, f"steady-{uuid.uuid4().hex[:6]}", [steady_topic]) as reader:
        produced = _fuzz_produce(sc.target, random.Random(20261126), [fuzz_topic.encode()] * 3 + [b"nowhere"])
        assert sc.alive(), "the sidecar died under the Produce corpus"
        subscribed = _fuzz_subscribe(sc.target, random.Random(1126), fuzz_topic)
        assert sc.alive(), "the sidecar died under the Subscribe corpus"
        steady.stop.set()
        steady.join(60)
        acked = list(steady.acked)
        reader.wait(lambda s: set(acked) <= set(s.values()), timeout=60, what="every steady record read")
    assert produced["sent"] + subscribed["sent"] >= 100_000
    # the corpus reached the error paths: streams ended for malformed bytes, records refused one by one
    assert produced["invalid_argument"] > 100 and produced["record_errors"] > 10_000, produced
    assert subscribed["ended_invalid"] > 100, subscribed
    assert not steady.problems, steady.problems[:5]
    assert len(acked) > 100 and steady.slowest < 5.0, (len(acked), steady.slowest)
    assert sorted(m.value().decode() for m in read_all(c1, steady_topic, len(acked))) == sorted(acked)
