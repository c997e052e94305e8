/*
 * amqp_codec.c — a msgbus message on the AMQP wire and back.
 *
 * Outgoing: one allocation holds the basic properties, the headers table
 * and copies of exchange, routing key, body and strings, built on the
 * publishing application thread so the I/O thread only writes it.
 *   message_id  = msgbus id, also header cloudEvents:id (CloudEvents AMQP binding)
 *   timestamp   = seconds (AMQP's unit); exact ms in header msgbus-timestamp-ms
 *   delivery_mode 2 (persistent); content_type mirrors a "content-type"
 *                 header of at most 255 bytes (a short string)
 *   routing key = the message key; an empty key also rides in msgbus-key
 *                 (a routing key "" reads back as no key); a republished
 *                 copy (nack on a classic queue) goes to the default
 *                 exchange "" routed by queue name, keeps its key in
 *                 msgbus-key (absent: no key), its attempt in msgbus-attempt.
 *   Every AMQP limit (short strings of 255 bytes, the content header in
 *   one frame) is checked here, so the I/O thread never writes a frame
 *   rabbitmq-c refuses.
 * Incoming: ids go through mb_msg_received_id and headers through
 * mb_msg_received_header (the trust boundary, core/msg.h); msgbus's own
 * headers become id / timestamp / key / attempt and are not shown; scalar
 * values from foreign producers are shown as text; docs/amqp.md has the
 * table of what arrives and what msgbus reports.
 */
#include "backends/amqp.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static void mb_amqp_entry_i64(amqp_table_entry_t *e, const char *name, int64_t v)
{
    e->key = amqp_cstring_bytes(name);
    e->value.kind = AMQP_FIELD_KIND_I64;
    e->value.value.i64 = v;
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
    return strcmp(name, MB_AMQP_H_ID) == 0 || strcmp(name, MB_AMQP_H_KEY) == 0 ||
           strcmp(name, MB_AMQP_H_ATTEMPT) == 0 || strcmp(name, MB_AMQP_H_TS_MS) == 0;
}

msgbus_err_t mb_amqp_out_new(struct mb_amqp_out **out, const char *exchange, const void *rk,
                             size_t rk_len, const msgbus_msg_t *m, int attempt, bool copy,
                             size_t frame_max)
{
    *out = NULL;
    if (!rk) {
        rk = m->key;
        rk_len = m->key ? m->key_len : 0;
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
    for (size_t i = 0; i < m->nheaders; i++) {
        size_t nl = strlen(m->headers[i].name);
        if (nl > 255)
            return mb_error(MSGBUS_ERR_INVALID,
                            "header name of %zu bytes: AMQP header names are at most 255 bytes",
                            nl);
    }
    /* The key travels in msgbus-key when the routing key cannot say it:
     * on a copy (routed by queue name) and for an empty key, which as a
     * routing key would read back as "no key". */
    bool key_header = m->key && (copy || m->key_len == 0);
    size_t nent = m->nheaders + 2 + (attempt > 1) + key_header;
    size_t bytes = sizeof(struct mb_amqp_out) + nent * sizeof(amqp_table_entry_t) + xlen + 1 +
                   rk_len + 1 + m->len + idlen + 1 + (key_header ? m->key_len : 0);
    for (size_t i = 0; i < m->nheaders; i++)
        bytes += strlen(m->headers[i].name) + 1 + strlen(m->headers[i].value) + 1;

    struct mb_amqp_out *o = malloc(bytes);
    if (!o)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a message of %zu bytes", m->len);
    memset(o, 0, sizeof *o);
    amqp_table_entry_t *ent = (amqp_table_entry_t *)(o + 1);
    char *cur = (char *)(ent + nent);

    o->topic = mb_amqp_put(&cur, exchange, xlen, true);
    o->routing_key.bytes = mb_amqp_put(&cur, rk, rk_len, true);
    o->routing_key.len = rk_len;
    o->body.bytes = mb_amqp_put(&cur, m->payload, m->len, false);
    o->body.len = m->len;

    amqp_basic_properties_t *p = &o->props;
    p->_flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p->delivery_mode = 2;
    p->timestamp = (uint64_t)(m->timestamp > 0 ? m->timestamp / 1000 : 0);

    size_t k = 0;
    if (m->id) {
        o->msg_id = mb_amqp_put(&cur, m->id, idlen, true);
        p->_flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p->message_id = amqp_cstring_bytes(o->msg_id);
        mb_amqp_entry_str(&ent[k++], MB_AMQP_H_ID, o->msg_id, idlen);
    } else {
        o->msg_id = ""; /* a dead letter of a foreign message without an id */
    }
    mb_amqp_entry_i64(&ent[k++], MB_AMQP_H_TS_MS, m->timestamp);
    if (attempt > 1)
        mb_amqp_entry_i64(&ent[k++], MB_AMQP_H_ATTEMPT, attempt);
    if (key_header) {
        const char *kc = mb_amqp_put(&cur, m->key, m->key_len, false);
        mb_amqp_entry_str(&ent[k++], MB_AMQP_H_KEY, kc, m->key_len);
    }
    for (size_t i = 0; i < m->nheaders; i++) {
        /* msgbus writes these entries itself from the message's id, key,
         * timestamp and attempt (above): a header of the same name
         * (received on another backend, where it is plain data) would be a
         * second entry, and two cloudEvents:id that disagree make the
         * receiver keep no id. As the Kafka encoder does for ce_id. */
        if (mb_amqp_own_entry(m->headers[i].name))
            continue;
        size_t nl = strlen(m->headers[i].name), vl = strlen(m->headers[i].value);
        const char *name = mb_amqp_put(&cur, m->headers[i].name, nl, true);
        const char *value = mb_amqp_put(&cur, m->headers[i].value, vl, true);
        mb_amqp_entry_str(&ent[k], name, value, vl);
        ent[k].key.len = nl;
        k++;
        /* content_type is a short string: a longer value stays a header only. */
        if (strcmp(name, "content-type") == 0 && vl <= 255) {
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
        char buf[32];
        size_t n = v->value.bytes.len < sizeof buf - 1 ? v->value.bytes.len : sizeof buf - 1;
        memcpy(buf, v->value.bytes.bytes, n);
        buf[n] = '\0';
        char *end;
        long long x = strtoll(buf, &end, 10);
        if (!n || *end)
            return false;
        *out = x;
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

    /* Ids first, in a fixed order (property, then header), so the result
     * does not depend on where cloudEvents:id sits in the table. A present
     * message_id property is an occurrence even when empty: "" is not an
     * id, and must not let the header's value through unopposed. */
    if ((p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
        (e = mb_msg_received_id(m, p->message_id.bytes, p->message_id.len)))
        return false;
    int nent = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? p->headers.num_entries : 0;
    for (int i = 0; i < nent; i++) {
        const amqp_table_entry_t *en = &p->headers.entries[i];
        if (!mb_amqp_bytes_is(en->key, MB_AMQP_H_ID))
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
        if (mb_amqp_bytes_is(en->key, MB_AMQP_H_ID))
            continue;
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
