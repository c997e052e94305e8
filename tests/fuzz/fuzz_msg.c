/*
 * fuzz_msg — the message setters and the received side (src/core/msg.c):
 * the input is a program of operations on one message at a time
 * (msgbus_msg_new / mb_msg_alloc, set_payload, set_key, set_header,
 * del_header, set_id, set_timestamp, header_at, mb_msg_received_id,
 * mb_msg_received_header, mb_msg_clone, and a publish and receive
 * through mem://).
 *
 * Every buffer handed to msgbus is a heap copy of exactly its length (a
 * zero length gets the end of a 1-byte block), so a read past it — as
 * msgbus_msg_set_key(m, p, 0) did — is an ASan report. After every
 * operation the message must be consistent: header_at gives C strings,
 * names are unique, header() finds each, the id is NULL or passes the id
 * rule (1..255 printable ASCII, no spaces), and each operation did what
 * msgbus.h / msg.h say it does.
 */
#include "core/msg.h"
#include "fuzz.h"

/* A length from two bytes, below `max`, then that many bytes. */
static const uint8_t *take(struct fuzz_in *in, size_t max, size_t *len)
{
    size_t want = ((size_t)fuzz_u8(in) << 8 | fuzz_u8(in)) % (max + 1);
    if (want > in->n)
        want = in->n;
    const uint8_t *p = in->p;
    in->p += want;
    in->n -= want;
    *len = want;
    return p;
}

static void check_msg(const msgbus_msg_t *m)
{
    const char *id = msgbus_msg_id(m);
    FUZZ_CHECK(!id || fuzz_id_ok(id), "message id breaks the id rule (%zu bytes)", strlen(id));
    size_t plen = 99;
    const void *p = msgbus_msg_payload(m, &plen);
    FUZZ_CHECK(p != NULL && plen == m->len, "payload NULL or length %zu", plen);
    size_t klen = 99;
    const void *k = msgbus_msg_key(m, &klen);
    FUZZ_CHECK(k || klen == 0, "no key but length %zu", klen);
    FUZZ_CHECK(msgbus_msg_timestamp(m) >= 0, "negative timestamp");

    size_t n = msgbus_msg_header_count(m);
    for (size_t i = 0; i < n; i++) {
        const char *name = NULL, *value = NULL;
        FUZZ_CHECK(msgbus_msg_header_at(m, i, &name, &value) == MSGBUS_OK, "header_at(%zu)", i);
        FUZZ_CHECK(name && value, "header %zu has a NULL part", i);
        size_t nl = strlen(name);
        FUZZ_CHECK(nl >= 1 && nl <= MSGBUS_MAX_HEADER_NAME, "header %zu: name of %zu bytes", i,
                   nl);
        FUZZ_CHECK(msgbus_msg_header(m, name) == value, "header('%s') is not header_at(%zu)",
                   name, i);
        (void)strlen(value);
    }
    const char *x;
    FUZZ_CHECK(msgbus_msg_header_at(m, n, &x, &x) == MSGBUS_ERR_NOT_FOUND, "header_at(count)");
    (void)mb_msg_wire_size(m);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Whether the last ','-separated item of msgbus-invalid-id, %XX-decoded,
 * is exactly `raw` (the raw value is kept, so nothing is lost). */
static bool invalid_id_kept(const msgbus_msg_t *m, const uint8_t *raw, size_t len)
{
    const char *v = msgbus_msg_header(m, MB_H_INVALID_ID);
    if (!v)
        return false;
    const char *last = strrchr(v, ',');
    last = last ? last + 1 : v;
    for (const char *c = last; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
            return false; /* escaped text is printable */
    size_t o = 0;
    for (const char *c = last; *c; c++) {
        uint8_t b = (uint8_t)*c;
        if (*c == '%') {
            int hi = hexval(c[1]), lo = hi >= 0 ? hexval(c[2]) : -1;
            if (lo < 0)
                return false;
            b = (uint8_t)(hi * 16 + lo);
            c += 2;
        }
        if (o >= len || raw[o] != b)
            return false;
        o++;
    }
    return o == len;
}

static msgbus_msg_t *new_msg(struct fuzz_in *in, uint8_t op)
{
    msgbus_msg_t *m = NULL;
    if (op & 0x10)
        return mb_msg_alloc(); /* as a backend's decode step starts */
    size_t len;
    const uint8_t *p = take(in, 4096, &len);
    void *copy = (op & 0x20) && !len ? NULL : fuzz_exact(p, len);
    msgbus_err_t e = msgbus_msg_new(&m, copy, len);
    FUZZ_CHECK(e == MSGBUS_OK, "msgbus_msg_new(%zu bytes): %s", len, msgbus_last_error());
    size_t got;
    const void *pl = msgbus_msg_payload(m, &got);
    FUZZ_CHECK(got == len && (!len || memcmp(pl, p, len) == 0), "payload differs");
    FUZZ_CHECK(fuzz_id_ok(msgbus_msg_id(m)), "new message's id '%s'", msgbus_msg_id(m));
    fuzz_free_exact(copy, len);
    return m;
}

/* Published on a mem:// bus and received again: the same payload, key,
 * id, timestamp and headers (a message without an id gets a fresh one). */
static void mem_round_trip(const msgbus_msg_t *m)
{
    static msgbus_t *bus; /* one for the whole run: opening costs more */
    static msgbus_sub_t *sub;
    if (!bus) {
        FUZZ_CHECK(msgbus_open(&bus, "mem://fuzz_msg", NULL) == MSGBUS_OK &&
                       msgbus_subscribe(bus, "t", "g", &sub) == MSGBUS_OK,
                   "mem:// bus: %s", msgbus_last_error());
    }
    msgbus_err_t e = msgbus_publish(bus, "t", m, NULL, NULL);
    FUZZ_CHECK(e == MSGBUS_OK, "publish on mem://: %s", msgbus_last_error());
    msgbus_msg_t *r = NULL;
    e = msgbus_receive(sub, 5000, &r);
    FUZZ_CHECK(e == MSGBUS_OK && r, "receive on mem://: %s", msgbus_last_error());
    check_msg(r);
    size_t a, b;
    const void *pa = msgbus_msg_payload(m, &a), *pb = msgbus_msg_payload(r, &b);
    FUZZ_CHECK(a == b && (!a || memcmp(pa, pb, a) == 0), "payload through mem://");
    const void *ka = msgbus_msg_key(m, &a), *kb = msgbus_msg_key(r, &b);
    FUZZ_CHECK(!ka == !kb && a == b && (!a || memcmp(ka, kb, a) == 0),
               "key through mem:// (%zu bytes%s -> %zu bytes%s)", a, ka ? "" : ", none", b,
               kb ? "" : ", none");
    const char *ia = msgbus_msg_id(m), *ib = msgbus_msg_id(r);
    FUZZ_CHECK(ib && (!ia || strcmp(ia, ib) == 0), "id through mem://");
    FUZZ_CHECK(msgbus_msg_timestamp(m) == msgbus_msg_timestamp(r), "timestamp through mem://");
    size_t n = msgbus_msg_header_count(m);
    FUZZ_CHECK(n == msgbus_msg_header_count(r), "%zu headers through mem:// came as %zu", n,
               msgbus_msg_header_count(r));
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        msgbus_msg_header_at(m, i, &name, &value);
        const char *got = msgbus_msg_header(r, name);
        FUZZ_CHECK(got && strcmp(got, value) == 0, "header '%s' through mem://", name);
    }
    FUZZ_CHECK(msgbus_ack(r) == MSGBUS_OK, "ack: %s", msgbus_last_error());
    msgbus_msg_free(r);
}

static void step(msgbus_msg_t **mp, struct fuzz_in *in)
{
    msgbus_msg_t *m = *mp;
    uint8_t op = fuzz_u8(in);
    size_t len, vlen;
    const uint8_t *p, *v;
    msgbus_err_t e;

    switch (op % 11) {
    case 0: /* a new message */
        msgbus_msg_free(m);
        *mp = new_msg(in, op);
        break;
    case 1: { /* set_payload */
        p = take(in, 4096, &len);
        bool null = (op & 0x10) != 0;
        void *copy = null ? NULL : fuzz_exact(p, len);
        e = msgbus_msg_set_payload(m, copy, len);
        if (null && len) {
            FUZZ_CHECK(e == MSGBUS_ERR_INVALID, "NULL payload of %zu bytes: %d", len, e);
        } else {
            FUZZ_CHECK(e == MSGBUS_OK, "set_payload: %s", msgbus_last_error());
            size_t got;
            const void *pl = msgbus_msg_payload(m, &got);
            FUZZ_CHECK(got == len && (!len || memcmp(pl, p, len) == 0), "payload differs");
        }
        fuzz_free_exact(copy, len);
        break;
    }
    case 2: { /* set_key, including len 0 with a pointer to a 0-byte block */
        p = take(in, 1024, &len);
        bool null = (op & 0x10) != 0;
        void *copy = null ? NULL : fuzz_exact(p, len);
        e = msgbus_msg_set_key(m, copy, len);
        FUZZ_CHECK(e == MSGBUS_OK, "set_key: %s", msgbus_last_error());
        size_t got = 99;
        const void *k = msgbus_msg_key(m, &got);
        if (null)
            FUZZ_CHECK(!k && got == 0, "key NULL did not remove the key");
        else
            FUZZ_CHECK(k && got == len && (!len || memcmp(k, p, len) == 0),
                       "key differs (%zu bytes set, %zu read)", len, got);
        fuzz_free_exact(copy, len);
        break;
    }
    case 3: { /* set_header */
        p = take(in, 300, &len);
        v = take(in, 300, &vlen);
        char *name = fuzz_cstr(p, len), *value = fuzz_cstr(v, vlen);
        size_t before = msgbus_msg_header_count(m);
        bool had = msgbus_msg_header(m, name) != NULL;
        e = msgbus_msg_set_header(m, name, value);
        FUZZ_CHECK(e == MSGBUS_OK || e == MSGBUS_ERR_INVALID, "set_header: %d", e);
        if (e == MSGBUS_OK) {
            const char *got = msgbus_msg_header(m, name);
            FUZZ_CHECK(got && strcmp(got, value) == 0, "header '%s' not what was set", name);
            FUZZ_CHECK(msgbus_msg_header_count(m) == before + !had, "header count");
            FUZZ_CHECK(strncmp(name, "msgbus-", 7) != 0, "reserved name '%s' accepted", name);
        } else {
            FUZZ_CHECK(msgbus_msg_header_count(m) == before, "failed set_header changed count");
        }
        free(name);
        free(value);
        break;
    }
    case 4: { /* del_header: by a name from the input, or an existing one */
        size_t n = msgbus_msg_header_count(m);
        char *name;
        if ((op & 0x10) && n) {
            const char *hn;
            msgbus_msg_header_at(m, fuzz_u8(in) % n, &hn, NULL);
            name = fuzz_cstr(hn, strlen(hn));
        } else {
            p = take(in, 300, &len);
            name = fuzz_cstr(p, len);
        }
        bool had = msgbus_msg_header(m, name) != NULL;
        e = msgbus_msg_del_header(m, name);
        FUZZ_CHECK(e == (had ? MSGBUS_OK : MSGBUS_ERR_NOT_FOUND), "del_header: %d", e);
        FUZZ_CHECK(msgbus_msg_header(m, name) == NULL, "header '%s' still there", name);
        FUZZ_CHECK(msgbus_msg_header_count(m) == n - had, "header count after delete");
        free(name);
        break;
    }
    case 5: { /* set_id */
        p = take(in, 300, &len);
        char *id = fuzz_cstr(p, len);
        char *before = msgbus_msg_id(m) ? strdup(msgbus_msg_id(m)) : NULL;
        e = msgbus_msg_set_id(m, id);
        bool ok = fuzz_id_ok(id);
        FUZZ_CHECK(e == (ok ? MSGBUS_OK : MSGBUS_ERR_INVALID), "set_id('%s'): %d", id, e);
        const char *now = msgbus_msg_id(m);
        if (ok)
            FUZZ_CHECK(now && strcmp(now, id) == 0, "id not what was set");
        else
            FUZZ_CHECK((!before && !now) || (before && now && strcmp(before, now) == 0),
                       "a refused id changed the id");
        free(before);
        free(id);
        break;
    }
    case 6: { /* set_timestamp */
        int64_t ts = (int64_t)fuzz_u64(in);
        int64_t before = msgbus_msg_timestamp(m);
        e = msgbus_msg_set_timestamp(m, ts);
        FUZZ_CHECK(e == (ts < 0 ? MSGBUS_ERR_INVALID : MSGBUS_OK), "set_timestamp: %d", e);
        FUZZ_CHECK(msgbus_msg_timestamp(m) == (ts < 0 ? before : ts), "timestamp");
        break;
    }
    case 7: { /* mb_msg_received_id: one id value as it arrived */
        p = take(in, 600, &len);
        bool null = (op & 0x10) != 0;
        void *copy = null ? NULL : fuzz_exact(p, len);
        const uint8_t *raw = null ? (const uint8_t *)"" : p;
        size_t rlen = null ? 0 : len;
        bool had_invalid = msgbus_msg_header(m, MB_H_INVALID_ID) != NULL;
        char *before = msgbus_msg_id(m) ? strdup(msgbus_msg_id(m)) : NULL;
        e = mb_msg_received_id(m, copy, len);
        FUZZ_CHECK(e == MSGBUS_OK, "mb_msg_received_id: %d", e);
        const char *id = msgbus_msg_id(m);
        bool same = before && strlen(before) == rlen && memcmp(before, raw, rlen) == 0;
        if (had_invalid) { /* already not an id: listed, nothing else changes */
            FUZZ_CHECK(!id == !before && (!id || strcmp(id, before) == 0), "id changed");
            FUZZ_CHECK(invalid_id_kept(m, raw, rlen), "raw id not listed");
        } else if (fuzz_id_bytes_ok(raw, rlen) && (!before || same)) {
            FUZZ_CHECK(id && strlen(id) == rlen && memcmp(id, raw, rlen) == 0,
                       "a valid id was not taken");
        } else {
            FUZZ_CHECK(!id, "id '%s' kept: the value received breaks the rule or differs", id);
            FUZZ_CHECK(invalid_id_kept(m, raw, rlen), "raw id not kept in %s (%s)",
                       MB_H_INVALID_ID, msgbus_msg_header(m, MB_H_INVALID_ID));
        }
        free(before);
        fuzz_free_exact(copy, len);
        break;
    }
    case 8: { /* mb_msg_received_header: one header as it arrived */
        p = take(in, 300, &len);
        v = take(in, 600, &vlen);
        bool null_name = (op & 0x10) != 0, null_value = (op & 0x20) != 0;
        void *nc = null_name ? NULL : fuzz_exact(p, len);
        void *vc = null_value ? NULL : fuzz_exact(v, vlen);
        const char *cnt = msgbus_msg_header(m, MB_H_INVALID_HEADERS);
        unsigned long before = cnt ? strtoul(cnt, NULL, 10) : 0;
        e = mb_msg_received_header(m, nc, len, vc, vlen);
        FUZZ_CHECK(e == MSGBUS_OK, "mb_msg_received_header: %d", e);
        bool kept = !null_name && len >= 1 && len <= 255 && !memchr(p, 0, len) &&
                    (null_value || !memchr(v, 0, vlen));
        /* The trust boundary's own two records merge, never get replaced
         * (msg.h): a wire msgbus-invalid-headers adds to the count, and a
         * wire msgbus-invalid-id is itself counted once this message's
         * own id check recorded one. */
        bool names_count = kept && len == strlen(MB_H_INVALID_HEADERS) &&
                           memcmp(p, MB_H_INVALID_HEADERS, len) == 0;
        bool own_id = m->own_invalid_id;
        if (kept && own_id && len == strlen(MB_H_INVALID_ID) && memcmp(p, MB_H_INVALID_ID, len) == 0)
            kept = false;
        if (names_count) {
            cnt = msgbus_msg_header(m, MB_H_INVALID_HEADERS);
            FUZZ_CHECK(cnt && strtoul(cnt, NULL, 10) >= before,
                       "a wire %s replaced the count (%s)", MB_H_INVALID_HEADERS,
                       cnt ? cnt : "no count");
        } else if (kept) {
            char *name = fuzz_cstr(p, len);
            const char *got = msgbus_msg_header(m, name);
            size_t want = null_value ? 0 : vlen;
            FUZZ_CHECK(got && strlen(got) == want && memcmp(got, v, want) == 0,
                       "received header '%s' not kept as it came", name);
            free(name);
        } else {
            cnt = msgbus_msg_header(m, MB_H_INVALID_HEADERS);
            FUZZ_CHECK(cnt && strtoul(cnt, NULL, 10) == before + 1,
                       "a header left out is not counted (%s)", cnt ? cnt : "no count");
        }
        fuzz_free_exact(nc, len);
        fuzz_free_exact(vc, vlen);
        break;
    }
    case 9: { /* clone: the same message; with 0x20, through mem:// too */
        if (op & 0x20)
            mem_round_trip(m);
        msgbus_msg_t *c = mb_msg_clone(m);
        FUZZ_CHECK(c, "mb_msg_clone");
        check_msg(c);
        size_t a, b;
        const void *pa = msgbus_msg_payload(m, &a), *pb = msgbus_msg_payload(c, &b);
        FUZZ_CHECK(a == b && memcmp(pa, pb, a) == 0, "clone's payload");
        const void *ka = msgbus_msg_key(m, &a), *kb = msgbus_msg_key(c, &b);
        FUZZ_CHECK(!ka == !kb && a == b && (!a || memcmp(ka, kb, a) == 0), "clone's key");
        const char *ia = msgbus_msg_id(m), *ib = msgbus_msg_id(c);
        FUZZ_CHECK(!ia == !ib && (!ia || strcmp(ia, ib) == 0), "clone's id");
        FUZZ_CHECK(msgbus_msg_header_count(m) == msgbus_msg_header_count(c), "clone's headers");
        msgbus_msg_free(c);
        break;
    }
    default: { /* header_at past the end / with NULL outputs */
        size_t n = msgbus_msg_header_count(m), i = fuzz_u8(in);
        const char *name = NULL;
        e = msgbus_msg_header_at(m, i, &name, NULL);
        FUZZ_CHECK(e == (i < n ? MSGBUS_OK : MSGBUS_ERR_NOT_FOUND), "header_at(%zu of %zu)", i, n);
        break;
    }
    }
    check_msg(*mp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    msgbus_msg_t *m = new_msg(&in, fuzz_u8(&in));
    for (int i = 0; i < 64 && !fuzz_empty(&in); i++)
        step(&m, &in);
    msgbus_msg_free(m);
    return 0;
}
