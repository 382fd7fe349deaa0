# Enqueueing one parsed record to librdkafka: shared by Producer.produce_request and ProduceStream.submit.

from libc.stdint cimport uint8_t
from libc.string cimport memcpy

from meshcore.rdkafka cimport *
from meshcore.support cimport km_flag_load
from meshcore.wire cimport Reader, RecordView, Slice, header_next

cdef enum:
    # Kafka's own limit on a topic name's length.
    MAX_TOPIC_LEN = 249


cdef inline bint stopped(const int *stop_a, const int *stop_b) noexcept nogil:
    return (stop_a != NULL and km_flag_load(stop_a) != 0) or (stop_b != NULL and km_flag_load(stop_b) != 0)


cdef inline rd_kafka_resp_err_t produce_record(rd_kafka_t *rk, RecordView *rec, rd_kafka_topic_t *rkt,
                                               void *opaque, int wait_ms, const int *stop_a,
                                               const int *stop_b) noexcept nogil:
    """Enqueue a copy of rec (topic 1-249 bytes) to rk, by rkt when given, else by the record's topic name, with
    opaque as its message opaque. A full queue is waited out (serving delivery reports), never an error, unless
    one of the stop flags (either may be NULL) is set meanwhile: then the record is refused with _DESTROY, so that
    a closing producer or stream never waits on Kafka. Returns the error that refused the record, or NO_ERROR."""
    cdef char topic[MAX_TOPIC_LEN + 1]
    cdef rd_kafka_vu_t vus[8]
    cdef size_t nvu = 0
    cdef rd_kafka_headers_t *hdrs = NULL
    cdef Reader hr
    cdef Slice hname, hvalue
    cdef uint8_t has_hvalue
    if rkt != NULL:
        vus[nvu].vtype = RD_KAFKA_VTYPE_RKT; vus[nvu].u.rkt = rkt; nvu += 1
    else:
        memcpy(topic, rec.topic.p, rec.topic.n)
        topic[rec.topic.n] = 0
        vus[nvu].vtype = RD_KAFKA_VTYPE_TOPIC; vus[nvu].u.cstr = topic; nvu += 1
    if rec.header_count:
        hdrs = rd_kafka_headers_new(rec.header_count)
        hr.buf = rec.raw.p
        hr.len = rec.raw.n
        hr.pos = 0
        hr.err = NULL
        while header_next(&hr, &hname, &hvalue, &has_hvalue) == 1:
            rd_kafka_header_add(hdrs, <const char *>hname.p, hname.n,
                                hvalue.p if has_hvalue else NULL, hvalue.n if has_hvalue else 0)
        vus[nvu].vtype = RD_KAFKA_VTYPE_HEADERS; vus[nvu].u.headers = hdrs; nvu += 1
    vus[nvu].vtype = RD_KAFKA_VTYPE_MSGFLAGS; vus[nvu].u.i = RD_KAFKA_MSG_F_COPY; nvu += 1
    if opaque != NULL:
        vus[nvu].vtype = RD_KAFKA_VTYPE_OPAQUE; vus[nvu].u.ptr = opaque; nvu += 1
    vus[nvu].vtype = RD_KAFKA_VTYPE_PARTITION
    vus[nvu].u.i32 = rec.partition if rec.has_partition else RD_KAFKA_PARTITION_UA
    nvu += 1
    if rec.has_key:
        vus[nvu].vtype = RD_KAFKA_VTYPE_KEY; vus[nvu].u.mem.ptr = <void *>rec.key.p; vus[nvu].u.mem.size = rec.key.n
        nvu += 1
    if rec.has_value:
        vus[nvu].vtype = RD_KAFKA_VTYPE_VALUE
        vus[nvu].u.mem.ptr = <void *>rec.value.p
        vus[nvu].u.mem.size = rec.value.n
        nvu += 1
    if rec.has_timestamp:
        vus[nvu].vtype = RD_KAFKA_VTYPE_TIMESTAMP; vus[nvu].u.i64 = rec.timestamp_ms; nvu += 1
    return enqueue_vus(rk, vus, nvu, hdrs, wait_ms, stop_a, stop_b)


cdef inline rd_kafka_resp_err_t enqueue_vus(rd_kafka_t *rk, rd_kafka_vu_t *vus, size_t nvu, rd_kafka_headers_t *hdrs,
                                            int wait_ms, const int *stop_a, const int *stop_b) noexcept nogil:
    """rd_kafka_produceva, with a full queue waited out (serving delivery reports) unless a stop flag is set
    meanwhile (then _DESTROY), or wait_ms is negative (then _QUEUE_FULL at once). hdrs: the headers among vus,
    destroyed here when the record is refused (librdkafka takes them only on success)."""
    cdef rd_kafka_error_t *error
    cdef rd_kafka_resp_err_t code
    while True:
        error = rd_kafka_produceva(rk, vus, nvu)
        if error == NULL:
            return RD_KAFKA_RESP_ERR_NO_ERROR
        code = rd_kafka_error_code(error)
        rd_kafka_error_destroy(error)
        if code == RD_KAFKA_RESP_ERR__QUEUE_FULL and stopped(stop_a, stop_b):
            code = RD_KAFKA_RESP_ERR__DESTROY
        if code != RD_KAFKA_RESP_ERR__QUEUE_FULL or wait_ms < 0:
            if hdrs != NULL:
                rd_kafka_headers_destroy(hdrs)     # ours again when produceva fails
            return code
        rd_kafka_poll(rk, wait_ms)                 # backpressure: let deliveries free room
