# Protobuf wire-format reading for the hot request messages. Every read goes through Reader, which checks the bound
# first and fails with a static message; nothing here allocates a Python object.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef struct Slice:
    const unsigned char *p
    size_t n


cdef struct Reader:
    const unsigned char *buf
    size_t len
    size_t pos
    const char *err      # static string, set when a read fails
    size_t err_pos


cdef struct RecordView:
    Slice raw             # the Record's own bytes: headers are read again from here when producing
    Slice topic
    Slice key
    Slice value
    int64_t timestamp_ms
    int32_t partition
    uint32_t header_count
    uint8_t invalid       # 0, or why the record is refused alone (KM_INVALID_* in km_batch.h); the request goes on
    uint8_t has_key
    uint8_t has_value
    uint8_t has_timestamp
    uint8_t has_partition


cdef struct ProduceRequestView:
    uint64_t batch_id
    RecordView *records   # malloc'd; release with produce_request_view_free
    size_t count
    const char *err
    size_t err_pos


cdef int produce_request_parse(const unsigned char *buf, size_t n, ProduceRequestView *out) noexcept nogil
cdef void produce_request_view_free(ProduceRequestView *view) noexcept nogil
cdef int header_next(Reader *r, Slice *name, Slice *value, uint8_t *has_value) noexcept nogil

cdef extern from "km_utf8.h" nogil:
    int km_utf8_valid(const unsigned char *p, size_t n)
