#ifndef ORDERPIPELINE_CRDKAFKA_SHIM_H
#define ORDERPIPELINE_CRDKAFKA_SHIM_H

#include <librdkafka/rdkafka.h>

/// `rd_kafka_producev` is variadic and cannot be called from Swift: this fixed-arity wrapper produces one message
/// with a copied key and value, optional headers (owned by librdkafka on success, by the caller on failure) and a
/// per-message opaque that comes back in the delivery report.
static inline rd_kafka_resp_err_t orderpipeline_rdk_produce(
    rd_kafka_t *rk, const char *topic, const void *key, size_t key_len, const void *value, size_t value_len,
    rd_kafka_headers_t *headers, void *opaque)
{
    return rd_kafka_producev(
        rk,
        RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(key, key_len),
        RD_KAFKA_V_VALUE((void *)value, value_len),
        RD_KAFKA_V_HEADERS(headers),
        RD_KAFKA_V_OPAQUE(opaque),
        RD_KAFKA_V_END);
}

#endif
