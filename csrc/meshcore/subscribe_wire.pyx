"""The Subscribe stream's encoding of polled records: a kafkamesh.v1.SubscribeResponse written straight from
librdkafka's messages, with no Python object per record. The consuming itself is consumer.pyx's (shared with the
router); this module only measures and encodes."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strlen

from meshcore.consumer cimport Consumer, Polled
from meshcore.rdkafka cimport *
from meshcore.wire cimport km_utf8_valid


def poll_batch(Consumer consumer not None, str cluster, int max_records, long long max_bytes, int timeout_ms,
               bint strict=False):
    """Poll up to max_records records of consumer, waiting at most timeout_ms for the first, and encode them as one
    kafkamesh.v1.SubscribeResponse (a RecordBatch grouped by partition, each group naming `cluster`), with no
    Python object per record, of at most max_bytes (the first record always comes, whatever its size, unless
    strict).

    Returns (encoded, runs, count): runs lists (topic, partition, first_offset, last_offset) per group, for the
    stream's offset tracking; encoded is None when nothing arrived (or, strict, the first record would not fit).
    A record that does not fit the byte budget is kept and returned first by the next call. A batch ends at a
    rebalance: call take_events() after each call. A fatal consumer error raises KafkaError."""
    cdef bytes name = cluster.encode()
    # A partition group: its tag and length, cluster, topic and partition fields, and the response's own framing.
    cdef Polled polled = consumer.poll(max_records, max_bytes, timeout_ms, _encoded_size, 32 + len(name), strict)
    if polled.n == 0:
        return None, [], 0
    return _encode_batch(name, polled.msgs, polled.n)


cdef long long _encoded_size(rd_kafka_message_t *m) noexcept nogil:
    # the record's tag and length (at most 6 bytes) and a timestamp of up to 10 bytes, over _record_len's
    return <long long>(_record_len(m, 0) + 16)


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
        # Header.key (1) is a string, which clients' runtimes check: a name another producer wrote that is not
        # UTF-8 goes, unchanged, in Header.key_bytes (3) instead, so that the response stays readable.
        p = _bytes_field(p, 0x0a if km_utf8_valid(<const unsigned char *>name, nlen) else 0x1a, name, nlen)
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


def _debug_counts():
    return {}
