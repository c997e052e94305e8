/*
 * msg.c — messages: payload, key, headers, id, timestamp, and the
 * received-side fields.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bus.h"
#include "core/msg.h"

void mb_sub_msg_released(msgbus_msg_t *m); /* bus.c: drops the sub reference */

static unsigned char mb_empty[1];

/* Payloads up to this size live in the message's own allocation. */
#define MB_INLINE_PAYLOAD 1024

static void mb_free_id(msgbus_msg_t *m)
{
    if (m->id != m->idbuf)
        free(m->id);
    m->id = NULL;
}

struct mb_retired {
    struct mb_retired *next;
    void *payload;
};

/* Lets go of the payload. One a backend still sends in place (the message
 * is held: mb_msg_hold) is kept until the message itself is freed; an
 * inline payload lives in the message's allocation anyway. */
static void mb_free_payload(msgbus_msg_t *m)
{
    if (m->payload != mb_empty && !m->payload_borrowed && !m->payload_inline) {
        struct mb_retired *r;
        if (!m->sub && atomic_load_explicit(&m->refs, memory_order_acquire) > 1 &&
            (r = malloc(sizeof *r))) {
            r->payload = m->payload;
            r->next = m->retired;
            m->retired = r;
        } else if (!m->sub && atomic_load_explicit(&m->refs, memory_order_acquire) > 1) {
            /* No memory to remember it: leaking it is safe, freeing not. */
        } else {
            free(m->payload);
        }
    }
    m->payload = mb_empty;
    m->payload_borrowed = m->payload_inline = false;
}

static void mb_free_retired(msgbus_msg_t *m)
{
    while (m->retired) {
        struct mb_retired *r = m->retired;
        m->retired = r->next;
        free(r->payload);
        free(r);
    }
}

/* Sets m->id to a copy of `id` in idbuf when it fits; false on no memory. */
static bool mb_copy_id(msgbus_msg_t *m, const char *id)
{
    size_t n = strlen(id);
    if (n < sizeof m->idbuf) {
        memcpy(m->idbuf, id, n + 1);
        m->id = m->idbuf;
        return true;
    }
    return (m->id = mb_memdup(id, n + 1)) != NULL;
}

void *mb_key_dup(const void *key, size_t len)
{
    /* An empty key is a key (not NULL), so it needs storage of its own;
     * nothing may be read at `key` when len is 0. */
    if (!len)
        return calloc(1, 1);
    return mb_memdup(key, len);
}

msgbus_msg_t *mb_msg_alloc(void)
{
    msgbus_msg_t *m = calloc(1, sizeof *m);
    if (m) {
        m->payload = mb_empty;
        atomic_init(&m->refs, 1);
    }
    return m;
}

void mb_msg_init_embedded(msgbus_msg_t *m)
{
    memset(m, 0, sizeof *m);
    m->payload = mb_empty;
    atomic_init(&m->refs, 1);
    m->embedded = true;
}

MSGBUS_API msgbus_err_t msgbus_msg_new(msgbus_msg_t **out, const void *payload, size_t len)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_new: out is NULL");
    if (!payload && len)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_new: payload is NULL but len is %zu", len);
    /* One allocation for the struct, its id and a small payload: this runs
     * once per published message. */
    size_t inl = len <= MB_INLINE_PAYLOAD ? len : 0;
    msgbus_msg_t *m = malloc(sizeof *m + inl);
    if (!m)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a %zu-byte message", len);
    memset(m, 0, sizeof *m);
    atomic_init(&m->refs, 1);
    m->payload = mb_empty;
    /* The id and the timestamp come from one reading of the clock. */
    int64_t now = mb_now_ms();
    mb_uuid7_at(m->idbuf, now);
    m->id = m->idbuf;
    if (inl) {
        m->payload = (unsigned char *)(m + 1);
        memcpy(m->payload, payload, len);
        m->payload_inline = true;
    } else if (len && !(m->payload = mb_memdup(payload, len))) {
        free(m);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a %zu-byte message", len);
    }
    m->len = len;
    m->timestamp = now;
    *out = m;
    return MSGBUS_OK;
}

/* ------------------------------------------------------- header index */

#define MB_HINDEX_FROM 16 /* headers before a message gets an index */

struct mb_header_index {
    size_t cap;        /* a power of two, at least twice nheaders */
    uint32_t slot[];   /* header index + 1; 0: empty */
};

static uint32_t mb_name_hash(const char *name, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 16777619u;
    return h;
}

void mb_msg_headers_changed(msgbus_msg_t *m)
{
    free(m->hindex);
    m->hindex = NULL;
}

static void mb_hindex_put(struct mb_header_index *x, const msgbus_msg_t *m, size_t i)
{
    const char *name = m->headers[i].name;
    size_t at = mb_name_hash(name, strlen(name)) & (x->cap - 1);
    while (x->slot[at])
        at = (at + 1) & (x->cap - 1);
    x->slot[at] = (uint32_t)(i + 1);
}

/* (Re)builds the index for `want` headers; false on no memory (then
 * lookups stay linear: slower, still right). */
static bool mb_hindex_build(msgbus_msg_t *m, size_t want)
{
    size_t cap = 64;
    while (cap < 2 * want)
        cap *= 2;
    if (want >= UINT32_MAX / 2)
        return false;
    struct mb_header_index *x = calloc(1, sizeof *x + cap * sizeof x->slot[0]);
    if (!x)
        return false;
    x->cap = cap;
    for (size_t i = 0; i < m->nheaders; i++)
        mb_hindex_put(x, m, i);
    free(m->hindex);
    m->hindex = x;
    return true;
}

/* The position of header `name` (`len` bytes), or -1. */
static long mb_header_find(const msgbus_msg_t *m, const char *name, size_t len)
{
    const struct mb_header_index *x = m->hindex;
    if (x) {
        size_t at = mb_name_hash(name, len) & (x->cap - 1);
        for (; x->slot[at]; at = (at + 1) & (x->cap - 1)) {
            const char *n = m->headers[x->slot[at] - 1].name;
            if (strncmp(n, name, len) == 0 && n[len] == '\0')
                return (long)x->slot[at] - 1;
        }
        return -1;
    }
    for (size_t i = 0; i < m->nheaders; i++)
        if (strncmp(m->headers[i].name, name, len) == 0 && m->headers[i].name[len] == '\0')
            return (long)i;
    return -1;
}

static void mb_headers_free(msgbus_msg_t *m)
{
    mb_msg_headers_changed(m);
    for (size_t i = 0; i < m->nheaders; i++) {
        free(m->headers[i].name);
        free(m->headers[i].value);
    }
    free(m->headers);
    m->headers = NULL;
    m->nheaders = m->cap_headers = 0;
}

MSGBUS_API void msgbus_msg_free(msgbus_msg_t *m)
{
    if (!m)
        return;
    /* The application lets go of a message it never settled: the tracer's
     * span for it ends (the broker delivers it again). */
    if (m->hook_armed && m->sub && atomic_load(&m->state) == MB_MSG_RECEIVED)
        mb_stats_settled(m, MSGBUS_SETTLED_NONE);
    /* The core may still hold it (retry timer, dead letter), or a backend
     * sending its payload in place; an application's message nobody else
     * holds skips the atomic step. */
    if ((m->sub || atomic_load_explicit(&m->refs, memory_order_acquire) != 1) &&
        atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
        return;
    bool embedded = m->embedded;
    if (m->sub && !embedded)
        mb_sub_msg_released(m); /* backend release hook + sub reference */
    mb_free_payload(m);
    if (m->retired)
        mb_free_retired(m);
    /* Most messages have neither: skip the calls. */
    if (m->key)
        free(m->key);
    if (m->headers)
        mb_headers_free(m);
    if (m->ce_type || m->ce_source || m->ce_subject)
        mb_ce_free(m);
    mb_free_id(m);
    if (embedded)
        mb_sub_msg_released(m); /* last: may free the block m lives in */
    else
        free(m);
}

msgbus_msg_t *mb_msg_clone(const msgbus_msg_t *src)
{
    msgbus_msg_t *m = mb_msg_alloc();
    if (!m)
        return NULL;
    if (src->len && !(m->payload = mb_memdup(src->payload, src->len)))
        goto fail;
    m->len = src->len;
    if (src->key && !(m->key = mb_key_dup(src->key, src->key_len)))
        goto fail;
    m->key_len = src->key_len;
    if (src->id && !mb_copy_id(m, src->id))
        goto fail;
    m->timestamp = src->timestamp;
    if (!mb_ce_copy(m, src))
        goto fail;
    for (size_t i = 0; i < src->nheaders; i++)
        if (mb_msg_put_header(m, src->headers[i].name, strlen(src->headers[i].name),
                              src->headers[i].value, strlen(src->headers[i].value)))
            goto fail;
    return m;
fail:
    if (m->payload == NULL)
        m->payload = mb_empty;
    msgbus_msg_free(m);
    return NULL;
}

MSGBUS_API const void *msgbus_msg_payload(const msgbus_msg_t *m, size_t *len)
{
    if (!m) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = m->len;
    return m->payload;
}

MSGBUS_API msgbus_err_t msgbus_msg_set_payload(msgbus_msg_t *m, const void *payload, size_t len)
{
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_set_payload: message is NULL");
    if (!payload && len)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_set_payload: payload is NULL but len is %zu",
                        len);
    unsigned char *p = mb_empty;
    if (len && !(p = mb_memdup(payload, len)))
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a %zu-byte payload", len);
    mb_free_payload(m);
    m->payload = p;
    m->len = len;
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_msg_set_key(msgbus_msg_t *m, const void *key, size_t len)
{
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_set_key: message is NULL");
    unsigned char *k = NULL;
    if (key && !(k = mb_key_dup(key, len)))
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a key");
    free(m->key);
    m->key = k;
    m->key_len = key ? len : 0;
    return MSGBUS_OK;
}

MSGBUS_API const void *msgbus_msg_key(const msgbus_msg_t *m, size_t *len)
{
    if (len)
        *len = m && m->key ? m->key_len : 0;
    return m ? m->key : NULL;
}

void mb_msg_take_payload(msgbus_msg_t *m, unsigned char *p, size_t len)
{
    mb_free_payload(m);
    if (len) {
        m->payload = p;
    } else {
        free(p);
        m->payload = mb_empty;
    }
    m->len = len;
}

msgbus_err_t mb_msg_put_header(msgbus_msg_t *m, const char *name, size_t name_len,
                               const char *value, size_t value_len)
{
    if (!m->hindex && m->nheaders >= MB_HINDEX_FROM)
        mb_hindex_build(m, m->nheaders + 1);
    long at = mb_header_find(m, name, name_len);
    if (at >= 0) {
        char *v = mb_strndup(value, value_len);
        if (!v)
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a header");
        free(m->headers[at].value);
        m->headers[at].value = v;
        return MSGBUS_OK;
    }
    if (m->nheaders == m->cap_headers) {
        size_t cap = m->cap_headers ? m->cap_headers * 2 : 4;
        struct mb_header *h = realloc(m->headers, cap * sizeof *h);
        if (!h)
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a header");
        m->headers = h;
        m->cap_headers = cap;
    }
    char *n = mb_strndup(name, name_len), *v = mb_strndup(value, value_len);
    if (!n || !v) {
        free(n);
        free(v);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a header");
    }
    m->headers[m->nheaders++] = (struct mb_header){n, v};
    if (m->hindex) {
        if (2 * m->nheaders > m->hindex->cap) {
            if (!mb_hindex_build(m, m->nheaders))
                mb_msg_headers_changed(m); /* linear from now on */
        } else {
            mb_hindex_put(m->hindex, m, m->nheaders - 1);
        }
    }
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_msg_set_header(msgbus_msg_t *m, const char *name, const char *value)
{
    if (!m || !name || !value)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_set_header: %s is NULL",
                        !m ? "message" : !name ? "name" : "value");
    msgbus_err_t e = mb_check_header_name(name);
    if (e != MSGBUS_OK)
        return e;
    return mb_msg_put_header(m, name, strlen(name), value, strlen(value));
}

MSGBUS_API msgbus_err_t msgbus_msg_del_header(msgbus_msg_t *m, const char *name)
{
    if (!m || !name)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_del_header: %s is NULL",
                        !m ? "message" : "name");
    for (size_t i = 0; i < m->nheaders; i++) {
        if (strcmp(m->headers[i].name, name) == 0) {
            free(m->headers[i].name);
            free(m->headers[i].value);
            memmove(&m->headers[i], &m->headers[i + 1], (m->nheaders - i - 1) * sizeof *m->headers);
            m->nheaders--;
            mb_msg_headers_changed(m);
            /* This message's own msgbus-invalid-id record is gone: one that
             * arrives later is the wire's, not ours. */
            if (strcmp(name, MB_H_INVALID_ID) == 0)
                m->own_invalid_id = false;
            return MSGBUS_OK;
        }
    }
    return mb_error(MSGBUS_ERR_NOT_FOUND, "no header named '%.64s'", name);
}

MSGBUS_API const char *msgbus_msg_header(const msgbus_msg_t *m, const char *name)
{
    if (!m || !name)
        return NULL;
    long at = mb_header_find(m, name, strlen(name));
    return at >= 0 ? m->headers[at].value : NULL;
}

MSGBUS_API size_t msgbus_msg_header_count(const msgbus_msg_t *m)
{
    return m ? m->nheaders : 0;
}

MSGBUS_API msgbus_err_t msgbus_msg_header_at(const msgbus_msg_t *m, size_t i, const char **name,
                                             const char **value)
{
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_header_at: message is NULL");
    if (i >= m->nheaders)
        return mb_error(MSGBUS_ERR_NOT_FOUND, "header index %zu past the end (%zu headers)", i,
                        m->nheaders);
    if (name)
        *name = m->headers[i].name;
    if (value)
        *value = m->headers[i].value;
    return MSGBUS_OK;
}

MSGBUS_API const char *msgbus_msg_id(const msgbus_msg_t *m)
{
    return m ? m->id : NULL;
}

MSGBUS_API msgbus_err_t msgbus_msg_set_id(msgbus_msg_t *m, const char *id)
{
    if (!m || !id)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_set_id: %s is NULL", !m ? "message" : "id");
    msgbus_err_t e = mb_check_id(id);
    if (e != MSGBUS_OK)
        return e;
    if (strlen(id) < sizeof m->idbuf) {
        memmove(m->idbuf, id, strlen(id) + 1); /* id may be m->id itself */
        if (m->id != m->idbuf)
            free(m->id);
        m->id = m->idbuf;
        return MSGBUS_OK;
    }
    char *copy = mb_strdup(id);
    if (!copy)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory for an id");
    mb_free_id(m);
    m->id = copy;
    return MSGBUS_OK;
}

msgbus_err_t mb_msg_copy_id(msgbus_msg_t *m, const char *id, size_t len)
{
    char *to = len < sizeof m->idbuf ? m->idbuf : malloc(len + 1);
    if (!to)
        return MSGBUS_ERR_NOMEM;
    memcpy(to, id, len);
    to[len] = '\0';
    if (m->id && m->id != m->idbuf)
        free(m->id);
    m->id = to;
    return MSGBUS_OK;
}

void mb_msg_take_id(msgbus_msg_t *m, char *id)
{
    mb_free_id(m);
    m->id = id;
}

MSGBUS_API int64_t msgbus_msg_timestamp(const msgbus_msg_t *m)
{
    return m ? m->timestamp : 0;
}

MSGBUS_API msgbus_err_t msgbus_msg_set_timestamp(msgbus_msg_t *m, int64_t ms)
{
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_set_timestamp: message is NULL");
    if (ms < 0)
        return mb_error(MSGBUS_ERR_INVALID, "timestamp %lld is negative", (long long)ms);
    m->timestamp = ms;
    return MSGBUS_OK;
}

MSGBUS_API const char *msgbus_msg_topic(const msgbus_msg_t *m)
{
    return m ? m->topic : NULL;
}

MSGBUS_API const char *msgbus_msg_group(const msgbus_msg_t *m)
{
    return m ? m->group : NULL;
}

MSGBUS_API int msgbus_msg_attempt(const msgbus_msg_t *m)
{
    return m ? m->attempt : 0;
}

MSGBUS_API int32_t msgbus_msg_partition(const msgbus_msg_t *m)
{
    return m && m->has_position ? m->partition : -1;
}

MSGBUS_API int64_t msgbus_msg_offset(const msgbus_msg_t *m)
{
    return m && m->has_position ? m->offset : -1;
}

MSGBUS_API int msgbus_msg_redelivered(const msgbus_msg_t *m)
{
    return m && m->redelivered ? 1 : 0;
}

size_t mb_msg_wire_size(const msgbus_msg_t *m)
{
    size_t n = m->len + m->key_len + (m->id ? strlen(m->id) : 0);
    for (size_t i = 0; i < m->nheaders; i++)
        n += strlen(m->headers[i].name) + strlen(m->headers[i].value) + 2;
    return n;
}

/* Appends `len` raw bytes to `out` (room for 3×len + 1): printable ASCII
 * other than '%' and ',' as they are, every other byte as %XX, so the text
 * is a valid header value and distinct inputs stay distinct ("abc\0def"
 * is "abc%00def", not "abc"). */
static size_t mb_escape(char *out, const unsigned char *p, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c > 0x20 && c < 0x7f && c != '%' && c != ',') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return o;
}

/* Whether msgbus-invalid-id is this message's own record (the flag alone
 * is not enough: the application may have deleted the header since). */
static bool mb_own_invalid_id(const msgbus_msg_t *m)
{
    return m->own_invalid_id && msgbus_msg_header(m, MB_H_INVALID_ID);
}

/* Adds `n` to the msgbus-invalid-headers count. */
static msgbus_err_t mb_count_invalid_headers(msgbus_msg_t *m, unsigned long n)
{
    const char *prev = msgbus_msg_header(m, MB_H_INVALID_HEADERS);
    unsigned long have = prev ? strtoul(prev, NULL, 10) : 0;
    char count[24];
    int len = snprintf(count, sizeof count, "%lu", have + n < have ? ULONG_MAX : have + n);
    return mb_msg_put_header(m, MB_H_INVALID_HEADERS, strlen(MB_H_INVALID_HEADERS), count,
                             (size_t)len);
}

/* Appends the escaped raw value to the msgbus-invalid-id header (values
 * separated by ','). */
static msgbus_err_t mb_add_invalid_id(msgbus_msg_t *m, const void *raw, size_t len)
{
    if (!mb_own_invalid_id(m) && msgbus_msg_header(m, MB_H_INVALID_ID)) {
        /* A msgbus-invalid-id that came over the wire: this message's own
         * record takes its place, and the wire's is counted. */
        msgbus_err_t e = mb_count_invalid_headers(m, 1);
        if (e)
            return e;
        msgbus_msg_del_header(m, MB_H_INVALID_ID);
    }
    const char *prev = msgbus_msg_header(m, MB_H_INVALID_ID);
    size_t pl = prev ? strlen(prev) : 0;
    if (len > (SIZE_MAX - pl - 2) / 3)
        return MSGBUS_ERR_NOMEM;
    char *v = malloc(pl + 1 + 3 * len + 1);
    if (!v)
        return MSGBUS_ERR_NOMEM;
    size_t o = 0;
    if (prev) {
        memcpy(v, prev, pl);
        o = pl;
        v[o++] = ',';
    }
    o += mb_escape(v + o, raw, len);
    msgbus_err_t e = mb_msg_put_header(m, MB_H_INVALID_ID, strlen(MB_H_INVALID_ID), v, o);
    free(v);
    if (!e)
        m->own_invalid_id = true;
    return e;
}

msgbus_err_t mb_msg_received_id(msgbus_msg_t *m, const void *raw, size_t len)
{
    if (!raw)
        len = 0;
    bool valid = mb_valid_id_bytes(raw, len);
    if (mb_own_invalid_id(m)) /* already not an id */
        return mb_add_invalid_id(m, raw, len);
    if (!m->id) {
        if (valid)
            return mb_msg_copy_id(m, raw, len);
        return mb_add_invalid_id(m, raw, len);
    }
    if (valid && strlen(m->id) == len && memcmp(m->id, raw, len) == 0)
        return MSGBUS_OK; /* the same id again (AMQP carries it twice) */
    /* Two ids that disagree: neither is trusted. */
    char *first = m->id;
    m->id = NULL;
    msgbus_err_t e = mb_add_invalid_id(m, first, strlen(first));
    if (first != m->idbuf)
        free(first);
    return e ? e : mb_add_invalid_id(m, raw, len);
}

msgbus_err_t mb_msg_received_header(msgbus_msg_t *m, const void *name, size_t name_len,
                                    const void *value, size_t value_len)
{
    if (!value)
        value_len = 0;
    bool ok = name && name_len && name_len <= MSGBUS_MAX_HEADER_NAME &&
              !memchr(name, '\0', name_len) && (!value_len || !memchr(value, '\0', value_len));
    if (ok && name_len == strlen(MB_H_INVALID_HEADERS) &&
        memcmp(name, MB_H_INVALID_HEADERS, name_len) == 0) {
        /* An earlier hop's count: added to this one's, never replacing it. */
        unsigned long n = 0;
        bool count = value_len > 0 && value_len <= 20;
        for (size_t i = 0; count && i < value_len; i++) {
            unsigned char c = ((const unsigned char *)value)[i];
            unsigned long d = (unsigned long)(c - '0');
            count = c >= '0' && c <= '9';
            n = n > (ULONG_MAX - d) / 10 ? ULONG_MAX : n * 10 + d; /* saturates, as the sum */
        }
        return mb_count_invalid_headers(m, count ? n : 1);
    }
    if (ok && mb_own_invalid_id(m) && name_len == strlen(MB_H_INVALID_ID) &&
        memcmp(name, MB_H_INVALID_ID, name_len) == 0)
        ok = false; /* this message's own record stays */
    if (ok)
        return mb_msg_put_header(m, name, name_len, value_len ? value : "", value_len);
    /* Not representable as a C string header (or not on every backend's
     * wire): left out, and counted where the application can see it. */
    return mb_count_invalid_headers(m, 1);
}
