# Declarations of km_counts.h (see there): per-topic counters of the Produce path, and their bulk read.
from libc.stdint cimport int64_t, uint16_t


cdef extern from "km_counts.h" nogil:
    enum:
        KM_SLOT_NONE
        KM_SLOT_DEFAULT
        KM_SLOT_CHUNK
        KM_SLOT_CHUNKS
    ctypedef struct km_topic_counts:
        int64_t records
        int64_t bytes
        int64_t failed
    ctypedef struct km_topic_table:
        km_topic_counts *chunks[256]
    void km_topic_count(km_topic_table *t, uint16_t slot, int64_t records, int64_t bytes, int64_t failed)
    int64_t km_topic_load(const int64_t *p)
    km_topic_counts *km_topic_chunk(km_topic_table *t, int i)
    void km_topic_table_free(km_topic_table *t)


cdef inline dict topic_counts(km_topic_table *t):
    """{slot: (records, bytes, failed)} of every slot that counted anything, read at once (with the GIL: a scrape)."""
    cdef int i, j
    cdef km_topic_counts *c
    cdef int64_t r, b, f
    out = {}
    for i in range(KM_SLOT_CHUNKS):
        c = km_topic_chunk(t, i)
        if c == NULL:
            continue
        for j in range(KM_SLOT_CHUNK):
            r = km_topic_load(&c[j].records)
            b = km_topic_load(&c[j].bytes)
            f = km_topic_load(&c[j].failed)
            if r or b or f:
                out[i * KM_SLOT_CHUNK + j] = (r, b, f)
    return out
