"""What one cluster's brokers accept per topic (km_rules.h): built by the control plane from the topics' configs,
read by Produce submits to fail alone a record the broker would refuse with its whole batch.

A rule is a tuple (requires_key, create_time, before_max_ms, after_max_ms, max_bytes); a bound of None is no bound.
"""

from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc

from meshcore.strmap cimport km_strmap_get, km_strmap_init, km_strmap_put
from meshcore.support cimport KM_DEBUG_ENABLED

from meshcore.errors import CoreError

cdef int64_t _rules_created = 0
cdef int64_t _rules_freed = 0


cdef int _set_rule(km_rule *out, object rule) except -1:
    requires_key, create_time, before, after, max_bytes = rule
    out.requires_key = 1 if requires_key else 0
    out.create_time = 1 if create_time else 0
    out.before_max_ms = INT64_MAX if before is None else before
    out.after_max_ms = INT64_MAX if after is None else after
    out.max_bytes = INT64_MAX if max_bytes is None else max_bytes
    if out.before_max_ms < 0 or out.after_max_ms < 0 or out.max_bytes < 0:
        raise CoreError(f"a topic rule's bounds must be 0 or more, got {rule!r}")
    return 0


cdef object _rule_tuple(const km_rule *r):
    return (bool(r.requires_key), bool(r.create_time), None if r.before_max_ms == INT64_MAX else r.before_max_ms,
            None if r.after_max_ms == INT64_MAX else r.after_max_ms, None if r.max_bytes == INT64_MAX else r.max_bytes)


cdef class TopicRules:
    """Built by build_topic_rules(); immutable but for the misses the data plane notes."""

    def __init__(self):
        raise TypeError("TopicRules cannot be instantiated directly; use build_topic_rules()")

    def __cinit__(self):
        km_rules_init(&self.r)
        self.ready = True

    def __dealloc__(self):
        global _rules_freed
        if self.ready:
            km_rules_destroy(&self.r)
            if KM_DEBUG_ENABLED:
                _rules_freed += 1

    def __len__(self):
        return self.r.topics.count

    def rule_for(self, str topic):
        """The rule a record to topic is checked by (its own, else the fallback), or None (a diagnostic helper:
        it notes no miss)."""
        raw = topic.encode()
        cdef int32_t i = km_strmap_get(&self.r.topics, raw, len(raw))
        if i >= 0:
            return _rule_tuple(&self.r.rules[i])
        return _rule_tuple(&self.r.fallback) if self.r.has_fallback else None

    def take_misses(self):
        """The topics produced to since the last call that this snapshot does not name (at most 64)."""
        cdef char names[KM_RULES_MISSES * KM_RULES_TOPIC_MAX]
        cdef uint8_t lens[KM_RULES_MISSES]
        cdef int n = km_rules_take_misses(&self.r, names, lens)
        return [names[i * KM_RULES_TOPIC_MAX:i * KM_RULES_TOPIC_MAX + lens[i]].decode("utf-8", "replace")
                for i in range(n)]


def build_topic_rules(fallback, dict topics):
    """A snapshot: topics maps a topic name to its rule; fallback (a rule, or None) applies to the topics it does
    not name."""
    global _rules_created
    cdef TopicRules t = TopicRules.__new__(TopicRules)
    if KM_DEBUG_ENABLED:
        _rules_created += 1
    cdef size_t n = len(topics)
    cdef int32_t i = 0
    cdef int rc
    cdef bytes raw
    encoded = [(name.encode(), rule) for name, rule in topics.items()]
    if fallback is not None:
        _set_rule(&t.r.fallback, fallback)
        t.r.has_fallback = 1
    if n == 0:
        return t
    t.r.rules = <km_rule *>calloc(n, sizeof(km_rule))
    if t.r.rules == NULL or km_strmap_init(&t.r.topics, n, sum(len(raw) for raw, _ in encoded)) != 0:
        raise MemoryError()
    for raw, rule in encoded:
        _set_rule(&t.r.rules[i], rule)
        rc = km_strmap_put(&t.r.topics, <char *>raw, len(raw), i)
        if rc != 0:
            raise CoreError(f"topic {raw.decode()!r} is given twice" if rc == 1 else
                            f"topic {raw.decode()!r} has no rule: a topic name is 1 to 249 bytes")
        i += 1
    return t


def _debug_counts():
    return {"topic_rules": (_rules_created, _rules_freed)}
