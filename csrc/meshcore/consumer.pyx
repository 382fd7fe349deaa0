"""One librdkafka consumer (rd_kafka_t in a consumer group), owned by one extension type with an explicit close.

poll_batch() is the Subscribe data path: it polls within a record and byte budget and encodes a SubscribeResponse
natively, with no Python object per record. poll_records() returns Python tuples and is meant for tools and tests.
What librdkafka reports through callbacks (assignment changes, every broker down) is kept in C (km_consumer.h) and
taken with take_events() and take_state(). The handle is polled by one thread at a time; store_offsets() and probe()
may be called from another thread meanwhile (librdkafka's calls are thread-safe), close() only once no other thread
uses the handle.
"""

import warnings

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strlen

from meshcore.conf cimport conf_from_dict, forget_client, register_client
from meshcore.rdkafka cimport *
from meshcore.support cimport KM_DEBUG_ENABLED
from meshcore.wire cimport km_utf8_valid

from meshcore.errors import ConfigError, HandleClosedError, KafkaError

cdef extern from "km_consumer.h" nogil:
    ctypedef struct km_rebalance_ev:
        int assigned
        rd_kafka_topic_partition_list_t *parts
    ctypedef struct km_cstate:
        int nheld
        int paused
        int fatal
        char reason[256]
    int km_held_push(rd_kafka_t *rk, km_cstate *st, rd_kafka_message_t *m)
    rd_kafka_message_t *km_held_pop(km_cstate *st)
    int km_held_unpop(rd_kafka_t *rk, km_cstate *st, rd_kafka_message_t *m)
    void km_held_drop(km_cstate *st, const rd_kafka_topic_partition_list_t *parts)
    void km_set_paused(rd_kafka_t *rk, km_cstate *st, int paused)
    int km_set_earliest(km_cstate *st, const char **topics, int n)
    km_cstate *km_cstate_new()
    void km_cstate_free(km_cstate *st)
    void km_cstate_clear(km_cstate *st)
    void km_conf_set_callbacks(rd_kafka_conf_t *conf, km_cstate *st)
    void km_cstate_up(km_cstate *st)
    int km_cstate_take_state(km_cstate *st, int *available, char *reason, size_t reason_size)
    int km_cstate_take_events(km_cstate *st, km_rebalance_ev **out)
    int km_cstate_take_rebalanced(km_cstate *st)
    int km_cstate_is_down(km_cstate *st)
    int km_probe(rd_kafka_t *rk, km_cstate *st, int timeout_ms)
    int km_enable_wakeup(rd_kafka_t *rk, km_cstate *st, int fd)
    void km_disable_wakeup(km_cstate *st)

cdef extern from *:
    """
    #include <limits.h>
    """
    long long LLONG_MAX

cdef int64_t _handles_created = 0
cdef int64_t _handles_destroyed = 0


cdef raise_kafka_error(rd_kafka_resp_err_t err, str context):
    raise KafkaError(<int>err, rd_kafka_err2name(err).decode(), f"{context}: {rd_kafka_err2str(err).decode()}")


cdef class _Polled:
    """Messages one poll call took from librdkafka: destroyed, and their array freed, with this object."""

    cdef rd_kafka_message_t **msgs
    cdef int n

    def __dealloc__(self):
        cdef int i
        if self.msgs != NULL:
            for i in range(self.n):
                rd_kafka_message_destroy(self.msgs[i])
            free(self.msgs)


cdef class Consumer:
    """A librdkafka consumer in a group. Built by create_consumer(); call close() when done."""

    cdef rd_kafka_t *rk
    cdef km_cstate *st
    cdef readonly str name
    cdef str _log_key        # librdkafka's name for the handle, under which its log lines are attributed

    def __init__(self):
        raise TypeError("Consumer cannot be instantiated directly; use create_consumer()")

    cdef int _collect(self, rd_kafka_message_t **msgs, int max_records, long long max_bytes, int timeout_ms,
                      long long group_bytes, bint strict) noexcept nogil:
        """Poll up to max_records records whose encoded size (each ConsumedRecord whole, headers included, and
        group_bytes plus the topic's name for each new partition group) adds up to at most max_bytes, waiting at most
        timeout_ms for the first. The first record always fits unless strict. A record over the budget is held for
        the next call. The batch ends at a rebalance, so that it never holds records from before and after an
        assignment change. Errors librdkafka recovers from are skipped; a fatal one is left in st.fatal."""
        cdef int n = 0
        cdef int wait = timeout_ms
        cdef long long used = 0, size
        cdef rd_kafka_message_t *m
        cdef rd_kafka_topic_t *last_rkt = NULL
        cdef int32_t last_partition = -1
        cdef km_cstate *st = self.st
        while n < max_records and not st.fatal:
            if st.nheld:
                m = km_held_pop(st)
            else:
                m = rd_kafka_consumer_poll(self.rk, wait)
                if km_cstate_take_rebalanced(st):
                    if m != NULL:
                        km_held_push(self.rk, st, m)
                    break
            if m == NULL:
                break
            wait = 0
            if m.err != RD_KAFKA_RESP_ERR_NO_ERROR:
                if m.err == RD_KAFKA_RESP_ERR__FATAL:
                    st.fatal = 1
                rd_kafka_message_destroy(m)
                continue
            # the record's tag and length (at most 6 bytes) and a timestamp of up to 10 bytes, over _record_len's
            size = <long long>(_record_len(m, 0) + 16)
            if m.rkt != last_rkt or m.partition != last_partition:
                size += group_bytes + <long long>strlen(rd_kafka_topic_name(m.rkt))
            if (n > 0 or strict) and used + size > max_bytes:
                km_held_unpop(self.rk, st, m)
                break
            last_rkt = m.rkt
            last_partition = m.partition
            used += size
            msgs[n] = m
            n += 1
        if n > 0:
            km_cstate_up(st)        # records arrived: the cluster answers
        return n

    cdef int _check_fatal(self) except -1:
        cdef char why[512]
        if self.st.fatal:
            # The fatal error's own text (librdkafka keeps it), not the last error seen before it.
            why[0] = 0
            rd_kafka_fatal_error(self.rk, why, sizeof(why))
            raise KafkaError(<int>RD_KAFKA_RESP_ERR__FATAL, "_FATAL",
                             f"consumer {self.name!r}: {(why if why[0] else self.st.reason).decode(errors='replace')}")
        return 0

    def poll_batch(self, str cluster, int max_records, long long max_bytes, int timeout_ms, bint strict=False):
        """Poll up to max_records records, waiting at most timeout_ms for the first, and encode them as one
        kafkamesh.v1.SubscribeResponse (a RecordBatch grouped by partition, each group naming `cluster`), with no
        Python object per record, of at most max_bytes (the first record always comes, whatever its size, unless
        strict).

        Returns (encoded, runs, count): runs lists (topic, partition, first_offset, last_offset) per group, for the
        stream's offset tracking; encoded is None when nothing arrived (or, strict, the first record would not fit).
        A record that does not fit the byte budget is kept and returned first by the next call. A batch ends at a
        rebalance: call take_events() after each call. A fatal consumer error raises KafkaError."""
        cdef bytes name = cluster.encode()
        # A partition group: its tag and length, cluster, topic and partition fields, and the response's own framing.
        cdef _Polled polled = self._poll(max_records, max_bytes, timeout_ms, 32 + len(name), strict)
        if polled.n == 0:
            return None, [], 0
        return _encode_batch(name, polled.msgs, polled.n)

    cdef _Polled _poll(self, int max_records, long long max_bytes, int timeout_ms, long long group_bytes=0,
                       bint strict=False):
        """_collect() into a fresh _Polled; raises for a closed handle, a bad bound, or a fatal consumer error."""
        self._check_alive()
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        cdef _Polled polled = _Polled.__new__(_Polled)
        polled.msgs = <rd_kafka_message_t **>malloc(max_records * sizeof(void *))
        if polled.msgs == NULL:
            raise MemoryError()
        with nogil:
            polled.n = self._collect(polled.msgs, max_records, max_bytes, timeout_ms, group_bytes, strict)
        self._check_fatal()
        return polled

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
        cdef _Polled polled = self._poll(max_records, LLONG_MAX, timeout_ms)
        cdef rd_kafka_message_t *m
        cdef rd_kafka_timestamp_type_t tstype
        cdef int i
        out = []
        for i in range(polled.n):
            m = polled.msgs[i]
            out.append((
                rd_kafka_topic_name(m.rkt).decode(), m.partition, m.offset,
                None if m.key == NULL else (<char *>m.key)[:m.key_len],
                None if m.payload == NULL else (<char *>m.payload)[:m.len],
                rd_kafka_message_timestamp(m, &tstype),
            ))
        return out

    def serve(self, int timeout_ms):
        """Serve the consumer's queue (rebalances, errors) without returning records, waiting at most timeout_ms:
        for a stream out of credit, whose partitions are paused (set_paused). A record that still arrives is held
        for the next poll. Returns the number of records held."""
        self._check_alive()
        cdef rd_kafka_message_t *m
        cdef int i, wait = timeout_ms
        with nogil:
            for i in range(64):           # bounded: paused partitions send nothing new
                m = rd_kafka_consumer_poll(self.rk, wait)
                if m == NULL:
                    break
                wait = 0
                if m.err != RD_KAFKA_RESP_ERR_NO_ERROR:
                    if m.err == RD_KAFKA_RESP_ERR__FATAL:
                        self.st.fatal = 1
                    rd_kafka_message_destroy(m)
                else:
                    km_held_push(self.rk, self.st, m)
            km_cstate_take_rebalanced(self.st)
        self._check_fatal()
        return self.st.nheld

    def set_paused(self, bint paused):
        """Pause (True) or resume fetching every assigned partition, also those assigned later while paused."""
        self._check_alive()
        with nogil:
            km_set_paused(self.rk, self.st, paused)

    @property
    def paused(self):
        self._check_alive()
        return bool(self.st.paused)

    def take_events(self):
        """The assignment changes since the last call, oldest first: [(assigned, [(topic, partition), ...]), ...]
        where assigned is False for a revocation. Served by the poll calls (and close())."""
        self._check_alive()
        cdef km_rebalance_ev *evs = NULL
        cdef int n = km_cstate_take_events(self.st, &evs)
        cdef int i, j
        out = []
        try:
            for i in range(n):
                parts = []
                for j in range(evs[i].parts.cnt):
                    parts.append((evs[i].parts.elems[j].topic.decode(), evs[i].parts.elems[j].partition))
                out.append((bool(evs[i].assigned), parts))
        finally:
            for i in range(n):
                rd_kafka_topic_partition_list_destroy(evs[i].parts)
            free(evs)
        return out

    def take_state(self):
        """(available, reason) when the cluster went down (every broker unreachable, as librdkafka reported) or
        answered again since the last call; None when nothing changed."""
        self._check_alive()
        cdef int available = 1
        cdef char reason[256]
        if not km_cstate_take_state(self.st, &available, reason, sizeof(reason)):
            return None
        return bool(available), reason.decode(errors="replace")

    @property
    def down(self):
        """Whether librdkafka last said that every broker of the cluster is down."""
        self._check_alive()
        return bool(km_cstate_is_down(self.st))

    def probe(self, int timeout_ms):
        """Ask the cluster for metadata (no topic), waiting at most timeout_ms: True when a broker answered (the
        cluster then counts as available again). Blocks; safe to call while another thread polls."""
        self._check_alive()
        cdef int ok
        with nogil:
            ok = km_probe(self.rk, self.st, timeout_ms)
        return bool(ok)

    def enable_wakeup(self, int fd):
        """Have librdkafka write an eventfd increment to fd whenever this consumer's queue turns non-empty, so that
        one thread can wait for several consumers at once (poll(2) on fd, then poll_batch(..., 0) on each)."""
        self._check_alive()
        if km_enable_wakeup(self.rk, self.st, fd) != 0:
            raise KafkaError(<int>RD_KAFKA_RESP_ERR__STATE, "_STATE", f"consumer {self.name!r} has no queue")

    def store_offsets(self, offsets):
        """Mark [(topic, partition, next_offset), ...] as processed: the group commits them (automatically with
        enable.auto.commit, at the latest when the consumer closes or loses the partition). Returns the
        [(topic, partition), ...] that librdkafka refused because they are not assigned to this consumer (any
        more); other errors raise KafkaError."""
        self._check_alive()
        offsets = list(offsets)
        if not offsets:
            return []
        cdef rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(len(offsets))
        cdef rd_kafka_topic_partition_t *tp
        cdef rd_kafka_resp_err_t err
        cdef int i
        refused = []
        try:
            for topic, partition, offset in offsets:
                tp = rd_kafka_topic_partition_list_add(tl, str(topic).encode(), partition)
                tp.offset = offset
            with nogil:
                err = rd_kafka_offsets_store(self.rk, tl)
            # The call's own result says little (success if any partition was stored): each partition has its own.
            for i in range(tl.cnt):
                err = tl.elems[i].err
                if err == RD_KAFKA_RESP_ERR_NO_ERROR:
                    continue
                if err == RD_KAFKA_RESP_ERR__STATE or err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
                    refused.append((tl.elems[i].topic.decode(), tl.elems[i].partition))
                else:
                    raise_kafka_error(err, f"store offsets of consumer {self.name!r}")
        finally:
            rd_kafka_topic_partition_list_destroy(tl)
        return refused

    def read_from_earliest(self, topics):
        """From the next assignment on, partitions of these topics that the group has no committed offset for start
        at the beginning (not where auto.offset.reset says): for topics added to a running subscription."""
        self._check_alive()
        encoded = [str(t).encode() for t in topics]
        cdef int n = len(encoded), i
        cdef const char **names = <const char **>malloc((n or 1) * sizeof(char *))
        if names == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                names[i] = encoded[i]
            if km_set_earliest(self.st, names, n) != 0:
                raise MemoryError()
        finally:
            free(names)

    @property
    def held(self):
        """Records polled and kept for the next batch (over a budget, or across a rebalance)."""
        self._check_alive()
        return self.st.nheld

    def commit(self):
        """Commit the stored offsets (synchronously)."""
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
        """Leave the group (committing the stored offsets if enable.auto.commit is on) and destroy the handle.
        Idempotent."""
        global _handles_destroyed
        cdef rd_kafka_t *rk = self.rk
        cdef km_cstate *st = self.st
        if rk == NULL:
            return
        self.rk = NULL
        self.st = NULL
        with nogil:
            km_disable_wakeup(st)
            km_cstate_clear(st)      # held records go back before the group commits and leaves
            rd_kafka_consumer_close(rk)
            km_cstate_clear(st)      # and whatever the closing rebalance queued, before the handle goes
            rd_kafka_destroy(rk)
            km_cstate_free(st)
        forget_client(self._log_key)
        if KM_DEBUG_ENABLED:
            _handles_destroyed += 1

    def __repr__(self):
        return f"<meshcore.Consumer {self.name!r} {'closed' if self.rk == NULL else 'open'}>"

    def __dealloc__(self):
        if self.rk != NULL:
            # No source=self: the warning would keep a reference to an object being freed.
            warnings.warn(f"unclosed {self!r}", ResourceWarning)
            self.close()
        elif self.st != NULL:
            km_cstate_free(self.st)


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
    cdef km_cstate *st = km_cstate_new()
    if st == NULL:
        rd_kafka_conf_destroy(conf)
        raise MemoryError()
    km_conf_set_callbacks(conf, st)
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr))
    if rk == NULL:
        rd_kafka_conf_destroy(conf)
        km_cstate_free(st)
        raise ConfigError(f"could not create consumer {name!r}: {errstr.decode(errors='replace')}")
    if KM_DEBUG_ENABLED:
        _handles_created += 1
    # Route the group's events to the consumer queue so that the poll calls serve rebalances and errors too.
    rd_kafka_poll_set_consumer(rk)
    c = Consumer.__new__(Consumer)
    c.rk = rk
    c.st = st
    c.name = name
    c._log_key = register_client(rk, name)
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
