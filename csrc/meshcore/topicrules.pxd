# Declarations of km_rules.h (see there), and the TopicRules snapshot that owns one.
from libc.stdint cimport int64_t, uint8_t

from meshcore.strmap cimport km_strmap

cdef extern from "km_rules.h" nogil:
    enum:
        KM_RULES_MISSES
        KM_RULES_TOPIC_MAX
    ctypedef struct km_rule:
        int64_t before_max_ms
        int64_t after_max_ms
        int64_t max_bytes
        uint8_t requires_key
        uint8_t create_time
    ctypedef struct km_rules:
        km_strmap topics
        km_rule *rules
        km_rule fallback
        int has_fallback
    void km_rules_init(km_rules *r)
    void km_rules_destroy(km_rules *r)
    const km_rule *km_rules_find(km_rules *r, const unsigned char *topic, size_t n)
    int km_rules_take_misses(km_rules *r, char *names, uint8_t *lens)
    size_t km_zz_size(int64_t v)


cdef class TopicRules:
    cdef km_rules r
    cdef bint ready
