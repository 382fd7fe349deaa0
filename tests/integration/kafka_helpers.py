"""Helpers for integration tests: build requests with the protobuf runtime, read topics back with confluent-kafka."""

from __future__ import annotations

import ctypes
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sidecar.api.kafkamesh.v1 import mesh_pb2


def create_topic(bootstrap: str, topic: str, partitions: int = 3, config: dict[str, str] | None = None,
                 exist_ok: bool = False) -> None:
    from confluent_kafka import KafkaError, KafkaException

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})]).values():
        try:
            future.result(timeout=30)
        except KafkaException as e:
            if not (exist_ok and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise


def request(batch_id: int, topic: str, ids: range, **extra: Any) -> bytes:
    req = mesh_pb2.ProduceRequest(batch_id=batch_id)
    for i in ids:
        req.records.add(topic=topic, key=f"k{i}".encode(), value=f"id-{i}".encode(), **extra)
    return req.SerializeToString()


def read_all(bootstrap: str, topic: str | list[str], expected: int, timeout: float = 60.0) -> list[Any]:
    """Every record of topic (or topics), read from the beginning by a fresh group, until `expected` arrived or
    timeout."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic] if isinstance(topic, str) else topic)
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    out.append(m)
        # A short extra wait catches records beyond the expected count (duplicates, strays).
        out.extend(m for m in c.consume(500, 1.0) if m.error() is None)
    finally:
        c.close()
    return out


def read_records(bootstrap: str, topics: list[str], expected: int, timeout: float = 60.0) -> set[tuple[str, str]]:
    """The (topic, value) of every record of topics in one cluster, read from the beginning by one fresh group until
    `expected` arrived or timeout (a short extra wait catches strays)."""
    got = read_all(bootstrap, topics, expected, timeout)
    return {(m.topic(), m.value().decode()) for m in got}


def group_type(bootstrap: str, group: str) -> str:
    """The protocol a consumer group runs, as the broker describes it: "CONSUMER" (KIP-848) or "CLASSIC"."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return str(description.type.name)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in tps}


def produce_direct(bootstrap: str, topic: str, values: list[str]) -> None:
    """Write values (each also the key) to topic with confluent-kafka, and wait until every one is acknowledged."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failed: list[Any] = []
    for v in values:
        p.produce(topic, key=v.encode(), value=v.encode(), on_delivery=lambda err, _m: err and failed.append(err))
    assert p.flush(30) == 0 and not failed, failed


class _VuHeader(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _VuMem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _VuUnion(ctypes.Union):
    _fields_ = [("cstr", ctypes.c_char_p), ("i", ctypes.c_int), ("mem", _VuMem), ("header", _VuHeader),
                ("_pad", ctypes.c_char * 64)]


class _Vu(ctypes.Structure):
    """librdkafka's rd_kafka_vu_t: one argument of rd_kafka_produceva()."""
    _fields_ = [("vtype", ctypes.c_int), ("u", _VuUnion)]


_VTYPE_TOPIC, _VTYPE_VALUE, _VTYPE_MSGFLAGS, _VTYPE_HEADER = 1, 4, 7, 9
_MSG_F_COPY = 0x2


def produce_raw_headers(bootstrap: str, topic: str, records: list[tuple[bytes, list[tuple[bytes, bytes]]]]) -> None:
    """Write records (value, [(header name, value)]) with header names as raw bytes, as any Kafka producer may:
    confluent-kafka's Python API only takes str names, so this calls the core's librdkafka through ctypes."""
    import meshcore._linked as linked

    lib = ctypes.CDLL(linked.LIBRARY)
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Vu), ctypes.c_size_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    err = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    assert lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), err, 512) == 0, err.value
    rk = lib.rd_kafka_new(0, conf, err, 512)                    # RD_KAFKA_PRODUCER
    assert rk, err.value
    try:
        for value, headers in records:
            vus = (_Vu * (3 + len(headers)))()
            vus[0].vtype, vus[0].u.cstr = _VTYPE_TOPIC, topic.encode()
            vus[1].vtype, vus[1].u.i = _VTYPE_MSGFLAGS, _MSG_F_COPY
            vus[2].vtype = _VTYPE_VALUE
            vus[2].u.mem.ptr, vus[2].u.mem.size = ctypes.cast(ctypes.c_char_p(value), ctypes.c_void_p), len(value)
            for k, (name, hval) in enumerate(headers):
                vus[3 + k].vtype = _VTYPE_HEADER
                vus[3 + k].u.header.name = name
                vus[3 + k].u.header.val = ctypes.cast(ctypes.c_char_p(hval), ctypes.c_void_p)
                vus[3 + k].u.header.size = len(hval)
            assert lib.rd_kafka_produceva(rk, vus, len(vus)) is None      # NULL: enqueued (headers copied)
        assert lib.rd_kafka_flush(rk, 30_000) == 0
    finally:
        lib.rd_kafka_destroy(rk)
