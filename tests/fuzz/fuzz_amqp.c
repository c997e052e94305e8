/*
 * fuzz_amqp — the AMQP decoder (src/backends/amqp_codec.c, mb_amqp_decode):
 * what a foreign producer can put in a delivery's content header.
 *
 * The input is read as a small program that builds amqp_basic_properties_t:
 * flags, a message_id, a timestamp, and a headers table whose entries have
 * names of any bytes and length (or msgbus's own names, picked by a byte)
 * and values of every field kind — strings and byte arrays of any bytes
 * (NULs included), integers of each width, floats, decimals, booleans, void,
 * nested tables and arrays — plus the delivery's exchange, routing key and
 * redelivered flag. Every string is a heap block of exactly its length, so
 * a read past one is an ASan report.
 *
 * Invariants: the id is NULL or passes the id rule, and equals message_id
 * when both are there; every header is a name of 1..255 bytes and a value,
 * both C strings, a string-valued entry kept byte for byte; timestamp >= 0;
 * attempt in 1..1000000. Then the round trip: the decoded message encoded
 * again (mb_amqp_out_new, as a republish or a forward) either fails alone
 * with INVALID / TOO_LARGE or decodes back to the same id, key, timestamp
 * and headers.
 */
#include "backends/amqp.h"
#include "core/msg.h"
#include "fuzz.h"

#define MAX_ALLOCS 2048

struct arena {
    void *p[MAX_ALLOCS];
    size_t n;
};

static void *arena_keep(struct arena *a, void *p)
{
    if (a->n == MAX_ALLOCS) {
        free(p);
        return NULL;
    }
    return a->p[a->n++] = p;
}

/* fuzz_exact's block, kept for arena_free (a 0-byte one points past its
 * 1-byte block: the block is what is kept). */
static void *arena_exact(struct arena *a, const void *src, size_t len)
{
    char *p = fuzz_exact(src, len);
    if (!arena_keep(a, len ? p : p - 1))
        return NULL;
    return p;
}

static void arena_free(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->p[i]);
    a->n = 0;
}

/* Bytes of exactly their length (a length from two input bytes). */
static amqp_bytes_t take_bytes(struct fuzz_in *in, struct arena *a, size_t max)
{
    size_t want = ((size_t)fuzz_u8(in) << 8 | fuzz_u8(in)) % (max + 1);
    if (want > in->n)
        want = in->n;
    amqp_bytes_t b = {0, NULL};
    void *p = arena_exact(a, in->p, want);
    if (!p && want)
        return b;
    b.bytes = p;
    b.len = want;
    in->p += want;
    in->n -= want;
    return b;
}

static const char *const special[] = {MB_AMQP_H_ID,        MB_AMQP_H_ATTEMPT, MB_AMQP_H_TS_MS,
                                      MB_AMQP_H_KEY,       MB_AMQP_H_DELIVERY_COUNT,
                                      MB_H_INVALID_ID,     MB_H_INVALID_HEADERS,
                                      "content-type",      "ce_id",
                                      MB_AMQP_H_ID_OLD,    "cloudEvents_type",
                                      "cloudEvents_time",  "ce-source",
                                      "CE-Subject",        "cloudEvents:datacontenttype",
                                      "cloudEvents_specversion", "ce_ext1",
                                      "cloudEvents_ext1"};
#define NSPECIAL (sizeof special / sizeof *special)

static amqp_bytes_t take_name(struct fuzz_in *in, struct arena *a)
{
    uint8_t sel = fuzz_u8(in);
    if (sel < 0x60) { /* one of the names msgbus treats apart */
        const char *s = special[sel % NSPECIAL];
        amqp_bytes_t b = {strlen(s), arena_exact(a, s, strlen(s))};
        if (!b.bytes)
            b.len = 0;
        return b;
    }
    return take_bytes(in, a, 300);
}

static void take_table(struct fuzz_in *in, struct arena *a, amqp_table_t *t, int depth);

static void take_value(struct fuzz_in *in, struct arena *a, amqp_field_value_t *v, int depth)
{
    static const uint8_t kinds[] = {
        AMQP_FIELD_KIND_UTF8,    AMQP_FIELD_KIND_BYTES,   AMQP_FIELD_KIND_UTF8,
        AMQP_FIELD_KIND_BOOLEAN, AMQP_FIELD_KIND_I8,      AMQP_FIELD_KIND_U8,
        AMQP_FIELD_KIND_I16,     AMQP_FIELD_KIND_U16,     AMQP_FIELD_KIND_I32,
        AMQP_FIELD_KIND_U32,     AMQP_FIELD_KIND_I64,     AMQP_FIELD_KIND_U64,
        AMQP_FIELD_KIND_F32,     AMQP_FIELD_KIND_F64,     AMQP_FIELD_KIND_DECIMAL,
        AMQP_FIELD_KIND_TIMESTAMP, AMQP_FIELD_KIND_VOID,  AMQP_FIELD_KIND_TABLE,
        AMQP_FIELD_KIND_ARRAY};
    uint8_t k = kinds[fuzz_u8(in) % sizeof kinds];
    if (depth >= 2 && (k == AMQP_FIELD_KIND_TABLE || k == AMQP_FIELD_KIND_ARRAY))
        k = AMQP_FIELD_KIND_VOID;
    memset(v, 0, sizeof *v);
    v->kind = k;
    uint64_t x;
    switch (k) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        v->value.bytes = take_bytes(in, a, 600);
        break;
    case AMQP_FIELD_KIND_BOOLEAN:
        v->value.boolean = fuzz_u8(in) & 1;
        break;
    case AMQP_FIELD_KIND_F32: {
        uint32_t b = fuzz_u32(in);
        memcpy(&v->value.f32, &b, sizeof b); /* NaN and infinities too */
        break;
    }
    case AMQP_FIELD_KIND_F64:
        x = fuzz_u64(in);
        memcpy(&v->value.f64, &x, sizeof x);
        break;
    case AMQP_FIELD_KIND_DECIMAL:
        v->value.decimal.decimals = fuzz_u8(in);
        v->value.decimal.value = fuzz_u32(in);
        break;
    case AMQP_FIELD_KIND_VOID:
        break;
    case AMQP_FIELD_KIND_TABLE:
        take_table(in, a, &v->value.table, depth + 1);
        break;
    case AMQP_FIELD_KIND_ARRAY: {
        int n = fuzz_u8(in) % 8;
        amqp_field_value_t *e = arena_keep(a, calloc((size_t)n + 1, sizeof *e));
        if (!e)
            n = 0;
        for (int i = 0; i < n; i++)
            take_value(in, a, &e[i], depth + 1);
        v->value.array.num_entries = n;
        v->value.array.entries = e;
        break;
    }
    default: /* the integers: all eight bytes, each kind reads its width */
        x = fuzz_u64(in);
        switch (k) {
        case AMQP_FIELD_KIND_I8: v->value.i8 = (int8_t)x; break;
        case AMQP_FIELD_KIND_U8: v->value.u8 = (uint8_t)x; break;
        case AMQP_FIELD_KIND_I16: v->value.i16 = (int16_t)x; break;
        case AMQP_FIELD_KIND_U16: v->value.u16 = (uint16_t)x; break;
        case AMQP_FIELD_KIND_I32: v->value.i32 = (int32_t)x; break;
        case AMQP_FIELD_KIND_U32: v->value.u32 = (uint32_t)x; break;
        case AMQP_FIELD_KIND_I64: v->value.i64 = (int64_t)x; break;
        default: v->value.u64 = x; break;
        }
        break;
    }
}

static void take_table(struct fuzz_in *in, struct arena *a, amqp_table_t *t, int depth)
{
    /* Top level: up to 255 entries (a huge table); nested: a few. */
    int n = depth ? fuzz_u8(in) % 8 : fuzz_u8(in);
    amqp_table_entry_t *e = arena_keep(a, calloc((size_t)n + 1, sizeof *e));
    if (!e)
        n = 0;
    int filled = 0;
    for (; filled < n && !fuzz_empty(in); filled++) {
        e[filled].key = take_name(in, a);
        take_value(in, a, &e[filled].value, depth);
    }
    t->num_entries = filled;
    t->entries = e;
}

static bool bytes_is(amqp_bytes_t b, const char *s)
{
    return b.len == strlen(s) && (!b.len || memcmp(b.bytes, s, b.len) == 0);
}

/* A CloudEvents attribute as the decoder reads it: cloudEvents_ or
 * cloudEvents: (case-sensitive), ce- (any case), with a name after it. */
static bool ce_prefixed(amqp_bytes_t k)
{
    const char *s = k.bytes;
    return (k.len > 12 && memcmp(s, "cloudEvents", 11) == 0 && (s[11] == '_' || s[11] == ':')) ||
           (k.len > 3 && (s[0] | 0x20) == 'c' && (s[1] | 0x20) == 'e' && s[2] == '-');
}

static void check_decoded(const msgbus_msg_t *m, const amqp_basic_properties_t *p)
{
    const char *id = msgbus_msg_id(m);
    FUZZ_CHECK(!id || fuzz_id_ok(id), "id of %zu bytes breaks the id rule", strlen(id));
    if (id && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG))
        FUZZ_CHECK(strlen(id) == p->message_id.len &&
                       memcmp(id, p->message_id.bytes, p->message_id.len) == 0,
                   "id '%s' is not the message_id property", id);
    /* A message_id that is not an id stays readable: first in the list. */
    if (!id && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)) {
        const char *inv = msgbus_msg_header(m, MB_H_INVALID_ID);
        size_t l = p->message_id.len;
        bool plain = fuzz_id_bytes_ok(p->message_id.bytes, l) &&
                     !memchr(p->message_id.bytes, ',', l) && !memchr(p->message_id.bytes, '%', l);
        FUZZ_CHECK(inv, "message_id of %zu bytes is neither the id nor in %s", l, MB_H_INVALID_ID);
        if (plain)
            FUZZ_CHECK(strncmp(inv, p->message_id.bytes, l) == 0 && (!inv[l] || inv[l] == ','),
                       "message_id '%.*s' not first in %s: %s", (int)l,
                       (const char *)p->message_id.bytes, MB_H_INVALID_ID, inv);
    }
    FUZZ_CHECK(msgbus_msg_timestamp(m) >= 0, "timestamp %lld", (long long)msgbus_msg_timestamp(m));
    FUZZ_CHECK(m->attempt >= 1 && m->attempt <= 1000000, "attempt %d", m->attempt);
    size_t klen;
    const void *k = msgbus_msg_key(m, &klen);
    FUZZ_CHECK(k || !klen, "no key, length %zu", klen);

    size_t n = msgbus_msg_header_count(m);
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        FUZZ_CHECK(msgbus_msg_header_at(m, i, &name, &value) == MSGBUS_OK, "header_at");
        size_t nl = strlen(name);
        FUZZ_CHECK(nl >= 1 && nl <= 255, "header name of %zu bytes", nl);
        FUZZ_CHECK(!ce_prefixed((amqp_bytes_t){nl, (void *)name}),
                   "attribute '%s' is shown as a header", name);
        (void)strlen(value);
    }

    /* A string entry with a good name, last of its name, no NUL in its
     * value: kept byte for byte. */
    int ne = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? p->headers.num_entries : 0;
    for (int i = 0; i < ne; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->value.kind != AMQP_FIELD_KIND_UTF8 && e->value.kind != AMQP_FIELD_KIND_BYTES)
            continue;
        amqp_bytes_t key = e->key, val = e->value.value.bytes;
        if (!key.len || key.len > 255 || memchr(key.bytes, 0, key.len) ||
            (val.len && memchr(val.bytes, 0, val.len)))
            continue;
        /* Attributes are not headers; a ce_<name> header may be replaced
         * by an attribute that failed its rule or is an extension. */
        bool skip = ce_prefixed(key) || (key.len > 3 && memcmp(key.bytes, "ce_", 3) == 0);
        for (size_t s = 0; s < NSPECIAL && !skip; s++)
            skip = bytes_is(key, special[s]) && strcmp(special[s], "content-type") &&
                   strcmp(special[s], "ce_id");
        for (int j = i + 1; j < ne && !skip; j++)
            skip = p->headers.entries[j].key.len == key.len &&
                   memcmp(p->headers.entries[j].key.bytes, key.bytes, key.len) == 0;
        if (skip)
            continue;
        char *name = fuzz_cstr(key.bytes, key.len);
        const char *got = msgbus_msg_header(m, name);
        FUZZ_CHECK(got && strlen(got) == val.len && (!val.len || memcmp(got, val.bytes, val.len) == 0),
                   "header '%s' (%zu bytes) not kept as sent", name, val.len);
        free(name);
    }
}

/* Encoded again and decoded: the same message. */
static void round_trip(const msgbus_msg_t *m, bool copy, int attempt)
{
    struct mb_amqp_out *o = NULL;
    const char *exchange = copy ? "" : "orders";
    msgbus_err_t e = mb_amqp_out_new(&o, exchange, copy ? "q.group" : NULL, copy ? 7 : 0, m,
                                     attempt, copy, 131072);
    if (e) {
        FUZZ_CHECK(e == MSGBUS_ERR_INVALID || e == MSGBUS_ERR_TOO_LARGE,
                   "encode failed with %d: %s", e, msgbus_last_error());
        return;
    }
    FUZZ_CHECK(mb_amqp_out_fits(o, 131072), "built a frame that does not fit");
    msgbus_msg_t *m2 = mb_msg_alloc();
    FUZZ_CHECK(m2, "out of memory");
    amqp_bytes_t x = {strlen(exchange), (void *)exchange};
    FUZZ_CHECK(mb_amqp_decode(m2, &o->props, x, o->routing_key, false), "decode failed");
    check_decoded(m2, &o->props);

    const char *a = msgbus_msg_id(m), *b = msgbus_msg_id(m2);
    FUZZ_CHECK(!a == !b && (!a || strcmp(a, b) == 0), "id '%s' came back as '%s'", a ? a : "-",
               b ? b : "-");
    FUZZ_CHECK(msgbus_msg_timestamp(m) == msgbus_msg_timestamp(m2), "timestamp %lld -> %lld",
               (long long)msgbus_msg_timestamp(m), (long long)msgbus_msg_timestamp(m2));
    size_t kl1, kl2;
    const void *k1 = msgbus_msg_key(m, &kl1), *k2 = msgbus_msg_key(m2, &kl2);
    FUZZ_CHECK(!k1 == !k2 && kl1 == kl2 && (!kl1 || memcmp(k1, k2, kl1) == 0),
               "key (%zu bytes%s) came back as %zu bytes%s", kl1, k1 ? "" : ", none", kl2,
               k2 ? "" : ", none");
    FUZZ_CHECK(m2->attempt == (copy && attempt > 1 ? attempt : 1), "attempt %d -> %d", attempt,
               m2->attempt);
    size_t n = msgbus_msg_header_count(m);
    FUZZ_CHECK(n == msgbus_msg_header_count(m2), "%zu headers came back as %zu", n,
               msgbus_msg_header_count(m2));
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        msgbus_msg_header_at(m, i, &name, &value);
        const char *got = msgbus_msg_header(m2, name);
        FUZZ_CHECK(got && strcmp(got, value) == 0, "header '%s' came back as %s", name,
                   got ? got : "nothing");
    }
    msgbus_msg_free(m2);
    mb_amqp_out_free(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct arena a;
    struct fuzz_in in = {data, size};
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);

    uint8_t flags = fuzz_u8(&in);
    if (flags & 1) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id = take_bytes(&in, &a, 600);
    }
    if (flags & 2) {
        p._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
        p.timestamp = fuzz_u64(&in);
    }
    if (flags & 4) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = take_bytes(&in, &a, 300);
    }
    amqp_bytes_t exchange = (flags & 8) ? take_bytes(&in, &a, 300) : (amqp_bytes_t){0, NULL};
    amqp_bytes_t rk = take_bytes(&in, &a, 300);
    bool redelivered = (flags & 16) != 0;
    if (flags & 32) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        take_table(&in, &a, &p.headers, 0);
    }

    msgbus_msg_t *m = mb_msg_alloc();
    FUZZ_CHECK(m, "out of memory");
    FUZZ_CHECK(mb_amqp_decode(m, &p, exchange, rk, redelivered), "decode failed");
    check_decoded(m, &p);
    round_trip(m, false, 1);
    round_trip(m, true, 1 + (flags >> 6));
    msgbus_msg_free(m);
    arena_free(&a);
    return 0;
}
