"""One librdkafka consumer (rd_kafka_t in a consumer group), owned by one extension type with an explicit close.

This is the core's first consumer: group membership, polling with the GIL released, and synchronous commits.
poll_records() returns Python tuples and is meant for tools and tests; the Subscribe data path will encode records
natively instead. The handle is used by one thread at a time.
"""

import warnings

from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

from meshcore.conf cimport conf_from_dict
from meshcore.rdkafka cimport *
from meshcore.support cimport KM_DEBUG_ENABLED

from meshcore.errors import ConfigError, HandleClosedError, KafkaError

cdef int64_t _handles_created = 0
cdef int64_t _handles_destroyed = 0


cdef raise_kafka_error(rd_kafka_resp_err_t err, str context):
    raise KafkaError(<int>err, rd_kafka_err2name(err).decode(), f"{context}: {rd_kafka_err2str(err).decode()}")


cdef class Consumer:
    """A librdkafka consumer in a group. Built by create_consumer(); call close() when done."""

    cdef rd_kafka_t *rk
    cdef readonly str name

    def __init__(self):
        raise TypeError("Consumer cannot be instantiated directly; use create_consumer()")

    cdef inline int _check_alive(self) except -1:
        if self.rk == NULL:
            raise HandleClosedError(f"consumer {self.name!r} is closed")
        return 0

    def subscribe(self, topics):
        """Join the group for these topics (replacing any earlier subscription)."""
        self._check_alive()
        topics = list(topics)
        if not topics:
            raise ValueError("subscribe() needs at least one topic")
        cdef rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(len(topics))
        cdef rd_kafka_resp_err_t err
        try:
            for t in topics:
                rd_kafka_topic_partition_list_add(tl, str(t).encode(), RD_KAFKA_PARTITION_UA)
            err = rd_kafka_subscribe(self.rk, tl)
        finally:
            rd_kafka_topic_partition_list_destroy(tl)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR:
            raise_kafka_error(err, f"subscribe to {topics}")

    def poll_records(self, int max_records, int timeout_ms):
        """Up to max_records records, waiting at most timeout_ms for the first one. Each record is a tuple
        (topic, partition, offset, key, value, timestamp_ms). Consumer errors that librdkafka recovers from by
        itself are skipped; a fatal error raises KafkaError."""
        self._check_alive()
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        cdef rd_kafka_message_t **msgs = <rd_kafka_message_t **>malloc(max_records * sizeof(void *))
        if msgs == NULL:
            raise MemoryError()
        cdef int n = 0, i
        cdef int wait = timeout_ms
        cdef rd_kafka_message_t *m
        cdef rd_kafka_resp_err_t fatal = RD_KAFKA_RESP_ERR_NO_ERROR
        cdef rd_kafka_timestamp_type_t tstype
        out = []
        try:
            with nogil:
                while n < max_records:
                    m = rd_kafka_consumer_poll(self.rk, wait)
                    if m == NULL:
                        break
                    wait = 0
                    if m.err != RD_KAFKA_RESP_ERR_NO_ERROR:
                        if m.err == RD_KAFKA_RESP_ERR__FATAL:
                            fatal = m.err
                        rd_kafka_message_destroy(m)
                        if fatal:
                            break
                        continue
                    msgs[n] = m
                    n += 1
            for i in range(n):
                m = msgs[i]
                out.append((
                    rd_kafka_topic_name(m.rkt).decode(), m.partition, m.offset,
                    None if m.key == NULL else (<char *>m.key)[:m.key_len],
                    None if m.payload == NULL else (<char *>m.payload)[:m.len],
                    rd_kafka_message_timestamp(m, &tstype),
                ))
        finally:
            for i in range(n):
                rd_kafka_message_destroy(msgs[i])
            free(msgs)
        if fatal:
            raise_kafka_error(fatal, f"consumer {self.name!r}")
        return out

    def commit(self):
        """Commit the offsets of the records returned so far (synchronously)."""
        self._check_alive()
        cdef rd_kafka_resp_err_t err
        with nogil:
            err = rd_kafka_commit(self.rk, NULL, 0)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR:
            raise_kafka_error(err, f"commit of consumer {self.name!r}")

    @property
    def closed(self):
        return self.rk == NULL

    def close(self):
        """Leave the group (committing if enable.auto.commit is on) and destroy the handle. Idempotent."""
        global _handles_destroyed
        cdef rd_kafka_t *rk = self.rk
        if rk == NULL:
            return
        self.rk = NULL
        with nogil:
            rd_kafka_consumer_close(rk)
            rd_kafka_destroy(rk)
        if KM_DEBUG_ENABLED:
            _handles_destroyed += 1

    def __repr__(self):
        return f"<meshcore.Consumer {self.name!r} {'closed' if self.rk == NULL else 'open'}>"

    def __dealloc__(self):
        if self.rk != NULL:
            # No source=self: the warning would keep a reference to an object being freed.
            warnings.warn(f"unclosed {self!r}", ResourceWarning)
            self.close()


def create_consumer(str name, dict config):
    """Create a group consumer from librdkafka properties (group.id required). Raises ConfigError naming the
    property."""
    global _handles_created
    cdef char errstr[512]
    cdef rd_kafka_t *rk
    cdef Consumer c
    if "group.id" not in config:
        raise ConfigError("a consumer needs the librdkafka property 'group.id'")
    cdef rd_kafka_conf_t *conf = conf_from_dict(config)
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr))
    if rk == NULL:
        rd_kafka_conf_destroy(conf)
        raise ConfigError(f"could not create consumer {name!r}: {errstr.decode(errors='replace')}")
    if KM_DEBUG_ENABLED:
        _handles_created += 1
    # Route the group's events to the consumer queue so that poll_records() serves rebalances too.
    rd_kafka_poll_set_consumer(rk)
    c = Consumer.__new__(Consumer)
    c.rk = rk
    c.name = name
    return c


def _debug_counts():
    """Created/destroyed counts of consumer rd_kafka_t handles (non-zero only in the debug build)."""
    return {"rd_kafka_t(consumer)": (_handles_created, _handles_destroyed)}
