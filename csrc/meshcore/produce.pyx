"""The Produce path of one gRPC stream: parse a ProduceRequest, route each record by a RouteTable, enqueue it to
every sink's producer, account deliveries per batch in C (km_batch.h), and encode each batch's ProduceResponse.

Threads: submit() runs on any one thread at a time (the servicer uses a worker thread, since a full librdkafka
queue makes it wait); it holds no GIL while parsing and enqueuing. Delivery reports complete batches on the
producers' poll threads and wake the owner through the eventfd returned by fileno(); drain() then encodes the
completed batches' responses, one bytes object per batch.

close() may run while a submit is in progress in another thread: the submit holds a reference on the C stream and
on each sink's producer handle, taken while it still held the GIL, so it never touches freed memory; it sees the
stream stopped or closed (or a producer closing) and stops enqueuing.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, strtoll
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec
from libc.string cimport memcmp, memcpy, strlen

from meshcore.counts cimport km_topic_count, km_topic_table, topic_counts
from meshcore.message cimport MAX_TOPIC_LEN, produce_record
from meshcore.rdkafka cimport *
from meshcore.producer cimport Producer
from meshcore.routes cimport Route, RouteTable
from meshcore.support cimport KM_DEBUG_ENABLED, km_atomic_load, km_flag_load
from meshcore.topicrules cimport TopicRules, km_rule, km_rules, km_rules_find, km_zz_size
from meshcore.wire cimport (
    ProduceRequestView, Reader, RecordView, Slice, header_next, produce_request_parse, produce_request_view_free,
)

from meshcore.errors import HandleClosedError, WireError


cdef extern from "km_batch.h" nogil:
    enum:
        KM_OK
        KM_NO_ROUTE
        KM_INVALID_TOPIC
        KM_INVALID_RECORD
        KM_INVALID_HEADER_NAME
        KM_INVALID_TIMESTAMP
        KM_INVALID_PARTITION
        KM_INVALID_TIMESTAMP_AHEAD
        KM_INVALID_NO_KEY
        KM_INVALID_TOPIC_TIMESTAMP_BEHIND
        KM_INVALID_TOPIC_TIMESTAMP_AHEAD
        KM_INVALID_TOPIC_MAX_BYTES
        KM_RECORD_TOO_LARGE
        KM_CLUSTER_UNAVAILABLE
        KM_INTERNAL
    int32_t KM_INVALID_KERR(int reason)
    int KM_INVALID_REASON(int32_t kerr)
    int32_t KM_LAPSED_KERR
    ctypedef struct km_guard:
        int64_t deadline_ns
        uint64_t epoch
    int64_t km_monotonic_ns()
    bint km_guard_holds(const km_guard *g, uint64_t epoch)
    uint64_t km_guard_epoch(const km_guard *g)
    bint km_guard_stale(const km_guard *g, uint64_t epoch)
    void km_guard_set(km_guard *g, int64_t deadline_ns, int bump)
    ctypedef struct km_revisions:
        pass
    void km_revisions_init(km_revisions *r)
    int km_revisions_add(km_revisions *r, uint64_t revision, int64_t n, int over)
    int64_t km_revisions_oldest(km_revisions *r)
    ctypedef struct km_batch
    ctypedef struct km_msgref:
        km_batch *batch
        uint32_t index
        uint16_t sink
        uint16_t topic
    ctypedef struct km_stream:
        int efd
        int stop
        int64_t inflight_bytes
        int64_t inflight_batches
    ctypedef struct km_batch:
        km_stream *stream
        km_batch *next
        uint64_t batch_id
        uint64_t revision
        const km_guard *guard
        uint64_t guard_epoch
        int guard_stale
        km_revisions *revisions
        int revision_over
        void *details
        uint32_t n_records
        uint32_t n_refs
        uint8_t *rec_code
        int32_t *rec_kerr
        uint16_t *rec_sink
        char *names
        uint32_t *name_off
        km_msgref refs[1]
    int64_t km_batches_created, km_batches_freed, km_streams_created, km_streams_freed
    km_stream *km_stream_new()
    void km_stream_ref(km_stream *s)
    void km_stream_unref(km_stream *s)
    void km_stream_stop(km_stream *s)
    void km_stream_close(km_stream *s)
    km_batch *km_batch_new(km_stream *s, uint64_t batch_id, uint64_t revision, uint32_t n_records, uint32_t n_refs,
                           int64_t bytes, const char *names, size_t names_len, const uint32_t *name_off,
                           uint32_t n_names)
    bint km_batch_fail(km_batch *b, uint32_t index, int code, int32_t kerr, uint16_t sink)
    enum:
        KM_DETAIL_TOPIC
    ctypedef struct km_detail:
        uint32_t index
        uint32_t topic_len
        int64_t size
        int64_t limit
        char topic[1]
    void km_batch_detail(km_batch *b, uint32_t index, const char *topic, size_t topic_len, int64_t size,
                         int64_t limit)
    const km_detail *km_batch_find_detail(const km_batch *b, uint32_t index)
    void km_batch_settle(km_batch *b, int64_t n)
    void km_batch_free(km_batch *b)
    km_batch *km_stream_take_completed(km_stream *s)


cdef enum:
    # Bounds a batch's accounting (16 bytes per delivery) and keeps every count in 32 bits.
    MAX_REFS = 4000000
    # Bounds the response: with every other record failing, ~9 bytes per failure (see _encode_response).
    MAX_REQUEST_RECORDS = 500000
    # Errors of a response that carry their text; later ones carry the code alone.
    MAX_MESSAGES = 1000
    # Bytes of a topic a message shows (each may take 4 characters, \\xNN).
    TOPIC_SHOWN = 64


#: The most records one ProduceRequest may hold (clients split larger batches before they send them).
REQUEST_RECORDS_LIMIT = MAX_REQUEST_RECORDS


#: A record whose timestamp is further ahead of the clock than this fails alone (0: no such check). Kafka 4 brokers
#: refuse them by default (message.timestamp.after.max.ms, 1 hour), and refuse with it the whole batch librdkafka
#: built for the partition, other apps' records included: refused here, the record never reaches a batch.
cdef int64_t _max_ahead_ms = 3600000


#: The lease guard (km_batch.h): holds for ever until the control plane first sets it (a mapping from a file has
#: no lease, and no move can happen under it).
cdef km_guard _guard
_guard.deadline_ns = INT64_MAX
_guard.epoch = 0


#: Batches in flight by revision (km_batch.h).
cdef km_revisions _revisions
km_revisions_init(&_revisions)


#: Records answered with an error, by ErrorCode (every cause: refused before Kafka, failed by a cluster, not
#: acknowledged under the lease guard). Counted as responses are encoded, on the one thread that drains streams.
cdef int64_t _error_counts[16]


def error_counts():
    """{ErrorCode number: records answered with it} since the start, for every Produce stream of the process."""
    return {i: _error_counts[i] for i in range(16) if _error_counts[i]}


#: Records (and bytes of keys and values) Produce requests carried, per topic slot (km_counts.h): counted as each
#: batch is routed, in runs of one slot, by the threads that submit (atomics).
cdef km_topic_table _received


def received_counts():
    """{topic slot: (records, bytes, 0)} that Produce requests carried since the start, routed by a table with
    TopicSlots (the slots' topics are the control plane's)."""
    return topic_counts(&_received)


def oldest_revision_in_flight():
    """The oldest mapping revision with a batch in flight (routed, not yet completed by every sink) in this
    process: 0 when too many revisions were in flight to tell; None when nothing is in flight."""
    cdef int64_t oldest = km_revisions_oldest(&_revisions)
    return None if oldest < 0 else oldest


def guard_epoch():
    """The lease guard's epoch now: read with the route table a batch is routed by, and given to submit()."""
    return km_guard_epoch(&_guard)


def renew_guard(double deadline, bint lapsed):
    """The lease lives at least until deadline (time.monotonic() seconds) and the mapping was read under it. lapsed:
    the guard lapsed since it was last renewed, so batches routed before now are not acknowledged after it."""
    km_guard_set(&_guard, max(1, <int64_t>(deadline * 1e9)), lapsed)


def expire_guard():
    """The lease is gone (or not granted yet): nothing routed before now is acknowledged after it, and the guard
    holds no more until renewed."""
    km_guard_set(&_guard, 1, 1)


def stale_guard():
    """etcd cannot be reached: batches routed from now on, by the mapping in force, are acknowledged until the guard
    is renewed (not after); nothing routed before now is acknowledged after it."""
    km_guard_set(&_guard, 0, 1)


def guard_holds():
    """Whether the lease guard holds now (for the current epoch)."""
    return km_guard_holds(&_guard, km_guard_epoch(&_guard))


def set_max_timestamp_ahead_ms(int64_t ms):
    """Set the bound (process-wide; 0 turns the check off)."""
    global _max_ahead_ms
    if ms < 0:
        raise ValueError(f"max_timestamp_ahead_ms must be 0 or more, got {ms}")
    _max_ahead_ms = ms


cdef inline bint valid_topic(const unsigned char *p, size_t n) noexcept nogil:
    """Kafka's rule: 1 to 249 characters of [a-zA-Z0-9._-], and not "." or ".."."""
    cdef size_t i
    cdef unsigned char c
    if n == 0 or n > MAX_TOPIC_LEN:
        return False
    if (n == 1 and p[0] == b'.') or (n == 2 and p[0] == b'.' and p[1] == b'.'):
        return False
    for i in range(n):
        c = p[i]
        if not ((c >= b'a' and c <= b'z') or (c >= b'A' and c <= b'Z') or (c >= b'0' and c <= b'9')
                or c == b'.' or c == b'_' or c == b'-'):
            return False
    return True


cdef enum:
    TOPIC_CACHE = 8


cdef struct TopicHandle:
    int sink
    const unsigned char *name     # points into the request
    size_t len
    rd_kafka_topic_t *rkt
    const km_rule *rule           # what the sink's brokers accept on the topic, or NULL: nothing known


cdef struct TopicCache:
    TopicHandle slots[TOPIC_CACHE]
    int n


cdef TopicHandle *_topic_entry(TopicCache *cache, rd_kafka_t *rk, int sink, RecordView *rec,
                               km_rules *rules) noexcept nogil:
    """The topic handle and rule of (sink, topic), reused within the batch (NULL when the cache is full): naming the
    topic by string would make librdkafka look the topic up, lock and count a reference for every message, and the
    rule is looked up once."""
    cdef int i
    cdef TopicHandle *h
    cdef char cname[MAX_TOPIC_LEN + 1]
    for i in range(cache.n):
        h = &cache.slots[i]
        if h.sink == sink and h.len == rec.topic.n and memcmp(h.name, rec.topic.p, h.len) == 0:
            return h
    if cache.n == TOPIC_CACHE:
        return NULL
    h = &cache.slots[cache.n]
    memcpy(cname, rec.topic.p, rec.topic.n)
    cname[rec.topic.n] = 0
    h.rkt = rd_kafka_topic_new(rk, cname, NULL)
    if h.rkt == NULL:
        return NULL
    h.sink = sink
    h.name = rec.topic.p
    h.len = rec.topic.n
    h.rule = km_rules_find(rules, rec.topic.p, rec.topic.n) if rules != NULL else NULL
    cache.n += 1
    return h


cdef size_t _header_bytes(RecordView *rec, bint framed) noexcept nogil:
    """The bytes of rec's headers, read again from the record's bytes: their names and values, with (framed) or
    without the varint lengths a Kafka record gives each."""
    cdef Reader hr
    cdef Slice hname, hvalue
    cdef uint8_t has_hvalue
    cdef size_t n = 0
    if rec.header_count:
        hr.buf = rec.raw.p
        hr.len = rec.raw.n
        hr.pos = 0
        hr.err = NULL
        while header_next(&hr, &hname, &hvalue, &has_hvalue) == 1:
            n += hname.n + (hvalue.n if has_hvalue else 0)
            if framed:
                n += km_zz_size(hname.n) + (km_zz_size(hvalue.n) if has_hvalue else 1)
    return n


cdef size_t _batch_size(RecordView *rec) noexcept nogil:
    """The size of a Kafka record batch (v2) holding this record alone: what a broker compares with the topic's
    max.message.bytes."""
    # attributes, timestamp delta 0, offset delta 0, key, value, header count, headers
    cdef size_t body = 3 + (km_zz_size(rec.key.n) + rec.key.n if rec.has_key else 1)
    body += km_zz_size(rec.value.n) + rec.value.n if rec.has_value else 1
    body += km_zz_size(rec.header_count) + _header_bytes(rec, True)
    return 61 + km_zz_size(body) + body


cdef size_t _record_bytes(RecordView *rec) noexcept nogil:
    """What librdkafka counts against message.max.bytes: the key, the value and the headers' names and values."""
    return (rec.key.n if rec.has_key else 0) + (rec.value.n if rec.has_value else 0) + _header_bytes(rec, False)


cdef int _refusal(const km_rule *rule, RecordView *rec, int64_t now_ms) noexcept nogil:
    """Why the topic's brokers would refuse rec (a KM_INVALID_* reason), or 0."""
    if rule.requires_key and not rec.has_key:
        return KM_INVALID_NO_KEY
    if rule.create_time and rec.has_timestamp:
        # rec.timestamp_ms >= 0 (a negative one was refused already): neither difference overflows.
        if now_ms - rec.timestamp_ms > rule.before_max_ms:
            return KM_INVALID_TOPIC_TIMESTAMP_BEHIND
        if rec.timestamp_ms - now_ms > rule.after_max_ms:
            return KM_INVALID_TOPIC_TIMESTAMP_AHEAD
    # The record's protobuf bytes bound its Kafka size within 96 bytes: only a record near the limit is measured.
    if <int64_t>rec.raw.n + 96 > rule.max_bytes and <int64_t>_batch_size(rec) > rule.max_bytes:
        return KM_INVALID_TOPIC_MAX_BYTES
    return 0


cdef void _topic_cache_clear(TopicCache *cache) noexcept nogil:
    cdef int i
    for i in range(cache.n):
        rd_kafka_topic_destroy(cache.slots[i].rkt)
    cache.n = 0


cdef int _submit(km_stream *stream, RouteTable table, rd_kafka_t **rks, km_rules **rules, ProduceRequestView *view,
                 int64_t nbytes, int wait_ms, uint64_t epoch, uint64_t *out_batch_id) except -1 nogil:
    """Route and enqueue every record of view as one batch, to the sinks' handles acquired in rks (NULL: that
    producer is closed, and its records fail with CLUSTER_UNAVAILABLE). A record that rules[sink] (NULL: none known)
    says the sink's brokers would refuse fails alone for that sink. Returns 0, or -1 (MemoryError) before
    enqueuing. Once the stream is stopped or closed, the rest is not enqueued: no one will read the batch's
    answer. epoch: the lease guard's when table was taken; the batch is acknowledged under the guard (km_batch.h)."""
    cdef size_t i
    cdef int s, k, reason
    cdef TopicHandle *th
    cdef const km_rule *rule
    cdef uint64_t n_refs = 0
    cdef uint32_t ref = 0
    cdef RecordView *rec
    cdef const Route *route
    cdef const Route **routes = <const Route **>malloc((view.count if view.count else 1) * sizeof(void *))
    cdef uint8_t *codes = <uint8_t *>malloc(view.count if view.count else 1)
    cdef uint16_t *slots = <uint16_t *>malloc((view.count if view.count else 1) * sizeof(uint16_t))
    cdef uint16_t slot = 0
    cdef int64_t run_records = 0, run_bytes = 0
    cdef km_batch *b
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    cdef int64_t now_ms = <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000
    if view.count > MAX_REQUEST_RECORDS:
        free(routes)
        free(codes)
        free(slots)
        with gil:
            raise ValueError(f"a ProduceRequest may hold at most {MAX_REQUEST_RECORDS:,} records, got "
                             f"{view.count:,}: send them as several requests")
    if routes == NULL or codes == NULL or slots == NULL:
        free(routes)
        free(codes)
        free(slots)
        with gil:
            raise MemoryError()
    for i in range(view.count):
        rec = &view.records[i]
        routes[i] = NULL
        codes[i] = KM_OK
        # The topic's counters' slot: looked up again only when the topic differs from the record before's (a
        # batch is mostly of one topic).
        if i == 0 or rec.topic.n != view.records[i - 1].topic.n or memcmp(
                rec.topic.p, view.records[i - 1].topic.p, rec.topic.n) != 0:
            slot = table.topic_slot(rec.topic.p, rec.topic.n)
        slots[i] = slot
        if not valid_topic(rec.topic.p, rec.topic.n):
            codes[i] = KM_INVALID_TOPIC
            continue
        if not rec.invalid and rec.has_timestamp and _max_ahead_ms > 0 and rec.timestamp_ms - now_ms > _max_ahead_ms:
            rec.invalid = KM_INVALID_TIMESTAMP_AHEAD
        if rec.invalid:
            codes[i] = KM_INVALID_RECORD
            continue
        route = table.lookup(rec.topic.p, rec.topic.n)
        if route == NULL:
            codes[i] = KM_NO_ROUTE
            continue
        routes[i] = route
        n_refs += route.n
    if n_refs > MAX_REFS:
        free(routes)
        free(codes)
        free(slots)
        with gil:
            raise ValueError(f"a batch may hold at most {MAX_REFS} (record, sink) deliveries, got {n_refs}")
    b = km_batch_new(stream, view.batch_id, table.revision, view.count, <uint32_t>n_refs, nbytes, table.names,
                     table.names_len, table.name_off, table.n_sinks)
    if b == NULL:
        free(routes)
        free(codes)
        free(slots)
        with gil:
            raise MemoryError()
    # The records received, counted once the request is taken (a request refused whole counts nothing), in runs
    # of one slot.
    for i in range(view.count):
        if i and slots[i] != slots[i - 1]:
            km_topic_count(&_received, slots[i - 1], run_records, run_bytes, 0)
            run_records = run_bytes = 0
        run_records += 1
        run_bytes += (view.records[i].key.n if view.records[i].has_key else 0) + \
            (view.records[i].value.n if view.records[i].has_value else 0)
    if view.count:
        km_topic_count(&_received, slots[view.count - 1], run_records, run_bytes, 0)
    b.guard = &_guard
    b.guard_epoch = epoch
    b.guard_stale = km_guard_stale(&_guard, epoch)
    # Before any record is enqueued: the batch cannot complete (and uncount itself) before it is counted.
    b.revisions = &_revisions
    b.revision_over = km_revisions_add(&_revisions, b.revision, 1, 0)
    out_batch_id[0] = view.batch_id
    cdef TopicCache topics
    topics.n = 0
    for i in range(view.count):
        if codes[i] != KM_OK:
            if km_batch_fail(b, i, codes[i],
                             KM_INVALID_KERR(view.records[i].invalid) if codes[i] == KM_INVALID_RECORD else 0, 0):
                km_batch_detail(b, i, <const char *>view.records[i].topic.p, view.records[i].topic.n, -1, -1)
            continue
        if km_flag_load(&stream.stop):
            km_batch_settle(b, <int64_t>n_refs - ref)     # counted as pending, never enqueued
            break
        route = routes[i]
        for k in range(route.n):
            s = route.sinks[k]
            b.refs[ref].batch = b
            b.refs[ref].index = i
            b.refs[ref].sink = s
            b.refs[ref].topic = slots[i]
            ref += 1
            if rks[s] == NULL:
                if km_batch_fail(b, i, KM_CLUSTER_UNAVAILABLE, <int32_t>RD_KAFKA_RESP_ERR__DESTROY, s):
                    km_batch_detail(b, i, <const char *>view.records[i].topic.p, view.records[i].topic.n, -1, -1)
                km_batch_settle(b, 1)
                continue
            th = _topic_entry(&topics, rks[s], s, &view.records[i], rules[s])
            if th != NULL:
                rule = th.rule
            else:
                rule = km_rules_find(rules[s], view.records[i].topic.p, view.records[i].topic.n) \
                    if rules[s] != NULL else NULL
            reason = _refusal(rule, &view.records[i], now_ms) if rule != NULL else 0
            if reason:
                if km_batch_fail(b, i, KM_RECORD_TOO_LARGE if reason == KM_INVALID_TOPIC_MAX_BYTES else
                                 KM_INVALID_RECORD, KM_INVALID_KERR(reason), s):
                    km_batch_detail(b, i, <const char *>view.records[i].topic.p, view.records[i].topic.n,
                                    <int64_t>_batch_size(&view.records[i]) if reason == KM_INVALID_TOPIC_MAX_BYTES
                                    else -1, rule.max_bytes if reason == KM_INVALID_TOPIC_MAX_BYTES else -1)
                km_batch_settle(b, 1)
            else:   # failures are recorded on the batch
                _enqueue(rks[s], &view.records[i], &b.refs[ref - 1], wait_ms, th.rkt if th != NULL else NULL,
                         &table.handles[s].closing, &stream.stop)
    _topic_cache_clear(&topics)
    free(routes)
    free(codes)
    free(slots)
    km_batch_settle(b, 1)   # the submit guard: the batch may complete from here on
    return 0


cdef void _enqueue(rd_kafka_t *rk, RecordView *rec, km_msgref *ref, int wait_ms, rd_kafka_topic_t *rkt,
                   const int *producer_closing, const int *stream_stop) noexcept nogil:
    """Enqueue one (record, sink) delivery of a batch (by rkt when given); a refusal is recorded on the batch at
    once."""
    cdef rd_kafka_resp_err_t code = produce_record(rk, rec, rkt, ref, wait_ms, producer_closing, stream_stop)
    cdef char value[32]
    cdef size_t value_len = sizeof(value)
    cdef int64_t limit = -1
    if code != RD_KAFKA_RESP_ERR_NO_ERROR:
        if km_batch_fail(ref.batch, ref.index, _code_for(code), <int32_t>code, ref.sink):
            if code == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE and rd_kafka_conf_get(
                    rd_kafka_conf(rk), "message.max.bytes", value, &value_len) == RD_KAFKA_CONF_OK:
                limit = strtoll(value, NULL, 10)
            km_batch_detail(ref.batch, ref.index, <const char *>rec.topic.p, rec.topic.n, <int64_t>_record_bytes(rec),
                            limit)
        km_batch_settle(ref.batch, 1)          # it was counted as pending, and will get no delivery report


cdef extern from *:
    """
    #include "km_batch.h"
    """
    int _code_for "km_code_for"(rd_kafka_resp_err_t err) nogil


cdef class ProduceStream:
    """The native state of one Produce stream. Built by open_stream(); close() when the stream ends."""

    cdef km_stream *s

    def __init__(self):
        raise TypeError("ProduceStream cannot be instantiated directly; use open_stream()")

    cdef inline int _check_alive(self) except -1:
        if self.s == NULL:
            raise HandleClosedError("produce stream is closed")
        return 0

    def fileno(self):
        """An eventfd that becomes readable when a batch has completed."""
        self._check_alive()
        return self.s.efd

    @property
    def inflight_bytes(self):
        self._check_alive()
        return km_atomic_load(&self.s.inflight_bytes)

    @property
    def inflight_batches(self):
        self._check_alive()
        return km_atomic_load(&self.s.inflight_batches)

    def submit(self, RouteTable table not None, data, int queue_full_wait_ms=50, guard_epoch=None):
        """Parse a serialized ProduceRequest and enqueue its records by table. Returns the batch id.

        guard_epoch: the lease guard's epoch when table was taken (guard_epoch()); by default, now. The batch is
        acknowledged only under the same guard (km_batch.h).

        A malformed request raises WireError and enqueues nothing. Per-record failures (invalid topic, no route,
        a record librdkafka refuses) are reported in the batch's response, never raised."""
        self._check_alive()
        cdef const unsigned char[::1] buf = data
        cdef ProduceRequestView view
        cdef int rc
        cdef uint64_t batch_id = 0
        cdef int64_t nbytes = buf.shape[0]
        cdef uint64_t epoch = km_guard_epoch(&_guard) if guard_epoch is None else <uint64_t>guard_epoch
        # Taken with the GIL, so that a close() on another thread cannot free them under this call.
        cdef km_stream *stream = self.s
        cdef rd_kafka_t **rks = <rd_kafka_t **>calloc(max(1, table.n_sinks), sizeof(rd_kafka_t *))
        cdef km_rules **rules = <km_rules **>calloc(max(1, table.n_sinks), sizeof(km_rules *))
        cdef int i
        if rks == NULL or rules == NULL:
            free(rks)
            free(rules)
            raise MemoryError()
        # The sinks' rule snapshots, held by this list for the call (the control plane may swap in newer ones).
        held = []
        for i in range(table.n_sinks):
            snapshot = (<Producer>table._producers[i]).topic_rules
            if snapshot is not None:
                held.append(snapshot)
                rules[i] = &(<TopicRules>snapshot).r
        km_stream_ref(stream)
        table.acquire_all(rks)
        with nogil:
            try:
                rc = produce_request_parse(&buf[0] if buf.shape[0] else <const unsigned char *>"", buf.shape[0],
                                           &view)
                if rc == 0:
                    try:
                        _submit(stream, table, rks, rules, &view, nbytes, queue_full_wait_ms, epoch, &batch_id)
                    finally:
                        produce_request_view_free(&view)
            finally:
                table.release_all(rks)
                km_stream_unref(stream)
                free(rks)
                free(rules)
        if rc < 0:
            raise WireError(view.err.decode(), view.err_pos)
        return batch_id

    def drain(self):
        """The encoded ProduceResponse of every batch completed since the last call, one bytes object each."""
        self._check_alive()
        cdef km_batch *b = km_stream_take_completed(self.s)
        cdef km_batch *next_b
        out = []
        try:
            while b != NULL:
                out.append(_encode_response(b))
                next_b = b.next
                km_batch_free(b)
                b = next_b
        finally:
            while b != NULL:
                next_b = b.next
                km_batch_free(b)
                b = next_b
        return out

    def abandon(self):
        """No one will read this stream's answers any more (the app cancelled): a submit in progress on another
        thread stops enqueuing at its next record. What it enqueued is still delivered; close() still follows."""
        if self.s != NULL:
            km_stream_stop(self.s)

    def close(self):
        """End the stream: batches still in flight are settled and freed when their deliveries complete. Safe while
        a submit is in progress on another thread: that submit stops enqueuing and returns."""
        if self.s != NULL:
            km_stream_close(self.s)
            self.s = NULL

    def __dealloc__(self):
        self.close()


def open_stream():
    cdef ProduceStream ps = ProduceStream.__new__(ProduceStream)
    ps.s = km_stream_new()
    if ps.s == NULL:
        raise OSError("could not create an eventfd for the produce stream")
    return ps


cdef struct Buf:
    char *p
    size_t len
    size_t cap


cdef int buf_reserve(Buf *b, size_t extra) except -1:
    cdef size_t cap = b.cap if b.cap else 256
    cdef char *p
    if b.len + extra <= b.cap:
        return 0
    while cap < b.len + extra:
        cap *= 2
    p = <char *>malloc(cap)
    if p == NULL:
        raise MemoryError()
    if b.len:
        memcpy(p, b.p, b.len)
    free(b.p)
    b.p = p
    b.cap = cap
    return 0


cdef inline size_t varint_size(uint64_t v) noexcept nogil:
    cdef size_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef int put_varint(Buf *b, uint64_t v) except -1:
    buf_reserve(b, 10)
    while v >= 0x80:
        b.p[b.len] = <char>((v & 0x7F) | 0x80)
        b.len += 1
        v >>= 7
    b.p[b.len] = <char>v
    b.len += 1
    return 0


cdef int put_bytes(Buf *b, const char *p, size_t n) except -1:
    buf_reserve(b, n)
    memcpy(b.p + b.len, p, n)
    b.len += n
    return 0


cdef const char *_topic_rule_text(int reason) noexcept nogil:
    """Why a topic's config on a cluster refuses a record (a KM_INVALID_* reason of km_rules.h)."""
    if reason == KM_INVALID_NO_KEY:
        return "the topic is compacted (cleanup.policy=compact) and the record has no key"
    if reason == KM_INVALID_TOPIC_TIMESTAMP_BEHIND:
        return "timestamp_ms is further behind the clock than the topic's message.timestamp.before.max.ms allows"
    if reason == KM_INVALID_TOPIC_TIMESTAMP_AHEAD:
        return "timestamp_ms is further ahead of the clock than the topic's message.timestamp.after.max.ms allows"
    return "the record, in a Kafka batch of its own, is larger than the topic's max.message.bytes"


cdef void _quote_topic(const km_detail *d, char *out, size_t cap) noexcept nogil:
    """d's topic as a message shows it, quoted: printable ASCII as it is, any other byte as \\xNN (the message is a
    protobuf string: valid UTF-8 whatever the topic's bytes), at most TOPIC_SHOWN bytes of it, then "..." and its
    length. cap >= 8 * TOPIC_SHOWN."""
    cdef size_t i, n = 1
    cdef size_t kept = d.topic_len if d.topic_len < KM_DETAIL_TOPIC else KM_DETAIL_TOPIC
    cdef unsigned char c
    out[0] = 39       # '
    for i in range(min(kept, TOPIC_SHOWN)):
        c = <unsigned char>d.topic[i]
        if 0x20 <= c < 0x7f and c != 39 and c != 92:
            out[n] = <char>c
            n += 1
        else:
            snprintf(out + n, cap - n, "\\x%02x", c)
            n += 4
    if d.topic_len > TOPIC_SHOWN:
        snprintf(out + n, cap - n, "'... (%u bytes)", d.topic_len)
    else:
        snprintf(out + n, cap - n, "'")


cdef int _message(km_batch *b, uint32_t i, char *msg, size_t cap) noexcept nogil:
    """The human-readable text of record i's failure, in msg; returns its length. It names what failed: the cluster
    (when one refused it), the topic, and the size and the limit (when one was broken)."""
    cdef int n
    cdef int32_t kerr = b.rec_kerr[i]
    cdef const char *sink = b.names + b.name_off[b.rec_sink[i]]
    cdef const km_detail *d = km_batch_find_detail(b, i)
    cdef char topic[8 * TOPIC_SHOWN + 32]
    cdef char at[8 * TOPIC_SHOWN + 300]        # "cluster 'c1': topic 't': ", or what of it is known
    if d != NULL:
        _quote_topic(d, topic, sizeof(topic))
    else:
        topic[0] = 0
    if b.rec_code[i] == KM_NO_ROUTE:
        if d != NULL:
            n = snprintf(msg, cap, "topic %s: no producer route for it and no __default__ route (mapping revision "
                         "%llu)", topic, <unsigned long long>b.revision)
        else:
            n = snprintf(msg, cap, "no producer route for this topic and no __default__ route (mapping revision "
                         "%llu)", <unsigned long long>b.revision)
        return _clip(n, cap)
    if b.rec_code[i] == KM_INVALID_TOPIC and kerr == 0:
        n = snprintf(msg, cap, "invalid topic name %s: it must be 1 to 249 characters of [a-zA-Z0-9._-] and not '.' "
                     "or '..'", <char *>topic if d != NULL and d.topic_len > 0 else <char *>"(empty)")
        return _clip(n, cap)
    # Every other failure is the record's on a topic; a cluster's when a cluster refused it.
    cdef bint cluster_failure = not (
        kerr == KM_INVALID_KERR(KM_INVALID_HEADER_NAME) or kerr == KM_INVALID_KERR(KM_INVALID_TIMESTAMP)
        or kerr == KM_INVALID_KERR(KM_INVALID_TIMESTAMP_AHEAD) or kerr == KM_INVALID_KERR(KM_INVALID_PARTITION))
    cdef int k = 0
    at[0] = 0
    if cluster_failure:
        k = snprintf(at, sizeof(at), "cluster '%s': ", sink)
    if d != NULL and 0 <= k < <int>sizeof(at):
        snprintf(at + k, sizeof(at) - k, "topic %s: ", topic)
    if kerr == KM_INVALID_KERR(KM_INVALID_HEADER_NAME):
        n = snprintf(msg, cap, "%sa header name is not valid UTF-8 (Header.key is a string; consumers in other "
                     "languages could not read the record)", at)
    elif kerr == KM_INVALID_KERR(KM_INVALID_TIMESTAMP):
        n = snprintf(msg, cap, "%stimestamp_ms is negative; Kafka takes milliseconds since the Unix epoch, 0 or "
                     "later", at)
    elif kerr == KM_INVALID_KERR(KM_INVALID_TIMESTAMP_AHEAD):
        n = snprintf(msg, cap, "%stimestamp_ms is more than %lld ms ahead of the sidecar's clock, which Kafka refuses "
                     "by default (message.timestamp.after.max.ms): microseconds or nanoseconds instead of "
                     "milliseconds?", at, <long long>_max_ahead_ms)
    elif kerr == KM_INVALID_KERR(KM_INVALID_PARTITION):
        n = snprintf(msg, cap, "%spartition is negative; leave it out to let the partitioner choose", at)
    elif kerr == KM_INVALID_KERR(KM_INVALID_TOPIC_MAX_BYTES) and d != NULL and d.size >= 0:
        n = snprintf(msg, cap, "%sthe record, in a Kafka batch of its own, is %lld bytes, over the topic's "
                     "max.message.bytes of %lld", at, <long long>d.size, <long long>d.limit)
    elif KM_INVALID_KERR(KM_INVALID_TOPIC_MAX_BYTES) <= kerr <= KM_INVALID_KERR(KM_INVALID_NO_KEY):
        n = snprintf(msg, cap, "%s%s", at, _topic_rule_text(KM_INVALID_REASON(kerr)))
    elif kerr == <int32_t>RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE and d != NULL and d.limit >= 0:
        n = snprintf(msg, cap, "%sthe record is %lld bytes (key, value and headers), over the producer's "
                     "message.max.bytes of %lld; raise it in the cluster's config (and the topic's max.message.bytes "
                     "on its brokers)", at, <long long>d.size, <long long>d.limit)
    elif kerr == <int32_t>RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE and d != NULL:
        n = snprintf(msg, cap, "%sthe brokers refused the record (%lld bytes of key and value) as larger than the "
                     "topic's max.message.bytes (MSG_SIZE_TOO_LARGE)", at, <long long>d.size)
    elif kerr == <int32_t>RD_KAFKA_RESP_ERR__PURGE_QUEUE:
        n = snprintf(msg, cap, "%snot written, the sidecar stopped before the cluster took it (its shutdown grace ran "
                     "out)", at)
    elif kerr == <int32_t>RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
        n = snprintf(msg, cap, "%sunknown whether written, the sidecar stopped while the cluster had it (its shutdown "
                     "grace ran out)", at)
    elif kerr == <int32_t>RD_KAFKA_RESP_ERR__DESTROY:
        n = snprintf(msg, cap, "%snot written, its producer was closed (the sidecar is stopping, or the cluster left "
                     "the mapping)", at)
    elif kerr == KM_LAPSED_KERR:
        n = snprintf(msg, cap, "%swritten, not acknowledged: this sidecar lost its status lease in etcd while the "
                     "record was in flight (paused, or cut off from etcd), so the route it took may be stale (a topic "
                     "move); send the record again", at)
    else:
        n = snprintf(msg, cap, "%s%s (%s)", at, rd_kafka_err2str(<rd_kafka_resp_err_t>kerr),
                     rd_kafka_err2name(<rd_kafka_resp_err_t>kerr))
    return _clip(n, cap)


cdef inline int _clip(int n, size_t cap) noexcept nogil:
    if n < 0:
        return 0
    if n >= <int>cap:
        return <int>cap - 1
    return n


cdef inline bint _same_cause(km_batch *b, uint32_t i, uint32_t j) noexcept nogil:
    """Whether records i and j failed alike: the same code, error and cluster, and the same topic (when both are
    among the failures whose detail is kept), so that a run's message names its records' topic."""
    if not (b.rec_code[i] == b.rec_code[j] and b.rec_kerr[i] == b.rec_kerr[j]
            and (b.rec_kerr[i] == 0 or b.rec_sink[i] == b.rec_sink[j])):
        return False
    if b.details == NULL:
        return True
    cdef const km_detail *di = km_batch_find_detail(b, i)
    cdef const km_detail *dj = km_batch_find_detail(b, j)
    if di == NULL or dj == NULL:
        return True
    cdef size_t n = di.topic_len if di.topic_len < KM_DETAIL_TOPIC else KM_DETAIL_TOPIC
    return di.topic_len == dj.topic_len and memcmp(di.topic, dj.topic, n) == 0


cdef object _encode_response(km_batch *b):
    """ProduceResponse{batch_id=1, ok_count=2, errors=3 (RecordError{index=1, code=2, message=3, count=4}),
    mapping_revision=4}, encoded straight from the batch's C state. Consecutive records that failed for the same
    cause are one RecordError (count), and only the first MAX_MESSAGES errors carry their text, so that a response
    stays small whatever the request (at most ~9 bytes per failed record, for the worst case of every other record
    failing: under 2.5 MB at MAX_REQUEST_RECORDS)."""
    cdef Buf out
    cdef uint32_t i, j, failed = 0, written = 0
    cdef char msg[1024]
    cdef int n
    cdef size_t inner
    out.p = NULL
    out.len = 0
    out.cap = 0
    try:
        for i in range(b.n_records):
            if b.rec_code[i] != KM_OK:
                failed += 1
                _error_counts[b.rec_code[i] & 15] += 1
        put_varint(&out, 0x08)
        put_varint(&out, b.batch_id)
        put_varint(&out, 0x10)
        put_varint(&out, b.n_records - failed)
        i = 0
        while i < b.n_records:
            if b.rec_code[i] == KM_OK:
                i += 1
                continue
            j = i + 1
            while j < b.n_records and _same_cause(b, i, j):
                j += 1
            n = _message(b, i, msg, sizeof(msg)) if written < MAX_MESSAGES else 0
            written += 1
            inner = 1 + varint_size(i) + 1 + varint_size(b.rec_code[i])
            if n:
                inner += 1 + varint_size(n) + n
            if j - i > 1:
                inner += 1 + varint_size(j - i)
            put_varint(&out, 0x1a)
            put_varint(&out, inner)
            put_varint(&out, 0x08)
            put_varint(&out, i)
            put_varint(&out, 0x10)
            put_varint(&out, b.rec_code[i])
            if n:
                put_varint(&out, 0x1a)
                put_varint(&out, n)
                put_bytes(&out, msg, n)
            if j - i > 1:
                put_varint(&out, 0x20)
                put_varint(&out, j - i)
            i = j
        if b.revision:
            put_varint(&out, 0x20)
            put_varint(&out, b.revision)
        return PyBytes_FromStringAndSize(out.p, out.len)
    finally:
        free(out.p)


def _debug_counts():
    return {"produce_batch": (km_batches_created, km_batches_freed),
            "produce_stream": (km_streams_created, km_streams_freed)}
