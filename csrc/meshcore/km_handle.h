/* A librdkafka client handle (rd_kafka_t) shared between threads, with a count of the calls using it, so that
 * closing it waits for the last user and no call can reach a destroyed handle.
 *
 * Users (a Produce submit, produce_request, poll, flush, a route table reading queue depths) acquire the handle
 * while they still hold the GIL and release it when done, with or without the GIL. Closing is in two steps:
 * km_handle_close_begin() refuses new users, waits for the current ones and hands the rd_kafka_t to the closer
 * (who flushes and destroys it); km_handle_close_end() marks it closed. Users that may wait long (a full librdkafka
 * queue) read `closing` to give up early, so a close never waits on Kafka through them.
 *
 * The struct itself lives as long as its owner (the Producer object), and route tables keep their Producers alive:
 * a table can therefore always read a handle's state, and finds it closed rather than freed. */
#ifndef KM_HANDLE_H
#define KM_HANDLE_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include <librdkafka/rdkafka.h>

typedef struct km_handle {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    rd_kafka_t *rk;       /* NULL from the moment closing begins (under lock) */
    int closing;          /* atomic: set once, when closing begins; users may stop early when they see it */
    int closed;           /* under lock: the closer destroyed rk */
    int users;            /* under lock */
} km_handle;

static inline km_handle *km_handle_new(rd_kafka_t *rk) {
    km_handle *h = (km_handle *)calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    h->rk = rk;
    return h;
}

/* Free the struct; the handle must be closed (or never have had users). */
static inline void km_handle_free(km_handle *h) {
    if (!h)
        return;
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

/* The rd_kafka_t to use until km_handle_release(), or NULL when the handle is closing or closed. */
static inline rd_kafka_t *km_handle_acquire(km_handle *h) {
    rd_kafka_t *rk;
    pthread_mutex_lock(&h->lock);
    rk = h->rk;
    if (rk)
        h->users++;
    pthread_mutex_unlock(&h->lock);
    return rk;
}

static inline void km_handle_release(km_handle *h) {
    pthread_mutex_lock(&h->lock);
    if (--h->users == 0)
        pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

static inline int km_handle_closing(const km_handle *h) { return __atomic_load_n(&h->closing, __ATOMIC_ACQUIRE); }

/* Start closing: refuse new users, wait for the current ones, and return the rd_kafka_t for the caller to destroy
 * (then call km_handle_close_end). Returns NULL when another thread closed or is closing it: that call has then
 * finished when this one returns. */
static inline rd_kafka_t *km_handle_close_begin(km_handle *h) {
    rd_kafka_t *rk;
    pthread_mutex_lock(&h->lock);
    if (h->closing) {
        while (!h->closed)
            pthread_cond_wait(&h->cond, &h->lock);
        pthread_mutex_unlock(&h->lock);
        return NULL;
    }
    __atomic_store_n(&h->closing, 1, __ATOMIC_RELEASE);
    rk = h->rk;
    h->rk = NULL;
    while (h->users > 0)
        pthread_cond_wait(&h->cond, &h->lock);
    pthread_mutex_unlock(&h->lock);
    return rk;
}

static inline void km_handle_close_end(km_handle *h) {
    pthread_mutex_lock(&h->lock);
    h->closed = 1;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

#endif
