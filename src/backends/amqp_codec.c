/*
 * amqp_codec.c — a msgbus message on the AMQP wire and back.
 *
 * Outgoing: one allocation holds the basic properties, the headers table
 * and copies of exchange, routing key, body and strings, built on the
 * publishing application thread so the I/O thread only writes it.
 *   CloudEvents (bus option cloudevents=, docs/amqp.md "CloudEvents"):
 *     binary      headers cloudEvents_specversion/id/source/type/time/
 *                 subject, each ce_<ext> header as cloudEvents_<ext>;
 *     structured  body = the event's JSON, content_type
 *                 application/cloudevents+json, no cloudEvents_ headers;
 *     off         message_id only.
 *   message_id  = msgbus id (every mode)
 *   timestamp   = seconds (AMQP's unit); exact ms in header msgbus-timestamp-ms
 *   delivery_mode 2 (persistent); content_type mirrors a "content-type"
 *                 header of at most 255 bytes (a short string)
 *   routing key = the message key; an empty key also rides in msgbus-key
 *                 (a routing key "" reads back as no key); a republished
 *                 copy (nack on a classic queue) goes to the default
 *                 exchange "" routed by queue name, keeps its key in
 *                 msgbus-key (absent: no key), its attempt in msgbus-attempt.
 *   Every value msgbus writes in the headers table is a string: readers
 *   that take only strings (Watermill) read every msgbus message.
 *   Every AMQP limit (short strings of 255 bytes, the content header in
 *   one frame) is checked here, so the I/O thread never writes a frame
 *   rabbitmq-c refuses.
 * Incoming: ids go through mb_msg_received_id, CloudEvents attributes
 * (cloudEvents_, cloudEvents:, ce-) through mb_msg_received_ce and headers
 * through mb_msg_received_header (the trust boundary, core/msg.h); msgbus's
 * own headers become id / timestamp / key / attempt and are not shown
 * (integers as older versions wrote them, or strings); foreign basic
 * properties become headers (content-type, amqp-correlation-id, ...);
 * scalar values from foreign producers are shown as text; a structured
 * CloudEvent is unpacked once the body is whole (mb_amqp_decode_body);
 * docs/amqp.md has the table of what arrives and what msgbus reports.
 */
#include "backends/amqp.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static char *mb_amqp_put(char **cursor, const void *src, size_t n, bool nul)
{
    char *dst = *cursor;
    if (n)
        memcpy(dst, src, n);
    if (nul)
        dst[n] = '\0';
    *cursor += n + (nul ? 1 : 0);
    return dst;
}

static void mb_amqp_entry_str(amqp_table_entry_t *e, const char *name, const void *v, size_t n)
{
    e->key = amqp_cstring_bytes(name);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes.bytes = (void *)v;
    e->value.value.bytes.len = n;
}

/* Bytes of a content header frame's payload for these properties: class,
 * weight, body size and flags (14), then each present property. Only the
 * kinds mb_amqp_out_new writes are counted. */
static size_t mb_amqp_header_payload(const amqp_basic_properties_t *p)
{
    size_t n = 14;
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
        n += 1 + p->content_type.len;
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        n += 4;
        for (int i = 0; i < p->headers.num_entries; i++) {
            const amqp_table_entry_t *e = &p->headers.entries[i];
            n += 1 + e->key.len + 1 +
                 (e->value.kind == AMQP_FIELD_KIND_I64 ? 8 : 4 + e->value.value.bytes.len);
        }
    }
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
        n += 1;
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        n += 1 + p->message_id.len;
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
        n += 8;
    return n;
}

bool mb_amqp_out_fits(const struct mb_amqp_out *o, size_t frame_max)
{
    /* A frame is 7 bytes of header, the payload and one end byte. */
    return mb_amqp_header_payload(&o->props) + 8 <= frame_max;
}

/* The header names msgbus's own AMQP entries use. */
static bool mb_amqp_own_entry(const char *name)
{
    return strcmp(name, MB_AMQP_H_KEY) == 0 || strcmp(name, MB_AMQP_H_ATTEMPT) == 0 ||
           strcmp(name, MB_AMQP_H_TS_MS) == 0;
}

/* The CloudEvents prefix a header name starts with, as msgbus reads them:
 * cloudEvents_ (the AMQP binding as its current text and the C# and Python
 * SDKs write it) and cloudEvents: (its first text, and msgbus before issue
 * 21), both case-sensitive; ce- in any case (the SDK's RabbitMQ binding,
 * knative). Its length; 0 for none, or for nothing after it. */
static size_t mb_amqp_ce_prefix(const char *name, size_t n)
{
    if (n > 12 && memcmp(name, "cloudEvents", 11) == 0 && (name[11] == '_' || name[11] == ':'))
        return 12;
    if (n > 3 && (name[0] == 'c' || name[0] == 'C') && (name[1] == 'e' || name[1] == 'E') &&
        name[2] == '-')
        return 3;
    return 0;
}

static bool mb_amqp_name_is(const char *name, size_t n, const char *what)
{
    return strlen(what) == n && strncasecmp(name, what, n) == 0;
}

/* What the encoder does with one application header. */
enum mb_amqp_hdr { MB_AMQP_HDR_PLAIN, MB_AMQP_HDR_SKIP, MB_AMQP_HDR_EXT };

static enum mb_amqp_hdr mb_amqp_header_kind(const char *name, enum mb_ce_mode mode)
{
    /* msgbus writes these entries itself from the message's key,
     * timestamp and attempt; a header of the same name (received on
     * another backend, where it is plain data) would be a second entry. */
    if (mb_amqp_own_entry(name))
        return MB_AMQP_HDR_SKIP;
    /* A context attribute under a prefix the receiver reads (cloudEvents_id,
     * cloudEvents:id, ce-type, ... kept as data by another backend): it
     * would stand next to, or instead of, the attribute msgbus writes from
     * the message itself — two ids that disagree make the receiver keep
     * none. As the Kafka encoder does for ce_id. */
    size_t n = strlen(name), pfx = mb_amqp_ce_prefix(name, n);
    if (pfx && mb_ce_core_attr(name + pfx, n - pfx))
        return MB_AMQP_HDR_SKIP;
    const char *attr;
    if (mode != MB_CE_OFF && mb_ce_extension_header(name, &attr))
        /* Binary: cloudEvents_<ext>, unless the name would outgrow AMQP's
         * 255 bytes (then it stays ce_<ext>, read back as that header).
         * Structured: inside the JSON. */
        return mode == MB_CE_STRUCTURED ? MB_AMQP_HDR_SKIP
               : n + 9 <= 255           ? MB_AMQP_HDR_EXT
                                        : MB_AMQP_HDR_PLAIN;
    if (mode == MB_CE_STRUCTURED && strcmp(name, "content-type") == 0)
        return MB_AMQP_HDR_SKIP; /* the JSON's datacontenttype */
    return MB_AMQP_HDR_PLAIN;
}

static const char mb_amqp_ce_json[] = "application/cloudevents+json";

msgbus_err_t mb_amqp_out_new(struct mb_amqp_out **out, const char *exchange, const void *rk,
                             size_t rk_len, const msgbus_msg_t *m, int attempt, bool copy,
                             size_t frame_max)
{
    return mb_amqp_out_build(out, exchange, rk, rk_len, m, attempt, copy, frame_max, NULL);
}

msgbus_err_t mb_amqp_out_build(struct mb_amqp_out **out, const char *exchange, const void *rk,
                               size_t rk_len, const msgbus_msg_t *m, int attempt, bool copy,
                               size_t frame_max, const struct mb_amqp_ce *ce)
{
    *out = NULL;
    if (!rk) {
        rk = m->key;
        rk_len = m->key ? m->key_len : 0;
    }
    /* The attributes to write: the publish's, or (ce NULL) the message's
     * own, so a retry copy or a forward reads back as it arrived. */
    struct mb_ce_attrs own;
    enum mb_ce_mode mode = ce ? ce->mode : MB_CE_BINARY;
    const struct mb_ce_attrs *a = NULL;
    if (mode == MB_CE_BINARY) {
        if (ce) {
            a = ce->attrs;
        } else {
            own = (struct mb_ce_attrs){.id = m->id, .source = m->ce_source, .type = m->ce_type,
                                       .subject = m->ce_subject};
            mb_rfc3339_format(m->timestamp >= 0 ? m->timestamp : 0, own.time);
            a = &own;
        }
    }
    /* A timestamp past MB_CE_MAX_TIME_MS (backend.h) has no
     * cloudEvents_time: RFC 3339 cannot write it, and it is optional. */
    bool with_time = a && m->timestamp <= MB_CE_MAX_TIME_MS;
    size_t srclen = a && a->source ? strlen(a->source) : 0;
    size_t typelen = a && a->type ? strlen(a->type) : 0;
    size_t subjlen = a && a->subject ? strlen(a->subject) : 0;
    size_t timelen = with_time ? strlen(a->time) : 0;
    const void *body = m->payload;
    size_t body_len = m->len;
    if (mode == MB_CE_STRUCTURED) {
        body = ce->json;
        body_len = ce->json_len;
    }

    /* Every AMQP limit is checked here, on the thread that builds the
     * frame, so a message rabbitmq-c would refuse fails alone instead of
     * failing the I/O thread's write (which would look like a lost
     * connection and resend it forever). Short strings hold 255 bytes. */
    size_t xlen = strlen(exchange), idlen = m->id ? strlen(m->id) : 0;
    if (xlen > 255)
        return mb_error(MSGBUS_ERR_INVALID,
                        "topic of %zu bytes: AMQP exchange names are at most 255 bytes", xlen);
    if (rk_len > 255)
        return mb_error(MSGBUS_ERR_INVALID,
                        "key of %zu bytes: AMQP routing keys are at most 255 bytes", rk_len);
    if (idlen > 255)
        return mb_error(MSGBUS_ERR_INVALID,
                        "id of %zu bytes: the AMQP message_id property holds at most 255 bytes",
                        idlen);
    /* The key travels in msgbus-key when the routing key cannot say it:
     * on a copy (routed by queue name) and for an empty key, which as a
     * routing key would read back as "no key". */
    bool key_header = m->key && (copy || m->key_len == 0);
    /* Entries: the headers, msgbus-timestamp-ms, -attempt, -key, and six
     * cloudEvents_ attributes (specversion id source type time subject). */
    size_t nent = m->nheaders + 3 + (a ? 6 : 0);
    /* Strings: exchange, routing key, body, id, key, the two numbers, the
     * attributes; per header its name (with room for the cloudEvents_
     * that replaces ce_) and value. */
    size_t bytes = sizeof(struct mb_amqp_out) + nent * sizeof(amqp_table_entry_t) + xlen + 1 +
                   rk_len + 1 + body_len + idlen + 1 + (key_header ? m->key_len : 0) + 2 * 24 +
                   srclen + typelen + subjlen + timelen + 4;
    for (size_t i = 0; i < m->nheaders; i++) {
        size_t nl = strlen(m->headers[i].name);
        if (nl > 255)
            return mb_error(MSGBUS_ERR_INVALID,
                            "header name of %zu bytes: AMQP header names are at most 255 bytes",
                            nl);
        bytes += nl + 10 + strlen(m->headers[i].value) + 1;
    }

    struct mb_amqp_out *o = malloc(bytes);
    if (!o)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a message of %zu bytes", body_len);
    memset(o, 0, sizeof *o);
    amqp_table_entry_t *ent = (amqp_table_entry_t *)(o + 1);
    char *cur = (char *)(ent + nent);

    o->topic = mb_amqp_put(&cur, exchange, xlen, true);
    o->routing_key.bytes = mb_amqp_put(&cur, rk, rk_len, true);
    o->routing_key.len = rk_len;
    o->body.bytes = mb_amqp_put(&cur, body, body_len, false);
    o->body.len = body_len;

    amqp_basic_properties_t *p = &o->props;
    p->_flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p->delivery_mode = 2;
    p->timestamp = (uint64_t)(m->timestamp > 0 ? m->timestamp / 1000 : 0);
    if (mode == MB_CE_STRUCTURED) {
        p->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p->content_type.bytes = (void *)mb_amqp_ce_json;
        p->content_type.len = sizeof mb_amqp_ce_json - 1;
    }

    size_t k = 0;
    if (m->id) {
        o->msg_id = mb_amqp_put(&cur, m->id, idlen, true);
        p->_flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p->message_id = amqp_cstring_bytes(o->msg_id);
    } else {
        o->msg_id = ""; /* a dead letter of a foreign message without an id */
    }
    if (a) {
        /* Binary mode: type and source make it a CloudEvent (a retry copy
         * of a foreign message may have neither: then only what it has). */
        if (a->type && a->source)
            mb_amqp_entry_str(&ent[k++], MB_AMQP_CE_PREFIX "specversion", "1.0", 3);
        if (m->id)
            mb_amqp_entry_str(&ent[k++], MB_AMQP_H_ID, o->msg_id, idlen);
        if (a->source)
            mb_amqp_entry_str(&ent[k++], MB_AMQP_CE_PREFIX "source",
                              mb_amqp_put(&cur, a->source, srclen, false), srclen);
        if (a->type)
            mb_amqp_entry_str(&ent[k++], MB_AMQP_CE_PREFIX "type",
                              mb_amqp_put(&cur, a->type, typelen, false), typelen);
        if (with_time)
            mb_amqp_entry_str(&ent[k++], MB_AMQP_CE_PREFIX "time",
                              mb_amqp_put(&cur, a->time, timelen, false), timelen);
        if (a->subject)
            mb_amqp_entry_str(&ent[k++], MB_AMQP_CE_PREFIX "subject",
                              mb_amqp_put(&cur, a->subject, subjlen, false), subjlen);
    }
    /* msgbus's own values are strings: a reader that takes only strings
     * (Watermill: "metadata msgbus-timestamp-ms is not a string", and it
     * nacks forever) reads them; msgbus reads the integers older versions
     * wrote too. */
    char num[24];
    size_t nl = (size_t)snprintf(num, sizeof num, "%" PRId64, m->timestamp);
    mb_amqp_entry_str(&ent[k++], MB_AMQP_H_TS_MS, mb_amqp_put(&cur, num, nl, false), nl);
    if (attempt > 1) {
        nl = (size_t)snprintf(num, sizeof num, "%d", attempt);
        mb_amqp_entry_str(&ent[k++], MB_AMQP_H_ATTEMPT, mb_amqp_put(&cur, num, nl, false), nl);
    }
    if (key_header) {
        const char *kc = mb_amqp_put(&cur, m->key, m->key_len, false);
        mb_amqp_entry_str(&ent[k++], MB_AMQP_H_KEY, kc, m->key_len);
    }
    for (size_t i = 0; i < m->nheaders; i++) {
        const char *hn = m->headers[i].name, *hv = m->headers[i].value;
        enum mb_amqp_hdr kind = mb_amqp_header_kind(hn, mode);
        if (kind == MB_AMQP_HDR_SKIP)
            continue;
        size_t hl = strlen(hn), vl = strlen(hv);
        char *name;
        if (kind == MB_AMQP_HDR_EXT) { /* ce_<ext> → cloudEvents_<ext> */
            name = mb_amqp_put(&cur, MB_AMQP_CE_PREFIX, 12, false);
            mb_amqp_put(&cur, hn + 3, hl - 3, true);
            hl += 9;
        } else {
            name = mb_amqp_put(&cur, hn, hl, true);
        }
        const char *value = mb_amqp_put(&cur, hv, vl, true);
        mb_amqp_entry_str(&ent[k], name, value, vl);
        ent[k].key.len = hl;
        k++;
        /* content_type is a short string: a longer value stays a header only. */
        if (mode != MB_CE_STRUCTURED && strcmp(name, "content-type") == 0 && vl <= 255) {
            p->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
            p->content_type.bytes = (void *)value;
            p->content_type.len = vl;
        }
    }
    p->headers.num_entries = (int)k;
    p->headers.entries = ent;
    if (!mb_amqp_out_fits(o, frame_max)) {
        size_t need = mb_amqp_header_payload(p) + 8;
        free(o);
        return mb_error(MSGBUS_ERR_TOO_LARGE,
                        "the message's properties and headers take %zu bytes: an AMQP content "
                        "header must fit in one frame (frame_max=%zu)",
                        need, frame_max);
    }
    *out = o;
    return MSGBUS_OK;
}

void mb_amqp_out_free(struct mb_amqp_out *o)
{
    if (!o)
        return;
    free(o->return_text);
    free(o);
}

static bool mb_amqp_bytes_is(amqp_bytes_t b, const char *s)
{
    size_t n = strlen(s);
    return b.len == n && memcmp(b.bytes, s, n) == 0;
}

/* A scalar field as an integer (for attempt / delivery-count / timestamp). */
static bool mb_amqp_field_int(const amqp_field_value_t *v, int64_t *out)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
    case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
    case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
    case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
    case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
    case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
    case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: *out = (int64_t)v->value.u64; return true;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: {
        /* The whole string, as strtoll reads one (leading white space, a
         * sign, decimal digits) but to its last byte: a NUL or anything
         * else after the digits, or a value beyond int64, is no integer.
         * (It was strtoll on the first 31 bytes: "12\0x" read as 12, and
         * 40 digits as INT64_MAX. By hand, also for the cost: strtoll was
         * ~360 instructions of every received message's
         * msgbus-timestamp-ms.) */
        const char *c = v->value.bytes.bytes;
        size_t n = v->value.bytes.len, i = 0;
        while (i < n && (c[i] == ' ' || (c[i] >= '\t' && c[i] <= '\r')))
            i++;
        bool neg = i < n && c[i] == '-';
        if (i < n && (c[i] == '-' || c[i] == '+'))
            i++;
        if (i == n)
            return false;
        uint64_t x = 0;
        for (; i < n; i++) {
            unsigned d = (unsigned)(unsigned char)c[i] - '0';
            /* x * 10 + d past UINT64_MAX (18446744073709551615)? */
            if (d > 9 || (x >= 1844674407370955161u && (x > 1844674407370955161u || d > 5)))
                return false;
            x = x * 10 + d;
        }
        if (x > (uint64_t)INT64_MAX + neg)
            return false;
        *out = !neg ? (int64_t)x : x == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)x;
        return true;
    }
    default:
        return false;
    }
}

/* A header value as text; false for the kinds with no text form here
 * (tables, arrays, void, decimal), which are not shown. */
static bool mb_amqp_field_text(const amqp_field_value_t *v, char *buf, size_t n,
                               const char **text, size_t *len)
{
    int64_t i;
    switch (v->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        *text = v->value.bytes.bytes;
        *len = v->value.bytes.len;
        return true; /* a NUL inside is mb_msg_received_header's to refuse */
    case AMQP_FIELD_KIND_BOOLEAN:
        *text = v->value.boolean ? "true" : "false";
        *len = strlen(*text);
        return true;
    case AMQP_FIELD_KIND_F32:
        *len = (size_t)snprintf(buf, n, "%.9g", (double)v->value.f32);
        *text = buf;
        return true;
    case AMQP_FIELD_KIND_F64:
        *len = (size_t)snprintf(buf, n, "%.17g", v->value.f64);
        *text = buf;
        return true;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        *len = (size_t)snprintf(buf, n, "%" PRIu64, v->value.u64);
        *text = buf;
        return true;
    default:
        if (v->kind == AMQP_FIELD_KIND_TABLE || v->kind == AMQP_FIELD_KIND_ARRAY ||
            v->kind == AMQP_FIELD_KIND_VOID || v->kind == AMQP_FIELD_KIND_DECIMAL ||
            !mb_amqp_field_int(v, &i))
            return false;
        *len = (size_t)snprintf(buf, n, "%" PRId64, i);
        *text = buf;
        return true;
    }
}

/* A string-valued field; NULL for every other kind. */
static const amqp_bytes_t *mb_amqp_field_bytes(const amqp_field_value_t *v)
{
    if (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES)
        return &v->value.bytes;
    return NULL;
}

/* One CloudEvents attribute from the headers table (its name without the
 * prefix). time may come as an AMQP timestamp (seconds) or an integer (ms
 * since the epoch, how the SDK's AMQP 1.0 binding writes a timestamp):
 * RFC 3339 text first, as every other binding's time is. */
static msgbus_err_t mb_amqp_received_ce(msgbus_msg_t *m, const char *name, size_t n,
                                        const amqp_field_value_t *v)
{
    char buf[64];
    const char *text;
    size_t len;
    int64_t ms;
    if (mb_amqp_name_is(name, n, "time") && v->kind != AMQP_FIELD_KIND_UTF8 &&
        v->kind != AMQP_FIELD_KIND_BYTES && mb_amqp_field_int(v, &ms)) {
        bool secs = v->kind == AMQP_FIELD_KIND_TIMESTAMP;
        if (ms >= 0 && ms <= (secs ? MB_CE_MAX_TIME_MS / 1000 : MB_CE_MAX_TIME_MS) &&
            !(secs && v->value.u64 > (uint64_t)INT64_MAX)) {
            mb_rfc3339_format(secs ? ms * 1000 : ms, buf);
            return mb_msg_received_ce(m, name, n, buf, strlen(buf));
        }
        /* Out of range: kept as its text (header ce_time), as any value
         * that fails its rule. */
    }
    if (!mb_amqp_field_text(v, buf, sizeof buf, &text, &len))
        return MSGBUS_OK; /* tables, arrays, void, decimal: as for headers */
    return mb_msg_received_ce(m, name, n, text, len);
}

/* Foreign basic properties shown as headers (a msgbus message sets only
 * content_type). The property wins over a header of the same name, which
 * anyone can write; a retry copy or a dead letter carries them as headers,
 * not as properties again. */
static msgbus_err_t mb_amqp_props_to_headers(msgbus_msg_t *m, const amqp_basic_properties_t *p)
{
    static const struct {
        amqp_flags_t flag;
        size_t off;
        const char *name;
    } props[] = {
        {AMQP_BASIC_CORRELATION_ID_FLAG, offsetof(amqp_basic_properties_t, correlation_id),
         "amqp-correlation-id"},
        {AMQP_BASIC_TYPE_FLAG, offsetof(amqp_basic_properties_t, type), "amqp-type"},
        {AMQP_BASIC_APP_ID_FLAG, offsetof(amqp_basic_properties_t, app_id), "amqp-app-id"},
        {AMQP_BASIC_REPLY_TO_FLAG, offsetof(amqp_basic_properties_t, reply_to), "amqp-reply-to"},
        {AMQP_BASIC_USER_ID_FLAG, offsetof(amqp_basic_properties_t, user_id), "amqp-user-id"},
        {AMQP_BASIC_EXPIRATION_FLAG, offsetof(amqp_basic_properties_t, expiration),
         "amqp-expiration"},
        {AMQP_BASIC_CONTENT_ENCODING_FLAG, offsetof(amqp_basic_properties_t, content_encoding),
         "amqp-content-encoding"},
    };
    msgbus_err_t e;
    /* content_type is the content-type header (CloudEvents: datacontenttype)
     * unless the table has one: msgbus writes both, and the header holds a
     * value longer than a short string. */
    if ((p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) && !msgbus_msg_header(m, "content-type") &&
        (e = mb_msg_received_header(m, "content-type", 12, p->content_type.bytes,
                                    p->content_type.len)))
        return e;
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++) {
        if (!(p->_flags & props[i].flag))
            continue;
        const amqp_bytes_t *b = (const amqp_bytes_t *)((const char *)p + props[i].off);
        if ((e = mb_msg_received_header(m, props[i].name, strlen(props[i].name), b->bytes,
                                        b->len)))
            return e;
    }
    if (p->_flags & AMQP_BASIC_PRIORITY_FLAG) {
        char buf[8];
        int n = snprintf(buf, sizeof buf, "%u", (unsigned)p->priority);
        if ((e = mb_msg_received_header(m, "amqp-priority", 13, buf, (size_t)n)))
            return e;
    }
    return MSGBUS_OK;
}

bool mb_amqp_decode(msgbus_msg_t *m, const amqp_basic_properties_t *p, amqp_bytes_t exchange,
                    amqp_bytes_t routing_key, bool redelivered)
{
    int64_t attempt = 0, delivery_count = -1, ts_ms = -1;
    /* msgbus's own republished copy of a nacked message goes through the
     * default exchange "" with the queue name as routing key; nothing else
     * msgbus sends does. Only there is msgbus-attempt read, and the routing
     * key is not the message's key. A foreign header by that name on a
     * delivery through a topic exchange changes nothing. */
    bool copy = exchange.len == 0;
    const amqp_bytes_t *key = !copy && routing_key.len ? &routing_key : NULL;
    const amqp_bytes_t *key_header = NULL;
    msgbus_err_t e = MSGBUS_OK;
    bool any_ce = false;

    /* Ids first, in a fixed order (property, then headers in table order),
     * so the result does not depend on where cloudEvents_id sits in the
     * table. A present message_id property is an occurrence even when
     * empty: "" is not an id, and must not let the header's value through
     * unopposed. */
    if ((p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
        (e = mb_msg_received_id(m, p->message_id.bytes, p->message_id.len)))
        return false;
    int nent = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? p->headers.num_entries : 0;
    for (int i = 0; i < nent; i++) {
        const amqp_table_entry_t *en = &p->headers.entries[i];
        size_t pfx = mb_amqp_ce_prefix(en->key.bytes, en->key.len);
        if (!pfx)
            continue;
        any_ce = true;
        if (!mb_amqp_name_is((const char *)en->key.bytes + pfx, en->key.len - pfx, "id"))
            continue;
        /* A scalar of another kind counts by its text (42 → "42"); a
         * table, array or void has none and is an empty, invalid value. */
        char buf[64];
        const char *text = NULL;
        size_t len = 0;
        if (!mb_amqp_field_text(&en->value, buf, sizeof buf, &text, &len))
            text = NULL;
        if ((e = mb_msg_received_id(m, text, len)))
            return false;
    }

    for (int i = 0; i < nent; i++) {
        const amqp_table_entry_t *en = &p->headers.entries[i];
        const amqp_field_value_t *v = &en->value;
        if (any_ce && mb_amqp_ce_prefix(en->key.bytes, en->key.len))
            continue; /* attributes: after the timestamp, below */
        if (mb_amqp_bytes_is(en->key, MB_AMQP_H_ATTEMPT)) {
            if (copy)
                mb_amqp_field_int(v, &attempt);
            continue;
        }
        if (mb_amqp_bytes_is(en->key, MB_AMQP_H_DELIVERY_COUNT)) {
            mb_amqp_field_int(v, &delivery_count);
            continue;
        }
        if (mb_amqp_bytes_is(en->key, MB_AMQP_H_TS_MS)) {
            /* A string (msgbus since issue 21) or an integer (before). */
            int64_t t;
            if (mb_amqp_field_int(v, &t) && t >= 0)
                ts_ms = t;
            continue;
        }
        if (mb_amqp_bytes_is(en->key, MB_AMQP_H_KEY)) {
            key_header = mb_amqp_field_bytes(v);
            continue;
        }
        char buf[64];
        const char *text;
        size_t len;
        if (!mb_amqp_field_text(v, buf, sizeof buf, &text, &len))
            continue; /* tables (x-death), arrays, void, decimal: no text form */
        if (mb_msg_received_header(m, en->key.bytes, en->key.len, text, len) != MSGBUS_OK)
            return false;
    }

    /* msgbus-key (a string, possibly empty) is the key: msgbus writes it
     * for copies and for an empty key. On a copy without it there was no
     * key; elsewhere the routing key is the key ("" there: no key). */
    if (key_header)
        key = key_header;
    /* The broker's timestamp before the attributes: the event's time wins. */
    if (ts_ms >= 0)
        m->timestamp = ts_ms;
    else if ((p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) && p->timestamp <= INT64_MAX / 1000)
        m->timestamp = (int64_t)p->timestamp * 1000;
    else
        m->timestamp = mb_now_ms(); /* as Kafka does for a record without one */
    if (key) {
        void *k = mb_key_dup(key->bytes, key->len);
        if (!k)
            return false;
        free(m->key);
        m->key = k;
        m->key_len = key->len;
    }
    /* Properties before the attributes: content_type is the event's
     * datacontenttype, which a cloudEvents_datacontenttype does not
     * replace. */
    if (mb_amqp_props_to_headers(m, p))
        return false;
    for (int i = 0; any_ce && i < nent; i++) {
        const amqp_table_entry_t *en = &p->headers.entries[i];
        size_t pfx = mb_amqp_ce_prefix(en->key.bytes, en->key.len);
        const char *name = (const char *)en->key.bytes + pfx;
        size_t n = en->key.len - pfx;
        if (!pfx || mb_amqp_name_is(name, n, "id"))
            continue;
        if (mb_amqp_received_ce(m, name, n, &en->value))
            return false;
    }
    /* Quorum queues count returns in x-delivery-count; classic queues only
     * say "redelivered", so a redelivery there counts as one more. */
    if (attempt < 1)
        attempt = 1;
    if (attempt > 1000000)
        attempt = 1000000;
    if (delivery_count > 1000000)
        delivery_count = 1000000;
    if (delivery_count >= 0)
        attempt += delivery_count;
    else if (redelivered)
        attempt += 1;
    m->attempt = attempt > 1000000 ? 1000000 : (int)attempt;
    m->redelivered = redelivered;
    return true;
}

bool mb_amqp_decode_body(msgbus_msg_t *m)
{
    return mb_msg_ce_unpack(m) == MSGBUS_OK;
}
