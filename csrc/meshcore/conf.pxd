from meshcore.rdkafka cimport rd_kafka_conf_t

cdef rd_kafka_conf_t *conf_from_dict(dict config) except NULL
