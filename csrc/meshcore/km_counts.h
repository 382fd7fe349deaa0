/* Per-topic counters of the Produce path, for the metrics' topic label.
 *
 * A topic gets a small number, its slot, from the control plane (only topics the mapping names, up to a limit; the
 * rest share KM_SLOT_DEFAULT), so the label set stays bounded however many topics the apps write. A record carries
 * its slot from routing (km_msgref.topic) to its delivery report, which adds to the slot's counters with atomics:
 * no lock, no Python object, no lookup of the name.
 *
 * The counters of 65,536 slots are 256 chunks of 256, each allocated the first time one of its slots counts
 * (compare-and-swap: two threads may race, the loser frees its copy), and freed only with the whole table, after
 * every thread that counts into it is gone. A table of slots no one uses costs its 2 KiB of chunk pointers. */
#ifndef KM_COUNTS_H
#define KM_COUNTS_H

#include <stdint.h>
#include <stdlib.h>

enum {
    KM_SLOT_NONE = 0,       /* not counted per topic (metrics off, or a record the router copies) */
    KM_SLOT_DEFAULT = 1,    /* a topic without a slot of its own: the label __default__ */
    KM_SLOT_CHUNK = 256,
    KM_SLOT_CHUNKS = 256,   /* 65,536 slots: km_msgref.topic is 16 bits */
};

typedef struct {
    int64_t records;
    int64_t bytes;          /* keys and values */
    int64_t failed;
} km_topic_counts;

typedef struct {
    km_topic_counts *chunks[KM_SLOT_CHUNKS];
} km_topic_table;

/* The counters of slot (allocated on first use), or NULL when out of memory (the count is then lost, not the
 * record). */
static inline km_topic_counts *km_topic_counts_at(km_topic_table *t, uint16_t slot) {
    km_topic_counts **p = &t->chunks[slot / KM_SLOT_CHUNK];
    km_topic_counts *c = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    if (c == NULL) {
        km_topic_counts *fresh = (km_topic_counts *)calloc(KM_SLOT_CHUNK, sizeof(km_topic_counts));
        if (fresh == NULL)
            return NULL;
        if (__atomic_compare_exchange_n(p, &c, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            c = fresh;
        else
            free(fresh);    /* another thread's chunk won: c holds it */
    }
    return &c[slot % KM_SLOT_CHUNK];
}

static inline void km_topic_count(km_topic_table *t, uint16_t slot, int64_t records, int64_t bytes, int64_t failed) {
    if (slot == KM_SLOT_NONE)
        return;
    km_topic_counts *c = km_topic_counts_at(t, slot);
    if (c == NULL)
        return;
    if (records)
        __atomic_fetch_add(&c->records, records, __ATOMIC_RELAXED);
    if (bytes)
        __atomic_fetch_add(&c->bytes, bytes, __ATOMIC_RELAXED);
    if (failed)
        __atomic_fetch_add(&c->failed, failed, __ATOMIC_RELAXED);
}

/* One slot's counter, read by the metrics (another thread may be adding to it). */
static inline int64_t km_topic_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

static inline km_topic_counts *km_topic_chunk(km_topic_table *t, int i) {
    return __atomic_load_n(&t->chunks[i], __ATOMIC_ACQUIRE);
}

static inline void km_topic_table_free(km_topic_table *t) {
    for (int i = 0; i < KM_SLOT_CHUNKS; i++) {
        free(t->chunks[i]);
        t->chunks[i] = NULL;
    }
}

#endif
