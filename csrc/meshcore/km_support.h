/* Small C helpers shared by the core's Cython modules: the debug-build switch and atomic counters.
 *
 * KM_DEBUG is defined by the debug build (KAFKA_MESH_DEBUG=1 at build time); the modules then count every C
 * handle they create and destroy so that the tests can assert that nothing leaks. */
#ifndef KM_SUPPORT_H
#define KM_SUPPORT_H

#include <stdint.h>

#ifdef KM_DEBUG
#define KM_DEBUG_ENABLED 1
#else
#define KM_DEBUG_ENABLED 0
#endif

/* Delivery reports arrive on whichever thread serves rd_kafka_poll(); counters they touch are atomic. */
static inline void km_atomic_add(int64_t *p, int64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int64_t km_atomic_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
/* A flag another thread sets once (a handle or stream closing), read where a loop may stop early. */
static inline int km_flag_load(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
/* A buffer handed from one thread to another: whoever swaps the pointer out owns what it held. */
static inline char *km_swap_ptr(char **p, char *v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }

#endif
