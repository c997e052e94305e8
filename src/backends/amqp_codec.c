/*
 * amqp_codec.c — a msgbus message on the AMQP wire and back.
 *
 * Outgoing: one allocation holds the basic properties, the headers table
 * and copies of exchange, routing key, body and strings, built on the
 * publishing application thread so the I/O thread only writes it.
 *   message_id  = msgbus id, also header cloudEvents:id (CloudEvents AMQP binding)
 *   timestamp   = seconds (AMQP's unit); exact ms in header msgbus-timestamp-ms
 *   delivery_mode 2 (persistent); content_type mirrors a "content-type" header
 *   routing key = the message key; a republished copy (nack on a classic
 *                 queue) is routed by queue name and keeps its key in
 *                 msgbus-key (absent: no key), its attempt in msgbus-attempt.
 * Incoming: msgbus's own headers are turned back into id / timestamp / key /
 * attempt and not shown as headers; other scalar header values from foreign
 * producers are shown as their decimal or true/false text.
 */
#include "backends/amqp.h"

#include <inttypes.h>
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

size_t mb_amqp_props_size(const msgbus_msg_t *m)
{
    /* shortstr name (1 + n) + type (1) + longstr (4 + n) per header, the
     * id twice, the fixed properties and msgbus's own headers. */
    size_t n = 200 + 2 * (m->id ? strlen(m->id) : 0) + m->key_len;
    for (size_t i = 0; i < m->nheaders; i++)
        n += 6 + strlen(m->headers[i].name) + strlen(m->headers[i].value);
    return n;
}

struct mb_amqp_out *mb_amqp_out_new(const char *exchange, const void *rk, size_t rk_len,
                                    const msgbus_msg_t *m, int attempt, bool keep_key_header)
{
    if (!rk) {
        rk = m->key;
        rk_len = m->key ? m->key_len : 0;
    }
    bool key_header = keep_key_header && m->key;
    size_t nent = m->nheaders + 2 + (attempt > 1) + key_header;
    size_t xlen = strlen(exchange), idlen = m->id ? strlen(m->id) : 0;
    size_t bytes = sizeof(struct mb_amqp_out) + nent * sizeof(amqp_table_entry_t) + xlen + 1 +
                   rk_len + 1 + m->len + idlen + 1 + (key_header ? m->key_len : 0);
    for (size_t i = 0; i < m->nheaders; i++)
        bytes += strlen(m->headers[i].name) + 1 + strlen(m->headers[i].value) + 1;

    struct mb_amqp_out *o = malloc(bytes);
    if (!o)
        return NULL;
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
        o->msg_id = "";
    }
    mb_amqp_entry_i64(&ent[k++], MB_AMQP_H_TS_MS, m->timestamp);
    if (attempt > 1)
        mb_amqp_entry_i64(&ent[k++], MB_AMQP_H_ATTEMPT, attempt);
    if (key_header) {
        const char *kc = mb_amqp_put(&cur, m->key, m->key_len, false);
        mb_amqp_entry_str(&ent[k++], MB_AMQP_H_KEY, kc, m->key_len);
    }
    for (size_t i = 0; i < m->nheaders; i++) {
        size_t nl = strlen(m->headers[i].name), vl = strlen(m->headers[i].value);
        const char *name = mb_amqp_put(&cur, m->headers[i].name, nl, true);
        const char *value = mb_amqp_put(&cur, m->headers[i].value, vl, true);
        mb_amqp_entry_str(&ent[k], name, value, vl);
        ent[k].key.len = nl;
        k++;
        if (strcmp(name, "content-type") == 0) {
            p->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
            p->content_type.bytes = (void *)value;
            p->content_type.len = vl;
        }
    }
    p->headers.num_entries = (int)k;
    p->headers.entries = ent;
    return o;
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

/* A header value as text; false for tables, arrays and voids (skipped). */
static bool mb_amqp_field_text(const amqp_field_value_t *v, char *buf, size_t n,
                               const char **text, size_t *len)
{
    int64_t i;
    switch (v->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        *text = v->value.bytes.bytes;
        *len = v->value.bytes.len;
        return memchr(*text, '\0', *len) == NULL;
    case AMQP_FIELD_KIND_BOOLEAN:
        *text = v->value.boolean ? "true" : "false";
        *len = strlen(*text);
        return true;
    case AMQP_FIELD_KIND_F32:
        *len = (size_t)snprintf(buf, n, "%g", (double)v->value.f32);
        *text = buf;
        return true;
    case AMQP_FIELD_KIND_F64:
        *len = (size_t)snprintf(buf, n, "%g", v->value.f64);
        *text = buf;
        return true;
    default:
        if (!mb_amqp_field_int(v, &i))
            return false;
        *len = (size_t)snprintf(buf, n, "%" PRId64, i);
        *text = buf;
        return true;
    }
}

bool mb_amqp_decode(msgbus_msg_t *m, const amqp_basic_properties_t *p, amqp_bytes_t routing_key,
                    bool redelivered)
{
    int64_t attempt = 0, delivery_count = -1, ts_ms = -1;
    const amqp_bytes_t *key = routing_key.len ? &routing_key : NULL;
    const amqp_bytes_t *ce_id = NULL;
    bool copy = false, key_header = false; /* a republished copy, and its key header */

    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        for (int i = 0; i < p->headers.num_entries; i++) {
            const amqp_table_entry_t *e = &p->headers.entries[i];
            const amqp_field_value_t *v = &e->value;
            if (mb_amqp_bytes_is(e->key, MB_AMQP_H_ATTEMPT)) {
                mb_amqp_field_int(v, &attempt);
                copy = true;
                continue;
            }
            if (mb_amqp_bytes_is(e->key, MB_AMQP_H_DELIVERY_COUNT)) {
                mb_amqp_field_int(v, &delivery_count);
                continue;
            }
            if (mb_amqp_bytes_is(e->key, MB_AMQP_H_TS_MS)) {
                mb_amqp_field_int(v, &ts_ms);
                continue;
            }
            if (mb_amqp_bytes_is(e->key, MB_AMQP_H_KEY)) {
                if (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES) {
                    key = &v->value.bytes;
                    key_header = true;
                }
                continue;
            }
            if (mb_amqp_bytes_is(e->key, MB_AMQP_H_ID)) {
                if (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES)
                    ce_id = &v->value.bytes;
                continue;
            }
            char buf[64];
            const char *text;
            size_t len;
            if (!e->key.len || !mb_amqp_field_text(v, buf, sizeof buf, &text, &len))
                continue; /* nested tables (x-death …) have no string form */
            if (mb_msg_put_header(m, e->key.bytes, e->key.len, text, len) != MSGBUS_OK)
                return false;
        }
    }

    const amqp_bytes_t *id = (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) && p->message_id.len
                                 ? &p->message_id
                                 : ce_id;
    if (id) {
        char *s = mb_strndup(id->bytes, id->len);
        if (!s)
            return false;
        mb_msg_take_id(m, s);
    }
    /* A republished copy is routed by queue name and carries its key in
     * msgbus-key; without that header the message had no key. */
    if (copy && !key_header)
        key = NULL;
    if (ts_ms >= 0)
        m->timestamp = ts_ms;
    else if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
        m->timestamp = (int64_t)p->timestamp * 1000;
    if (key) {
        void *k = mb_memdup(key->bytes, key->len ? key->len : 1);
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
    if (delivery_count >= 0)
        attempt += delivery_count;
    else if (redelivered)
        attempt += 1;
    m->attempt = attempt > 1000000 ? 1000000 : (int)attempt;
    return true;
}
