from libc.stdint cimport int64_t

from meshcore.counts cimport km_topic_table
from meshcore.rdkafka cimport rd_kafka_t


cdef extern from "km_handle.h" nogil:
    ctypedef struct km_handle:
        int closing
    km_handle *km_handle_new(rd_kafka_t *rk)
    void km_handle_free(km_handle *h)
    rd_kafka_t *km_handle_acquire(km_handle *h)
    void km_handle_release(km_handle *h)
    int km_handle_closing(const km_handle *h)
    rd_kafka_t *km_handle_close_begin(km_handle *h)
    void km_handle_close_end(km_handle *h)


cdef extern from "km_poller.h" nogil:
    ctypedef struct km_poller:
        pass
    int km_poller_start(km_poller *p, rd_kafka_t *rk)
    void km_poller_stop(km_poller *p)


cdef enum:
    # Delivery latency buckets (request routed to acknowledged): their upper bounds are LATENCY_BOUNDS_NS.
    LATENCY_BUCKETS = 14
    # kafkamesh.v1.ErrorCode values (km_batch.h), failures counted per code.
    ERROR_CODES = 11


cdef struct DeliveryStats:
    int64_t delivered
    int64_t failed
    int64_t last_error
    int64_t bytes                              # keys and values delivered
    int64_t codes[ERROR_CODES]                 # failures by ErrorCode
    int64_t latency[LATENCY_BUCKETS]           # deliveries by latency bucket (the last: above every bound)
    int64_t latency_sum_ns
    km_topic_table topics                      # per topic slot (km_counts.h): delivered, bytes, failed
    char *statistics                           # librdkafka's last statistics (JSON, NUL-terminated), or NULL:
                                               # swapped atomically, owned by whoever holds the pointer


cdef class Producer:
    # The rd_kafka_t behind a use count (km_handle.h): every call that uses it acquires it, and close() waits for
    # the last user. The struct, the delivery counters and the poller live until the object itself is freed.
    cdef km_handle *h
    cdef DeliveryStats *stats
    cdef km_poller *poller
    cdef readonly str name
    cdef str _log_key        # librdkafka's name for the handle, under which its log lines are attributed
    # What the cluster's brokers accept per topic (a meshcore.TopicRules, set by the control plane; None: nothing
    # is checked). Produce submits read it once per batch.
    cdef public object topic_rules
    # Topics whose handles this producer keeps (name -> rd_kafka_topic_t * as an integer): librdkafka then keeps
    # their metadata, so the first record of a topic about to be written here (a move's target) finds its
    # partitions' leaders known.
    cdef dict _held
    cdef void _release_held(self, rd_kafka_t *rk)
    cdef rd_kafka_t *_acquire(self) except NULL
    cdef int _close(self, int flush_timeout_ms) except? -1
