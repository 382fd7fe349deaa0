"""librdkafka configuration objects built from Python dicts: the one place property names and values are checked,
and where every client's log lines are routed to the core's log ring (km_log.h), drained by take_logs().

Client names: librdkafka names each handle ("rdkafka#producer-3"); the handle's factory registers which cluster
it serves (register_client), so that a log line can be attributed to its cluster."""

from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc

from meshcore.rdkafka cimport *

from meshcore.errors import ConfigError


cdef extern from "km_log.h" nogil:
    ctypedef struct km_log_line:
        int level
        char client[64]
        char fac[32]
        char msg[512]
    void km_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
    int km_log_take(km_log_line *out, int max, uint64_t *dropped)


cdef dict _clients = {}      # rd_kafka_name -> the cluster the handle serves


cdef str register_client(rd_kafka_t *rk, str cluster):
    """Attribute rk's log lines to cluster; returns the key to forget it by once rk is destroyed."""
    key = rd_kafka_name(rk).decode(errors="replace")
    _clients[key] = cluster
    return key


cdef void forget_client(str key):
    _clients.pop(key, None)


def take_logs(int max_lines=1024):
    """librdkafka's log lines since the last call, oldest first: ([(level, cluster, facility, message), ...],
    dropped). level is librdkafka's syslog level (0-7); cluster is the registered name of the handle that logged,
    else librdkafka's own name for it; dropped counts the lines lost while the ring was full."""
    cdef km_log_line *lines = <km_log_line *>malloc(max(1, max_lines) * sizeof(km_log_line))
    cdef uint64_t dropped = 0
    cdef int i, n
    if lines == NULL:
        raise MemoryError()
    try:
        with nogil:
            n = km_log_take(lines, max_lines, &dropped)
        out = []
        for i in range(n):
            client = lines[i].client.decode(errors="replace")
            out.append((lines[i].level, _clients.get(client, client), lines[i].fac.decode(errors="replace"),
                        lines[i].msg.decode(errors="replace")))
        return out, dropped
    finally:
        free(lines)


cdef rd_kafka_conf_t *conf_from_dict(dict config) except NULL:
    """A new rd_kafka_conf_t holding every property of config (str -> str); the caller owns it. Raises ConfigError
    naming the property that is unknown or has an invalid value."""
    cdef char errstr[512]
    cdef rd_kafka_conf_t *conf = rd_kafka_conf_new()
    # Before the properties: no line of this client reaches stderr.
    rd_kafka_conf_set_log_cb(conf, km_log_cb)
    try:
        for key, value in config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"librdkafka property {key!r} must map a str to a str, got {value!r}")
            if rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK:
                raise ConfigError(f"librdkafka property {key!r}: {errstr.decode(errors='replace')}")
    except BaseException:
        rd_kafka_conf_destroy(conf)
        raise
    return conf


def check_config(dict config):
    """Check librdkafka properties (names and values) as a client would take them, without creating one. Raises
    ConfigError naming the first property refused."""
    rd_kafka_conf_destroy(conf_from_dict(config))
