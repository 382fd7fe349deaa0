# The consuming layer's native API: a group consumer whose polls return librdkafka messages (no Python object per
# record). The Subscribe stream's encoding (subscribe_wire.pyx) and the router (router.pyx) are built on it.
from meshcore.rdkafka cimport rd_kafka_message_t, rd_kafka_t


cdef extern from "km_consumer.h" nogil:
    ctypedef struct km_cstate:
        int nheld
        int paused
        int fatal
        char reason[256]
        long long msg_errors
        char msg_error[320]


#: How many bytes a record counts for against a poll's byte budget (the caller's encoding of it).
ctypedef long long (*measure_fn)(rd_kafka_message_t *m) noexcept nogil


cdef class Polled:
    """Messages one poll call took from librdkafka: destroyed, and their array freed, with this object."""
    cdef rd_kafka_message_t **msgs
    cdef int n


cdef class Consumer:
    cdef rd_kafka_t *rk
    cdef km_cstate *st
    cdef readonly str name
    cdef str _log_key        # librdkafka's name for the handle, under which its log lines are attributed

    cdef int _collect(self, rd_kafka_message_t **msgs, int max_records, long long max_bytes, int timeout_ms,
                      measure_fn measure, long long group_bytes, bint strict) noexcept nogil
    cdef int _check_fatal(self) except -1
    cdef int _check_alive(self) except -1
    cdef _partitions_op(self, partitions, bint pause)
    cdef Polled poll(self, int max_records, long long max_bytes, int timeout_ms, measure_fn measure,
                     long long group_bytes, bint strict)
