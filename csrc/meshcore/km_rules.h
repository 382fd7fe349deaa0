/* What a cluster's brokers accept on a topic, known before a record is enqueued (km_rules), so that a record the
 * broker would refuse fails alone: a broker refuses the whole batch librdkafka built for a partition, other apps'
 * records of that partition included (with a single culprit, KIP-467's per-record errors do not tell them apart).
 *
 * A km_rules is one cluster's snapshot, built by the control plane from the topics' and brokers' configs and never
 * changed afterwards, except for its list of misses: topics a record went to that the snapshot does not name. The
 * data plane notes them (under a lock, only on a miss) and the control plane takes them, describes those topics and
 * builds the next snapshot. */
#ifndef KM_RULES_H
#define KM_RULES_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "km_strmap.h"

typedef struct {
    int64_t before_max_ms;   /* message.timestamp.before.max.ms (INT64_MAX: no bound) */
    int64_t after_max_ms;    /* message.timestamp.after.max.ms (INT64_MAX: no bound) */
    int64_t max_bytes;       /* max.message.bytes: the largest record batch (INT64_MAX: no bound) */
    uint8_t requires_key;    /* cleanup.policy has compact: a record needs a key */
    uint8_t create_time;     /* message.timestamp.type is CreateTime: the broker checks the record's timestamp */
} km_rule;

enum { KM_RULES_MISSES = 64, KM_RULES_TOPIC_MAX = 249 };

typedef struct {
    km_strmap topics;        /* topic -> index into rules */
    km_rule *rules;
    km_rule fallback;        /* a topic the snapshot does not name: the brokers' defaults */
    int has_fallback;        /* 0 until the brokers' defaults are known: then no check at all */
    pthread_mutex_t lock;    /* guards the misses */
    int n_misses;
    uint8_t miss_len[KM_RULES_MISSES];
    char misses[KM_RULES_MISSES][KM_RULES_TOPIC_MAX];
} km_rules;

/* Note that topic was produced to and is not in the snapshot (once; the list is bounded: a miss that finds it full
 * is noted again by a later record). */
static inline void km_rules_note_miss(km_rules *r, const unsigned char *topic, size_t n) {
    if (n > KM_RULES_TOPIC_MAX || __atomic_load_n(&r->n_misses, __ATOMIC_RELAXED) >= KM_RULES_MISSES)
        return;
    pthread_mutex_lock(&r->lock);
    int seen = 0;
    for (int i = 0; i < r->n_misses && !seen; i++)
        seen = r->miss_len[i] == n && memcmp(r->misses[i], topic, n) == 0;
    if (!seen && r->n_misses < KM_RULES_MISSES) {
        memcpy(r->misses[r->n_misses], topic, n);
        r->miss_len[r->n_misses] = (uint8_t)n;
        __atomic_store_n(&r->n_misses, r->n_misses + 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&r->lock);
}

/* The rule for topic: its own, else the brokers' defaults (the topic is noted as a miss), else NULL. */
static inline const km_rule *km_rules_find(km_rules *r, const unsigned char *topic, size_t n) {
    int32_t i = km_strmap_get(&r->topics, topic, n);
    if (i >= 0)
        return &r->rules[i];
    km_rules_note_miss(r, topic, n);
    return r->has_fallback ? &r->fallback : NULL;
}

static inline void km_rules_init(km_rules *r) {
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
}

static inline void km_rules_destroy(km_rules *r) {
    km_strmap_free(&r->topics);
    free(r->rules);
    r->rules = NULL;
    pthread_mutex_destroy(&r->lock);
}

/* Move the misses noted so far into names (KM_RULES_MISSES rows of KM_RULES_TOPIC_MAX bytes) and lens; returns how
 * many. */
static inline int km_rules_take_misses(km_rules *r, char *names, uint8_t *lens) {
    pthread_mutex_lock(&r->lock);
    int n = r->n_misses;
    for (int i = 0; i < n; i++) {
        memcpy(names + (size_t)i * KM_RULES_TOPIC_MAX, r->misses[i], r->miss_len[i]);
        lens[i] = r->miss_len[i];
    }
    __atomic_store_n(&r->n_misses, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* The size of a record batch holding this one record (Kafka's v2 format: a 61-byte batch header, then the record
 * with zigzag-varint lengths), which is what a broker compares with max.message.bytes. */
static inline size_t km_zz_size(int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 1;
    while (z >= 0x80) {
        z >>= 7;
        n++;
    }
    return n;
}

#endif
