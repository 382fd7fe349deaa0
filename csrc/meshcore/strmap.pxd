# Declarations of km_strmap.h (see there): an immutable byte-string -> int map read without a lock.
from libc.stdint cimport int32_t, uint64_t

cdef extern from "km_strmap.h" nogil:
    ctypedef struct km_strmap:
        size_t count
    int km_strmap_init(km_strmap *m, size_t n_keys, size_t keys_len)
    int km_strmap_put(km_strmap *m, const char *key, size_t len, int32_t value)
    int32_t km_strmap_get(const km_strmap *m, const unsigned char *key, size_t len)
    void km_strmap_free(km_strmap *m)
