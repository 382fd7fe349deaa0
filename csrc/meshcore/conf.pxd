from meshcore.rdkafka cimport rd_kafka_conf_t, rd_kafka_t

cdef rd_kafka_conf_t *conf_from_dict(dict config) except NULL
cdef str register_client(rd_kafka_t *rk, str cluster)
cdef void forget_client(str key)
