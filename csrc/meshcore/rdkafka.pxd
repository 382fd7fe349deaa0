# librdkafka declarations: only what the core uses, copied from rdkafka.h (2.0.x) signatures. Nothing else belongs
# in this file; every Cython module of the core cimports librdkafka from here.

from libc.stdint cimport int32_t, int64_t


cdef extern from "librdkafka/rdkafka.h" nogil:
    ctypedef struct rd_kafka_t:
        pass
    ctypedef struct rd_kafka_conf_t:
        pass
    ctypedef struct rd_kafka_topic_t:
        pass
    ctypedef struct rd_kafka_headers_t:
        pass
    ctypedef struct rd_kafka_error_t:
        pass

    ctypedef enum rd_kafka_type_t:
        RD_KAFKA_PRODUCER
        RD_KAFKA_CONSUMER

    ctypedef enum rd_kafka_conf_res_t:
        RD_KAFKA_CONF_UNKNOWN
        RD_KAFKA_CONF_INVALID
        RD_KAFKA_CONF_OK

    ctypedef enum rd_kafka_resp_err_t:
        RD_KAFKA_RESP_ERR__BAD_MSG
        RD_KAFKA_RESP_ERR__DESTROY
        RD_KAFKA_RESP_ERR__FAIL
        RD_KAFKA_RESP_ERR__TRANSPORT
        RD_KAFKA_RESP_ERR__MSG_TIMED_OUT
        RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION
        RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC
        RD_KAFKA_RESP_ERR__INVALID_ARG
        RD_KAFKA_RESP_ERR__TIMED_OUT
        RD_KAFKA_RESP_ERR__QUEUE_FULL
        RD_KAFKA_RESP_ERR__PURGE_QUEUE
        RD_KAFKA_RESP_ERR__PURGE_INFLIGHT
        RD_KAFKA_RESP_ERR__FATAL
        RD_KAFKA_RESP_ERR__PARTITION_EOF
        RD_KAFKA_RESP_ERR__STATE
        RD_KAFKA_RESP_ERR__IN_PROGRESS
        RD_KAFKA_RESP_ERR_NO_ERROR
        RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE
        RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION

    ctypedef enum rd_kafka_vtype_t:
        RD_KAFKA_VTYPE_END
        RD_KAFKA_VTYPE_TOPIC
        RD_KAFKA_VTYPE_RKT
        RD_KAFKA_VTYPE_PARTITION
        RD_KAFKA_VTYPE_VALUE
        RD_KAFKA_VTYPE_KEY
        RD_KAFKA_VTYPE_OPAQUE
        RD_KAFKA_VTYPE_MSGFLAGS
        RD_KAFKA_VTYPE_TIMESTAMP
        RD_KAFKA_VTYPE_HEADERS

    # rd_kafka_vu_t's value union: only the members the core sets. The member types below are never named in C.
    ctypedef struct _rd_kafka_vu_mem:
        void *ptr
        size_t size
    ctypedef union _rd_kafka_vu_value:
        const char *cstr
        rd_kafka_topic_t *rkt
        int i
        int32_t i32
        int64_t i64
        _rd_kafka_vu_mem mem
        rd_kafka_headers_t *headers
        void *ptr
    ctypedef struct rd_kafka_vu_t:
        rd_kafka_vtype_t vtype
        _rd_kafka_vu_value u

    ctypedef struct rd_kafka_topic_partition_t:
        char *topic
        int32_t partition
        int64_t offset
        rd_kafka_resp_err_t err
    ctypedef struct rd_kafka_topic_partition_list_t:
        int cnt
        int size
        rd_kafka_topic_partition_t *elems

    ctypedef enum rd_kafka_timestamp_type_t:
        RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        RD_KAFKA_TIMESTAMP_CREATE_TIME
        RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME

    ctypedef struct rd_kafka_message_t:
        rd_kafka_resp_err_t err
        rd_kafka_topic_t *rkt
        int32_t partition
        void *payload
        size_t len
        void *key
        size_t key_len
        int64_t offset
        void *_private

    enum:
        RD_KAFKA_PARTITION_UA
        RD_KAFKA_MSG_F_COPY
        RD_KAFKA_PURGE_F_QUEUE
        RD_KAFKA_PURGE_F_INFLIGHT

    int rd_kafka_version()
    const char *rd_kafka_version_str()
    const char *rd_kafka_err2str(rd_kafka_resp_err_t err)
    const char *rd_kafka_err2name(rd_kafka_resp_err_t err)

    rd_kafka_conf_t *rd_kafka_conf_new()
    void rd_kafka_conf_destroy(rd_kafka_conf_t *conf)
    rd_kafka_conf_res_t rd_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                                          char *errstr, size_t errstr_size)
    void rd_kafka_conf_set_dr_msg_cb(rd_kafka_conf_t *conf,
                                     void (*dr_msg_cb)(rd_kafka_t *rk, const rd_kafka_message_t *rkmessage,
                                                       void *opaque) noexcept nogil)
    void rd_kafka_conf_set_opaque(rd_kafka_conf_t *conf, void *opaque)
    void rd_kafka_conf_set_log_cb(rd_kafka_conf_t *conf,
                                  void (*log_cb)(const rd_kafka_t *rk, int level, const char *fac,
                                                 const char *buf) noexcept nogil)
    const char *rd_kafka_name(const rd_kafka_t *rk)

    rd_kafka_t *rd_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, char *errstr, size_t errstr_size)
    void rd_kafka_destroy(rd_kafka_t *rk)
    int rd_kafka_poll(rd_kafka_t *rk, int timeout_ms)
    void rd_kafka_conf_set_stats_cb(rd_kafka_conf_t *conf,
                                    int (*stats_cb)(rd_kafka_t *rk, char *json, size_t json_len, void *opaque))
    rd_kafka_resp_err_t rd_kafka_flush(rd_kafka_t *rk, int timeout_ms)
    int rd_kafka_outq_len(rd_kafka_t *rk)
    rd_kafka_resp_err_t rd_kafka_purge(rd_kafka_t *rk, int purge_flags)
    rd_kafka_resp_err_t rd_kafka_fatal_error(rd_kafka_t *rk, char *errstr, size_t errstr_size)

    rd_kafka_error_t *rd_kafka_produceva(rd_kafka_t *rk, const rd_kafka_vu_t *vus, size_t cnt)
    rd_kafka_resp_err_t rd_kafka_error_code(const rd_kafka_error_t *error)
    const char *rd_kafka_error_string(const rd_kafka_error_t *error)
    void rd_kafka_error_destroy(rd_kafka_error_t *error)

    rd_kafka_headers_t *rd_kafka_headers_new(size_t initial_count)
    void rd_kafka_headers_destroy(rd_kafka_headers_t *hdrs)
    rd_kafka_resp_err_t rd_kafka_header_add(rd_kafka_headers_t *hdrs, const char *name, ssize_t name_size,
                                            const void *value, ssize_t value_size)

    const char *rd_kafka_topic_name(const rd_kafka_topic_t *rkt)
    const rd_kafka_conf_t *rd_kafka_conf(rd_kafka_t *rk)
    rd_kafka_conf_res_t rd_kafka_conf_get(const rd_kafka_conf_t *conf, const char *name, char *dest,
                                          size_t *dest_size)
    ctypedef struct rd_kafka_topic_conf_t:
        pass
    rd_kafka_topic_t *rd_kafka_topic_new(rd_kafka_t *rk, const char *topic, rd_kafka_topic_conf_t *conf)
    void rd_kafka_topic_destroy(rd_kafka_topic_t *rkt)
    int64_t rd_kafka_message_timestamp(const rd_kafka_message_t *rkmessage, rd_kafka_timestamp_type_t *tstype)
    void rd_kafka_message_destroy(rd_kafka_message_t *rkmessage)
    rd_kafka_resp_err_t rd_kafka_message_headers(const rd_kafka_message_t *rkmessage, rd_kafka_headers_t **hdrsp)
    rd_kafka_resp_err_t rd_kafka_header_get_all(const rd_kafka_headers_t *hdrs, size_t idx, const char **namep,
                                                const void **valuep, size_t *sizep)

    rd_kafka_topic_partition_list_t *rd_kafka_topic_partition_list_new(int size)
    void rd_kafka_topic_partition_list_destroy(rd_kafka_topic_partition_list_t *rkparlist)
    rd_kafka_topic_partition_t *rd_kafka_topic_partition_list_add(rd_kafka_topic_partition_list_t *rktparlist,
                                                                  const char *topic, int32_t partition)

    rd_kafka_resp_err_t rd_kafka_poll_set_consumer(rd_kafka_t *rk)
    rd_kafka_resp_err_t rd_kafka_subscribe(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *topics)
    rd_kafka_message_t *rd_kafka_consumer_poll(rd_kafka_t *rk, int timeout_ms)
    rd_kafka_resp_err_t rd_kafka_commit(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *offsets, int async)
    rd_kafka_resp_err_t rd_kafka_consumer_close(rd_kafka_t *rk)
    rd_kafka_resp_err_t rd_kafka_offsets_store(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *offsets)

    # Steps of the router (router.pyx): headers copied and edited, a partition sought back, fetching paused.
    rd_kafka_headers_t *rd_kafka_headers_copy(const rd_kafka_headers_t *src)
    rd_kafka_resp_err_t rd_kafka_header_remove(rd_kafka_headers_t *hdrs, const char *name)
    rd_kafka_resp_err_t rd_kafka_header_get_last(const rd_kafka_headers_t *hdrs, const char *name,
                                                 const void **valuep, size_t *sizep)
    size_t rd_kafka_header_cnt(const rd_kafka_headers_t *hdrs)
    rd_kafka_error_t *rd_kafka_seek_partitions(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *partitions,
                                               int timeout_ms)
    rd_kafka_resp_err_t rd_kafka_pause_partitions(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *partitions)
    rd_kafka_resp_err_t rd_kafka_resume_partitions(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *partitions)
    rd_kafka_resp_err_t rd_kafka_get_watermark_offsets(rd_kafka_t *rk, const char *topic, int32_t partition,
                                                       int64_t *low, int64_t *high)
