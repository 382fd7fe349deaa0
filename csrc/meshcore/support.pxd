# Declarations of km_support.h (see there).
from libc.stdint cimport int64_t

cdef extern from "km_support.h" nogil:
    const int KM_DEBUG_ENABLED
    void km_atomic_add(int64_t *p, int64_t v)
    int64_t km_atomic_load(const int64_t *p)
    int km_flag_load(const int *p)
    char *km_swap_ptr(char **p, char *v)
