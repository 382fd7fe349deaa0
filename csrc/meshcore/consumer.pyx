"""One librdkafka consumer (rd_kafka_t in a consumer group), owned by one extension type with an explicit close.

This is the core's first consumer: group membership, polling with the GIL released, and synchronous commits.
poll_records() returns Python tuples and is meant for tools and tests; the Subscribe data path will encode records
natively instead. The handle is used by one thread at a time.
"""

import warnings

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strlen

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
    cdef rd_kafka_message_t *held      # polled but over the byte budget of the last call: sent first next time

    def __init__(self):
        raise TypeError("Consumer cannot be instantiated directly; use create_consumer()")

    def poll_batch(self, str cluster, int max_records, long long max_bytes, int timeout_ms):
        """Poll up to max_records records whose keys and values add up to at most max_bytes, waiting at most
        timeout_ms for the first, and encode them as one kafkamesh.v1.SubscribeResponse (a RecordBatch grouped by
        partition, each group naming `cluster`), with no Python object per record.

        Returns (encoded, runs, count): runs lists (topic, partition, first_offset, last_offset) per group, for the
        stream's offset tracking; encoded is None when nothing arrived. A record that does not fit the byte budget
        is kept and returned first by the next call. A fatal consumer error raises KafkaError."""
        self._check_alive()
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        cdef rd_kafka_message_t **msgs = <rd_kafka_message_t **>malloc(max_records * sizeof(void *))
        if msgs == NULL:
            raise MemoryError()
        cdef int n = 0, i
        cdef int wait = timeout_ms
        cdef long long used = 0, size
        cdef rd_kafka_message_t *m
        cdef rd_kafka_resp_err_t fatal = RD_KAFKA_RESP_ERR_NO_ERROR
        try:
            with nogil:
                while n < max_records:
                    if self.held != NULL:
                        m = self.held
                        self.held = NULL
                    else:
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
                    size = <long long>(m.len + m.key_len)
                    if n > 0 and used + size > max_bytes:
                        self.held = m
                        break
                    used += size
                    msgs[n] = m
                    n += 1
            if fatal:
                raise_kafka_error(fatal, f"consumer {self.name!r}")
            if n == 0:
                return None, [], 0
            return _encode_batch(cluster.encode(), msgs, n)
        finally:
            for i in range(n):
                rd_kafka_message_destroy(msgs[i])
            free(msgs)

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

    def store_offsets(self, offsets):
        """Mark [(topic, partition, next_offset), ...] as processed: the group commits them (automatically with
        enable.auto.commit, at the latest when the consumer closes or loses the partition)."""
        self._check_alive()
        offsets = list(offsets)
        if not offsets:
            return
        cdef rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(len(offsets))
        cdef rd_kafka_topic_partition_t *tp
        cdef rd_kafka_resp_err_t err
        try:
            for topic, partition, offset in offsets:
                tp = rd_kafka_topic_partition_list_add(tl, str(topic).encode(), partition)
                tp.offset = offset
            with nogil:
                err = rd_kafka_offsets_store(self.rk, tl)
        finally:
            rd_kafka_topic_partition_list_destroy(tl)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR and err != RD_KAFKA_RESP_ERR__STATE:
            raise_kafka_error(err, f"store offsets of consumer {self.name!r}")
        return err == RD_KAFKA_RESP_ERR_NO_ERROR

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
        if self.held != NULL:
            rd_kafka_message_destroy(self.held)
            self.held = NULL
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


cdef inline size_t _vlen(uint64_t v) noexcept nogil:
    cdef size_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline size_t _field_len(size_t n) noexcept nogil:
    """Size of a length-delimited field (tag + length + bytes)."""
    return 1 + _vlen(n) + n


cdef inline unsigned char *_varint(unsigned char *p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <unsigned char>((v & 0x7F) | 0x80)
        p += 1
        v >>= 7
    p[0] = <unsigned char>v
    return p + 1


cdef inline unsigned char *_bytes_field(unsigned char *p, unsigned char tag, const void *data,
                                        size_t n) noexcept nogil:
    p[0] = tag
    p = _varint(p + 1, n)
    if n:
        memcpy(p, data, n)
    return p + n


cdef size_t _headers_len(rd_kafka_message_t *m) noexcept nogil:
    cdef rd_kafka_headers_t *hdrs
    cdef size_t idx = 0, total = 0, vsize, inner
    cdef const char *name
    cdef const void *value
    if rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR:
        return 0
    while rd_kafka_header_get_all(hdrs, idx, &name, &value, &vsize) == RD_KAFKA_RESP_ERR_NO_ERROR:
        inner = _field_len(strlen(name)) + (_field_len(vsize) if value != NULL else 0)
        total += _field_len(inner)
        idx += 1
    return total


cdef unsigned char *_put_headers(unsigned char *p, rd_kafka_message_t *m) noexcept nogil:
    cdef rd_kafka_headers_t *hdrs
    cdef size_t idx = 0, vsize, nlen, inner
    cdef const char *name
    cdef const void *value
    if rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR:
        return p
    while rd_kafka_header_get_all(hdrs, idx, &name, &value, &vsize) == RD_KAFKA_RESP_ERR_NO_ERROR:
        nlen = strlen(name)
        inner = _field_len(nlen) + (_field_len(vsize) if value != NULL else 0)
        p[0] = 0x22                      # ConsumedRecord.headers = 4
        p = _varint(p + 1, inner)
        p = _bytes_field(p, 0x0a, name, nlen)
        if value != NULL:
            p = _bytes_field(p, 0x12, value, vsize)
        idx += 1
    return p


cdef size_t _record_len(rd_kafka_message_t *m, int64_t ts) noexcept nogil:
    """ConsumedRecord{offset=1, key=2, value=3, headers=4, timestamp_ms=5} without its own tag and length."""
    cdef size_t n = 1 + _vlen(<uint64_t>m.offset) + 1 + _vlen(<uint64_t>ts)
    if m.key != NULL:
        n += _field_len(m.key_len)
    if m.payload != NULL:
        n += _field_len(m.len)
    return n + _headers_len(m)


cdef object _encode_batch(bytes cluster, rd_kafka_message_t **msgs, int n):
    """SubscribeResponse{records=1: RecordBatch{partitions=1: PartitionRecords{cluster=1, topic=2, partition=3,
    records=4}}}, consecutive records of one partition forming one PartitionRecords."""
    cdef size_t *rec_len = <size_t *>malloc(n * sizeof(size_t))
    cdef int64_t *ts = <int64_t *>malloc(n * sizeof(int64_t))
    cdef int *run_end = <int *>malloc(n * sizeof(int))
    cdef size_t *run_len = <size_t *>malloc(n * sizeof(size_t))
    cdef int i, j, k, r, runs = 0, start
    cdef size_t batch_len = 0, total, clen = len(cluster), tlen
    cdef rd_kafka_timestamp_type_t tstype
    cdef const char *topic
    cdef unsigned char *p
    cdef unsigned char *base
    cdef const char *cname = cluster
    if rec_len == NULL or ts == NULL or run_end == NULL or run_len == NULL:
        free(rec_len); free(ts); free(run_end); free(run_len)
        raise MemoryError()
    out_runs = []
    try:
        with nogil:
            for i in range(n):
                ts[i] = rd_kafka_message_timestamp(msgs[i], &tstype)
                if ts[i] < 0:
                    ts[i] = 0
                rec_len[i] = _record_len(msgs[i], ts[i])
            i = 0
            while i < n:
                start = i
                j = i + 1
                while j < n and msgs[j].rkt == msgs[i].rkt and msgs[j].partition == msgs[i].partition:
                    j += 1
                tlen = strlen(rd_kafka_topic_name(msgs[i].rkt))
                run_len[runs] = _field_len(clen) + _field_len(tlen) + 1 + _vlen(<uint64_t><int64_t>msgs[i].partition)
                for k in range(start, j):
                    run_len[runs] += _field_len(rec_len[k])
                run_end[runs] = j
                batch_len += _field_len(run_len[runs])
                runs += 1
                i = j
            total = _field_len(batch_len)
        encoded = PyBytes_FromStringAndSize(NULL, total)
        base = <unsigned char *>PyBytes_AS_STRING(encoded)
        with nogil:
            p = base
            p[0] = 0x0a                      # SubscribeResponse.records = 1
            p = _varint(p + 1, batch_len)
            start = 0
            for r in range(runs):
                topic = rd_kafka_topic_name(msgs[start].rkt)
                p[0] = 0x0a                  # RecordBatch.partitions = 1
                p = _varint(p + 1, run_len[r])
                p = _bytes_field(p, 0x0a, cname, clen)
                p = _bytes_field(p, 0x12, topic, strlen(topic))
                p[0] = 0x18                  # partition = 3 (int32: negative values as 10-byte varints)
                p = _varint(p + 1, <uint64_t><int64_t>msgs[start].partition)
                for k in range(start, run_end[r]):
                    p[0] = 0x22              # records = 4
                    p = _varint(p + 1, rec_len[k])
                    p[0] = 0x08
                    p = _varint(p + 1, <uint64_t>msgs[k].offset)
                    if msgs[k].key != NULL:
                        p = _bytes_field(p, 0x12, msgs[k].key, msgs[k].key_len)
                    if msgs[k].payload != NULL:
                        p = _bytes_field(p, 0x1a, msgs[k].payload, msgs[k].len)
                    p = _put_headers(p, msgs[k])
                    p[0] = 0x28
                    p = _varint(p + 1, <uint64_t>ts[k])
                start = run_end[r]
        if <size_t>(p - base) != total:
            raise AssertionError(f"encoded {p - base} bytes, computed {total}")
        start = 0
        for r in range(runs):
            out_runs.append((rd_kafka_topic_name(msgs[start].rkt).decode(), msgs[start].partition,
                             msgs[start].offset, msgs[run_end[r] - 1].offset))
            start = run_end[r]
        return encoded, out_runs, n
    finally:
        free(rec_len); free(ts); free(run_end); free(run_len)
