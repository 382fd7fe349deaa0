"""Bounds-checked protobuf wire parsing of kafkamesh.v1.ProduceRequest (proto/kafkamesh/v1/mesh.proto).

The request bytes come from applications and are untrusted: every read checks the remaining length first, varints
are at most 10 bytes, lengths are checked against what is left before any pointer moves, and a malformed message
fails the whole request with a message and the byte offset where parsing stopped. Unknown fields are skipped so
that newer clients stay compatible. Parsing holds no GIL and makes no Python object.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, INT32_MIN, INT32_MAX
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from meshcore.support cimport KM_DEBUG_ENABLED

from meshcore.errors import WireError

cdef extern from "km_batch.h" nogil:
    enum:
        KM_INVALID_HEADER_NAME
        KM_INVALID_TIMESTAMP
        KM_INVALID_PARTITION

# Field numbers of mesh.proto; the test of the generated stubs checks them against the descriptors.
cdef enum:
    WT_VARINT = 0
    WT_FIXED64 = 1
    WT_LEN = 2
    WT_FIXED32 = 5

    F_REQ_BATCH_ID = 1
    F_REQ_RECORDS = 2

    F_REC_TOPIC = 1
    F_REC_KEY = 2
    F_REC_VALUE = 3
    F_REC_HEADERS = 4
    F_REC_TIMESTAMP = 5
    F_REC_PARTITION = 6

    F_HDR_KEY = 1
    F_HDR_VALUE = 2

cdef int64_t _views_created = 0
cdef int64_t _views_freed = 0


cdef inline int _fail(Reader *r, const char *msg) noexcept nogil:
    if r.err == NULL:
        r.err = msg
        r.err_pos = r.pos
    return -1


cdef inline int read_varint(Reader *r, uint64_t *out) noexcept nogil:
    cdef uint64_t result = 0
    cdef unsigned int shift = 0
    cdef unsigned char b
    cdef int i
    for i in range(10):
        if r.pos >= r.len:
            return _fail(r, "truncated varint")
        b = r.buf[r.pos]
        r.pos += 1
        if i == 9 and b > 1:
            return _fail(r, "varint overflows 64 bits")
        result |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = result
            return 0
        shift += 7
    return _fail(r, "varint overflows 64 bits")  # unreachable: the 10th byte check above ends every varint


cdef inline int read_tag(Reader *r, uint32_t *field, int *wtype) noexcept nogil:
    cdef uint64_t key
    if read_varint(r, &key) < 0:
        return -1
    if (key >> 3) == 0 or (key >> 3) > 536870911:
        return _fail(r, "invalid field number")
    field[0] = <uint32_t>(key >> 3)
    wtype[0] = <int>(key & 7)
    return 0


cdef inline int read_len(Reader *r, Slice *out) noexcept nogil:
    cdef uint64_t n
    if read_varint(r, &n) < 0:
        return -1
    if n > r.len - r.pos:
        return _fail(r, "length-delimited field runs past the end of its message")
    out.p = r.buf + r.pos
    out.n = <size_t>n
    r.pos += <size_t>n
    return 0


cdef inline int skip_field(Reader *r, int wtype) noexcept nogil:
    cdef uint64_t ignored
    cdef Slice s
    if wtype == WT_VARINT:
        return read_varint(r, &ignored)
    if wtype == WT_LEN:
        return read_len(r, &s)
    if wtype == WT_FIXED64:
        if r.len - r.pos < 8:
            return _fail(r, "truncated fixed64 field")
        r.pos += 8
        return 0
    if wtype == WT_FIXED32:
        if r.len - r.pos < 4:
            return _fail(r, "truncated fixed32 field")
        r.pos += 4
        return 0
    return _fail(r, "unsupported wire type (groups or invalid)")


cdef inline int expect(Reader *r, int wtype, int want, const char *msg) noexcept nogil:
    if wtype != want:
        return _fail(r, msg)
    return 0


cdef int header_next(Reader *r, Slice *name, Slice *value, uint8_t *has_value) noexcept nogil:
    """Advance r (over a Record's bytes) to its next Header. 1: found, 0: no more, -1: malformed."""
    cdef uint32_t field
    cdef int wtype
    cdef Slice hdr
    cdef Reader h
    while r.pos < r.len:
        if read_tag(r, &field, &wtype) < 0:
            return -1
        if field != F_REC_HEADERS:
            if skip_field(r, wtype) < 0:
                return -1
            continue
        if expect(r, wtype, WT_LEN, "Record.headers must be length-delimited") < 0:
            return -1
        if read_len(r, &hdr) < 0:
            return -1
        h.buf = hdr.p
        h.len = hdr.n
        h.pos = 0
        h.err = NULL
        name.p = hdr.p
        name.n = 0
        value.p = NULL
        value.n = 0
        has_value[0] = 0
        while h.pos < h.len:
            if read_tag(&h, &field, &wtype) < 0:
                break
            if field == F_HDR_KEY:
                if expect(&h, wtype, WT_LEN, "Header.key must be length-delimited") < 0 or read_len(&h, name) < 0:
                    break
            elif field == F_HDR_VALUE:
                if expect(&h, wtype, WT_LEN, "Header.value must be length-delimited") < 0 or read_len(&h, value) < 0:
                    break
                has_value[0] = 1
            elif skip_field(&h, wtype) < 0:
                break
        if h.err != NULL:
            r.err = h.err
            r.err_pos = (hdr.p - r.buf) + h.err_pos
            return -1
        return 1
    return 0


cdef int _parse_record(const unsigned char *p, size_t n, RecordView *rec, Reader *outer) noexcept nogil:
    cdef Reader r
    cdef uint32_t field
    cdef int wtype
    cdef uint64_t v
    cdef int64_t sv
    cdef Slice name, value
    cdef uint8_t hv
    cdef int got
    r.buf = p
    r.len = n
    r.pos = 0
    r.err = NULL
    rec.raw.p = p
    rec.raw.n = n
    while r.pos < r.len and r.err == NULL:
        if read_tag(&r, &field, &wtype) < 0:
            break
        if field == F_REC_TOPIC:
            if expect(&r, wtype, WT_LEN, "Record.topic must be length-delimited") == 0:
                read_len(&r, &rec.topic)
        elif field == F_REC_KEY:
            if expect(&r, wtype, WT_LEN, "Record.key must be length-delimited") == 0 and read_len(&r, &rec.key) == 0:
                rec.has_key = 1
        elif field == F_REC_VALUE:
            if expect(&r, wtype, WT_LEN, "Record.value must be length-delimited") == 0 and read_len(&r, &rec.value) == 0:
                rec.has_value = 1
        elif field == F_REC_HEADERS:
            # Counted here, validated below in one pass with the same reader the producer uses.
            if expect(&r, wtype, WT_LEN, "Record.headers must be length-delimited") == 0:
                read_len(&r, &name)
                rec.header_count += 1
        elif field == F_REC_TIMESTAMP:
            if expect(&r, wtype, WT_VARINT, "Record.timestamp_ms must be a varint") == 0 and read_varint(&r, &v) == 0:
                sv = <int64_t>v
                if sv < 0:
                    rec.invalid = KM_INVALID_TIMESTAMP      # this record fails alone
                else:
                    rec.timestamp_ms = sv
                    rec.has_timestamp = 1
        elif field == F_REC_PARTITION:
            if expect(&r, wtype, WT_VARINT, "Record.partition must be a varint") == 0 and read_varint(&r, &v) == 0:
                sv = <int64_t>v
                if sv < INT32_MIN or sv > INT32_MAX:
                    _fail(&r, "Record.partition is out of the int32 range")
                elif sv < 0:
                    rec.invalid = KM_INVALID_PARTITION      # this record fails alone
                else:
                    rec.partition = <int32_t>sv
                    rec.has_partition = 1
        else:
            skip_field(&r, wtype)
    if r.err == NULL and rec.header_count:
        r.pos = 0
        while True:
            got = header_next(&r, &name, &value, &hv)
            if got <= 0:
                break
            # Header.key is a protobuf string: a name that is not UTF-8 would be written to Kafka and then break
            # every consumer whose runtime checks strings. That record fails alone.
            if not rec.invalid and not km_utf8_valid(name.p, name.n):
                rec.invalid = KM_INVALID_HEADER_NAME
    if r.err != NULL:
        outer.err = r.err
        outer.err_pos = (p - outer.buf) + r.err_pos
        return -1
    return 0


cdef int produce_request_parse(const unsigned char *buf, size_t n, ProduceRequestView *out) noexcept nogil:
    """Parse a ProduceRequest into out (records point into buf). 0 on success; -1 with out.err set otherwise."""
    cdef Reader r
    cdef uint32_t field
    cdef int wtype
    cdef uint64_t v
    cdef Slice s
    cdef size_t count = 0
    out.batch_id = 0
    out.records = NULL
    out.count = 0
    out.err = NULL
    out.err_pos = 0
    # Pass 1: validate the top level and count records, so that one exact allocation holds the views.
    r.buf = buf
    r.len = n
    r.pos = 0
    r.err = NULL
    while r.pos < r.len:
        if read_tag(&r, &field, &wtype) < 0:
            break
        if field == F_REQ_BATCH_ID:
            if expect(&r, wtype, WT_VARINT, "ProduceRequest.batch_id must be a varint") < 0:
                break
            if read_varint(&r, &out.batch_id) < 0:
                break
        elif field == F_REQ_RECORDS:
            if expect(&r, wtype, WT_LEN, "ProduceRequest.records must be length-delimited") < 0:
                break
            if read_len(&r, &s) < 0:
                break
            count += 1
        elif skip_field(&r, wtype) < 0:
            break
    if r.err != NULL:
        out.err = r.err
        out.err_pos = r.err_pos
        return -1
    if count == 0:
        return 0
    out.records = <RecordView *>calloc(count, sizeof(RecordView))
    if out.records == NULL:
        out.err = "out of memory"
        return -1
    if KM_DEBUG_ENABLED:
        global _views_created
        _views_created += 1
    # Pass 2: parse each record (pass 1 proved the top-level framing sound).
    r.pos = 0
    while r.pos < r.len:
        read_tag(&r, &field, &wtype)
        if field == F_REQ_RECORDS:
            read_len(&r, &s)
            if _parse_record(s.p, s.n, &out.records[out.count], &r) < 0:
                out.err = r.err
                out.err_pos = r.err_pos
                produce_request_view_free(out)
                return -1
            out.count += 1
        else:
            skip_field(&r, wtype)
    return 0


cdef void produce_request_view_free(ProduceRequestView *view) noexcept nogil:
    global _views_freed
    if view.records != NULL:
        free(view.records)
        view.records = NULL
        if KM_DEBUG_ENABLED:
            _views_freed += 1
    view.count = 0


cdef inline object _slice_bytes(Slice s, bint present):
    if not present:
        return None
    return (<const char *>s.p)[:s.n]


#: Why a record is refused alone (ERROR_CODE_INVALID_RECORD), by the reason number km_batch.h gives it.
INVALID_REASONS = {KM_INVALID_HEADER_NAME: "header_name", KM_INVALID_TIMESTAMP: "timestamp",
                   KM_INVALID_PARTITION: "partition"}


def utf8_valid(data):
    """Whether bytes are strict UTF-8, by the check the core applies to header names (for tests)."""
    cdef const unsigned char[::1] buf = data
    if buf.shape[0] == 0:
        return True
    return bool(km_utf8_valid(&buf[0], buf.shape[0]))


def decode_produce_request(data):
    """Decode a ProduceRequest into Python objects, through the same parser the producer uses.

    For tests and tools only: it builds Python objects per record, which the data path never does.
    Returns (batch_id, [(topic, key, value, [(name, value)], timestamp_ms, partition), ...]); a record refused alone
    (a header name that is not UTF-8, a negative timestamp or partition) has a 7th item, the reason (INVALID_REASONS).
    """
    cdef const unsigned char[::1] buf = data
    cdef ProduceRequestView view
    cdef Reader r
    cdef Slice name, value
    cdef uint8_t hv
    cdef RecordView *rec
    cdef int rc
    cdef size_t i
    with nogil:
        rc = produce_request_parse(&buf[0] if buf.shape[0] else <const unsigned char *>"", buf.shape[0], &view)
    if rc < 0:
        raise WireError(view.err.decode(), view.err_pos)
    try:
        records = []
        for i in range(view.count):
            rec = &view.records[i]
            headers = []
            r.buf = rec.raw.p
            r.len = rec.raw.n
            r.pos = 0
            r.err = NULL
            while header_next(&r, &name, &value, &hv) == 1:
                headers.append(((<const char *>name.p)[:name.n].decode("utf-8", "surrogateescape"),
                                _slice_bytes(value, hv)))
            item = (
                (<const char *>rec.topic.p)[:rec.topic.n].decode("utf-8", "surrogateescape") if rec.topic.n else "",
                _slice_bytes(rec.key, rec.has_key),
                _slice_bytes(rec.value, rec.has_value),
                headers,
                rec.timestamp_ms if rec.has_timestamp else None,
                rec.partition if rec.has_partition else None,
            )
            records.append(item + (INVALID_REASONS[rec.invalid],) if rec.invalid else item)
        return view.batch_id, records
    finally:
        produce_request_view_free(&view)


def _debug_counts():
    """Created/freed counts of the C allocations this module owns (non-zero only in the debug build)."""
    return {"produce_request_view": (_views_created, _views_freed)}


cdef inline size_t _varint_len(uint64_t v) noexcept nogil:
    cdef size_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline char *_put_varint(char *p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <char>((v & 0x7F) | 0x80)
        p += 1
        v >>= 7
    p[0] = <char>v
    return p + 1


cdef inline char *_put_field(char *p, unsigned char tag, const char *data, size_t n) noexcept nogil:
    p[0] = <char>tag
    p = _put_varint(p + 1, n)
    memcpy(p, data, n)
    return p + n


def encode_records(uint64_t batch_id, str topic, list values, list keys=None):
    """The wire bytes of a ProduceRequest of len(values) records to one topic, written straight from the bytes
    objects given (keys[i] None: no key), with no message object per record. For clients that send at high rate;
    the bytes decode with the protobuf runtime like any ProduceRequest."""
    cdef bytes t = topic.encode()
    cdef Py_ssize_t n = len(values), i
    cdef size_t tlen = len(t), total = 1 + _varint_len(batch_id), rec, klen, vlen
    cdef object v, k
    if keys is not None and len(keys) != n:
        raise ValueError(f"keys has {len(keys)} entries for {n} values")
    for i in range(n):
        v = values[i]
        if type(v) is not bytes:
            raise TypeError(f"values[{i}] must be bytes, got {type(v).__name__}")
        rec = 1 + _varint_len(tlen) + tlen + 1 + _varint_len(len(<bytes>v)) + len(<bytes>v)
        if keys is not None:
            k = keys[i]
            if k is not None:
                if type(k) is not bytes:
                    raise TypeError(f"keys[{i}] must be bytes or None, got {type(k).__name__}")
                rec += 1 + _varint_len(len(<bytes>k)) + len(<bytes>k)
        total += 1 + _varint_len(rec) + rec
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef char *p = PyBytes_AS_STRING(out)
    cdef char *tp = <char *>t
    p[0] = 0x08
    p = _put_varint(p + 1, batch_id)
    for i in range(n):
        v = values[i]
        vlen = len(<bytes>v)
        k = keys[i] if keys is not None else None
        klen = len(<bytes>k) if k is not None else 0
        rec = 1 + _varint_len(tlen) + tlen + 1 + _varint_len(vlen) + vlen
        if k is not None:
            rec += 1 + _varint_len(klen) + klen
        p[0] = 0x12
        p = _put_varint(p + 1, rec)
        p = _put_field(p, 0x0a, tp, tlen)
        if k is not None:
            p = _put_field(p, 0x12, <char *>(<bytes>k), klen)
        p = _put_field(p, 0x1a, <char *>(<bytes>v), vlen)
    return out
