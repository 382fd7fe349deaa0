/* A thread that serves one producer's delivery reports (rd_kafka_poll) until told to stop, so that batches
 * complete without any Python thread polling. */
#ifndef KM_POLLER_H
#define KM_POLLER_H

#include <pthread.h>

#include <librdkafka/rdkafka.h>

typedef struct km_poller {
    rd_kafka_t *rk;
    int stop;
    int started;
    pthread_t thread;
} km_poller;

static void *km_poller_main(void *arg) {
    km_poller *p = (km_poller *)arg;
    while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
        rd_kafka_poll(p->rk, 100);
    return NULL;
}

static inline int km_poller_start(km_poller *p, rd_kafka_t *rk) {
    p->rk = rk;
    p->stop = 0;
    int rc = pthread_create(&p->thread, NULL, km_poller_main, p);
    p->started = rc == 0;
    return rc;
}

static inline void km_poller_stop(km_poller *p) {
    if (!p->started)
        return;
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    pthread_join(p->thread, NULL);
    p->started = 0;
}

#endif
