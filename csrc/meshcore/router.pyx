"""The router's data path: records polled from a source cluster's consumer go through each matching rule's steps and
are enqueued to the rule's sink producers inside the core, with no Python object per record.

A RouterTable is the compiled form of the rules that read one source cluster: source topic -> the programs (one per
rule that reads the topic) that say which steps to apply, which topic the record is written to on each sink, and
where records a step cannot process go (the rule's dead-letter topic, on each sink). build_router_table() makes one
from plain Python values; it is immutable and read by one pump thread at a time.

A RouterStream accounts deliveries with the Produce path's batch accounting (km_batch.h): every run of consecutive
records of one source partition becomes one batch, so that a slow target holds back only the partitions whose records
wait for it. route() polls, routes and returns the runs; drain() returns the runs whose every delivery settled, and
whether each one failed; the Python side commits a run's offsets once it and every run before it in its partition
settled without failure, and reads a failed run again (at-least-once: nothing is committed past a record a target has
not acknowledged).

Partitions on the target: a record with a key goes where the producer's partitioner puts it (murmur2_random, the
Java client's murmur2 over the target's partition count), so one key reaches one partition whatever the source's
partition count; a record without a key keeps its source partition where the target has it, else the source partition
modulo the target's count.

Threads: route() and drain() are called by the pump thread that owns the stream (the GIL released for the native
work); delivery reports complete batches on the producers' poll threads.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, strlen

from meshcore.consumer cimport Consumer, Polled
from meshcore.message cimport enqueue_vus
from meshcore.producer cimport Producer, km_handle, km_handle_acquire, km_handle_release
from meshcore.rdkafka cimport *
from meshcore.strmap cimport km_strmap, km_strmap_free, km_strmap_get, km_strmap_init, km_strmap_put
from meshcore.support cimport KM_DEBUG_ENABLED, km_atomic_add, km_atomic_load, km_flag_load

from meshcore.errors import HandleClosedError


cdef extern from "km_batch.h" nogil:
    enum:
        KM_OK
        KM_INTERNAL
        KM_CLUSTER_UNAVAILABLE
    ctypedef struct km_batch
    ctypedef struct km_msgref:
        km_batch *batch
        uint32_t index
        uint16_t sink
    ctypedef struct km_stream:
        int efd
        int stop
        int64_t inflight_bytes
        int64_t inflight_batches
    ctypedef struct km_detail:
        uint32_t index
        uint32_t topic_len
        int64_t size
        int64_t limit
        char topic[1]
    ctypedef struct km_batch:
        km_stream *stream
        km_batch *next
        uint64_t batch_id
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
    void km_stream_close(km_stream *s)
    km_batch *km_batch_new(km_stream *s, uint64_t batch_id, uint64_t revision, uint32_t n_records, uint32_t n_refs,
                           int64_t bytes, const char *names, size_t names_len, const uint32_t *name_off,
                           uint32_t n_names)
    bint km_batch_fail(km_batch *b, uint32_t index, int code, int32_t kerr, uint16_t sink)
    void km_batch_detail(km_batch *b, uint32_t index, const char *topic, size_t topic_len, int64_t size,
                         int64_t limit)
    const km_detail *km_batch_find_detail(const km_batch *b, uint32_t index)
    void km_batch_settle(km_batch *b, int64_t n)
    void km_batch_free(km_batch *b)
    km_batch *km_stream_take_completed(km_stream *s)
    int km_code_for(rd_kafka_resp_err_t err)


cdef enum:
    OP_FILTER = 1        # key prefix, header present, header equal (the fields given, all of them)
    OP_REJECT = 2        # a filter on the topic name that the topic fails: nothing passes
    OP_REKEY = 3
    OP_DROP_HEADER = 4
    OP_ADD_HEADER = 5
    OP_SAMPLE = 6
    # Bounds a run's accounting (16 bytes per delivery) and keeps every count in 32 bits.
    MAX_REFS = 4000000
    MAX_PROG_SINKS = 16
    # What a dead-lettered record's reason may say.
    REASON_LEN = 256


#: Headers a dead-lettered record carries besides its own: why, which rule, and where it came from.
DEAD_LETTER_REASON = "kafka-mesh.dead-letter.reason"
DEAD_LETTER_RULE = "kafka-mesh.dead-letter.rule"
DEAD_LETTER_SOURCE = "kafka-mesh.dead-letter.source"


cdef struct Op:
    int kind
    char *name           # header name (NUL-terminated), or NULL
    char *value          # header value to compare or add (any bytes), or NULL
    size_t value_len
    char *prefix         # key prefix, or NULL
    size_t prefix_len
    int64_t n            # sample: keep 1 in n


cdef struct Prog:
    int rule                            # index of the rule's counters
    char *rule_name
    Op *ops
    int n_ops
    int n_sinks
    int sinks[MAX_PROG_SINKS]           # producer index per sink
    char *topic                         # the topic written on every sink
    char *dead_letter                   # the rule's dead-letter topic
    int32_t parts[MAX_PROG_SINKS]       # the target topic's partition count on each sink; 0: not known


cdef struct Entry:
    int first                            # index of the first prog of the topic
    int n


cdef struct RuleCounters:
    int64_t records_in
    int64_t records_out
    int64_t filtered
    int64_t dead_lettered


cdef int64_t _tables_created = 0
cdef int64_t _tables_freed = 0


cdef char *_dup(bytes b) except? NULL:
    cdef char *p = <char *>malloc(len(b) + 1)
    if p == NULL:
        raise MemoryError()
    memcpy(p, <const char *>b, len(b))
    p[len(b)] = 0
    return p


cdef class RouterTable:
    """The compiled rules of one source cluster. Built by build_router_table(); immutable."""

    cdef readonly str source
    cdef readonly uint64_t revision
    cdef list _producers
    cdef km_handle **handles
    cdef int n_producers
    cdef char *names                # producer (sink cluster) names, NUL-separated
    cdef size_t names_len
    cdef uint32_t *name_off
    cdef Prog *progs
    cdef int n_progs
    cdef Entry *entries
    cdef int n_entries
    cdef km_strmap topics
    cdef RuleCounters *counters
    cdef int n_rules
    cdef readonly tuple rules       # rule names, in counter order
    cdef char *source_c             # the source cluster's name, for dead-letter headers

    def __init__(self):
        raise TypeError("RouterTable cannot be instantiated directly; use build_router_table()")

    def counts(self):
        """{rule: (in, out, filtered, dead_lettered)}: what this table routed (each record once per rule)."""
        out = {}
        cdef int i
        for i in range(self.n_rules):
            out[self.rules[i]] = (km_atomic_load(&self.counters[i].records_in),
                                  km_atomic_load(&self.counters[i].records_out),
                                  km_atomic_load(&self.counters[i].filtered),
                                  km_atomic_load(&self.counters[i].dead_lettered))
        return out

    @property
    def topics_read(self):
        return self._topic_names

    cdef readonly tuple _topic_names

    def __dealloc__(self):
        global _tables_freed
        cdef int i, j
        if self.progs != NULL:
            for i in range(self.n_progs):
                for j in range(self.progs[i].n_ops):
                    free(self.progs[i].ops[j].name)
                    free(self.progs[i].ops[j].value)
                    free(self.progs[i].ops[j].prefix)
                free(self.progs[i].ops)
                free(self.progs[i].topic)
                free(self.progs[i].dead_letter)
                free(self.progs[i].rule_name)
            free(self.progs)
        free(self.entries)
        free(self.handles)
        free(self.names)
        free(self.name_off)
        free(self.counters)
        free(self.source_c)
        km_strmap_free(&self.topics)
        if KM_DEBUG_ENABLED:
            _tables_freed += 1


# Checked indexing: the module is built without bounds checks (for the data path), and the programs come from Python.
@cython.boundscheck(True)
@cython.wraparound(True)
def build_router_table(str source, uint64_t revision, list producers, list rules, dict topics):
    """Compile a source cluster's rules.

    producers: the sink producers (meshcore.Producer), indexed by the programs. rules: rule names, indexed by the
    programs (their counters). topics: {source topic: [program, ...]}, each program a dict:
    {"rule": index, "topic": target topic, "dead_letter": topic, "sinks": [(producer index, partition count or 0)],
    "steps": [(kind, ...), ...]} with steps ("filter", key_prefix bytes|None, header str|None, equals bytes|None),
    ("reject",), ("rekey", header), ("drop_header", name), ("add_header", name, value bytes), ("sample", n)."""
    global _tables_created
    cdef RouterTable t = RouterTable.__new__(RouterTable)
    if KM_DEBUG_ENABLED:
        _tables_created += 1        # counted now: a refused program still frees the table
    cdef int i, j, k, n_progs = 0
    cdef Prog *p
    cdef Op *op
    cdef size_t off = 0
    t.source = source
    t.source_c = _dup(source.encode())
    t.revision = revision
    t._producers = list(producers)
    t.rules = tuple(rules)
    t.n_rules = len(rules)
    t._topic_names = tuple(sorted(topics))
    t.counters = <RuleCounters *>calloc(max(1, t.n_rules), sizeof(RuleCounters))
    t.n_producers = len(producers)
    t.handles = <km_handle **>calloc(max(1, t.n_producers), sizeof(km_handle *))
    t.name_off = <uint32_t *>calloc(max(1, t.n_producers), sizeof(uint32_t))
    encoded = [(<Producer?>p_).name.encode() for p_ in producers]
    t.names_len = sum(len(e) + 1 for e in encoded)
    t.names = <char *>calloc(max(1, t.names_len), 1)
    if t.counters == NULL or t.handles == NULL or t.name_off == NULL or t.names == NULL:
        raise MemoryError()
    for i, p_ in enumerate(producers):
        t.handles[i] = (<Producer>p_).h
        t.name_off[i] = <uint32_t>off
        memcpy(t.names + off, <const char *>encoded[i], len(encoded[i]))
        off += len(encoded[i]) + 1
    for progs in topics.values():
        n_progs += len(progs)
    t.progs = <Prog *>calloc(max(1, n_progs), sizeof(Prog))
    t.entries = <Entry *>calloc(max(1, len(topics)), sizeof(Entry))
    if t.progs == NULL or t.entries == NULL:
        raise MemoryError()
    names = [str(name).encode() for name in topics]
    if km_strmap_init(&t.topics, len(names), sum(len(n) for n in names)) != 0:
        raise MemoryError()
    for i, (name, progs) in enumerate(topics.items()):
        t.entries[i].first = t.n_progs
        t.entries[i].n = len(progs)
        km_strmap_put(&t.topics, names[i], len(names[i]), i)
        t.n_entries += 1
        for spec in progs:
            p = &t.progs[t.n_progs]
            t.n_progs += 1
            p.rule = spec["rule"]
            if not 0 <= p.rule < t.n_rules:
                raise ValueError(f"program of topic {name!r}: rule index {p.rule} out of range")
            p.rule_name = _dup(t.rules[p.rule].encode())
            p.topic = _dup(str(spec["topic"]).encode())
            p.dead_letter = _dup(str(spec["dead_letter"]).encode())
            sinks = spec["sinks"]
            if not 0 < len(sinks) <= MAX_PROG_SINKS:
                raise ValueError(f"program of topic {name!r}: 1 to {MAX_PROG_SINKS} sinks, got {len(sinks)}")
            for k, (index, parts) in enumerate(sinks):
                if not 0 <= index < t.n_producers:
                    raise ValueError(f"program of topic {name!r}: producer index {index} out of range")
                p.sinks[k] = index
                p.parts[k] = max(0, parts)
            p.n_sinks = len(sinks)
            steps = spec.get("steps") or []
            p.ops = <Op *>calloc(max(1, len(steps)), sizeof(Op))
            if p.ops == NULL:
                raise MemoryError()
            for step in steps:
                op = &p.ops[p.n_ops]
                p.n_ops += 1
                kind = step[0]
                if kind == "filter":
                    op.kind = OP_FILTER
                    if step[1] is not None:
                        op.prefix = _dup(step[1])
                        op.prefix_len = len(step[1])
                    if step[2] is not None:
                        op.name = _dup(step[2].encode())
                    if step[3] is not None:
                        op.value = _dup(step[3])
                        op.value_len = len(step[3])
                elif kind == "reject":
                    op.kind = OP_REJECT
                elif kind == "rekey":
                    op.kind = OP_REKEY
                    op.name = _dup(step[1].encode())
                elif kind == "drop_header":
                    op.kind = OP_DROP_HEADER
                    op.name = _dup(step[1].encode())
                elif kind == "add_header":
                    op.kind = OP_ADD_HEADER
                    op.name = _dup(step[1].encode())
                    op.value = _dup(step[2])
                    op.value_len = len(step[2])
                elif kind == "sample":
                    op.kind = OP_SAMPLE
                    op.n = step[1]
                    if op.n < 1:
                        raise ValueError(f"sample: one in {op.n}")
                else:
                    raise ValueError(f"unknown step {kind!r}")
    return t


cdef struct Work:
    const void *key
    size_t key_len
    bint has_key
    rd_kafka_headers_t *src       # the record's own headers (owned by the message), or NULL
    rd_kafka_headers_t *hdrs      # the edited copy, or NULL while unedited
    char *keybuf                  # a re-keyed record's key (copied: its header may be dropped after)
    size_t keycap
    char reason[REASON_LEN]


cdef inline rd_kafka_headers_t *_current(Work *w) noexcept nogil:
    return w.hdrs if w.hdrs != NULL else w.src


cdef int _edit(Work *w) noexcept nogil:
    if w.hdrs == NULL:
        w.hdrs = rd_kafka_headers_copy(w.src) if w.src != NULL else rd_kafka_headers_new(4)
    return 0 if w.hdrs != NULL else -1


cdef int _apply(Prog *p, rd_kafka_message_t *m, Work *w) noexcept nogil:
    """Run p's steps on m. 0: keep (w says the key and headers to write), 1: filtered out, 2: dead-letter (w.reason
    says why), -1: out of memory."""
    cdef int i
    cdef Op *op
    cdef const void *v
    cdef size_t vlen
    cdef rd_kafka_headers_t *cur
    cdef char *grown
    for i in range(p.n_ops):
        op = &p.ops[i]
        if op.kind == OP_REJECT:
            return 1
        if op.kind == OP_SAMPLE:
            if m.offset % op.n != 0:
                return 1
        elif op.kind == OP_FILTER:
            if op.prefix != NULL:
                if not w.has_key or w.key_len < op.prefix_len or (
                        op.prefix_len and memcmp(w.key, op.prefix, op.prefix_len) != 0):
                    return 1
            if op.name != NULL:
                cur = _current(w)
                v = NULL
                vlen = 0
                if cur == NULL or rd_kafka_header_get_last(cur, op.name, &v, &vlen) != RD_KAFKA_RESP_ERR_NO_ERROR:
                    return 1
                if op.value != NULL and (v == NULL or vlen != op.value_len or (
                        vlen and memcmp(v, op.value, vlen) != 0)):
                    return 1
        elif op.kind == OP_REKEY:
            cur = _current(w)
            v = NULL
            vlen = 0
            if cur == NULL or rd_kafka_header_get_last(cur, op.name, &v, &vlen) != RD_KAFKA_RESP_ERR_NO_ERROR:
                snprintf(w.reason, REASON_LEN, "rekey: the record has no header '%s'", op.name)
                return 2
            if v == NULL:
                snprintf(w.reason, REASON_LEN, "rekey: header '%s' has no value", op.name)
                return 2
            if vlen > w.keycap:
                grown = <char *>realloc(w.keybuf, vlen)
                if grown == NULL:
                    return -1
                w.keybuf = grown
                w.keycap = vlen
            if vlen:
                memcpy(w.keybuf, v, vlen)
            # An empty key is a key (not a null one): it needs a pointer all the same.
            w.key = w.keybuf if vlen else <const void *>b""
            w.key_len = vlen
            w.has_key = True
        elif op.kind == OP_DROP_HEADER:
            if _current(w) != NULL:
                if _edit(w) < 0:
                    return -1
                rd_kafka_header_remove(w.hdrs, op.name)
        elif op.kind == OP_ADD_HEADER:
            if _edit(w) < 0:
                return -1
            rd_kafka_header_add(w.hdrs, op.name, -1, op.value, <ssize_t>op.value_len)
    return 0


cdef rd_kafka_topic_t *_rkt(rd_kafka_topic_t **cache, rd_kafka_t *rk, const char *name) noexcept nogil:
    """The handle of topic name on rk, made once per route() call (naming the topic by string would look it up, lock
    and count a reference for every record)."""
    if cache[0] == NULL:
        cache[0] = rd_kafka_topic_new(rk, name, NULL)
    return cache[0]


cdef rd_kafka_resp_err_t _produce(rd_kafka_t *rk, rd_kafka_topic_t *rkt, int32_t partition, const void *key,
                                  size_t key_len, bint has_key, rd_kafka_message_t *m, rd_kafka_headers_t *hdrs,
                                  km_msgref *ref, const int *stop) noexcept nogil:
    """Enqueue a copy of m's value with this key and headers (hdrs: a copy, which librdkafka takes on success) and
    m's timestamp. A full queue is waited out (serving delivery reports) unless the stream is stopping."""
    cdef rd_kafka_vu_t vus[8]
    cdef size_t nvu = 0
    cdef rd_kafka_timestamp_type_t tstype
    cdef int64_t ts = rd_kafka_message_timestamp(m, &tstype)
    vus[nvu].vtype = RD_KAFKA_VTYPE_RKT; vus[nvu].u.rkt = rkt; nvu += 1
    vus[nvu].vtype = RD_KAFKA_VTYPE_PARTITION; vus[nvu].u.i32 = partition; nvu += 1
    vus[nvu].vtype = RD_KAFKA_VTYPE_MSGFLAGS; vus[nvu].u.i = RD_KAFKA_MSG_F_COPY; nvu += 1
    vus[nvu].vtype = RD_KAFKA_VTYPE_OPAQUE; vus[nvu].u.ptr = ref; nvu += 1
    if has_key:
        vus[nvu].vtype = RD_KAFKA_VTYPE_KEY; vus[nvu].u.mem.ptr = <void *>key; vus[nvu].u.mem.size = key_len
        nvu += 1
    if m.payload != NULL:
        vus[nvu].vtype = RD_KAFKA_VTYPE_VALUE; vus[nvu].u.mem.ptr = m.payload; vus[nvu].u.mem.size = m.len
        nvu += 1
    if ts >= 0:
        vus[nvu].vtype = RD_KAFKA_VTYPE_TIMESTAMP; vus[nvu].u.i64 = ts; nvu += 1
    if hdrs != NULL:
        vus[nvu].vtype = RD_KAFKA_VTYPE_HEADERS; vus[nvu].u.headers = hdrs; nvu += 1
    # A full queue fails the record at once (its run is read again after a backoff): a pump never blocks on a
    # target, so its other partitions keep flowing and it keeps serving its group; the queue bounds the memory.
    return enqueue_vus(rk, vus, nvu, hdrs, -1, stop, NULL)


cdef inline int32_t _partition(Prog *p, int k, Work *w, int32_t source_partition) noexcept nogil:
    if w.has_key or p.parts[k] <= 0:
        return RD_KAFKA_PARTITION_UA          # the producer's murmur2 over the target's partitions
    if source_partition < p.parts[k]:
        return source_partition
    return source_partition % p.parts[k]


cdef int _route_run(km_stream *stream, RouterTable t, rd_kafka_t **rks, rd_kafka_topic_t **cache,
                    rd_kafka_message_t **msgs, int n, uint64_t batch_id, int64_t *local) except -1 nogil:
    """Route msgs[0..n) (one source partition) as one batch. local: per rule in/out/filtered/dead counts to add."""
    cdef const char *tname = rd_kafka_topic_name(msgs[0].rkt)
    cdef int32_t e = km_strmap_get(&t.topics, <const unsigned char *>tname, strlen(tname))
    cdef Entry *entry = &t.entries[e] if e >= 0 else NULL
    cdef int i, j, k, verdict, sink
    cdef uint64_t n_refs = 0
    cdef uint32_t ref = 0
    cdef int64_t nbytes = 0
    cdef Prog *p
    cdef Work w
    cdef rd_kafka_message_t *m
    cdef rd_kafka_resp_err_t code
    cdef rd_kafka_headers_t *h
    cdef rd_kafka_topic_t *rkt
    cdef km_batch *b
    cdef char source[600]
    if entry != NULL:
        for j in range(entry.n):
            n_refs += t.progs[entry.first + j].n_sinks
        n_refs *= <uint64_t>n
    if n_refs > MAX_REFS:
        with gil:
            raise ValueError(f"a run may hold at most {MAX_REFS} deliveries, got {n_refs}")
    for i in range(n):
        nbytes += <int64_t>(msgs[i].len + msgs[i].key_len)
    b = km_batch_new(stream, batch_id, t.revision, <uint32_t>n, <uint32_t>n_refs, nbytes, t.names, t.names_len,
                     t.name_off, <uint32_t>t.n_producers)
    if b == NULL:
        with gil:
            raise MemoryError()
    w.keybuf = NULL
    w.keycap = 0
    for i in range(n):
        m = msgs[i]
        if entry == NULL:
            break
        for j in range(entry.n):
            p = &t.progs[entry.first + j]
            local[4 * p.rule] += 1
            w.key = m.key
            w.key_len = m.key_len
            w.has_key = m.key != NULL
            w.src = NULL
            w.hdrs = NULL
            w.reason[0] = 0
            if rd_kafka_message_headers(m, &w.src) != RD_KAFKA_RESP_ERR_NO_ERROR:
                w.src = NULL
            verdict = _apply(p, m, &w)
            if verdict == 1:
                local[4 * p.rule + 2] += 1
            elif verdict < 0:
                snprintf(w.reason, REASON_LEN, "out of memory applying the rule's steps")
            if verdict == 0:
                local[4 * p.rule + 1] += 1
            elif verdict != 1:
                local[4 * p.rule + 3] += 1
            for k in range(p.n_sinks):
                sink = p.sinks[k]
                b.refs[ref].batch = b
                b.refs[ref].index = i
                b.refs[ref].sink = sink
                ref += 1
                if verdict == 1:
                    km_batch_settle(b, 1)
                    continue
                if rks[sink] == NULL:
                    km_batch_fail(b, i, KM_CLUSTER_UNAVAILABLE, <int32_t>RD_KAFKA_RESP_ERR__DESTROY, sink)
                    km_batch_settle(b, 1)
                    continue
                if verdict == 0:
                    rkt = _rkt(&cache[2 * (entry.first + j) * MAX_PROG_SINKS + 2 * k], rks[sink], p.topic)
                    h = _current(&w)
                    code = _produce(rks[sink], rkt, _partition(p, k, &w, m.partition), w.key, w.key_len, w.has_key,
                                    m, rd_kafka_headers_copy(h) if h != NULL else NULL, &b.refs[ref - 1],
                                    &stream.stop) if rkt != NULL else RD_KAFKA_RESP_ERR__INVALID_ARG
                else:
                    # The record as it came, with why it could not be processed, where from, and by which rule.
                    rkt = _rkt(&cache[2 * (entry.first + j) * MAX_PROG_SINKS + 2 * k + 1], rks[sink],
                               p.dead_letter)
                    h = NULL
                    if rkt != NULL:
                        h = rd_kafka_headers_copy(w.src) if w.src != NULL else rd_kafka_headers_new(3)
                    if h != NULL:
                        rd_kafka_header_add(h, "kafka-mesh.dead-letter.reason", -1, w.reason, -1)
                        rd_kafka_header_add(h, "kafka-mesh.dead-letter.rule", -1, p.rule_name, -1)
                        snprintf(source, sizeof(source), "%s/%s/%d/%lld", t.source_c, tname,
                                 <int>m.partition, <long long>m.offset)
                        rd_kafka_header_add(h, "kafka-mesh.dead-letter.source", -1, source, -1)
                    code = _produce(rks[sink], rkt, RD_KAFKA_PARTITION_UA, m.key, m.key_len, m.key != NULL, m, h,
                                    &b.refs[ref - 1], &stream.stop) if rkt != NULL else \
                        RD_KAFKA_RESP_ERR__INVALID_ARG
                if code != RD_KAFKA_RESP_ERR_NO_ERROR:
                    if km_batch_fail(b, i, km_code_for(code), <int32_t>code, sink):
                        km_batch_detail(b, i, p.topic if verdict == 0 else p.dead_letter,
                                        strlen(p.topic if verdict == 0 else p.dead_letter),
                                        <int64_t>(m.len + m.key_len), -1)
                    km_batch_settle(b, 1)
            if w.hdrs != NULL:
                rd_kafka_headers_destroy(w.hdrs)
    free(w.keybuf)
    if ref < n_refs:
        km_batch_settle(b, <int64_t>(n_refs - ref))      # counted as pending, never enqueued
    km_batch_settle(b, 1)                                 # the routing guard: the batch may complete from here on
    return 0


cdef class RouterStream:
    """The batch accounting of one source cluster's pump. Built by open_router_stream(); close() when done."""

    cdef km_stream *s
    cdef uint64_t next_id

    def __init__(self):
        raise TypeError("RouterStream cannot be instantiated directly; use open_router_stream()")

    cdef inline int _check_alive(self) except -1:
        if self.s == NULL:
            raise HandleClosedError("router stream is closed")
        return 0

    def fileno(self):
        """An eventfd that becomes readable when a run has settled."""
        self._check_alive()
        return self.s.efd

    @property
    def inflight_runs(self):
        self._check_alive()
        return km_atomic_load(&self.s.inflight_batches)

    @property
    def inflight_bytes(self):
        self._check_alive()
        return km_atomic_load(&self.s.inflight_bytes)

    def route(self, RouterTable table not None, Consumer consumer not None, int max_records, long long max_bytes,
              int timeout_ms):
        """Poll up to max_records records (max_bytes of keys and values; the first always comes), waiting at most
        timeout_ms for the first, and route them by table. Returns [(run_id, topic, partition, first_offset,
        last_offset, records, bytes, offsets), ...], one run per group of consecutive records of one partition, in the
        order polled; offsets: the run's record offsets, native-endian int64s (with gaps where Kafka skips offsets:
        compacted records, transaction markers), which say where a run's first failed record is. A batch ends at a
        rebalance: call consumer.take_events() after each call."""
        self._check_alive()
        cdef Polled polled = consumer.poll(max_records, max_bytes, timeout_ms, _raw_size, 0, False)
        if polled.n == 0:
            return []
        cdef km_stream *stream = self.s
        cdef int n_handles = table.n_producers
        cdef rd_kafka_t **rks = <rd_kafka_t **>calloc(max(1, n_handles), sizeof(rd_kafka_t *))
        cdef rd_kafka_topic_t **cache = <rd_kafka_topic_t **>calloc(max(1, 2 * table.n_progs * MAX_PROG_SINKS),
                                                                    sizeof(rd_kafka_topic_t *))
        cdef int64_t *local = <int64_t *>calloc(max(1, 4 * table.n_rules), sizeof(int64_t))
        cdef int i, j, end, start, n_runs = 0
        cdef long long size
        cdef int64_t *at
        cdef int *run_start = <int *>malloc(polled.n * sizeof(int))
        cdef uint64_t first_id = self.next_id
        if rks == NULL or cache == NULL or local == NULL or run_start == NULL:
            free(rks); free(cache); free(local); free(run_start)
            raise MemoryError()
        km_stream_ref(stream)
        for i in range(n_handles):
            rks[i] = km_handle_acquire(table.handles[i])
        try:
            with nogil:
                i = 0
                while i < polled.n:
                    start = i
                    i += 1
                    while i < polled.n and polled.msgs[i].rkt == polled.msgs[start].rkt and \
                            polled.msgs[i].partition == polled.msgs[start].partition:
                        i += 1
                    run_start[n_runs] = start
                    _route_run(stream, table, rks, cache, polled.msgs + start, i - start, first_id + n_runs, local)
                    n_runs += 1
            for i in range(table.n_rules):
                km_atomic_add(&table.counters[i].records_in, local[4 * i])
                km_atomic_add(&table.counters[i].records_out, local[4 * i + 1])
                km_atomic_add(&table.counters[i].filtered, local[4 * i + 2])
                km_atomic_add(&table.counters[i].dead_lettered, local[4 * i + 3])
            runs = []
            for i in range(n_runs):
                start = run_start[i]
                end = run_start[i + 1] if i + 1 < n_runs else polled.n
                size = 0
                offsets = PyBytes_FromStringAndSize(NULL, (end - start) * sizeof(int64_t))
                at = <int64_t *>PyBytes_AS_STRING(offsets)
                for j in range(start, end):
                    size += polled.msgs[j].len + polled.msgs[j].key_len
                    at[j - start] = polled.msgs[j].offset
                runs.append((first_id + i, rd_kafka_topic_name(polled.msgs[start].rkt).decode(),
                             polled.msgs[start].partition, polled.msgs[start].offset, polled.msgs[end - 1].offset,
                             end - start, size, offsets))
            return runs
        finally:
            # Also when a run raised: the runs routed before it are in flight under their ids.
            self.next_id = first_id + n_runs
            for i in range(2 * table.n_progs * MAX_PROG_SINKS):
                if cache[i] != NULL:
                    rd_kafka_topic_destroy(cache[i])
            for i in range(n_handles):
                if rks[i] != NULL:
                    km_handle_release(table.handles[i])
            km_stream_unref(stream)
            free(rks); free(cache); free(local); free(run_start)

    def drain(self):
        """The runs settled since the last call: [(run_id, failed, first, message), ...]; failed counts the run's
        records a target did not acknowledge, first is the index in the run of the first of them (-1: none; every
        record before it was acknowledged by every target), message says why it failed."""
        self._check_alive()
        cdef km_batch *b = km_stream_take_completed(self.s)
        cdef km_batch *next_b
        cdef uint32_t i, failed
        cdef int first
        out = []
        try:
            while b != NULL:
                failed = 0
                first = -1
                for i in range(b.n_records):
                    if b.rec_code[i] != KM_OK:
                        failed += 1
                        if first < 0:
                            first = i
                out.append((b.batch_id, failed, first, _failure(b, first) if first >= 0 else ""))
                next_b = b.next
                km_batch_free(b)
                b = next_b
        finally:
            while b != NULL:
                next_b = b.next
                km_batch_free(b)
                b = next_b
        return out

    def close(self):
        """End the stream: runs still in flight are freed when their deliveries settle."""
        if self.s != NULL:
            km_stream_close(self.s)
            self.s = NULL

    def __dealloc__(self):
        self.close()


def open_router_stream():
    cdef RouterStream rs = RouterStream.__new__(RouterStream)
    rs.s = km_stream_new()
    if rs.s == NULL:
        raise OSError("could not create an eventfd for the router stream")
    return rs


cdef long long _raw_size(rd_kafka_message_t *m) noexcept nogil:
    return <long long>(m.len + m.key_len)


cdef str _failure(km_batch *b, int index):
    """Why record index of a settled run failed: the cluster, the topic and librdkafka's error."""
    cdef int32_t kerr = b.rec_kerr[index]
    cdef const km_detail *d = km_batch_find_detail(b, index)
    sink = (b.names + b.name_off[b.rec_sink[index]]).decode(errors="replace")
    topic = d.topic[:min(d.topic_len, 249)].decode(errors="replace") if d != NULL else "?"
    return (f"cluster {sink!r}: topic {topic!r}: {rd_kafka_err2str(<rd_kafka_resp_err_t>kerr).decode()} "
            f"({rd_kafka_err2name(<rd_kafka_resp_err_t>kerr).decode()})")


def _debug_counts():
    # Under the Produce path's kinds: a batch made here may be freed by a delivery report in the producer module.
    return {"router_table": (_tables_created, _tables_freed),
            "produce_batch": (km_batches_created, km_batches_freed),
            "produce_stream": (km_streams_created, km_streams_freed)}
