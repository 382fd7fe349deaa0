/* An immutable map from byte strings (topic names) to small integers: open addressing with linear probing, FNV-1a,
 * at most half full, so a lookup costs the same with 10 keys or 100,000 and reads only C memory.
 *
 * Built once (km_strmap_init, then km_strmap_put for each key), read by any number of threads without a lock
 * afterwards, freed with km_strmap_free. The keys are copied into one block the map owns. */
#ifndef KM_STRMAP_H
#define KM_STRMAP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 16 bytes a slot (a map of 100,000 keys: 4 MiB of slots): the key as an offset into the map's key block. */
typedef struct {
    uint32_t off;        /* where the key starts in keys */
    uint32_t len;        /* 0: an empty slot (a key is never empty) */
    uint32_t hash;       /* the low half of the key's hash, compared before the bytes */
    int32_t value;
} km_strmap_slot;

typedef struct {
    km_strmap_slot *slots;   /* NULL when the map holds no key */
    size_t mask;
    char *keys;              /* every key, back to back */
    size_t keys_used;
    size_t keys_cap;
    size_t count;
} km_strmap;

static inline uint64_t km_fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* Room for n_keys keys of keys_len bytes in all. Returns 0, or -1 when out of memory or past 4 GiB of keys (the
 * map is then empty). */
static inline int km_strmap_init(km_strmap *m, size_t n_keys, size_t keys_len) {
    memset(m, 0, sizeof(*m));
    if (n_keys == 0)
        return 0;
    if (keys_len > UINT32_MAX || n_keys > (SIZE_MAX / 2) / sizeof(km_strmap_slot))
        return -1;
    size_t cap = 16;
    while (cap < 2 * n_keys)
        cap <<= 1;
    m->slots = (km_strmap_slot *)calloc(cap, sizeof(km_strmap_slot));
    m->keys = (char *)malloc(keys_len ? keys_len : 1);
    if (m->slots == NULL || m->keys == NULL) {
        free(m->slots);
        free(m->keys);
        memset(m, 0, sizeof(*m));
        return -1;
    }
    m->mask = cap - 1;
    m->keys_cap = keys_len;
    return 0;
}

/* Add key -> value. Returns 0, 1 when the key is already there (nothing changed), or -1 when the key is empty or
 * the map was not sized for it. */
static inline int km_strmap_put(km_strmap *m, const char *key, size_t len, int32_t value) {
    if (m->slots == NULL || len == 0 || m->count + 1 > (m->mask + 1) / 2 || len > m->keys_cap - m->keys_used)
        return -1;
    uint64_t h = km_fnv1a((const unsigned char *)key, len);
    size_t i = h & m->mask;
    while (m->slots[i].len != 0) {
        if (m->slots[i].hash == (uint32_t)h && m->slots[i].len == len &&
                memcmp(m->keys + m->slots[i].off, key, len) == 0)
            return 1;
        i = (i + 1) & m->mask;
    }
    memcpy(m->keys + m->keys_used, key, len);
    m->slots[i].off = (uint32_t)m->keys_used;
    m->slots[i].len = (uint32_t)len;
    m->slots[i].hash = (uint32_t)h;
    m->slots[i].value = value;
    m->keys_used += len;
    m->count++;
    return 0;
}

/* The value of key, or -1. */
static inline int32_t km_strmap_get(const km_strmap *m, const unsigned char *key, size_t len) {
    if (m->slots == NULL || len == 0 || len > UINT32_MAX)
        return -1;
    uint64_t h = km_fnv1a(key, len);
    size_t i = h & m->mask;
    while (m->slots[i].len != 0) {
        const km_strmap_slot *s = &m->slots[i];
        if (s->hash == (uint32_t)h && s->len == len && memcmp(m->keys + s->off, key, len) == 0)
            return s->value;
        i = (i + 1) & m->mask;
    }
    return -1;
}

static inline void km_strmap_free(km_strmap *m) {
    free(m->slots);
    free(m->keys);
    memset(m, 0, sizeof(*m));
}

#endif
