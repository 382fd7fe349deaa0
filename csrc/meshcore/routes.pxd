from libc.stdint cimport uint16_t, uint32_t, uint64_t

from meshcore.producer cimport km_handle
from meshcore.rdkafka cimport rd_kafka_t
from meshcore.strmap cimport km_strmap

cdef enum:
    MAX_SINKS = 16


cdef struct Route:
    int n
    int sinks[MAX_SINKS]     # indices into RouteTable.handles


cdef class TopicSlots:
    # topic -> its slot for the per-topic counters (km_counts.h); immutable, shared by the tables built with it.
    cdef km_strmap map


cdef class RouteTable:
    cdef readonly uint64_t revision
    cdef list _producers     # the Producer objects that own `handles`: kept alive by the table, so a handle that
                             # was closed under the table is found closed, never freed
    cdef km_handle **handles
    cdef int n_sinks
    cdef char *names         # sink cluster names, NUL-separated
    cdef size_t names_len
    cdef uint32_t *name_off
    cdef Route *routes
    cdef int n_routes
    cdef int default_route   # index into routes, or -1
    cdef km_strmap topics    # topic -> index into routes
    # An overlay table (built over a base): the routes of the topics changed since the base, a route of no sinks
    # meaning "no route of its own any more"; every other topic is looked up in the base, whose sinks are the same.
    cdef object _base        # keeps the base alive
    cdef const km_strmap *base_topics
    cdef const Route *base_routes
    cdef object __weakref__
    cdef TopicSlots _slots   # None: records are not counted per topic (slot KM_SLOT_NONE)

    cdef uint16_t topic_slot(self, const unsigned char *topic, size_t n) noexcept nogil

    cdef const Route *lookup(self, const unsigned char *topic, size_t n) noexcept nogil
    cdef void acquire_all(self, rd_kafka_t **out) noexcept nogil
    cdef void release_all(self, rd_kafka_t **acquired) noexcept nogil
