"""The compiled producer routing table: an immutable snapshot of one mapping revision.

Topic -> route is a km_strmap (open addressing), so a lookup costs the same with 10 topics or 100,000, and reads
only C memory. A table is never changed after it is built: a mapping
change builds a new one and the control plane swaps its reference (a change of a few topics builds an overlay: a small
table of just those topics over the last whole one, so its cost follows the change, not the mapping's size); a Produce batch looks its table up once and
routes every record by it, so one batch is always routed by one revision. The table holds references to the
Producer objects of its sinks, so their handle structs outlive it; a user of the table acquires the sinks'
rd_kafka_t handles for the time of one call (acquire_all), which a producer's close() waits for, and finds a sink
whose producer was closed as NULL.
"""

from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from meshcore.counts cimport KM_SLOT_CHUNK, KM_SLOT_CHUNKS, KM_SLOT_DEFAULT, KM_SLOT_NONE
from meshcore.producer cimport Producer, km_handle, km_handle_acquire, km_handle_release
from meshcore.rdkafka cimport rd_kafka_outq_len, rd_kafka_t
from meshcore.strmap cimport km_strmap_free, km_strmap_get, km_strmap_init, km_strmap_put
from meshcore.support cimport KM_DEBUG_ENABLED

from meshcore.errors import CoreError, HandleClosedError

cdef int64_t _tables_created = 0
cdef int64_t _tables_freed = 0


#: The per-topic counters' slots: 0 (not counted), 1 (__default__), then one per named topic up to this.
MAX_TOPIC_SLOT = KM_SLOT_CHUNK * KM_SLOT_CHUNKS - 1


cdef class TopicSlots:
    """Which topics are counted under a slot of their own (built by build_topic_slots(); immutable)."""

    def __init__(self):
        raise TypeError("TopicSlots cannot be instantiated directly; use build_topic_slots()")

    def __len__(self):
        return self.map.count

    def __dealloc__(self):
        km_strmap_free(&self.map)


def build_topic_slots(dict slots):
    """A TopicSlots of {topic: slot} (slots 2..MAX_TOPIC_SLOT; every other topic counts under 1, __default__)."""
    cdef TopicSlots t = TopicSlots.__new__(TopicSlots)
    cdef bytes raw
    encoded = {}
    for topic, slot in slots.items():
        if not 2 <= slot <= MAX_TOPIC_SLOT:
            raise CoreError(f"topic slot {slot} of {topic!r} is out of range (2..{MAX_TOPIC_SLOT})")
        encoded[(<str?>topic).encode()] = slot
    if km_strmap_init(&t.map, len(encoded), sum(len(k) for k in encoded)) != 0:
        raise MemoryError()
    for raw, slot in encoded.items():
        if km_strmap_put(&t.map, <char *>raw, len(raw), slot) != 0:
            raise CoreError(f"topic {raw.decode()!r} cannot have a slot: a topic name is 1 to 249 bytes")
    return t


cdef class RouteTable:
    """Built by build_route_table(); immutable."""

    cdef uint16_t topic_slot(self, const unsigned char *topic, size_t n) noexcept nogil:
        """The slot topic is counted under (KM_SLOT_NONE when the table has no TopicSlots)."""
        cdef int32_t s
        if self._slots is None:
            return KM_SLOT_NONE
        s = km_strmap_get(&self._slots.map, topic, n)
        return <uint16_t>s if s >= 0 else KM_SLOT_DEFAULT

    def __init__(self):
        raise TypeError("RouteTable cannot be instantiated directly; use build_route_table()")

    cdef const Route *lookup(self, const unsigned char *topic, size_t n) noexcept nogil:
        """The route of topic: its own, else __default__'s, else NULL."""
        cdef int32_t r = km_strmap_get(&self.topics, topic, n)
        if r >= 0:
            if self.routes[r].n > 0:
                return &self.routes[r]
        elif self.base_topics != NULL:
            r = km_strmap_get(self.base_topics, topic, n)
            if r >= 0:
                return &self.base_routes[r]
        if self.default_route >= 0:
            return &self.routes[self.default_route]
        return NULL

    def sinks_for(self, str topic):
        """The sink cluster names for topic (a test and diagnostic helper), or None when it has no route."""
        raw = topic.encode()
        cdef const Route *r = self.lookup(raw, len(raw))
        if r == NULL:
            return None
        return tuple(self.sink_name(r.sinks[i]) for i in range(r.n))

    cdef void acquire_all(self, rd_kafka_t **out) noexcept nogil:
        """out[i]: sink i's rd_kafka_t, held until release_all(out), or NULL when its producer is closed."""
        cdef int i
        for i in range(self.n_sinks):
            out[i] = km_handle_acquire(self.handles[i])

    cdef void release_all(self, rd_kafka_t **acquired) noexcept nogil:
        cdef int i
        for i in range(self.n_sinks):
            if acquired[i] != NULL:
                km_handle_release(self.handles[i])

    def max_queued(self):
        """The most records any of the table's open producers holds unacknowledged (queued or in flight)."""
        cdef int i, q, most = 0
        cdef rd_kafka_t *rk
        for i in range(self.n_sinks):
            rk = km_handle_acquire(self.handles[i])
            if rk == NULL:
                continue
            q = rd_kafka_outq_len(rk)
            km_handle_release(self.handles[i])
            if q > most:
                most = q
        return most

    def sink_name(self, int index):
        if not 0 <= index < self.n_sinks:
            raise IndexError(index)
        return (self.names + self.name_off[index]).decode()

    @property
    def topic_count(self):
        """The topics with a route of their own in this table (an overlay: the topics changed since its base)."""
        return self.topics.count

    @property
    def is_overlay(self):
        return self.base_topics != NULL

    def __dealloc__(self):
        global _tables_freed
        if self.handles != NULL or self.routes != NULL:
            if KM_DEBUG_ENABLED:
                _tables_freed += 1
        free(self.handles)
        free(self.names)
        free(self.name_off)
        free(self.routes)
        km_strmap_free(&self.topics)


def build_route_table(uint64_t revision, list producers, list routes, default_sinks=None, RouteTable base=None,
                      TopicSlots slots=None):
    """Compile a routing table.

    producers: the Producer of each sink, in sink-index order (its name is the cluster's name).
    routes: [(topics, sink_indices), ...]; a topic may appear in only one route.
    default_sinks: the sink indices of __default__, or None.
    base: build an overlay over this whole table (not itself an overlay, and with the same producers): routes are
    then the topics whose routes differ from base's, and a route of no sinks says its topics have none of their own.
    slots: the per-topic counters' slots the records routed by this table are counted under (None: not counted).
    """
    global _tables_created
    cdef RouteTable t = RouteTable.__new__(RouteTable)
    cdef Producer p
    cdef int i, j, r
    cdef size_t topics_len = 0
    cdef bytes raw
    if default_sinks is not None and not 1 <= len(default_sinks) <= MAX_SINKS:
        raise CoreError(f"the default route needs 1 to {MAX_SINKS} sinks, got {len(default_sinks)}")
    t.revision = revision
    t.default_route = -1
    t._slots = slots
    if base is not None:
        if base.base_topics != NULL:
            raise CoreError("an overlay route table cannot be the base of another")
        if len(base._producers) != len(producers) or any(a is not b for a, b in zip(base._producers, producers)):
            raise CoreError("an overlay route table needs its base's producers")
        t._base = base
        t.base_topics = &base.topics
        t.base_routes = base.routes
    t._producers = list(producers)
    t.n_sinks = len(producers)
    names = []
    for obj in producers:
        names.append((<Producer?>obj).name.encode())
    all_routes = [(list(topics), list(sinks)) for topics, sinks in routes]      # read twice below
    if default_sinks is not None:
        all_routes.append(([], list(default_sinks)))
    # Nothing may raise between the first allocation and the debug count below (__dealloc__ counts what it frees).
    t.handles = <km_handle **>calloc(max(1, t.n_sinks), sizeof(km_handle *))
    t.name_off = <uint32_t *>calloc(max(1, t.n_sinks), sizeof(uint32_t))
    t.names_len = sum(len(n) + 1 for n in names)
    t.names = <char *>calloc(t.names_len + 1, 1)
    t.n_routes = len(all_routes)
    t.routes = <Route *>calloc(max(1, t.n_routes), sizeof(Route))
    if t.handles == NULL or t.name_off == NULL or t.names == NULL or t.routes == NULL:
        raise MemoryError()
    if KM_DEBUG_ENABLED:
        _tables_created += 1
    cdef size_t off = 0
    for i in range(t.n_sinks):
        p = producers[i]
        if p.closed:
            raise HandleClosedError(f"producer {p.name!r} is closed")
        t.handles[i] = p.h
        t.name_off[i] = off
        memcpy(t.names + off, <char *>names[i], len(names[i]))
        off += len(names[i]) + 1
    cdef size_t n_topics = 0
    cdef int rc
    for r, (topics, sinks) in enumerate(all_routes):
        if not (0 if base is not None else 1) <= len(sinks) <= MAX_SINKS:
            raise CoreError(f"a route needs 1 to {MAX_SINKS} sinks, got {len(sinks)}")
        t.routes[r].n = len(sinks)
        for j, s in enumerate(sinks):
            if not 0 <= s < t.n_sinks:
                raise CoreError(f"sink index {s} is out of range (0..{t.n_sinks - 1})")
            t.routes[r].sinks[j] = s
        for topic in topics:
            n_topics += 1
            topics_len += len((<str?>topic).encode())
    if t.n_routes and default_sinks is not None:
        t.default_route = t.n_routes - 1
    if km_strmap_init(&t.topics, n_topics, topics_len) != 0:
        raise MemoryError()
    # Each topic encoded, stored and let go in turn: no list of 100,000 encoded names alive at once.
    for r, (topics, _) in enumerate(all_routes):
        for topic in topics:
            raw = topic.encode()
            rc = km_strmap_put(&t.topics, <char *>raw, len(raw), r)
            if rc == 1:
                raise CoreError(f"topic {topic!r} appears in more than one route")
            if rc != 0:
                raise CoreError(f"topic {topic!r} cannot be routed: a topic name is 1 to 249 bytes")
    return t


def _debug_counts():
    return {"route_table": (_tables_created, _tables_freed)}
