"""One librdkafka consumer (rd_kafka_t in a consumer group), owned by one extension type with an explicit close.

This is the consuming layer that the Subscribe stream and the router share: poll() (for Cython modules, consumer.pxd)
takes librdkafka messages within a record and byte budget, measured by the caller's own encoding, with no Python
object per record; subscribe_wire.pyx encodes them as a SubscribeResponse, router.pyx hands them to producers.
poll_records() returns Python tuples and is meant for tools and tests.
What librdkafka reports through callbacks (assignment changes, every broker down) is kept in C (km_consumer.h) and
taken with take_events() and take_state(). The handle is polled by one thread at a time; store_offsets() and probe()
may be called from another thread meanwhile (librdkafka's calls are thread-safe), close() only once no other thread
uses the handle.
"""

import warnings

from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport strlen

from meshcore.conf cimport conf_from_dict, forget_client, register_client
from meshcore.rdkafka cimport *
from meshcore.support cimport KM_DEBUG_ENABLED

from meshcore.errors import ConfigError, HandleClosedError, KafkaError

cdef extern from "km_consumer.h" nogil:
    ctypedef struct km_rebalance_ev:
        int assigned
        rd_kafka_topic_partition_list_t *parts
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
    void km_cstate_msg_error(km_cstate *st, const rd_kafka_message_t *m)
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


cdef class Polled:
    def __dealloc__(self):
        cdef int i
        if self.msgs != NULL:
            for i in range(self.n):
                rd_kafka_message_destroy(self.msgs[i])
            free(self.msgs)


cdef class Consumer:
    """A librdkafka consumer in a group. Built by create_consumer(); call close() when done."""

    def __init__(self):
        raise TypeError("Consumer cannot be instantiated directly; use create_consumer()")

    cdef int _collect(self, rd_kafka_message_t **msgs, int max_records, long long max_bytes, int timeout_ms,
                      measure_fn measure, long long group_bytes, bint strict) noexcept nogil:
        """Poll up to max_records records whose size (measure(m) each, and group_bytes plus the topic's name for each
        new partition group) adds up to at most max_bytes, waiting at most
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
                km_cstate_msg_error(st, m)
                rd_kafka_message_destroy(m)
                continue
            size = measure(m)
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

    cdef Polled poll(self, int max_records, long long max_bytes, int timeout_ms, measure_fn measure,
                     long long group_bytes, bint strict):
        """_collect() into a fresh Polled; raises for a closed handle, a bad bound, or a fatal consumer error."""
        self._check_alive()
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        cdef Polled polled = Polled.__new__(Polled)
        polled.msgs = <rd_kafka_message_t **>malloc(max_records * sizeof(void *))
        if polled.msgs == NULL:
            raise MemoryError()
        with nogil:
            polled.n = self._collect(polled.msgs, max_records, max_bytes, timeout_ms, measure, group_bytes, strict)
        self._check_fatal()
        return polled

    cdef int _check_alive(self) except -1:
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
        cdef Polled polled = self.poll(max_records, LLONG_MAX, timeout_ms, _payload_size, 0, False)
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
                    km_cstate_msg_error(self.st, m)
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

    def pause(self, partitions):
        """Stop fetching these [(topic, partition), ...] (the others go on): a router's partition whose records
        wait for a slow target. Partitions not assigned are ignored."""
        self._partitions_op(partitions, True)

    def resume(self, partitions):
        """Fetch these [(topic, partition), ...] again."""
        self._partitions_op(partitions, False)

    cdef _partitions_op(self, partitions, bint pause):
        self._check_alive()
        partitions = list(partitions)
        if not partitions:
            return
        cdef rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(len(partitions))
        try:
            for topic, partition in partitions:
                rd_kafka_topic_partition_list_add(tl, str(topic).encode(), partition)
            with nogil:
                if pause:
                    rd_kafka_pause_partitions(self.rk, tl)
                else:
                    rd_kafka_resume_partitions(self.rk, tl)
        finally:
            rd_kafka_topic_partition_list_destroy(tl)

    def watermarks(self, partitions):
        """[(topic, partition, high), ...]: each partition's end offset as librdkafka last learned it from a fetch
        (no request to the cluster; -1 when not known yet)."""
        self._check_alive()
        cdef int64_t low, high
        cdef bytes name
        out = []
        for topic, partition in partitions:
            name = str(topic).encode()
            if rd_kafka_get_watermark_offsets(self.rk, name, partition, &low, &high) != RD_KAFKA_RESP_ERR_NO_ERROR:
                high = -1
            out.append((topic, partition, high))
        return out

    def seek(self, str topic, int32_t partition, int64_t offset):
        """Read the partition again from offset: records held or prefetched past it are dropped (librdkafka
        discards what it fetched before the seek). For a router whose target refused a record: nothing after the
        committed offset is lost, the records from offset on are copied again."""
        self._check_alive()
        cdef rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1)
        cdef rd_kafka_topic_partition_t *tp
        cdef rd_kafka_error_t *error
        cdef rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR
        try:
            tp = rd_kafka_topic_partition_list_add(tl, topic.encode(), partition)
            tp.offset = offset
            with nogil:
                km_held_drop(self.st, tl)
                error = rd_kafka_seek_partitions(self.rk, tl, 0)
            if error != NULL:
                err = rd_kafka_error_code(error)
                rd_kafka_error_destroy(error)
            elif tl.elems[0].err != RD_KAFKA_RESP_ERR_NO_ERROR and tl.elems[0].err != RD_KAFKA_RESP_ERR__IN_PROGRESS:
                err = tl.elems[0].err           # (_IN_PROGRESS: the seek was made asynchronously, as asked)
        finally:
            rd_kafka_topic_partition_list_destroy(tl)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR:
            raise_kafka_error(err, f"seek {topic}[{partition}] to {offset}")

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

    def take_message_errors(self):
        """(count, last): the errors librdkafka gave instead of records since the last call (a record batch it could
        not decode is skipped: its records are never returned), and the last one's text, naming topic, partition and
        offset; None when there was none. Call from the polling thread."""
        self._check_alive()
        if not self.st.msg_errors:
            return None
        out = (self.st.msg_errors, self.st.msg_error.decode(errors="replace"))
        self.st.msg_errors = 0
        return out

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


cdef long long _payload_size(rd_kafka_message_t *m) noexcept nogil:
    return <long long>(m.len + m.key_len)
