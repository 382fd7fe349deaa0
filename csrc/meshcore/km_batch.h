/* Per-batch delivery accounting for the Produce path, in C so that no Python object exists per record.
 *
 * A km_stream belongs to one gRPC Produce stream. Each ProduceRequest becomes one km_batch, which holds one
 * km_msgref per (record, sink cluster) enqueued to librdkafka; the msgref is the message's opaque. Delivery
 * reports arrive on the producers' poll threads (one per cluster, so possibly several at once for one batch):
 * they record the first error of each record and count the batch down with atomics. The last report completes
 * the batch: it is moved to the stream's completed list under the stream's lock and the stream's eventfd is
 * written, which wakes the asyncio loop that encodes and sends the response.
 *
 * Lifetimes: a stream is reference-counted (its owner, each batch in flight, and each submit in progress), so a
 * report that arrives after the gRPC stream ended still finds its stream, sees it closed, and frees the batch, and
 * a submit running in a worker thread while the owner closes the stream finishes on valid memory: it sees
 * `stop` and stops enqueuing. */
#ifndef KM_BATCH_H
#define KM_BATCH_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "km_support.h"

/* kafkamesh.v1.ErrorCode (proto/kafkamesh/v1/mesh.proto). */
enum {
    KM_OK = 0,
    KM_NO_ROUTE = 1,
    KM_INVALID_TOPIC = 2,
    KM_RECORD_TOO_LARGE = 3,
    KM_CLUSTER_UNAVAILABLE = 4,
    KM_UNKNOWN_PARTITION = 5,
    KM_NOT_AUTHORIZED = 6,
    KM_QUOTA_EXCEEDED = 7,
    KM_INTERNAL = 8,
    KM_UNKNOWN_TOPIC = 9,
    KM_INVALID_RECORD = 10,
};

/* Why a record is refused before anything is enqueued (KM_INVALID_RECORD), as RecordView.invalid gives it. */
enum {
    KM_INVALID_HEADER_NAME = 1,  /* a header name that is not UTF-8 */
    KM_INVALID_TIMESTAMP = 2,    /* a negative timestamp */
    KM_INVALID_PARTITION = 3,    /* a negative partition (librdkafka would read -1 as "any partition") */
    KM_INVALID_TIMESTAMP_AHEAD = 4,  /* a timestamp further ahead of the clock than the sidecar's bound */
    /* What the sink's brokers would refuse on this topic (km_rules.h): the record fails for that sink alone. */
    KM_INVALID_NO_KEY = 5,                 /* no key, and the topic is compacted */
    KM_INVALID_TOPIC_TIMESTAMP_BEHIND = 6, /* older than the topic's message.timestamp.before.max.ms */
    KM_INVALID_TOPIC_TIMESTAMP_AHEAD = 7,  /* further ahead than the topic's message.timestamp.after.max.ms */
    KM_INVALID_TOPIC_MAX_BYTES = 8,        /* larger than the topic's max.message.bytes (KM_RECORD_TOO_LARGE) */
};
/* A reason as the batch keeps it in rec_kerr: below zero and above librdkafka's own local codes (-200..-100), and
 * not -1, so never mistaken for an error librdkafka or a broker reported. */
#define KM_INVALID_KERR(reason) (-50 - (reason))
#define KM_INVALID_REASON(kerr) (-50 - (kerr))
/* A record written but not acknowledged, because the lease guard lapsed while it was in flight (below). */
#define KM_LAPSED_KERR (-40)

/* librdkafka 2.4+ (KIP-467): the broker refused the record's batch for another record of it. The code is fixed in
 * librdkafka's ABI; written as a number so that the core still builds against older headers. */
#define KM_ERR_INVALID_DIFFERENT_RECORD ((rd_kafka_resp_err_t)-138)

static inline int km_code_for(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return KM_OK;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return KM_RECORD_TOO_LARGE;
    case RD_KAFKA_RESP_ERR__DESTROY:     /* refused by the core: the sink's producer was closing */
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
        return KM_CLUSTER_UNAVAILABLE;
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
        return KM_UNKNOWN_PARTITION;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
        return KM_UNKNOWN_TOPIC;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return KM_NOT_AUTHORIZED;
    case RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
        return KM_QUOTA_EXCEEDED;
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
        return KM_INVALID_TOPIC;
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:   /* outside the topic's message.timestamp.*.max.ms */
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:      /* e.g. no key on a compacted topic */
    case RD_KAFKA_RESP_ERR_INVALID_MSG:         /* CORRUPT_MESSAGE */
        return KM_INVALID_RECORD;
    case KM_ERR_INVALID_DIFFERENT_RECORD:       /* innocent: not written, and may be sent again */
        return KM_CLUSTER_UNAVAILABLE;
    default:
        return KM_INTERNAL;
    }
}

struct km_batch;

/* The lease guard. A topic move counts this sidecar, and waits for it to apply each step, only while its status
 * entry lives in etcd under its lease; once the lease expired, the move may go on without it, switch the topic's
 * producers to another cluster and, at its end, stop reading the old one. So an acknowledgement may only be given
 * for a record that the mapping in force routed while the lease was sure to live: the control plane renews
 * deadline_ns (CLOCK_MONOTONIC) up to that moment, and only once it has read the mapping after its lease was
 * granted. A batch routed while the guard held is acknowledged only if it completes while the same guard still
 * holds: one routed before a lapse (the process was paused, or cut off from etcd, past its lease) and completed
 * after it is reported as not acknowledged, since its record may have gone where no one reads any more; the app
 * sends it again, and it goes where the mapping read anew says. A batch routed while the guard did not hold (etcd
 * unreachable: the sidecar serves the mapping it has, and a topic move stalls at its fence while this sidecar
 * writes the old cluster) is acknowledged until the guard is renewed, not after. Each renewal after a lapse
 * changes the epoch. One km_guard exists (in the produce module); each batch points at it, so that the delivery
 * reports, which complete batches in another module, read the same one. */
typedef struct km_guard {
    int64_t deadline_ns;     /* atomic */
    uint64_t epoch;          /* atomic */
} km_guard;

static inline int64_t km_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint64_t km_guard_epoch(const km_guard *g) { return __atomic_load_n(&g->epoch, __ATOMIC_ACQUIRE); }

/* Whether the guard holds now, in epoch. */
static inline int km_guard_holds(const km_guard *g, uint64_t epoch) {
    return km_guard_epoch(g) == epoch && km_monotonic_ns() < __atomic_load_n(&g->deadline_ns, __ATOMIC_ACQUIRE);
}

/* Whether the guard was lapsed on purpose (deadline 0), in epoch: the control plane cannot reach etcd and serves
 * the mapping it has. A guard merely past its deadline is not: its batches are not acknowledged. */
static inline int km_guard_stale(const km_guard *g, uint64_t epoch) {
    return km_guard_epoch(g) == epoch && __atomic_load_n(&g->deadline_ns, __ATOMIC_ACQUIRE) == 0;
}

/* Renew (or, with deadline_ns 0, lapse) the guard; bump: batches routed before now are not acknowledged after it.
 * The epoch changes before the deadline, so no batch of the old epoch sees the new deadline. */
static inline void km_guard_set(km_guard *g, int64_t deadline_ns, int bump) {
    if (bump)
        __atomic_add_fetch(&g->epoch, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&g->deadline_ns, deadline_ns, __ATOMIC_RELEASE);
}

/* Batches in flight by the mapping revision they were routed under, for the whole process: what tells a topic move
 * that nothing routed before its producer switch is still on its way to the old cluster. A few revisions are in
 * flight at once; a batch whose revision finds no free slot is counted as "older than any" (overflow). */
#define KM_REV_SLOTS 64
typedef struct km_revisions {
    pthread_mutex_t lock;
    uint64_t rev[KM_REV_SLOTS];
    int64_t count[KM_REV_SLOTS];
    int64_t overflow;
} km_revisions;

static inline void km_revisions_init(km_revisions *r) {
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
}

/* Count n (+1 or -1) batches of revision; returns 0, or 1 when counted in overflow (no free slot, or counted there
 * before: over, from the +1). */
static inline int km_revisions_add(km_revisions *r, uint64_t revision, int64_t n, int over) {
    pthread_mutex_lock(&r->lock);
    int free_slot = -1, i;
    if (!over) {
        for (i = 0; i < KM_REV_SLOTS; i++) {
            if (r->count[i] > 0 && r->rev[i] == revision) {
                r->count[i] += n;
                pthread_mutex_unlock(&r->lock);
                return 0;
            }
            if (r->count[i] <= 0 && free_slot < 0)
                free_slot = i;
        }
        if (n > 0 && free_slot >= 0) {
            r->rev[free_slot] = revision;
            r->count[free_slot] = n;
            pthread_mutex_unlock(&r->lock);
            return 0;
        }
    }
    r->overflow += n;
    pthread_mutex_unlock(&r->lock);
    return 1;
}

/* The oldest revision with a batch in flight (0 when one is counted in overflow); -1 when none. */
static inline int64_t km_revisions_oldest(km_revisions *r) {
    pthread_mutex_lock(&r->lock);
    int64_t oldest = r->overflow > 0 ? 0 : -1;
    for (int i = 0; i < KM_REV_SLOTS && oldest != 0; i++)
        if (r->count[i] > 0 && (oldest < 0 || r->rev[i] < (uint64_t)oldest))
            oldest = (int64_t)r->rev[i];
    pthread_mutex_unlock(&r->lock);
    return oldest;
}

/* What a failed record's message names beyond its code: its topic, its size and the limit it broke. Kept for the
 * first KM_DETAILS failures of a batch (most batches have none: the array is allocated at the first). */
#define KM_DETAILS 64
#define KM_DETAIL_TOPIC 249
typedef struct km_detail {
    uint32_t index;          /* the record */
    uint32_t topic_len;      /* the topic's whole length; at most KM_DETAIL_TOPIC bytes of it are kept */
    int64_t size;            /* the record's size as the check that failed it counted it; -1: not known */
    int64_t limit;           /* the limit it is over; -1: not known */
    char topic[KM_DETAIL_TOPIC];
} km_detail;

typedef struct km_msgref {
    struct km_batch *batch;
    uint32_t index;   /* record index in the request */
    uint16_t sink;    /* index of the sink cluster in the route table the batch was routed by */
    uint16_t topic;   /* the record's topic slot for the per-topic counters (km_counts.h); 0: none */
} km_msgref;

typedef struct km_stream {
    pthread_mutex_t lock;
    int efd;                 /* eventfd written when a batch completes; -1 once closed */
    int closed;              /* under lock */
    int stop;                /* atomic: set by km_stream_stop or close; a submit in progress stops enqueuing */
    int64_t refs;            /* atomic: the owner + one per batch in flight + one per submit in progress */
    int64_t inflight_bytes;  /* atomic: request bytes of the batches in flight */
    int64_t inflight_batches;
    struct km_batch *head, *tail;   /* completed batches not yet drained (under lock) */
} km_stream;

typedef struct km_batch {
    km_stream *stream;
    struct km_batch *next;
    uint64_t batch_id;
    uint64_t revision;       /* the mapping revision the batch was routed under */
    int64_t created_ns;      /* when it was routed (CLOCK_MONOTONIC): each delivery's latency is counted from it */
    const km_guard *guard;   /* the lease guard (NULL: none), its epoch when the batch was routed, and whether it */
    uint64_t guard_epoch;    /* was lapsed on purpose then (km_guard_stale) */
    int guard_stale;
    km_revisions *revisions; /* where the batch is counted in flight by its revision (NULL: nowhere) */
    int revision_over;       /* counted in its overflow */
    km_detail *details;      /* atomic: NULL until the first failure's detail */
    uint32_t n_details;      /* atomic: details claimed (those past KM_DETAILS are dropped) */
    uint32_t detail_max;     /* atomic: the highest record index with a detail (a lookup past it is at once NULL) */
    uint32_t n_records;
    uint32_t n_refs;
    int64_t pending;         /* atomic: deliveries outstanding + 1 while the batch is being enqueued */
    int64_t bytes;
    uint8_t *rec_code;       /* per record: KM_* of its first error, KM_OK if none */
    int32_t *rec_kerr;       /* per record: the librdkafka error behind rec_code, if any */
    uint16_t *rec_sink;      /* per record: the sink that reported that error */
    char *names;             /* sink cluster names, NUL-separated, copied from the route table */
    uint32_t *name_off;      /* offset of each sink's name in names */
    km_msgref refs[];        /* one per (record, sink) enqueued */
} km_batch;

static int64_t km_batches_created = 0, km_batches_freed = 0;
static int64_t km_streams_created = 0, km_streams_freed = 0;

static inline km_stream *km_stream_new(void) {
    km_stream *s = (km_stream *)calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->refs = 1;
    if (KM_DEBUG_ENABLED)
        km_atomic_add(&km_streams_created, 1);
    return s;
}

static inline void km_batch_free(km_batch *b) {
    free(b->details);
    free(b);
    if (KM_DEBUG_ENABLED)
        km_atomic_add(&km_batches_freed, 1);
}

static inline void km_stream_ref(km_stream *s) { __atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL); }

static inline void km_stream_unref(km_stream *s) {
    if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    km_batch *b = s->head;
    while (b) {
        km_batch *next = b->next;
        km_batch_free(b);
        b = next;
    }
    if (s->efd >= 0)
        close(s->efd);
    pthread_mutex_destroy(&s->lock);
    free(s);
    if (KM_DEBUG_ENABLED)
        km_atomic_add(&km_streams_freed, 1);
}

/* No one will read the answer of a batch being submitted: the submit stops enqueuing at its next record. */
static inline void km_stream_stop(km_stream *s) { __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE); }

/* The owner is done with the stream: batches still in flight are freed when they complete. */
static inline void km_stream_close(km_stream *s) {
    pthread_mutex_lock(&s->lock);
    s->closed = 1;
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    km_batch *b = s->head;
    s->head = s->tail = NULL;
    if (s->efd >= 0) {
        close(s->efd);
        s->efd = -1;
    }
    pthread_mutex_unlock(&s->lock);
    while (b) {
        km_batch *next = b->next;
        km_batch_free(b);
        b = next;
    }
    km_stream_unref(s);
}

/* Allocate a batch for n_records records and n_refs (record, sink) deliveries in one block. */
static inline km_batch *km_batch_new(km_stream *s, uint64_t batch_id, uint64_t revision, uint32_t n_records,
                                     uint32_t n_refs, int64_t bytes, const char *names, size_t names_len,
                                     const uint32_t *name_off, uint32_t n_names) {
    size_t head = sizeof(km_batch) + (size_t)n_refs * sizeof(km_msgref);
    size_t off_code = head;
    size_t off_kerr = (off_code + n_records + 3) & ~(size_t)3;
    size_t off_sink = off_kerr + (size_t)n_records * sizeof(int32_t);
    size_t off_noff = (off_sink + (size_t)n_records * sizeof(uint16_t) + 3) & ~(size_t)3;
    size_t off_names = off_noff + (size_t)n_names * sizeof(uint32_t);
    km_batch *b = (km_batch *)calloc(1, off_names + names_len + 1);
    if (!b)
        return NULL;
    char *base = (char *)b;
    b->stream = s;
    b->batch_id = batch_id;
    b->revision = revision;
    b->created_ns = km_monotonic_ns();
    b->n_records = n_records;
    b->n_refs = n_refs;
    /* Every (record, sink) delivery is counted before any is enqueued, plus 1 for the submit itself, so that a
     * delivery report can never bring the count to zero while the batch is still being enqueued. */
    b->pending = 1 + (int64_t)n_refs;
    b->bytes = bytes;
    b->rec_code = (uint8_t *)(base + off_code);
    b->rec_kerr = (int32_t *)(base + off_kerr);
    b->rec_sink = (uint16_t *)(base + off_sink);
    b->name_off = (uint32_t *)(base + off_noff);
    b->names = base + off_names;
    if (n_names)
        memcpy(b->name_off, name_off, (size_t)n_names * sizeof(uint32_t));
    if (names_len)
        memcpy(b->names, names, names_len);
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
    km_atomic_add(&s->inflight_bytes, bytes);
    km_atomic_add(&s->inflight_batches, 1);
    if (KM_DEBUG_ENABLED)
        km_atomic_add(&km_batches_created, 1);
    return b;
}

/* Record the first error of a record; later errors of the same record (from other sinks) are dropped. Returns 1
 * when this was its first error (the caller may then add its detail). */
static inline int km_batch_fail(km_batch *b, uint32_t index, int code, int32_t kerr, uint16_t sink) {
    uint8_t expected = KM_OK;
    if (__atomic_compare_exchange_n(&b->rec_code[index], &expected, (uint8_t)code, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        b->rec_kerr[index] = kerr;
        b->rec_sink[index] = sink;
        return 1;
    }
    return 0;
}

/* Keep what record index's message names: its topic (any bytes; escaped when the message is written), its size and
 * the limit it broke (-1: not known). Any thread; written before the batch completes, read after. */
static inline void km_batch_detail(km_batch *b, uint32_t index, const char *topic, size_t topic_len, int64_t size,
                                   int64_t limit) {
    if (__atomic_load_n(&b->n_details, __ATOMIC_ACQUIRE) >= KM_DETAILS)
        return;
    km_detail *d = __atomic_load_n(&b->details, __ATOMIC_ACQUIRE);
    if (!d) {
        km_detail *fresh = (km_detail *)calloc(KM_DETAILS, sizeof(km_detail));
        if (!fresh)
            return;
        km_detail *expected = NULL;
        if (__atomic_compare_exchange_n(&b->details, &expected, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            d = fresh;
        } else {
            free(fresh);
            d = expected;
        }
    }
    uint32_t slot = __atomic_fetch_add(&b->n_details, 1, __ATOMIC_ACQ_REL);
    if (slot >= KM_DETAILS)
        return;
    d[slot].index = index;
    d[slot].topic_len = topic_len > UINT32_MAX ? UINT32_MAX : (uint32_t)topic_len;
    memcpy(d[slot].topic, topic, topic_len < KM_DETAIL_TOPIC ? topic_len : KM_DETAIL_TOPIC);
    d[slot].size = size;
    d[slot].limit = limit;
    uint32_t seen = __atomic_load_n(&b->detail_max, __ATOMIC_RELAXED);
    while (index > seen &&
           !__atomic_compare_exchange_n(&b->detail_max, &seen, index, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* The detail of record index, or NULL (after the batch completed). */
static inline const km_detail *km_batch_find_detail(const km_batch *b, uint32_t index) {
    uint32_t n = b->n_details < KM_DETAILS ? b->n_details : KM_DETAILS;
    if (!b->details || index > b->detail_max)
        return NULL;
    for (uint32_t i = 0; i < n; i++)
        if (b->details[i].index == index)
            return &b->details[i];
    return NULL;
}

/* The in-flight counters drop only when the owner takes the completed list (under the lock), so an owner that
 * reads inflight_batches == 0 has taken every batch. */
static inline void km_batch_complete(km_batch *b) {
    km_stream *s = b->stream;
    int64_t bytes = b->bytes;
    pthread_mutex_lock(&s->lock);
    if (s->closed) {
        km_atomic_add(&s->inflight_bytes, -bytes);
        km_atomic_add(&s->inflight_batches, -1);
        pthread_mutex_unlock(&s->lock);
        km_batch_free(b);
    } else {
        b->next = NULL;
        if (s->tail)
            s->tail->next = b;
        else
            s->head = b;
        s->tail = b;
        uint64_t one = 1;
        ssize_t w;
        do {
            w = write(s->efd, &one, sizeof(one));
        } while (w < 0 && errno == EINTR);
        /* A completed batch still counts as in flight until its response is taken (km_stream_take_completed):
         * an app that does not read its responses is held to the same bound as one whose cluster is slow. */
        pthread_mutex_unlock(&s->lock);
    }
    km_stream_unref(s);
}

/* One delivery settled (or, with n > 1, several that never reached librdkafka). */
/* Whether a completed batch may be acknowledged under the lease guard (see km_guard). */
static inline int km_batch_guard_holds(const km_batch *b) {
    if (!b->guard)
        return 1;
    if (km_guard_epoch(b->guard) != b->guard_epoch)
        return 0;
    return b->guard_stale || km_monotonic_ns() < __atomic_load_n(&b->guard->deadline_ns, __ATOMIC_ACQUIRE);
}

static inline void km_batch_settle(km_batch *b, int64_t n) {
    if (__atomic_sub_fetch(&b->pending, n, __ATOMIC_ACQ_REL) != 0)
        return;
    if (!km_batch_guard_holds(b)) {
        /* Every record written and not failed otherwise: not acknowledged, named by the first sink that has it. */
        for (uint32_t r = 0; r < b->n_refs; r++)
            if (b->refs[r].batch == b && b->rec_code[b->refs[r].index] == KM_OK)
                km_batch_fail(b, b->refs[r].index, KM_CLUSTER_UNAVAILABLE, KM_LAPSED_KERR, b->refs[r].sink);
    }
    if (b->revisions)
        km_revisions_add(b->revisions, b->revision, -1, b->revision_over);
    km_batch_complete(b);
}

/* The delivery report of one (record, sink) message: on a failure, its topic and size (key and value) are kept. */
static inline void km_msgref_delivered(km_msgref *ref, const rd_kafka_message_t *msg) {
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR &&
        km_batch_fail(ref->batch, ref->index, km_code_for(msg->err), (int32_t)msg->err, ref->sink)) {
        const char *topic = msg->rkt ? rd_kafka_topic_name(msg->rkt) : "";
        km_batch_detail(ref->batch, ref->index, topic, strlen(topic), (int64_t)(msg->len + msg->key_len), -1);
    }
    km_batch_settle(ref->batch, 1);
}

/* Take the completed batches (the caller frees them); they stop counting as in flight. */
static inline km_batch *km_stream_take_completed(km_stream *s) {
    pthread_mutex_lock(&s->lock);
    km_batch *b = s->head;
    s->head = s->tail = NULL;
    for (km_batch *x = b; x; x = x->next) {
        km_atomic_add(&s->inflight_bytes, -x->bytes);
        km_atomic_add(&s->inflight_batches, -1);
    }
    if (s->efd >= 0) {
        uint64_t count;
        ssize_t r;
        do {
            r = read(s->efd, &count, sizeof(count));
        } while (r < 0 && errno == EINTR);
    }
    pthread_mutex_unlock(&s->lock);
    return b;
}

#endif
