/* What librdkafka tells one group consumer through callbacks, kept in C for the Cython Consumer to take.
 *
 * The callbacks run inside rd_kafka_consumer_poll() or rd_kafka_consumer_close() (the consumer queue serves the
 * main queue: rd_kafka_poll_set_consumer), on whichever thread calls those, with or without the GIL. They therefore
 * touch no Python object: the rebalance callback applies the assignment, drops a held message of a revoked
 * partition, and queues a copy of the partition list; the error callback records that every broker is down. The
 * mutex is there because probe() (a metadata request, from another thread) clears the down state too. */
#ifndef KM_CONSUMER_H
#define KM_CONSUMER_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

typedef struct km_rebalance_ev {
    int assigned;                                /* 1: assigned, 0: revoked */
    rd_kafka_topic_partition_list_t *parts;      /* a copy, owned here */
} km_rebalance_ev;

typedef struct km_cstate {
    pthread_mutex_t lock;
    km_rebalance_ev *evs;
    int nevs, cap;
    int rebalanced;               /* set by the rebalance callback, cleared by the poll loop */
    int down;                     /* every broker unreachable (as librdkafka last said) */
    int state_changed;            /* down flipped since the last km_cstate_take_state() */
    int fatal;
    char reason[256];
    rd_kafka_message_t **held;    /* polled but not sent yet, oldest first: the start of the next batch */
    int nheld, heldcap;
    int paused;                   /* the stream is out of credit: every assigned partition is paused */
    rd_kafka_queue_t *wake_q;     /* consumer queue whose io event wakes the stream's poll thread */
    char **earliest;              /* topics subscribed after the start: read from the beginning where the group */
    int nearliest;                /* has no committed offset (under lock) */
    int64_t msg_errors;           /* errors librdkafka reported instead of records (a batch it could not decode: */
    char msg_error[320];          /* its records are skipped), and the last one's text; the poll thread's only */
} km_cstate;

static inline km_cstate *km_cstate_new(void) {
    km_cstate *st = (km_cstate *)calloc(1, sizeof(*st));
    if (st)
        pthread_mutex_init(&st->lock, NULL);
    return st;
}

/* Drop what still refers to the rd_kafka_t: held messages, and queued events (a partition list holds references to
 * its partitions). Must run before rd_kafka_destroy(): a reference dropped after it makes the final destroy wait
 * for librdkafka's threads from inside the drop. */
static inline void km_cstate_clear(km_cstate *st) {
    for (int i = 0; i < st->nevs; i++)
        rd_kafka_topic_partition_list_destroy(st->evs[i].parts);
    free(st->evs);
    st->evs = NULL;
    st->nevs = st->cap = 0;
    for (int i = 0; i < st->nheld; i++)
        rd_kafka_message_destroy(st->held[i]);
    st->nheld = 0;
}

/* After rd_kafka_destroy() and km_cstate_clear(): frees memory only. */
static inline void km_cstate_free(km_cstate *st) {
    if (!st)
        return;
    free(st->held);
    for (int i = 0; i < st->nearliest; i++)
        free(st->earliest[i]);
    free(st->earliest);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static inline int km_parts_contain(const rd_kafka_topic_partition_list_t *parts, const char *topic, int32_t p) {
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].partition == p && !strcmp(parts->elems[i].topic, topic))
            return 1;
    return 0;
}

/* Keep m for the next batch. Returns -1 (m destroyed) only when out of memory: its partition is then rewound
 * to m's offset, so the record is fetched again instead of lost. */
static inline int km_held_push(rd_kafka_t *rk, km_cstate *st, rd_kafka_message_t *m) {
    if (st->nheld == st->heldcap) {
        int cap = st->heldcap ? st->heldcap * 2 : 4;
        rd_kafka_message_t **h = (rd_kafka_message_t **)realloc(st->held, cap * sizeof(*h));
        if (!h) {
            rd_kafka_seek(m->rkt, m->partition, m->offset, 0);
            rd_kafka_message_destroy(m);
            return -1;
        }
        st->held = h;
        st->heldcap = cap;
    }
    st->held[st->nheld++] = m;
    return 0;
}

/* Put back a record just popped (over the byte budget): it stays first. */
static inline int km_held_unpop(rd_kafka_t *rk, km_cstate *st, rd_kafka_message_t *m) {
    if (km_held_push(rk, st, m) < 0)
        return -1;
    memmove(st->held + 1, st->held, (size_t)(st->nheld - 1) * sizeof(*st->held));
    st->held[0] = m;
    return 0;
}

static inline rd_kafka_message_t *km_held_pop(km_cstate *st) {
    rd_kafka_message_t *m;
    if (!st->nheld)
        return NULL;
    m = st->held[0];
    memmove(st->held, st->held + 1, (size_t)(st->nheld - 1) * sizeof(*st->held));
    st->nheld--;
    return m;
}

/* Drop the held records of revoked partitions (all of them when parts is NULL): the partitions' next owner starts
 * at the committed offset, so a record never sent is not lost. */
static inline void km_held_drop(km_cstate *st, const rd_kafka_topic_partition_list_t *parts) {
    int j = 0;
    for (int i = 0; i < st->nheld; i++) {
        rd_kafka_message_t *m = st->held[i];
        if (!parts || km_parts_contain(parts, rd_kafka_topic_name(m->rkt), m->partition))
            rd_kafka_message_destroy(m);
        else
            st->held[j++] = m;
    }
    st->nheld = j;
}

/* Pause (or resume) every partition assigned to the consumer: fetching stops, so librdkafka's prefetch stays where
 * it is while the stream has no credit, and the consumer can still be polled for rebalances. */
static inline void km_set_paused(rd_kafka_t *rk, km_cstate *st, int paused) {
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (st->paused == paused)
        return;
    st->paused = paused;
    if (rd_kafka_assignment(rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || !parts)
        return;
    if (parts->cnt > 0) {
        if (paused)
            rd_kafka_pause_partitions(rk, parts);
        else
            rd_kafka_resume_partitions(rk, parts);
    }
    rd_kafka_topic_partition_list_destroy(parts);
}

/* Replace the set of topics read from the beginning when the group has no offset (copies the names). */
static inline int km_set_earliest(km_cstate *st, const char **topics, int n) {
    char **copy = n ? (char **)calloc((size_t)n, sizeof(char *)) : NULL;
    if (n && !copy)
        return -1;
    for (int i = 0; i < n; i++) {
        copy[i] = strdup(topics[i]);
        if (!copy[i]) {
            while (i--)
                free(copy[i]);
            free(copy);
            return -1;
        }
    }
    pthread_mutex_lock(&st->lock);
    for (int i = 0; i < st->nearliest; i++)
        free(st->earliest[i]);
    free(st->earliest);
    st->earliest = copy;
    st->nearliest = n;
    pthread_mutex_unlock(&st->lock);
    return 0;
}

/* Partitions of "earliest" topics that the group never committed start at the beginning instead of where
 * auto.offset.reset says: a topic added to a running stream must not skip what was written before it was read. */
static void km_apply_earliest(rd_kafka_t *rk, km_cstate *st, rd_kafka_topic_partition_list_t *parts) {
    rd_kafka_topic_partition_list_t *ask;
    pthread_mutex_lock(&st->lock);
    if (!st->nearliest) {
        pthread_mutex_unlock(&st->lock);
        return;
    }
    ask = rd_kafka_topic_partition_list_new(parts->cnt);
    for (int i = 0; i < parts->cnt; i++)
        for (int j = 0; j < st->nearliest; j++)
            if (!strcmp(parts->elems[i].topic, st->earliest[j]))
                rd_kafka_topic_partition_list_add(ask, parts->elems[i].topic, parts->elems[i].partition);
    pthread_mutex_unlock(&st->lock);
    /* A blocking request to the group coordinator, on the poll thread, once per rebalance that assigns such a
     * topic. On failure nothing changes: the partitions start where auto.offset.reset says. */
    if (ask->cnt && rd_kafka_committed(rk, ask, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < ask->cnt; i++) {
            if (ask->elems[i].err || ask->elems[i].offset >= 0)
                continue;
            for (int k = 0; k < parts->cnt; k++)
                if (parts->elems[k].partition == ask->elems[i].partition &&
                    !strcmp(parts->elems[k].topic, ask->elems[i].topic))
                    parts->elems[k].offset = RD_KAFKA_OFFSET_BEGINNING;
        }
    }
    rd_kafka_topic_partition_list_destroy(ask);
}

static void km_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts,
                            void *opaque) {
    km_cstate *st = (km_cstate *)opaque;
    const char *proto = rd_kafka_rebalance_protocol(rk);
    int coop = proto && !strcmp(proto, "COOPERATIVE");
    int assigned = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
    rd_kafka_error_t *error = NULL;
    if (assigned && parts)
        km_apply_earliest(rk, st, parts);
    if (assigned) {
        if (coop)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS && coop) {
        error = rd_kafka_incremental_unassign(rk, parts);
    } else {
        /* eager revoke, or a rebalance error: librdkafka asks for the whole assignment to be cleared. With
         * enable.auto.commit the offsets stored for the removed partitions are committed on the way out. */
        rd_kafka_assign(rk, NULL);
    }
    if (error)
        rd_kafka_error_destroy(error);
    /* librdkafka keeps an application pause on a partition across unassign and assign: set it from the stream's
     * state every time, or a partition revoked while paused would come back paused for good. */
    if (assigned && parts) {
        if (st->paused)
            rd_kafka_pause_partitions(rk, parts);
        else
            rd_kafka_resume_partitions(rk, parts);
    }
    if (!assigned)
        km_held_drop(st, coop ? parts : NULL);
    pthread_mutex_lock(&st->lock);
    if (parts && parts->cnt > 0) {
        if (st->nevs == st->cap) {
            int cap = st->cap ? st->cap * 2 : 4;
            km_rebalance_ev *evs = (km_rebalance_ev *)realloc(st->evs, cap * sizeof(*evs));
            if (evs) {
                st->evs = evs;
                st->cap = cap;
            }
        }
        if (st->nevs < st->cap) {
            st->evs[st->nevs].assigned = assigned;
            st->evs[st->nevs].parts = rd_kafka_topic_partition_list_copy(parts);
            st->nevs++;
        }
    }
    st->rebalanced = 1;
    pthread_mutex_unlock(&st->lock);
}

static void km_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    km_cstate *st = (km_cstate *)opaque;
    (void)rk;
    pthread_mutex_lock(&st->lock);
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        if (!st->down)
            st->state_changed = !st->state_changed;
        st->down = 1;
        snprintf(st->reason, sizeof(st->reason), "%s", reason ? reason : "all brokers are down");
    } else if (err == RD_KAFKA_RESP_ERR__FATAL) {
        st->fatal = 1;
        snprintf(st->reason, sizeof(st->reason), "%s", reason ? reason : "fatal error");
    }
    pthread_mutex_unlock(&st->lock);
}

/* librdkafka gave an error instead of a record. One of a partition (a record batch that does not decode: bad CRC,
 * unknown compression) means records of it are skipped: counted and kept for the owner to report. */
static inline void km_cstate_msg_error(km_cstate *st, const rd_kafka_message_t *m) {
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF || !m->rkt)
        return;
    st->msg_errors++;
    snprintf(st->msg_error, sizeof(st->msg_error), "%s [%d] at offset %lld: %s", rd_kafka_topic_name(m->rkt),
             (int)m->partition, (long long)m->offset, rd_kafka_err2str(m->err));
}

/* The cluster answered (a record arrived, or a metadata request succeeded). */
static inline void km_cstate_up(km_cstate *st) {
    pthread_mutex_lock(&st->lock);
    if (st->down) {
        st->down = 0;
        st->state_changed = !st->state_changed;
    }
    pthread_mutex_unlock(&st->lock);
}

/* 1 and the reason when the state flipped since the last call (down: *available = 0), else 0. A flip there and
 * back again between two calls reports nothing. */
static inline int km_cstate_take_state(km_cstate *st, int *available, char *reason, size_t reason_size) {
    int changed;
    pthread_mutex_lock(&st->lock);
    changed = st->state_changed;
    st->state_changed = 0;
    *available = !st->down;
    snprintf(reason, reason_size, "%s", st->down ? st->reason : "");
    pthread_mutex_unlock(&st->lock);
    return changed;
}

static inline int km_cstate_is_down(km_cstate *st) {
    int down;
    pthread_mutex_lock(&st->lock);
    down = st->down;
    pthread_mutex_unlock(&st->lock);
    return down;
}

/* Moves the queued rebalance events out: the caller destroys each parts list. Returns how many. */
static inline int km_cstate_take_events(km_cstate *st, km_rebalance_ev **out) {
    int n;
    pthread_mutex_lock(&st->lock);
    n = st->nevs;
    *out = st->evs;
    st->evs = NULL;
    st->nevs = st->cap = 0;
    pthread_mutex_unlock(&st->lock);
    return n;
}

/* Was there a rebalance since the last call? The poll loop ends a batch there, so that no batch mixes records from
 * before and after an assignment change. */
static inline int km_cstate_take_rebalanced(km_cstate *st) {
    int r;
    pthread_mutex_lock(&st->lock);
    r = st->rebalanced;
    st->rebalanced = 0;
    pthread_mutex_unlock(&st->lock);
    return r;
}

/* A metadata request for no topic: succeeds once any broker of the cluster answers. */
static inline int km_probe(rd_kafka_t *rk, km_cstate *st, int timeout_ms) {
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms);
    if (md)
        rd_kafka_metadata_destroy(md);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        km_cstate_up(st);
        return 1;
    }
    return 0;
}

/* Before rd_kafka_new(): the callbacks above, with st as their opaque. */
static inline void km_conf_set_callbacks(rd_kafka_conf_t *conf, km_cstate *st) {
    rd_kafka_conf_set_rebalance_cb(conf, km_rebalance_cb);
    rd_kafka_conf_set_error_cb(conf, km_error_cb);
    rd_kafka_conf_set_opaque(conf, st);
}

static const char km_wake_payload[8] = {1, 0, 0, 0, 0, 0, 0, 0};   /* an eventfd counter increment */

/* librdkafka writes to fd whenever the consumer queue turns non-empty, so that one thread can wait for any of a
 * stream's consumers with poll(2). */
static inline int km_enable_wakeup(rd_kafka_t *rk, km_cstate *st, int fd) {
    if (st->wake_q)
        return 0;
    st->wake_q = rd_kafka_queue_get_consumer(rk);
    if (!st->wake_q)
        return -1;
    rd_kafka_queue_io_event_enable(st->wake_q, fd, km_wake_payload, sizeof(km_wake_payload));
    return 0;
}

static inline void km_disable_wakeup(km_cstate *st) {
    if (!st->wake_q)
        return;
    rd_kafka_queue_io_event_enable(st->wake_q, -1, NULL, 0);
    rd_kafka_queue_destroy(st->wake_q);
    st->wake_q = NULL;
}

#endif
