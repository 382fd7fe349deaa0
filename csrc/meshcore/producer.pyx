"""One librdkafka producer (rd_kafka_t), owned by one extension type with an explicit close.

Threads: produce_request() parses and enqueues with the GIL released. Delivery reports are served by the handle's
own poll thread (km_poller.h), or by a thread calling poll()/flush(), all without the GIL; they touch only C state:
the handle's atomic counters and, for messages enqueued by a ProduceStream, that batch's accounting (km_batch.h).
The counters live in a separately allocated struct that is freed only after rd_kafka_destroy() returns, so a
delivery report can never reach a freed wrapper.
"""

import warnings

from cpython.bytes cimport PyBytes_AsString
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

from meshcore.conf cimport conf_from_dict, forget_client, register_client
from meshcore.counts cimport km_topic_count, km_topic_table_free, topic_counts
from meshcore.message cimport MAX_TOPIC_LEN, produce_record
from meshcore.rdkafka cimport *
from meshcore.support cimport KM_DEBUG_ENABLED, km_atomic_add, km_atomic_load, km_swap_ptr
from meshcore.wire cimport (
    ProduceRequestView, RecordView, produce_request_parse, produce_request_view_free,
)

from meshcore.errors import ConfigError, HandleClosedError, KafkaError, WireError

cdef extern from *:
    """
    #include "km_poller.h"
    static size_t sizeof_km_poller(void) { return sizeof(km_poller); }
    """
    size_t sizeof_km_poller()


#: True in the debug build, which counts C handles.
debug_build = bool(KM_DEBUG_ENABLED)

cdef int64_t _handles_created = 0
cdef int64_t _handles_destroyed = 0


cdef extern from "km_batch.h" nogil:
    ctypedef struct km_batch:
        int64_t created_ns
    ctypedef struct km_msgref:
        km_batch *batch
        uint16_t topic
    void km_msgref_delivered(km_msgref *ref, const rd_kafka_message_t *msg)
    int km_code_for(rd_kafka_resp_err_t err)
    int64_t km_monotonic_ns()
    # This module's copy of the batch counters: a batch or stream freed on a delivery report is counted here.
    int64_t km_batches_created, km_batches_freed, km_streams_created, km_streams_freed


#: The upper bounds of the delivery latency buckets, in nanoseconds (1 ms to 10 s; the last bucket is above them).
cdef int64_t LATENCY_BOUNDS_NS[LATENCY_BUCKETS - 1]
for _i, _b in enumerate((1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)):
    LATENCY_BOUNDS_NS[_i] = <int64_t>(_b * 1000000)

#: The same bounds in seconds, as Prometheus histograms name them.
LATENCY_BOUNDS_S = tuple(LATENCY_BOUNDS_NS[i] / 1e9 for i in range(LATENCY_BUCKETS - 1))


cdef void _on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque) noexcept nogil:
    cdef DeliveryStats *stats = <DeliveryStats *>opaque
    cdef int code, bucket = 0
    cdef int64_t latency
    cdef km_msgref *ref = <km_msgref *>msg._private
    if msg.err == RD_KAFKA_RESP_ERR_NO_ERROR:
        km_atomic_add(&stats.delivered, 1)
        km_atomic_add(&stats.bytes, <int64_t>(msg.len + msg.key_len))
        if ref != NULL:
            km_topic_count(&stats.topics, ref.topic, 1, <int64_t>(msg.len + msg.key_len), 0)
    else:
        if ref != NULL:
            km_topic_count(&stats.topics, ref.topic, 0, 0, 1)
        km_atomic_add(&stats.failed, 1)
        stats.last_error = <int64_t>msg.err
        code = km_code_for(msg.err)
        km_atomic_add(&stats.codes[code if 0 <= code < ERROR_CODES else 8], 1)     # 8: INTERNAL
    if ref != NULL:
        # Read before the delivery is settled: the last one may free the batch.
        latency = km_monotonic_ns() - ref.batch.created_ns
        while bucket < LATENCY_BUCKETS - 1 and latency > LATENCY_BOUNDS_NS[bucket]:
            bucket += 1
        km_atomic_add(&stats.latency[bucket], 1)
        km_atomic_add(&stats.latency_sum_ns, latency)
        km_msgref_delivered(ref, msg)


cdef int _on_statistics(rd_kafka_t *rk, char *json, size_t json_len, void *opaque) noexcept nogil:
    """librdkafka's statistics (statistics.interval.ms), on the poll thread: a copy replaces the last one, for
    the metrics to read when they are scraped; nothing is parsed here."""
    cdef DeliveryStats *stats = <DeliveryStats *>opaque
    cdef char *copy = <char *>malloc(json_len + 1)
    if copy != NULL:
        memcpy(copy, json, json_len)
        copy[json_len] = 0
        free(km_swap_ptr(&stats.statistics, copy))
    return 0        # librdkafka frees json


cdef raise_kafka_error(rd_kafka_resp_err_t err):
    """Every librdkafka error code becomes a Python exception here and nowhere else."""
    raise KafkaError(<int>err, rd_kafka_err2name(err).decode(), rd_kafka_err2str(err).decode())


cdef class Producer:
    """A librdkafka producer. Built by create_producer(); call close() when done.

    Any thread may call its methods, and close() may run while another thread is inside one: each call acquires
    the handle first (HandleClosedError once closing has begun) and close() waits for the calls in progress."""

    def __init__(self):
        raise TypeError("Producer cannot be instantiated directly; use create_producer()")

    cdef rd_kafka_t *_acquire(self) except NULL:
        """The rd_kafka_t for one call; release it with km_handle_release(self.h)."""
        cdef rd_kafka_t *rk = NULL
        if self.h != NULL:
            rk = km_handle_acquire(self.h)
        if rk == NULL:
            raise HandleClosedError(f"producer {self.name!r} is closed")
        return rk

    def produce_request(self, data, int32_t queue_full_wait_ms=100):
        """Enqueue every record of a serialized kafkamesh.v1.ProduceRequest to the topic each record names.

        The bytes are parsed and enqueued with the GIL released and no Python object per record. A malformed
        request raises WireError before any record is enqueued. A full librdkafka queue is waited out (serving
        delivery reports meanwhile), never reported as an error, unless the producer is being closed. Returns
        (batch_id, enqueued, rejected): rejected records (a topic name too long, a record too large for
        message.max.bytes, ...) count as failed deliveries.
        """
        cdef const unsigned char[::1] buf = data
        cdef ProduceRequestView view
        cdef int rc
        cdef size_t enqueued = 0, rejected = 0
        cdef rd_kafka_t *rk = self._acquire()
        with nogil:
            rc = produce_request_parse(&buf[0] if buf.shape[0] else <const unsigned char *>"", buf.shape[0], &view)
            if rc == 0:
                _enqueue_all(rk, self.h, self.stats, &view, queue_full_wait_ms, &enqueued, &rejected)
                produce_request_view_free(&view)
            km_handle_release(self.h)
        if rc < 0:
            raise WireError(view.err.decode(), view.err_pos)
        return view.batch_id, enqueued, rejected

    def poll(self, int timeout_ms=0):
        """Serve delivery reports for up to timeout_ms; returns how many were served."""
        cdef int n
        cdef rd_kafka_t *rk = self._acquire()
        with nogil:
            n = rd_kafka_poll(rk, timeout_ms)
            km_handle_release(self.h)
        return n

    def flush(self, int timeout_ms):
        """Wait until every enqueued record is delivered or failed; returns how many are still outstanding."""
        cdef int left
        cdef rd_kafka_t *rk = self._acquire()
        with nogil:
            rd_kafka_flush(rk, timeout_ms)
            left = rd_kafka_outq_len(rk)
            km_handle_release(self.h)
        return left

    @property
    def delivered(self):
        """Records delivered (acknowledged) so far; still readable once closed (for counters that must not drop)."""
        return km_atomic_load(&self.stats.delivered) if self.stats != NULL else 0

    @property
    def failed(self):
        """Records failed so far (refused at once, or by their delivery report); readable once closed."""
        return km_atomic_load(&self.stats.failed) if self.stats != NULL else 0

    def delivery_stats(self):
        """What the delivery reports counted so far, read at once from the core's atomic counters (readable once
        closed): {"delivered", "failed", "bytes", "codes": failures by ErrorCode number, "latency": deliveries per
        bucket of LATENCY_BOUNDS_S (the last above them all), "latency_sum_s"}; latency is from the batch being
        routed to the record's delivery report, for records sent by a ProduceStream or the router."""
        cdef int i
        if self.stats == NULL:
            return None
        return {"delivered": km_atomic_load(&self.stats.delivered), "failed": km_atomic_load(&self.stats.failed),
                "bytes": km_atomic_load(&self.stats.bytes),
                "codes": {i: km_atomic_load(&self.stats.codes[i]) for i in range(ERROR_CODES)
                          if km_atomic_load(&self.stats.codes[i])},
                "latency": [km_atomic_load(&self.stats.latency[i]) for i in range(LATENCY_BUCKETS)],
                "latency_sum_s": km_atomic_load(&self.stats.latency_sum_ns) / 1e9}

    def statistics(self):
        """librdkafka's statistics (JSON bytes) taken since the last call, or None when none was: each is handed
        out once."""
        cdef char *json
        if self.stats == NULL:
            return None
        json = km_swap_ptr(&self.stats.statistics, NULL)
        if json == NULL:
            return None
        try:
            return <bytes>json
        finally:
            free(json)

    def topic_stats(self):
        """What the delivery reports counted per topic slot (km_counts.h) of the records a ProduceStream sent with
        one: {slot: (delivered, bytes delivered, failed)} of every slot that counted anything; readable once closed."""
        if self.stats == NULL:
            return {}
        return topic_counts(&self.stats.topics)

    @property
    def last_error(self):
        """The name of the last delivery error (e.g. '_MSG_TIMED_OUT'), or None."""
        self._check_open()
        if self.stats.last_error == 0:
            return None
        return rd_kafka_err2name(<rd_kafka_resp_err_t>self.stats.last_error).decode()

    def _check_open(self):
        if self.closed:
            raise HandleClosedError(f"producer {self.name!r} is closed")

    def hold_topics(self, topics):
        """Keep the handles of these topics, and release the others held: each new one makes librdkafka look up
        its partitions' leaders now, and keep them, instead of at its first record."""
        cdef rd_kafka_t *rk = self._acquire()
        cdef rd_kafka_topic_t *rkt
        cdef bytes raw
        try:
            wanted = set(topics)
            for name in [n for n in self._held if n not in wanted]:
                rd_kafka_topic_destroy(<rd_kafka_topic_t *><size_t>self._held.pop(name))
            for name in sorted(wanted - self._held.keys()):
                raw = name.encode()
                rkt = rd_kafka_topic_new(rk, raw, NULL)
                if rkt != NULL:
                    self._held[name] = <size_t>rkt
        finally:
            km_handle_release(self.h)

    @property
    def held_topics(self):
        return sorted(self._held or ())

    cdef void _release_held(self, rd_kafka_t *rk):
        if self._held:
            for ptr in self._held.values():
                rd_kafka_topic_destroy(<rd_kafka_topic_t *><size_t>ptr)
            self._held.clear()

    @property
    def closed(self):
        """True from the moment close() begins."""
        return self.h == NULL or km_handle_closing(self.h) != 0

    def close(self, int flush_timeout_ms=10000):
        """Flush for up to flush_timeout_ms, then destroy the handle. Idempotent, and safe while other threads use
        the producer: it first waits for the calls in progress (a call waiting for room in a full queue gives up
        at once). Returns how many records were still undelivered then: they are purged first, so each gets a
        failed delivery report (and its batch an answer) before the handle goes."""
        self.topic_rules = None     # nothing is enqueued to a closed producer: nothing to check
        return self._close(flush_timeout_ms)

    cdef int _close(self, int flush_timeout_ms) except? -1:
        cdef rd_kafka_t *rk
        cdef int left = 0
        if self.h == NULL:
            return 0
        if self._held:
            # Released before the handle is destroyed, which waits for the application's topic handles.
            rk = km_handle_acquire(self.h)
            if rk != NULL:
                self._release_held(rk)
                km_handle_release(self.h)
        with nogil:
            rk = km_handle_close_begin(self.h)
            if rk != NULL:
                rd_kafka_flush(rk, flush_timeout_ms)
                left = rd_kafka_outq_len(rk)
                if left > 0:
                    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT)
                    rd_kafka_flush(rk, 5000)     # serves the purge reports
                _destroy_rk(rk, self.poller)
                km_handle_close_end(self.h)
        if rk != NULL:
            _count_destroyed()
            forget_client(self._log_key)
        return left

    @property
    def outstanding(self):
        """Records enqueued and not yet delivered or failed."""
        cdef int n
        cdef rd_kafka_t *rk = self._acquire()
        n = rd_kafka_outq_len(rk)
        km_handle_release(self.h)
        return n

    def __repr__(self):
        return f"<meshcore.Producer {self.name!r} {'closed' if self.closed else 'open'}>"

    def __dealloc__(self):
        cdef rd_kafka_t *rk
        if self.h != NULL and not km_handle_closing(self.h):
            # No source=self: the warning would keep a reference to an object being freed.
            warnings.warn(f"unclosed {self!r}", ResourceWarning)
            # Nothing else can be using it: every user holds a reference to this object.
            rk = km_handle_close_begin(self.h)
            self._release_held(rk)
            with nogil:
                _destroy_rk(rk, self.poller)
            km_handle_close_end(self.h)
            _count_destroyed()
            forget_client(self._log_key)
        km_handle_free(self.h)
        self.h = NULL
        free(self.poller)
        self.poller = NULL
        if self.stats != NULL:
            km_topic_table_free(&self.stats.topics)
            free(self.stats.statistics)
        free(self.stats)      # after rd_kafka_destroy: no delivery report can reach it any more
        self.stats = NULL


cdef void _destroy_rk(rd_kafka_t *rk, km_poller *poller) noexcept nogil:
    if poller != NULL:
        km_poller_stop(poller)
    if rk != NULL:
        rd_kafka_destroy(rk)


cdef void _count_destroyed() noexcept:
    global _handles_destroyed
    if KM_DEBUG_ENABLED:
        _handles_destroyed += 1


cdef void _enqueue_all(rd_kafka_t *rk, km_handle *h, DeliveryStats *stats, ProduceRequestView *view,
                       int32_t wait_ms, size_t *enqueued, size_t *rejected) noexcept nogil:
    cdef size_t i
    cdef RecordView *rec
    cdef rd_kafka_resp_err_t code
    for i in range(view.count):
        rec = &view.records[i]
        if rec.topic.n == 0 or rec.topic.n > MAX_TOPIC_LEN:
            code = RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION
        else:
            code = produce_record(rk, rec, NULL, NULL, wait_ms, &h.closing, NULL)
        if code == RD_KAFKA_RESP_ERR_NO_ERROR:
            enqueued[0] += 1
        else:
            km_atomic_add(&stats.failed, 1)
            stats.last_error = <int64_t>code
            rejected[0] += 1
        rd_kafka_poll(rk, 0)


def create_producer(str name, dict config):
    """Create a producer from librdkafka properties (all values str). Raises ConfigError naming the property."""
    global _handles_created
    cdef char errstr[512]
    cdef rd_kafka_conf_t *conf = conf_from_dict(config)
    cdef Producer p
    cdef DeliveryStats *stats
    cdef rd_kafka_t *rk
    stats = <DeliveryStats *>calloc(1, sizeof(DeliveryStats))
    if stats == NULL:
        rd_kafka_conf_destroy(conf)
        raise MemoryError()
    rd_kafka_conf_set_dr_msg_cb(conf, _on_delivery)
    rd_kafka_conf_set_stats_cb(conf, _on_statistics)      # called only with statistics.interval.ms set
    rd_kafka_conf_set_opaque(conf, stats)
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr))
    if rk == NULL:
        # On failure the configuration is still ours.
        rd_kafka_conf_destroy(conf)
        free(stats)
        raise ConfigError(f"could not create producer {name!r}: {errstr.decode(errors='replace')}")
    if KM_DEBUG_ENABLED:
        _handles_created += 1
    p = Producer.__new__(Producer)
    p.stats = stats
    p.name = name
    p._held = {}
    p._log_key = register_client(rk, name)
    p.h = km_handle_new(rk)
    if p.h == NULL:
        with nogil:
            rd_kafka_destroy(rk)
        _count_destroyed()
        raise MemoryError()
    p.poller = <km_poller *>calloc(1, sizeof_km_poller())
    if p.poller == NULL or km_poller_start(p.poller, rk) != 0:
        p._close(0)
        raise MemoryError(f"could not start the delivery-report thread of producer {name!r}")
    return p


def librdkafka_version():
    """The linked librdkafka's version string, e.g. '2.16.0'."""
    return rd_kafka_version_str().decode()


def _debug_counts():
    """Created/destroyed counts of rd_kafka_t handles (non-zero only in the debug build)."""
    return {"rd_kafka_t(producer)": (_handles_created, _handles_destroyed),
            "produce_batch": (km_batches_created, km_batches_freed),
            "produce_stream": (km_streams_created, km_streams_freed)}
