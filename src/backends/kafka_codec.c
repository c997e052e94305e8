/*
 * kafka_codec.c — what crosses the Kafka wire besides the key: the record
 * value and headers a publish writes, and the headers of a received record,
 * following the CloudEvents Kafka protocol binding (docs/kafka.md, "What
 * msgbus writes" and "What arrives").
 *
 * Publishing, by the bus option cloudevents= (mb_bus_ce_mode):
 *   binary      headers ce_specversion, ce_id, ce_source, ce_type, ce_time,
 *               ce_subject from mb_ce_attrs, then the application headers
 *               (content-type is the binding's datacontenttype as it is; a
 *               ce_<ext> header is an extension attribute as it is);
 *   structured  the value is mb_ce_structured's JSON, header content-type
 *               application/cloudevents+json, the other application
 *               headers as headers;
 *   off         ce_id and the application headers, as before CloudEvents.
 *
 * Received records come from any producer, so decoding is a trust
 * boundary: a header ce_<attr> (attr a CloudEvents attribute name) goes
 * through mb_msg_received_ce, ce_id included (the one id rule), every other
 * header through mb_msg_received_header; both keep what fits msgbus's model
 * and record what does not (headers msgbus-invalid-id /
 * msgbus-invalid-headers), never dropping anything without a trace.
 */
#include "backends/kafka.h"

#include <stdlib.h>
#include <string.h>

#include "core/msg.h"

#define MB_KAFKA_ID_HEADER "ce_id"
#define MB_KAFKA_STRUCTURED "application/cloudevents+json"

/* The attribute name of a header that is a CloudEvents attribute under the
 * Kafka binding, or NULL. The binding's prefix is "ce_" in lower case and
 * attribute names are lower-case letters and digits (CloudEvents 1.0,
 * "Attribute Naming Convention"); Kafka header names are case-sensitive,
 * so ce_Type or ce_trace-id cannot name an attribute: such a header is the
 * producer's own and is kept as it came. *n gets the attribute name's
 * length. */
static const char *mb_kafka_ce_attr(const char *name, size_t *n)
{
    if (name[0] != 'c' || name[1] != 'e' || name[2] != '_' || !name[3])
        return NULL;
    const char *p = name + 3;
    for (; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
            return NULL;
    *n = (size_t)(p - (name + 3)); /* the scan found the end: no strlen */
    return name + 3;
}

msgbus_err_t mb_kafka_decode_headers(msgbus_msg_t *m, const rd_kafka_headers_t *hdrs)
{
    if (!hdrs)
        return MSGBUS_OK;
    const char *name;
    const void *value;
    size_t size;
    /* In wire order: every ce_id occurrence is one id value (equal repeats
     * give that id, disagreeing ones none); the other attributes become the
     * message's type, source, subject and timestamp when they pass the
     * core's rules (the timestamp was set from the record first: the
     * event's time wins) or stay headers ce_<attr>; every other header,
     * reserved msgbus-* names included, is a header as it arrived. The core
     * merges its two records (msgbus-invalid-id, msgbus-invalid-headers)
     * with ones that came over the wire in any order. librdkafka hands
     * names over as C strings: a name with a NUL inside is seen up to the
     * NUL. */
    for (size_t i = 0; !rd_kafka_header_get_all(hdrs, i, &name, &value, &size); i++) {
        size_t an = 0;
        const char *attr = mb_kafka_ce_attr(name, &an);
        msgbus_err_t e = attr ? mb_msg_received_ce(m, attr, an, value, size)
                              : mb_msg_received_header(m, name, strlen(name), value, size);
        if (e)
            return MSGBUS_ERR_NOMEM;
    }
    return MSGBUS_OK;
}

/* Adds one header and counts its bytes; false on out of memory. */
static bool mb_kafka_add(rd_kafka_headers_t *hdrs, size_t *size, const char *name, size_t nlen,
                         const char *value, size_t vlen)
{
    *size += nlen + vlen;
    return rd_kafka_header_add(hdrs, name, (ssize_t)nlen, value, (ssize_t)vlen) ==
           RD_KAFKA_RESP_ERR_NO_ERROR;
}

rd_kafka_headers_t *mb_kafka_encode_headers(const msgbus_msg_t *m)
{
    struct mb_kafka_record r;
    if (mb_kafka_encode(NULL, NULL, m, &r) != MSGBUS_OK)
        return NULL;
    return r.hdrs; /* no JSON in this mode */
}

msgbus_err_t mb_kafka_encode(const msgbus_t *bus, const char *topic, const msgbus_msg_t *m,
                             struct mb_kafka_record *out)
{
    enum mb_ce_mode mode = bus ? mb_bus_ce_mode(bus) : MB_CE_OFF;
    out->json = NULL;
    out->value = m->payload;
    out->len = m->len;
    out->size = m->len + m->key_len;
    out->hdrs = rd_kafka_headers_new(m->nheaders + 6);
    if (!out->hdrs)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    rd_kafka_headers_t *h = out->hdrs;
    size_t *sz = &out->size;
    bool ok = true;
    switch (mode) {
    case MB_CE_BINARY: {
        struct mb_ce_attrs a;
        mb_ce_attrs(bus, topic, m, &a);
        ok = mb_kafka_add(h, sz, "ce_specversion", 14, "1.0", 3);
        /* A message without an id (an internal dead letter of a received
         * message that had none) travels without ce_id: an empty or
         * made-up ce_id would be a different id on the other side. */
        if (ok && a.id)
            ok = mb_kafka_add(h, sz, "ce_id", 5, a.id, strlen(a.id));
        ok = ok && mb_kafka_add(h, sz, "ce_source", 9, a.source, strlen(a.source)) &&
             mb_kafka_add(h, sz, "ce_type", 7, a.type, strlen(a.type)) &&
             (!a.time[0] || mb_kafka_add(h, sz, "ce_time", 7, a.time, strlen(a.time)));
        if (ok && a.subject)
            ok = mb_kafka_add(h, sz, "ce_subject", 10, a.subject, strlen(a.subject));
        break;
    }
    case MB_CE_STRUCTURED: {
        size_t len;
        msgbus_err_t e = mb_ce_structured(bus, topic, m, &out->json, &len);
        if (e) {
            rd_kafka_headers_destroy(out->hdrs);
            out->hdrs = NULL;
            return e;
        }
        out->value = out->json;
        out->len = len;
        out->size = len + m->key_len;
        ok = mb_kafka_add(h, sz, "content-type", 12, MB_KAFKA_STRUCTURED,
                          sizeof MB_KAFKA_STRUCTURED - 1);
        break;
    }
    case MB_CE_OFF:
        if (m->id)
            ok = mb_kafka_add(h, sz, "ce_id", 5, m->id, strlen(m->id));
        break;
    }
    for (size_t i = 0; ok && i < m->nheaders; i++) {
        const char *name = m->headers[i].name, *attr;
        if (mode == MB_CE_OFF) {
            /* Only the message's id travels as ce_id: a header of that
             * name (received from another backend, where it is not the
             * id) would be a second ce_id, and two that disagree make the
             * receiver drop both. */
            if (strcmp(name, MB_KAFKA_ID_HEADER) == 0)
                continue;
        } else if (mb_ce_reserved_header(name)) {
            /* msgbus wrote this attribute above (or inside the JSON); the
             * header is a value that failed its rule when it arrived
             * (ce_time "yesterday"), kept for the reader but not sent on
             * as a second, contradicting attribute. */
            continue;
        } else if (mode == MB_CE_STRUCTURED &&
                   (strcmp(name, "content-type") == 0 || mb_ce_extension_header(name, &attr))) {
            continue; /* inside the JSON: datacontenttype, extensions */
        }
        ok = mb_kafka_add(h, sz, name, strlen(name), m->headers[i].value,
                          strlen(m->headers[i].value));
    }
    if (!ok) {
        mb_kafka_record_clear(out);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    }
    return MSGBUS_OK;
}

void mb_kafka_record_clear(struct mb_kafka_record *r)
{
    if (r->hdrs)
        rd_kafka_headers_destroy(r->hdrs);
    free(r->json);
    r->hdrs = NULL;
    r->json = NULL;
}
