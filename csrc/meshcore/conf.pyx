"""librdkafka configuration objects built from Python dicts: the one place property names and values are checked."""

from meshcore.rdkafka cimport *

from meshcore.errors import ConfigError


cdef rd_kafka_conf_t *conf_from_dict(dict config) except NULL:
    """A new rd_kafka_conf_t holding every property of config (str -> str); the caller owns it. Raises ConfigError
    naming the property that is unknown or has an invalid value."""
    cdef char errstr[512]
    cdef rd_kafka_conf_t *conf = rd_kafka_conf_new()
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
