from libc.stdint cimport int64_t

from meshcore.rdkafka cimport rd_kafka_t


cdef extern from "km_poller.h" nogil:
    ctypedef struct km_poller:
        pass
    int km_poller_start(km_poller *p, rd_kafka_t *rk)
    void km_poller_stop(km_poller *p)


cdef struct DeliveryStats:
    int64_t delivered
    int64_t failed
    int64_t last_error


cdef class Producer:
    cdef rd_kafka_t *rk
    cdef DeliveryStats *stats
    cdef km_poller *poller
    cdef readonly str name
    cdef int _check_alive(self) except -1
    cdef void _destroy(self) noexcept
