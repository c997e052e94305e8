/*
 * test_hostile_amqp.c — the AMQP half of the hostile-producer suite: a raw
 * rabbitmq-c producer inside the test (not msgbus) sends what other
 * clients can send to a msgbus topic exchange on the real RabbitMQ
 * (MSGBUS_TEST_AMQP_URL): ids that break msgbus's id rule, ids that
 * disagree, every AMQP header type, a huge header table, msgbus's own
 * header names with garbage values, no timestamp, empty routing keys,
 * large payloads. Each case is received or refused as docs/amqp.md ("What
 * arrives → what msgbus reports") says; no consumer wedges or loops, no
 * message is dropped as a duplicate of a different one, and the
 * connection stays up (the log's "connection … lost" lines are counted
 * and must stay 0).
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "msgbus/inbox.h"
#include "testutil.h"

/* ---- counting reconnects ---------------------------------------------------- */

static _Atomic int lost_lines, encode_errors;

static void on_log(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    if (strstr(line, "amqp: connection to") && strstr(line, " lost "))
        atomic_fetch_add(&lost_lines, 1);
    if (strstr(line, "cannot republish") || strstr(line, "cannot encode"))
        atomic_fetch_add(&encode_errors, 1);
    if (level <= MSGBUS_LOG_WARN)
        fprintf(stderr, "log: %.300s\n", line);
}

static void watch_log(void)
{
    atomic_store(&lost_lines, 0);
    atomic_store(&encode_errors, 0);
    msgbus_set_log(on_log, NULL, MSGBUS_LOG_INFO);
}

/* ---- the raw producer ------------------------------------------------------------- */

struct raw {
    amqp_connection_state_t c;
};

static void raw_open(struct raw *r)
{
    char url[1024];
    snprintf(url, sizeof url, "%s", tu_broker_url("amqp"));
    char *query = strchr(url, '?');
    if (query)
        *query = '\0';
    struct amqp_connection_info ci;
    ck_assert_int_eq(amqp_parse_url(url, &ci), AMQP_STATUS_OK);
    r->c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(r->c);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(amqp_socket_open(s, ci.host, ci.port), AMQP_STATUS_OK);
    amqp_rpc_reply_t rep = amqp_login(r->c, ci.vhost && *ci.vhost ? ci.vhost : "/", 0, 131072, 0,
                                      AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    ck_assert_int_eq(rep.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(r->c, 1);
    ck_assert_int_eq(amqp_get_rpc_reply(r->c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_confirm_select(r->c, 1);
    ck_assert_int_eq(amqp_get_rpc_reply(r->c).reply_type, AMQP_RESPONSE_NORMAL);
}

static void raw_close(struct raw *r)
{
    amqp_channel_close(r->c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(r->c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(r->c);
}

/* Publishes and waits for the broker's confirm (so the order of cases is
 * the order of arrival). `p` may be NULL (no properties at all). */
static void raw_send(struct raw *r, const char *exchange, const void *rk, size_t rk_len,
                     const amqp_basic_properties_t *p, const void *body, size_t len)
{
    amqp_basic_properties_t none;
    memset(&none, 0, sizeof none);
    amqp_bytes_t k = {rk_len, (void *)rk}, b = {len, (void *)body};
    int st = amqp_basic_publish(r->c, 1, amqp_cstring_bytes(exchange), k, 0, 0, p ? p : &none, b);
    ck_assert_msg(st == AMQP_STATUS_OK, "raw publish: %s", amqp_error_string2(st));
    amqp_frame_t f;
    struct timeval tv = {10, 0};
    ck_assert_int_eq(amqp_simple_wait_frame_noblock(r->c, &f, &tv), AMQP_STATUS_OK);
    ck_assert_uint_eq(f.payload.method.id, AMQP_BASIC_ACK_METHOD);
}

static amqp_table_entry_t str_entry(const char *name, const void *v, size_t n)
{
    amqp_table_entry_t e;
    memset(&e, 0, sizeof e);
    e.key = amqp_cstring_bytes(name);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes.bytes = (void *)v;
    e.value.value.bytes.len = n;
    return e;
}

static amqp_basic_properties_t props(const char *msg_id, size_t id_len, amqp_table_entry_t *e,
                                     int n)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    if (msg_id) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id.bytes = (void *)msg_id;
        p.message_id.len = id_len;
    }
    if (n) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers.num_entries = n;
        p.headers.entries = e;
    }
    return p;
}

/* ---- msgbus side --------------------------------------------------------------------- */

static msgbus_t *open_bus(const char *opts)
{
    char url[1024];
    const char *base = tu_broker_url("amqp");
    snprintf(url, sizeof url, "%s%s%s", base, opts ? (strchr(base, '?') ? "&" : "?") : "",
             opts ? opts : "");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

/* The payload as a string (every test payload is text). */
static const char *text(const msgbus_msg_t *m)
{
    static char buf[256];
    size_t n;
    const void *p = msgbus_msg_payload(m, &n);
    snprintf(buf, sizeof buf, "%.*s", (int)(n < 200 ? n : 200), (const char *)p);
    return buf;
}

/* ---- 1: the wedge of issue 16 ------------------------------------------------------ */

START_TEST(long_foreign_id_is_dead_lettered_not_looped)
{
    /* A 400-byte cloudEvents:id (message_id, a short string, cannot hold
     * it). Before: the retry copy put it in message_id, rabbitmq-c refused
     * the frame, msgbus reconnected and the message came back at attempt 1,
     * forever. Now: no id; nacked 3 times it reaches the dead-letter topic,
     * and the connection never drops. */
    watch_log();
    char topic[128], dlq[160];
    tu_unique(topic, sizeof topic, "hostile-longid");
    snprintf(dlq, sizeof dlq, "%s.dlq", topic);
    msgbus_t *bus = open_bus("retry_initial_ms=20&retry_max_ms=50");
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    tu_ck_ok(msgbus_declare(bus, dlq, "dlq"));
    msgbus_sub_t *sub, *dsub;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, "g", "retry_max_attempts=3", &sub));
    tu_ck_ok(msgbus_subscribe(bus, dlq, "dlq", &dsub));

    struct raw r;
    raw_open(&r);
    char id[400];
    memset(id, 'x', sizeof id);
    amqp_table_entry_t e[1] = {str_entry("cloudEvents:id", id, sizeof id)};
    amqp_basic_properties_t p = props(NULL, 0, e, 1);
    raw_send(&r, topic, "k", 1, &p, "long-id", 7);

    int deliveries = 0, letters = 0;
    int64_t until = tu_now_ms() + 20000;
    while (tu_now_ms() < until && letters == 0) {
        msgbus_msg_t *m;
        if (msgbus_receive(sub, 50, &m) == MSGBUS_OK) {
            deliveries++;
            ck_assert_ptr_null(msgbus_msg_id(m));
            ck_assert_uint_eq(strlen(msgbus_msg_header(m, "msgbus-invalid-id")), 400);
            ck_assert_int_eq(msgbus_msg_attempt(m), deliveries);
            tu_ck_ok(msgbus_nack(m));
            msgbus_msg_free(m);
        }
        if (msgbus_receive(dsub, 0, &m) == MSGBUS_OK) {
            letters++;
            ck_assert_ptr_null(msgbus_msg_id(m)); /* a letter keeps "no id" */
            ck_assert_uint_eq(strlen(msgbus_msg_header(m, "msgbus-invalid-id")), 400);
            ck_assert_str_eq(text(m), "long-id");
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
    }
    /* Nothing more arrives. */
    msgbus_msg_t *m;
    ck_assert_int_eq(msgbus_receive(sub, 500, &m), MSGBUS_ERR_TIMEOUT);
    printf("400-byte cloudEvents:id: %d deliveries, %d dead letter(s), %d reconnects\n",
           deliveries, letters, atomic_load(&lost_lines));
    ck_assert_int_eq(deliveries, 3);
    ck_assert_int_eq(letters, 1);
    ck_assert_int_eq(atomic_load(&lost_lines), 0);
    raw_close(&r);
    msgbus_sub_close(sub);
    msgbus_sub_close(dsub);
    msgbus_close(bus);
}
END_TEST

START_TEST(long_keys_fail_alone)
{
    watch_log();
    char topic[128];
    tu_unique(topic, sizeof topic, "hostile-longkey");
    msgbus_t *bus = open_bus("retry_initial_ms=20");
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));

    /* msgbus_publish: a clear error, nothing queued. */
    char key[300];
    memset(key, 'k', sizeof key);
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_msg_set_key(m, key, sizeof key));
    tu_ck_err(msgbus_publish(bus, topic, m, NULL, NULL), MSGBUS_ERR_INVALID);
    printf("300-byte key: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "key of 300 bytes"));
    ck_assert(strstr(msgbus_last_error(), "255"));
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    msgbus_msg_free(m);

    /* A foreign 300-byte key (msgbus-key, a long string) is received, and
     * its retry copy carries it: attempt 2 arrives with the same key. */
    struct raw r;
    raw_open(&r);
    amqp_table_entry_t e[1] = {str_entry("msgbus-key", key, sizeof key)};
    amqp_basic_properties_t p = props("long-key-1", 10, e, 1);
    raw_send(&r, topic, "", 0, &p, "long-key", 8);
    msgbus_msg_t *in = tu_receive(sub, 10000);
    size_t kl;
    ck_assert_ptr_nonnull(msgbus_msg_key(in, &kl));
    ck_assert_uint_eq(kl, 300);
    /* Bridging it to another topic is refused, alone. */
    char other[160];
    snprintf(other, sizeof other, "%s-bridge", topic);
    tu_ck_err(msgbus_publish(bus, other, in, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_ok(msgbus_nack(in));
    msgbus_msg_free(in);
    in = tu_receive(sub, 10000);
    ck_assert_int_eq(msgbus_msg_attempt(in), 2);
    ck_assert_str_eq(msgbus_msg_id(in), "long-key-1");
    ck_assert_ptr_nonnull(msgbus_msg_key(in, &kl));
    ck_assert_uint_eq(kl, 300);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    printf("300-byte keys: %d reconnects\n", atomic_load(&lost_lines));
    ck_assert_int_eq(atomic_load(&lost_lines), 0);
    raw_close(&r);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ---- 2: ids ------------------------------------------------------------------------------ */

static int applied;

static int count_applied(void *opaque, msgbus_msg_t *msg)
{
    (void)opaque;
    (void)msg;
    applied++;
    return 0;
}

START_TEST(invalid_ids_are_not_ids_and_the_inbox_keeps_real_ones)
{
    watch_log();
    char topic[128];
    tu_unique(topic, sizeof topic, "hostile-ids");
    msgbus_t *bus = open_bus(NULL);
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    struct raw r;
    raw_open(&r);

    struct {
        const char *label;
        const char *prop;   /* message_id (NULL: absent) */
        size_t prop_len;
        const char *ce;     /* cloudEvents:id (NULL: absent) */
        size_t ce_len;
        const char *want;   /* expected id (NULL: none) */
    } cases[] = {
        {"empty-prop", "", 0, NULL, 0, NULL},
        {"empty-ce", NULL, 0, "", 0, NULL},
        {"empty-ce-2", NULL, 0, "", 0, NULL},
        {"space", NULL, 0, "a b", 3, NULL},
        {"tab", "a\tb", 3, NULL, 0, NULL},
        {"non-ascii", NULL, 0, "caf\xc3\xa9", 5, NULL},
        {"nul-inside", NULL, 0, "abc\0def", 7, NULL},
        {"real-abc", "abc", 3, NULL, 0, "abc"},
        {"disagree", "m-1", 3, "m-2", 3, NULL},
        {"agree", "m-3", 3, "m-3", 3, "m-3"},
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        amqp_table_entry_t e[1];
        int ne = 0;
        if (cases[i].ce)
            e[ne++] = str_entry("cloudEvents:id", cases[i].ce, cases[i].ce_len);
        amqp_basic_properties_t p = props(cases[i].prop, cases[i].prop_len, e, ne);
        raw_send(&r, topic, "", 0, &p, cases[i].label, strlen(cases[i].label));
    }
    msgbus_inbox_t *ib;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "hostile", 1000, 0));
    applied = 0;
    int no_id = 0, with_id = 0, refused = 0;
    for (int i = 0; i < n; i++) {
        msgbus_msg_t *m = tu_receive(sub, 10000);
        ck_assert_str_eq(text(m), cases[i].label);
        if (cases[i].want) {
            ck_assert_str_eq(msgbus_msg_id(m), cases[i].want);
            with_id++;
        } else {
            ck_assert_msg(msgbus_msg_id(m) == NULL, "%s: id '%s'", cases[i].label,
                          msgbus_msg_id(m));
            ck_assert_ptr_nonnull(msgbus_msg_header(m, "msgbus-invalid-id"));
            no_id++;
        }
        msgbus_inbox_outcome_t out = MSGBUS_INBOX_REJECTED;
        msgbus_err_t e = msgbus_inbox_handle(ib, m, count_applied, NULL, &out);
        if (cases[i].want) {
            tu_ck_ok(e);
            ck_assert_int_eq(out, MSGBUS_INBOX_APPLIED);
        } else {
            /* Refused, never processed silently: the application decides. */
            ck_assert_int_eq(e, MSGBUS_ERR_INVALID);
            refused++;
            tu_ck_ok(msgbus_ack(m));
        }
        msgbus_msg_free(m);
    }
    printf("ids: %d with an id, %d without (all refused by the inbox: %d), %d applied, "
           "%d reconnects\n",
           with_id, no_id, refused, applied, atomic_load(&lost_lines));
    ck_assert_int_eq(with_id, 2);
    ck_assert_int_eq(applied, 2); /* the real abc was applied, not taken for abc\0def */
    ck_assert_int_eq(atomic_load(&lost_lines), 0);
    msgbus_inbox_close(ib);
    raw_close(&r);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ---- 3: headers ------------------------------------------------------------------------- */

START_TEST(every_header_type_and_reserved_names)
{
    watch_log();
    char topic[128];
    tu_unique(topic, sizeof topic, "hostile-headers");
    msgbus_t *bus = open_bus("retry_initial_ms=20");
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    struct raw r;
    raw_open(&r);

    amqp_table_entry_t e[32], inner[1];
    memset(e, 0, sizeof e);
    inner[0] = str_entry("deep", "x", 1);
    amqp_field_value_t arr[2] = {{.kind = AMQP_FIELD_KIND_I32, .value = {.i32 = 1}},
                                 {.kind = AMQP_FIELD_KIND_UTF8,
                                  .value = {.bytes = {1, (void *)"y"}}}};
    char ct[300], longname[256];
    memset(ct, 'c', sizeof ct);
    memset(longname, 'n', 255);
    longname[255] = '\0';
    int n = 0;
#define ENT(nm, k) (e[n].key = amqp_cstring_bytes(nm), e[n].value.kind = (k), &e[n++].value.value)
    ENT("i8", AMQP_FIELD_KIND_I8)->i8 = -8;
    ENT("u8", AMQP_FIELD_KIND_U8)->u8 = 200;
    ENT("i16", AMQP_FIELD_KIND_I16)->i16 = -16000;
    ENT("u16", AMQP_FIELD_KIND_U16)->u16 = 60000;
    ENT("i32", AMQP_FIELD_KIND_I32)->i32 = -2000000000;
    ENT("u32", AMQP_FIELD_KIND_U32)->u32 = 4000000000u;
    ENT("i64", AMQP_FIELD_KIND_I64)->i64 = -5000000000;
    ENT("bool", AMQP_FIELD_KIND_BOOLEAN)->boolean = 0;
    ENT("f32", AMQP_FIELD_KIND_F32)->f32 = 0.25f;
    ENT("f64", AMQP_FIELD_KIND_F64)->f64 = 2.5;
    ENT("ts", AMQP_FIELD_KIND_TIMESTAMP)->u64 = 1700000000;
    amqp_decimal_t *d = &ENT("dec", AMQP_FIELD_KIND_DECIMAL)->decimal;
    d->decimals = 2;
    d->value = 12345;
    ENT("void", AMQP_FIELD_KIND_VOID);
    amqp_table_t *t = &ENT("table", AMQP_FIELD_KIND_TABLE)->table;
    t->num_entries = 1;
    t->entries = inner;
    amqp_array_t *a = &ENT("array", AMQP_FIELD_KIND_ARRAY)->array;
    a->num_entries = 2;
    a->entries = arr;
    amqp_bytes_t *b = &ENT("bytes-nul", AMQP_FIELD_KIND_BYTES)->bytes;
    b->bytes = (void *)"a\0b";
    b->len = 3;
    b = &ENT("content-type", AMQP_FIELD_KIND_UTF8)->bytes;
    b->bytes = ct;
    b->len = sizeof ct;
    b = &ENT(longname, AMQP_FIELD_KIND_UTF8)->bytes;
    b->bytes = (void *)"long-name";
    b->len = 9;
    /* msgbus's own names with garbage values, on a topic delivery. */
    b = &ENT("msgbus-attempt", AMQP_FIELD_KIND_UTF8)->bytes;
    b->bytes = (void *)"many";
    b->len = 4;
    ENT("msgbus-key", AMQP_FIELD_KIND_I32)->i32 = 5;
    b = &ENT("msgbus-timestamp-ms", AMQP_FIELD_KIND_UTF8)->bytes;
    b->bytes = (void *)"yesterday";
    b->len = 9;
#undef ENT
    amqp_basic_properties_t p = props("types-1", 7, e, n); /* no timestamp property */
    int64_t t0 = (int64_t)time(NULL) * 1000;
    raw_send(&r, topic, "rk-1", 4, &p, "types", 5);

    msgbus_msg_t *m = tu_receive(sub, 10000);
    struct {
        const char *name, *want;
    } shown[] = {{"i8", "-8"},        {"u8", "200"},          {"i16", "-16000"},
                 {"u16", "60000"},    {"i32", "-2000000000"}, {"u32", "4000000000"},
                 {"i64", "-5000000000"}, {"bool", "false"},   {"f32", "0.25"},
                 {"f64", "2.5"},      {"ts", "1700000000"},   {longname, "long-name"}};
    int nshown = (int)(sizeof shown / sizeof shown[0]);
    for (int i = 0; i < nshown; i++) {
        const char *v = msgbus_msg_header(m, shown[i].name);
        ck_assert_msg(v && strcmp(v, shown[i].want) == 0, "%.20s: '%s'", shown[i].name,
                      v ? v : "(none)");
    }
    ck_assert_uint_eq(strlen(msgbus_msg_header(m, "content-type")), 300);
    const char *hidden[] = {"dec", "void", "table", "array", "bytes-nul", "msgbus-attempt",
                            "msgbus-key", "msgbus-timestamp-ms", "cloudEvents:id"};
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++)
        ck_assert_msg(!msgbus_msg_header(m, hidden[i]), "%s shown", hidden[i]);
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-headers"), "1"); /* bytes-nul */
    size_t kl;
    const char *k = msgbus_msg_key(m, &kl);
    ck_assert(k && kl == 4 && memcmp(k, "rk-1", 4) == 0); /* routing key kept */
    ck_assert_int_eq(msgbus_msg_attempt(m), 1);
    ck_assert_int_ge(msgbus_msg_timestamp(m), t0 - 1000); /* receive time, not 0 */
    /* time() truncates to the second and is a coarse clock: +2 s. */
    ck_assert_int_le(msgbus_msg_timestamp(m), (int64_t)time(NULL) * 1000 + 2000);
    size_t nheaders = msgbus_msg_header_count(m);
    /* The retry copy carries the long content-type as a header only. */
    tu_ck_ok(msgbus_nack(m));
    msgbus_msg_free(m);
    m = tu_receive(sub, 10000);
    ck_assert_int_eq(msgbus_msg_attempt(m), 2);
    ck_assert_str_eq(msgbus_msg_id(m), "types-1");
    k = msgbus_msg_key(m, &kl);
    ck_assert(k && kl == 4 && memcmp(k, "rk-1", 4) == 0);
    ck_assert_uint_eq(msgbus_msg_header_count(m), nheaders);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    /* An empty routing key is no key; an empty foreign msgbus-key is "". */
    p = props("nokey", 5, NULL, 0);
    raw_send(&r, topic, "", 0, &p, "nokey", 5);
    amqp_table_entry_t ek[1] = {str_entry("msgbus-key", "", 0)};
    p = props("emptykey", 8, ek, 1);
    raw_send(&r, topic, "", 0, &p, "emptykey", 8);
    /* No properties at all. */
    raw_send(&r, topic, "", 0, NULL, "bare", 4);
    m = tu_receive(sub, 10000);
    ck_assert_ptr_null(msgbus_msg_key(m, NULL));
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(msgbus_msg_key(m, &kl));
    ck_assert_uint_eq(kl, 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    m = tu_receive(sub, 10000);
    ck_assert_str_eq(text(m), "bare");
    ck_assert_ptr_null(msgbus_msg_id(m));
    ck_assert_int_gt(msgbus_msg_timestamp(m), 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    printf("header types: %d shown as text, %zu hidden or reserved, 1 counted invalid, "
           "%d reconnects\n",
           nshown + 1, sizeof hidden / sizeof hidden[0], atomic_load(&lost_lines));
    ck_assert_int_eq(atomic_load(&lost_lines), 0);
    raw_close(&r);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(huge_header_tables)
{
    watch_log();
    char topic[128];
    tu_unique(topic, sizeof topic, "hostile-huge");
    msgbus_t *bus = open_bus("retry_initial_ms=20");
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    struct raw r;
    raw_open(&r);

    /* 10,000 string headers (~120 KB of table, inside one 128 KiB frame). */
    enum { N = 10000 };
    amqp_table_entry_t *e = calloc(N, sizeof *e);
    char (*names)[8] = calloc(N, 8);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], 8, "h%04x", i);
        e[i] = str_entry(names[i], "v", 1);
    }
    amqp_basic_properties_t p = props("huge-1", 6, e, N);
    raw_send(&r, topic, "", 0, &p, "huge-strings", 12);
    /* 10,000 booleans: 8 bytes each on the wire, but 15 as text, so the
     * retry copy cannot fit in one frame — it fails alone (the original is
     * requeued, comes back redelivered) and the connection stays up. */
    for (int i = 0; i < N; i++) {
        e[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        e[i].value.value.boolean = 1;
    }
    p = props("huge-2", 6, e, N);
    raw_send(&r, topic, "", 0, &p, "huge-bools", 10);

    int64_t t0 = tu_now_ms();
    msgbus_msg_t *m = tu_receive(sub, 20000);
    ck_assert_str_eq(text(m), "huge-strings");
    ck_assert_uint_eq(msgbus_msg_header_count(m), N);
    int64_t took = tu_now_ms() - t0;
    tu_ck_ok(msgbus_nack(m));
    msgbus_msg_free(m);
    m = tu_receive(sub, 20000);
    ck_assert_str_eq(text(m), "huge-bools");
    ck_assert_uint_eq(msgbus_msg_header_count(m), N);
    ck_assert_str_eq(msgbus_msg_header(m, "h0000"), "true");
    tu_ck_ok(msgbus_nack(m));
    msgbus_msg_free(m);
    int got_strings = 0, got_bools = 0;
    while (!got_strings || !got_bools) {
        m = tu_receive(sub, 20000);
        if (strcmp(text(m), "huge-strings") == 0) {
            ck_assert_int_eq(msgbus_msg_attempt(m), 2);
            ck_assert_uint_eq(msgbus_msg_header_count(m), N);
            got_strings++;
        } else {
            ck_assert_str_eq(text(m), "huge-bools");
            got_bools++;
        }
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    printf("huge tables: 2 x %d headers, first received in %lld ms; bool copy refused "
           "(%d error line(s)), %d reconnects\n",
           N, (long long)took, atomic_load(&encode_errors), atomic_load(&lost_lines));
    ck_assert_int_ge(atomic_load(&encode_errors), 1);
    ck_assert_int_eq(atomic_load(&lost_lines), 0);
    free(e);
    free(names);
    raw_close(&r);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ---- 4: payload sizes ------------------------------------------------------------------ */

START_TEST(payloads_at_and_over_the_limit)
{
    watch_log();
    char topic[128];
    tu_unique(topic, sizeof topic, "hostile-size");
    /* msgbus's own check stands in for RabbitMQ's max_message_size (128 MiB
     * by default; max_message_bytes says where the broker's limit is). */
    msgbus_t *bus = open_bus("max_message_bytes=1048576");
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    size_t at = 1048576;
    char *big = malloc(at + 1);
    memset(big, 'p', at + 1);
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, big, at + 1));
    tu_ck_err(msgbus_publish(bus, topic, m, NULL, NULL), MSGBUS_ERR_TOO_LARGE);
    printf("over the limit: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "max_message_bytes"));
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    tu_ck_ok(msgbus_msg_set_payload(m, big, at));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    tu_ck_ok(msgbus_flush(bus, 20000, NULL));
    msgbus_msg_free(m);
    /* A foreign producer's 1 MiB body (many frames) arrives whole. */
    struct raw r;
    raw_open(&r);
    raw_send(&r, topic, "", 0, NULL, big, at);
    for (int i = 0; i < 2; i++) {
        m = tu_receive(sub, 20000);
        size_t len;
        const unsigned char *pl = msgbus_msg_payload(m, &len);
        ck_assert_uint_eq(len, at);
        ck_assert(pl[0] == 'p' && pl[at - 1] == 'p');
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    printf("payloads: 1 refused over max_message_bytes, 2 x %zu bytes received, "
           "%d reconnects\n",
           at, atomic_load(&lost_lines));
    ck_assert_int_eq(atomic_load(&lost_lines), 0);
    free(big);
    raw_close(&r);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    tu_broker_url("amqp"); /* fails, never skips, when the broker is not configured */
    Suite *s = suite_create("hostile_amqp");
    TCase *tc = tcase_create("hostile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, long_foreign_id_is_dead_lettered_not_looped);
    tcase_add_test(tc, long_keys_fail_alone);
    tcase_add_test(tc, invalid_ids_are_not_ids_and_the_inbox_keeps_real_ones);
    tcase_add_test(tc, every_header_type_and_reserved_names);
    tcase_add_test(tc, huge_header_tables);
    tcase_add_test(tc, payloads_at_and_over_the_limit);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
