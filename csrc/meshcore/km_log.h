/* librdkafka's log lines, taken off librdkafka's threads without the GIL or any Python object: the log callback
 * copies each line into one bounded ring for the process, and the control plane drains it into Python logging.
 * Lines that arrive while the ring is full are counted, not kept, so a storm of log lines costs bounded memory and
 * never blocks a librdkafka thread for longer than a copy.
 *
 * Included by conf.pyx only: every client's configuration is built there, and the ring must exist once. */
#ifndef KM_LOG_H
#define KM_LOG_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#define KM_LOG_RING 1024

typedef struct km_log_line {
    int level;                /* syslog level, as librdkafka gives it (0 emergency .. 7 debug) */
    char client[64];          /* rd_kafka_name(): "rdkafka#producer-3" */
    char fac[32];
    char msg[512];
} km_log_line;

static km_log_line km_log_ring[KM_LOG_RING];
static uint64_t km_log_head = 0, km_log_tail = 0, km_log_dropped = 0;
static pthread_mutex_t km_log_lock = PTHREAD_MUTEX_INITIALIZER;

static void km_log_copy(char *dst, size_t cap, const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = 0;
}

static void km_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    pthread_mutex_lock(&km_log_lock);
    if (km_log_head - km_log_tail >= KM_LOG_RING) {
        km_log_dropped++;
    } else {
        km_log_line *l = &km_log_ring[km_log_head % KM_LOG_RING];
        l->level = level;
        km_log_copy(l->client, sizeof(l->client), rk ? rd_kafka_name(rk) : "");
        km_log_copy(l->fac, sizeof(l->fac), fac);
        km_log_copy(l->msg, sizeof(l->msg), buf);
        km_log_head++;
    }
    pthread_mutex_unlock(&km_log_lock);
}

/* Copy up to max lines out (oldest first); returns how many, and the count dropped since the last call. */
static int km_log_take(km_log_line *out, int max, uint64_t *dropped) {
    int n = 0;
    pthread_mutex_lock(&km_log_lock);
    while (n < max && km_log_tail < km_log_head) {
        out[n++] = km_log_ring[km_log_tail % KM_LOG_RING];
        km_log_tail++;
    }
    *dropped = km_log_dropped;
    km_log_dropped = 0;
    pthread_mutex_unlock(&km_log_lock);
    return n;
}

#endif
