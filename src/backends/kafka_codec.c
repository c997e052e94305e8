/*
 * kafka_codec.c — what crosses the Kafka wire besides payload and key: the
 * message id (record header ce_id, the CloudEvents Kafka binding) and the
 * other record headers, in both directions.
 *
 * Received records come from any producer, so decoding is a trust
 * boundary: every ce_id occurrence goes through mb_msg_received_id (the one
 * id rule) and every other header through mb_msg_received_header, which
 * keep what fits msgbus's model and record what does not (headers
 * msgbus-invalid-id / msgbus-invalid-headers), never dropping anything
 * without a trace. docs/kafka.md, "What arrives", has the table.
 */
#include "backends/kafka.h"

#include <string.h>

#include "core/msg.h"

#define MB_KAFKA_ID_HEADER "ce_id"

msgbus_err_t mb_kafka_decode_headers(msgbus_msg_t *m, const rd_kafka_headers_t *hdrs)
{
    if (!hdrs)
        return MSGBUS_OK;
    const char *name;
    const void *value;
    size_t size;
    /* In wire order: every ce_id occurrence is one id value (equal repeats
     * give that id, disagreeing ones none); every other header, reserved
     * msgbus-* names included, is a header as it arrived. The core merges
     * its two records (msgbus-invalid-id, msgbus-invalid-headers) with
     * ones that came over the wire in any order. librdkafka hands names
     * over as C strings: a name with a NUL inside is seen up to the NUL. */
    for (size_t i = 0; !rd_kafka_header_get_all(hdrs, i, &name, &value, &size); i++) {
        msgbus_err_t e = strcmp(name, MB_KAFKA_ID_HEADER) == 0
                             ? mb_msg_received_id(m, value, size)
                             : mb_msg_received_header(m, name, strlen(name), value, size);
        if (e)
            return MSGBUS_ERR_NOMEM;
    }
    return MSGBUS_OK;
}

rd_kafka_headers_t *mb_kafka_encode_headers(const msgbus_msg_t *m)
{
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(m->nheaders + 1);
    if (!hdrs)
        return NULL;
    /* A message without an id (an internal dead letter of a received
     * message that had none) travels without ce_id: an empty or made-up
     * ce_id would be a different id on the other side. */
    if (m->id)
        rd_kafka_header_add(hdrs, MB_KAFKA_ID_HEADER, -1, m->id, -1);
    for (size_t i = 0; i < m->nheaders; i++) {
        /* Only the message's id travels as ce_id: a header of that name
         * (received from another backend, where it is not the id) would be
         * a second ce_id, and two that disagree make the receiver drop
         * both. */
        if (strcmp(m->headers[i].name, MB_KAFKA_ID_HEADER) == 0)
            continue;
        rd_kafka_header_add(hdrs, m->headers[i].name, -1, m->headers[i].value, -1);
    }
    return hdrs;
}
