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

#include <stdlib.h>
#include <string.h>

#include "core/msg.h"

#define MB_KAFKA_ID_HEADER "ce_id"

/* A decimal count as msgbus writes it in msgbus-invalid-headers. */
static bool mb_kafka_is_count(const void *value, size_t size)
{
    const char *v = value;
    if (!v || !size || size > 19)
        return false;
    for (size_t i = 0; i < size; i++)
        if (v[i] < '0' || v[i] > '9')
            return false;
    return true;
}

msgbus_err_t mb_kafka_decode_headers(msgbus_msg_t *m, const rd_kafka_headers_t *hdrs)
{
    if (!hdrs)
        return MSGBUS_OK;
    const char *name;
    const void *value;
    size_t size;
    /* Two passes, so the outcome does not depend on header order.
     *
     * First the id: every ce_id occurrence, in order (equal repeats give
     * that id, disagreeing ones none). Also a msgbus-invalid-headers that
     * travels with the record (a msgbus hop before this one counted
     * headers it could not keep): taken first, so this hop's own count
     * adds to it instead of being overwritten by it. */
    for (size_t i = 0; !rd_kafka_header_get_all(hdrs, i, &name, &value, &size); i++) {
        msgbus_err_t e = MSGBUS_OK;
        if (strcmp(name, MB_KAFKA_ID_HEADER) == 0)
            e = mb_msg_received_id(m, value, size);
        else if (strcmp(name, MB_H_INVALID_HEADERS) == 0)
            e = mb_kafka_is_count(value, size)
                    ? mb_msg_received_header(m, name, strlen(name), value, size)
                    : mb_msg_received_header(m, NULL, 0, NULL, 0); /* counted as invalid */
        if (e)
            return MSGBUS_ERR_NOMEM;
    }
    /* Whether this record's own ce_id was refused: then the
     * msgbus-invalid-id header describes this record and a
     * msgbus-invalid-id from the wire (an earlier hop's) cannot be kept
     * under the same name; it is counted as an invalid header instead. */
    bool own_invalid_id = msgbus_msg_header(m, MB_H_INVALID_ID) != NULL;
    for (size_t i = 0; !rd_kafka_header_get_all(hdrs, i, &name, &value, &size); i++) {
        if (strcmp(name, MB_KAFKA_ID_HEADER) == 0 || strcmp(name, MB_H_INVALID_HEADERS) == 0)
            continue;
        msgbus_err_t e;
        if (own_invalid_id && strcmp(name, MB_H_INVALID_ID) == 0)
            e = mb_msg_received_header(m, NULL, 0, NULL, 0);
        else
            e = mb_msg_received_header(m, name, strlen(name), value, size);
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
