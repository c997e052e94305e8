/*
 * test_amqp_conf.c — the AMQP backend without a broker: URL options and
 * their errors, topology names, queue arguments, and the message codec
 * (msgbus message → AMQP properties → msgbus message).
 */
#include <amqp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/amqp.h"
#include "testutil.h"

static struct mb_url *parse(const char *text)
{
    struct mb_url *u = NULL;
    tu_ck_ok(mb_url_parse(text, &u));
    return u;
}

START_TEST(defaults_are_documented_values)
{
    struct mb_url *u = parse("amqp://guest:secret@127.0.0.1/");
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    ck_assert(!c.tls);
    ck_assert_uint_eq(c.nhosts, 1);
    ck_assert_int_eq(c.hosts[0].port, 5672);
    ck_assert_str_eq(c.user, "guest");
    ck_assert_str_eq(c.password, "secret");
    ck_assert_str_eq(c.vhost, "/");
    ck_assert_int_eq(c.prefetch, 200);
    ck_assert_int_eq(c.confirm_window, 1000);
    ck_assert_int_eq(c.heartbeat_s, 10);
    ck_assert_int_eq(c.max_message_bytes, 128L * 1024 * 1024);
    ck_assert(!c.quorum);
    ck_assert(c.verify_peer && c.verify_hostname);
    mb_amqp_conf_free(&c);
    mb_url_free(u);
}
END_TEST

START_TEST(amqps_hosts_vhost_and_options)
{
    struct mb_url *u = parse("amqps://app:pw@h1:5999,h2/%2Fprod?prefetch=50&heartbeat=3"
                             "&confirm_window=10&connect_timeout_ms=250&cacert=/tmp/ca.pem"
                             "&tls_verify_hostname=false");
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    ck_assert(c.tls);
    ck_assert_uint_eq(c.nhosts, 2);
    ck_assert_str_eq(c.hosts[0].host, "h1");
    ck_assert_int_eq(c.hosts[0].port, 5999);
    ck_assert_str_eq(c.hosts[1].host, "h2");
    ck_assert_int_eq(c.hosts[1].port, 5671);
    ck_assert_str_eq(c.vhost, "/prod");
    ck_assert_int_eq(c.prefetch, 50);
    ck_assert_int_eq(c.heartbeat_s, 3);
    ck_assert_int_eq(c.confirm_window, 10);
    ck_assert_int_eq(c.connect_timeout_ms, 250);
    ck_assert_str_eq(c.cacert, "/tmp/ca.pem");
    ck_assert(c.verify_peer);
    ck_assert(!c.verify_hostname);
    mb_amqp_conf_free(&c);
    mb_url_free(u);
}
END_TEST

START_TEST(named_vhost_without_slash)
{
    struct mb_url *u = parse("amqp://u:p@h/orders");
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    ck_assert_str_eq(c.vhost, "orders");
    mb_amqp_conf_free(&c);
    mb_url_free(u);
}
END_TEST

static void expect_config_error(const char *url, const char *needle)
{
    struct mb_url *u = parse(url);
    struct mb_amqp_conf c;
    msgbus_err_t e = mb_amqp_conf_parse(u, &c);
    mb_amqp_conf_free(&c);
    mb_url_free(u);
    ck_assert_msg(e == MSGBUS_ERR_CONFIG, "%s: got %s", url, msgbus_err_name(e));
    ck_assert_msg(strstr(msgbus_last_error(), needle), "%s: detail '%s' lacks '%s'", url,
                  msgbus_last_error(), needle);
}

START_TEST(bad_options_are_named)
{
    expect_config_error("amqp://h/?prefetchh=5", "prefetchh");
    expect_config_error("amqp://h/?prefetch=0", "prefetch");
    expect_config_error("amqp://h/?prefetch=many", "prefetch");
    expect_config_error("amqp://h/?queue_type=stream", "queue_type");
    expect_config_error("amqp://h/?unroutable=maybe", "unroutable");
    expect_config_error("amqp://h/?cacert=/x.pem", "amqps");
    expect_config_error("amqps://h/?cert=/c.pem", "key");
    expect_config_error("amqp://h/?x-queue-type=quorum", "queue_type");
    expect_config_error("amqps://h/?tls_verify_peer=perhaps", "tls_verify_peer");
}
END_TEST

START_TEST(environment_variables_set_options)
{
    setenv("MSGBUS_AMQP_PREFETCH", "42", 1);
    setenv("MSGBUS_AMQP_CONFIRM_WINDOW", "7", 1);
    struct mb_url *u = parse("amqp://h/?confirm_window=9");
    tu_ck_ok(mb_url_add_env(u, "AMQP", '_', NULL));
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    ck_assert_int_eq(c.prefetch, 42);
    ck_assert_int_eq(c.confirm_window, 9); /* the URL wins */
    mb_amqp_conf_free(&c);
    mb_url_free(u);

    setenv("MSGBUS_AMQP_PREFECH", "1", 1);
    u = parse("amqp://h/");
    tu_ck_ok(mb_url_add_env(u, "AMQP", '_', NULL));
    msgbus_err_t e = mb_amqp_conf_parse(u, &c);
    mb_amqp_conf_free(&c);
    mb_url_free(u);
    unsetenv("MSGBUS_AMQP_PREFETCH");
    unsetenv("MSGBUS_AMQP_CONFIRM_WINDOW");
    unsetenv("MSGBUS_AMQP_PREFECH");
    ck_assert_int_eq(e, MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "MSGBUS_AMQP_PREFECH"), "%s", msgbus_last_error());
}
END_TEST

/* Several hosts = a cluster: group queues are quorum queues unless the
 * URL says classic; one host keeps classic. */
static bool quorum_for(const char *urltext)
{
    struct mb_url *u = parse(urltext);
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    bool q = c.quorum;
    mb_amqp_conf_free(&c);
    mb_url_free(u);
    return q;
}

START_TEST(several_hosts_mean_quorum_by_default)
{
    ck_assert(!quorum_for("amqp://h/"));
    ck_assert(quorum_for("amqp://h1,h2:5673,h3/"));
    ck_assert(quorum_for("amqp://h1,h2/?queue_type=quorum"));
    ck_assert(!quorum_for("amqp://h1,h2/?queue_type=classic"));
    ck_assert(quorum_for("amqp://h/?queue_type=quorum"));
}
END_TEST

START_TEST(quorum_and_queue_arguments)
{
    struct mb_url *u =
        parse("amqp://h/?queue_type=quorum&x-max-length=1000&x-overflow=reject-publish"
              "&x-single-active-consumer=true");
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    amqp_table_entry_t e[8];
    size_t n = mb_amqp_queue_args(&c, e, 8);
    ck_assert_uint_eq(n, 4);
    ck_assert_int_eq(e[0].key.len, strlen("x-queue-type"));
    ck_assert_int_eq(memcmp(e[0].value.value.bytes.bytes, "quorum", 6), 0);
    for (size_t i = 1; i < n; i++) {
        if (e[i].key.len == strlen("x-max-length")) {
            ck_assert_int_eq(e[i].value.kind, AMQP_FIELD_KIND_I64);
            ck_assert_int_eq(e[i].value.value.i64, 1000);
        } else if (e[i].key.len == strlen("x-overflow")) {
            ck_assert_int_eq(e[i].value.kind, AMQP_FIELD_KIND_UTF8);
        } else {
            ck_assert_int_eq(e[i].value.kind, AMQP_FIELD_KIND_BOOLEAN);
            ck_assert(e[i].value.value.boolean);
        }
    }
    mb_amqp_conf_free(&c);
    mb_url_free(u);
}
END_TEST

START_TEST(group_queue_names)
{
    char buf[512];
    tu_ck_ok(mb_amqp_group_queue("orders", "billing", buf, sizeof buf));
    ck_assert_str_eq(buf, "orders.billing");
    char t[200], g[200];
    memset(t, 't', sizeof t - 1);
    t[sizeof t - 1] = '\0';
    memset(g, 'g', sizeof g - 1);
    g[sizeof g - 1] = '\0';
    tu_ck_err(mb_amqp_group_queue(t, g, buf, sizeof buf), MSGBUS_ERR_INVALID);
    ck_assert(strstr(msgbus_last_error(), "255"));
}
END_TEST

/* partitions= and rebalance_ms=: defaults, ranges, the names of a
 * partitioned group's exchange and queues, a member's share, and the
 * key_order capability exactly when partitioned. */
START_TEST(partition_options_names_share_and_caps)
{
    struct mb_url *u = parse("amqp://h/");
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    ck_assert_int_eq(c.partitions, 0);
    ck_assert_int_eq(c.rebalance_ms, 1000);
    struct mb_caps caps;
    memset(&caps, 0, sizeof caps);
    mb_amqp_caps(&c, &caps);
    ck_assert(!(caps.bits & MSGBUS_CAP_KEY_ORDER));
    ck_assert_ptr_nonnull(caps.why_not[__builtin_ctzll(MSGBUS_CAP_KEY_ORDER)]);
    mb_amqp_conf_free(&c);
    mb_url_free(u);

    u = parse("amqp://h/?partitions=6&rebalance_ms=250");
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    ck_assert_int_eq(c.partitions, 6);
    ck_assert_int_eq(c.rebalance_ms, 250);
    memset(&caps, 0, sizeof caps);
    mb_amqp_caps(&c, &caps);
    ck_assert(caps.bits & MSGBUS_CAP_KEY_ORDER);
    mb_amqp_conf_free(&c);
    mb_url_free(u);

    expect_config_error("amqp://h/?partitions=1001", "partitions");
    expect_config_error("amqp://h/?partitions=-1", "partitions");
    expect_config_error("amqp://h/?partitions=four", "partitions");
    expect_config_error("amqp://h/?rebalance_ms=10", "rebalance_ms");
    expect_config_error("amqp://h/?rebalance_ms=600001", "rebalance_ms");

    char buf[512];
    tu_ck_ok(mb_amqp_part_name("orders", "billing", -1, buf, sizeof buf));
    ck_assert_str_eq(buf, "orders.billing~hash");
    tu_ck_ok(mb_amqp_part_name("orders", "billing", MB_AMQP_PART_MEMBERS, buf, sizeof buf));
    ck_assert_str_eq(buf, "orders.billing~members");
    tu_ck_ok(mb_amqp_part_name("orders", "billing", 0, buf, sizeof buf));
    ck_assert_str_eq(buf, "orders.billing~0");
    tu_ck_ok(mb_amqp_part_name("orders", "billing", 999, buf, sizeof buf));
    ck_assert_str_eq(buf, "orders.billing~999");
    char t[200], g[60];
    memset(t, 't', sizeof t - 1);
    t[sizeof t - 1] = '\0';
    memset(g, 'g', sizeof g - 1);
    g[sizeof g - 1] = '\0';
    tu_ck_err(mb_amqp_part_name(t, g, 7, buf, sizeof buf), MSGBUS_ERR_INVALID);

    ck_assert_uint_eq(mb_amqp_part_share(6, 3), 2);
    ck_assert_uint_eq(mb_amqp_part_share(7, 3), 3);
    ck_assert_uint_eq(mb_amqp_part_share(4, 1), 4);
    ck_assert_uint_eq(mb_amqp_part_share(2, 5), 1);
    ck_assert_uint_eq(mb_amqp_part_share(4, 0), 4);
}
END_TEST

static msgbus_msg_t *sample(void)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "pay\0load", 8));
    tu_ck_ok(msgbus_msg_set_key(m, "k-1", 3));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "trace", "abc"));
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1700000000123));
    return m;
}

START_TEST(codec_round_trip)
{
    msgbus_msg_t *m = sample();
    struct mb_amqp_out *o;
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 131072));
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(o->topic, "orders");
    ck_assert_int_eq(o->routing_key.len, 3);
    ck_assert_int_eq(o->body.len, 8);
    ck_assert_int_eq(o->props.delivery_mode, 2);
    ck_assert_int_eq(o->props.timestamp, 1700000000);
    ck_assert_int_eq(o->props.message_id.len, strlen(msgbus_msg_id(m)));
    ck_assert(o->props._flags & AMQP_BASIC_CONTENT_TYPE_FLAG);

    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, amqp_cstring_bytes(o->topic), o->routing_key, false));
    ck_assert_str_eq(msgbus_msg_id(r), msgbus_msg_id(m));
    ck_assert_int_eq(msgbus_msg_timestamp(r), 1700000000123);
    size_t kl;
    const char *k = msgbus_msg_key(r, &kl);
    ck_assert_int_eq(kl, 3);
    ck_assert_int_eq(memcmp(k, "k-1", 3), 0);
    ck_assert_int_eq(msgbus_msg_attempt(r), 1);
    /* msgbus's own headers are not shown to the application. */
    ck_assert_uint_eq(msgbus_msg_header_count(r), 2);
    ck_assert_str_eq(msgbus_msg_header(r, "trace"), "abc");
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "application/json");
    ck_assert_ptr_null(msgbus_msg_header(r, "cloudEvents:id"));
    ck_assert_ptr_null(msgbus_msg_header(r, "cloudEvents_id"));
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(codec_republish_keeps_key_and_raises_attempt)
{
    msgbus_msg_t *m = sample();
    struct mb_amqp_out *o;
    tu_ck_ok(mb_amqp_out_new(&o, "", "orders.billing", 14, m, 3, true, 131072));
    ck_assert_str_eq(o->topic, "");
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, amqp_cstring_bytes(o->topic), o->routing_key, false));
    size_t kl;
    const char *k = msgbus_msg_key(r, &kl);
    ck_assert_int_eq(kl, 3);
    ck_assert_int_eq(memcmp(k, "k-1", 3), 0);
    ck_assert_int_eq(msgbus_msg_attempt(r), 3);
    msgbus_msg_free(r);
    /* Redelivered by a classic queue: one more. */
    r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, amqp_cstring_bytes(o->topic), o->routing_key, true));
    ck_assert_int_eq(msgbus_msg_attempt(r), 4);
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(codec_quorum_delivery_count_and_foreign_headers)
{
    amqp_table_entry_t e[4];
    e[0].key = amqp_cstring_bytes("x-delivery-count");
    e[0].value.kind = AMQP_FIELD_KIND_I64;
    e[0].value.value.i64 = 2;
    e[1].key = amqp_cstring_bytes("retries");
    e[1].value.kind = AMQP_FIELD_KIND_I32;
    e[1].value.value.i32 = 7;
    e[2].key = amqp_cstring_bytes("flag");
    e[2].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e[2].value.value.boolean = 1;
    e[3].key = amqp_cstring_bytes("nested");
    e[3].value.kind = AMQP_FIELD_KIND_TABLE;
    e[3].value.value.table = amqp_empty_table;
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    p.headers.num_entries = 4;
    p.headers.entries = e;
    p.timestamp = 1700000000;
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &p, amqp_cstring_bytes("orders"), amqp_empty_bytes, true));
    ck_assert_int_eq(msgbus_msg_attempt(r), 3);
    ck_assert_ptr_null(msgbus_msg_id(r));
    ck_assert_ptr_null(msgbus_msg_key(r, NULL));
    ck_assert_int_eq(msgbus_msg_timestamp(r), 1700000000000);
    ck_assert_str_eq(msgbus_msg_header(r, "retries"), "7");
    ck_assert_str_eq(msgbus_msg_header(r, "flag"), "true");
    ck_assert_ptr_null(msgbus_msg_header(r, "nested"));
    msgbus_msg_free(r);
}
END_TEST


/* ---- the trust boundary: what arrives from foreign producers ---------------- */

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

/* Decodes a delivery through exchange "orders" with routing key `rk`, a
 * message_id property (NULL: absent) and the given headers. */
static msgbus_msg_t *decode_foreign(const char *msg_id, size_t id_len, amqp_table_entry_t *e,
                                    int ne, const char *rk)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    if (msg_id) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id.bytes = (void *)msg_id;
        p.message_id.len = id_len;
    }
    if (ne) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers.num_entries = ne;
        p.headers.entries = e;
    }
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &p, amqp_cstring_bytes("orders"), amqp_cstring_bytes(rk), false));
    return r;
}

START_TEST(received_ids_follow_the_id_rule)
{
    /* "" is not an id, in the property or in the header. */
    msgbus_msg_t *r = decode_foreign("", 0, NULL, 0, "");
    ck_assert_ptr_null(msgbus_msg_id(r));
    ck_assert_str_eq(msgbus_msg_header(r, "msgbus-invalid-id"), "");
    msgbus_msg_free(r);
    amqp_table_entry_t e[2];
    e[0] = str_entry("cloudEvents:id", "", 0);
    r = decode_foreign(NULL, 0, e, 1, "");
    ck_assert_ptr_null(msgbus_msg_id(r));
    msgbus_msg_free(r);
    /* An empty property does not let the header's id through unopposed. */
    e[0] = str_entry("cloudEvents:id", "abc", 3);
    r = decode_foreign("", 0, e, 1, "");
    ck_assert_ptr_null(msgbus_msg_id(r));
    ck_assert_str_eq(msgbus_msg_header(r, "msgbus-invalid-id"), ",abc");
    msgbus_msg_free(r);
    /* Spaces, tabs, non-ASCII, a NUL inside, 400 bytes: not ids, kept escaped. */
    const char *bad[] = {"a b", "a\tb", "caf\xc3\xa9", "abc\0def"};
    const size_t bad_len[] = {3, 3, 5, 7};
    const char *shown[] = {"a%20b", "a%09b", "caf%C3%A9", "abc%00def"};
    for (int i = 0; i < 4; i++) {
        e[0] = str_entry("cloudEvents:id", bad[i], bad_len[i]);
        r = decode_foreign(NULL, 0, e, 1, "");
        ck_assert_ptr_null(msgbus_msg_id(r));
        ck_assert_str_eq(msgbus_msg_header(r, "msgbus-invalid-id"), shown[i]);
        ck_assert_ptr_null(msgbus_msg_header(r, "cloudEvents:id"));
        msgbus_msg_free(r);
    }
    char big[400];
    memset(big, 'x', sizeof big);
    e[0] = str_entry("cloudEvents:id", big, sizeof big);
    r = decode_foreign(NULL, 0, e, 1, "");
    ck_assert_ptr_null(msgbus_msg_id(r));
    ck_assert_uint_eq(strlen(msgbus_msg_header(r, "msgbus-invalid-id")), 400);
    msgbus_msg_free(r);
    /* Agreeing ids are the id; disagreeing ones are no id. */
    e[0] = str_entry("cloudEvents:id", "abc", 3);
    r = decode_foreign("abc", 3, e, 1, "");
    ck_assert_str_eq(msgbus_msg_id(r), "abc");
    ck_assert_ptr_null(msgbus_msg_header(r, "msgbus-invalid-id"));
    msgbus_msg_free(r);
    r = decode_foreign("abd", 3, e, 1, "");
    ck_assert_ptr_null(msgbus_msg_id(r));
    ck_assert_str_eq(msgbus_msg_header(r, "msgbus-invalid-id"), "abd,abc");
    msgbus_msg_free(r);
}
END_TEST

START_TEST(received_headers_of_every_type)
{
    amqp_table_entry_t e[20];
    memset(e, 0, sizeof e);
    int n = 0;
#define ENT(nm, k) (e[n].key = amqp_cstring_bytes(nm), e[n].value.kind = (k), &e[n++].value.value)
    ENT("i8", AMQP_FIELD_KIND_I8)->i8 = -8;
    ENT("u8", AMQP_FIELD_KIND_U8)->u8 = 200;
    ENT("i16", AMQP_FIELD_KIND_I16)->i16 = -16000;
    ENT("u16", AMQP_FIELD_KIND_U16)->u16 = 60000;
    ENT("i32", AMQP_FIELD_KIND_I32)->i32 = -2000000000;
    ENT("u32", AMQP_FIELD_KIND_U32)->u32 = 4000000000u;
    ENT("i64", AMQP_FIELD_KIND_I64)->i64 = INT64_MIN;
    ENT("u64", AMQP_FIELD_KIND_U64)->u64 = UINT64_MAX;
    ENT("ts", AMQP_FIELD_KIND_TIMESTAMP)->u64 = 1700000000;
    ENT("yes", AMQP_FIELD_KIND_BOOLEAN)->boolean = 1;
    ENT("f32", AMQP_FIELD_KIND_F32)->f32 = 1.5f;
    ENT("f64", AMQP_FIELD_KIND_F64)->f64 = 0.1;
    ENT("dec", AMQP_FIELD_KIND_DECIMAL)->decimal.value = 12345;
    ENT("void", AMQP_FIELD_KIND_VOID);
    ENT("table", AMQP_FIELD_KIND_TABLE)->table = amqp_empty_table;
    ENT("array", AMQP_FIELD_KIND_ARRAY)->array = amqp_empty_array;
    amqp_bytes_t *b = &ENT("nul", AMQP_FIELD_KIND_BYTES)->bytes;
    b->bytes = "a\0b";
    b->len = 3;
    b = &ENT("", AMQP_FIELD_KIND_UTF8)->bytes; /* an empty name */
    b->bytes = "v";
    b->len = 1;
#undef ENT
    msgbus_msg_t *r = decode_foreign(NULL, 0, e, n, "k");
    ck_assert_str_eq(msgbus_msg_header(r, "i8"), "-8");
    ck_assert_str_eq(msgbus_msg_header(r, "u8"), "200");
    ck_assert_str_eq(msgbus_msg_header(r, "i16"), "-16000");
    ck_assert_str_eq(msgbus_msg_header(r, "u16"), "60000");
    ck_assert_str_eq(msgbus_msg_header(r, "i32"), "-2000000000");
    ck_assert_str_eq(msgbus_msg_header(r, "u32"), "4000000000");
    ck_assert_str_eq(msgbus_msg_header(r, "i64"), "-9223372036854775808");
    ck_assert_str_eq(msgbus_msg_header(r, "u64"), "18446744073709551615");
    ck_assert_str_eq(msgbus_msg_header(r, "ts"), "1700000000");
    ck_assert_str_eq(msgbus_msg_header(r, "yes"), "true");
    ck_assert_str_eq(msgbus_msg_header(r, "f32"), "1.5");
    ck_assert_str_eq(msgbus_msg_header(r, "f64"), "0.10000000000000001");
    ck_assert_ptr_null(msgbus_msg_header(r, "dec"));
    ck_assert_ptr_null(msgbus_msg_header(r, "void"));
    ck_assert_ptr_null(msgbus_msg_header(r, "table"));
    ck_assert_ptr_null(msgbus_msg_header(r, "array"));
    ck_assert_ptr_null(msgbus_msg_header(r, "nul"));
    /* The NUL value and the empty name are counted, not silently gone. */
    ck_assert_str_eq(msgbus_msg_header(r, "msgbus-invalid-headers"), "2");
    msgbus_msg_free(r);
}
END_TEST

START_TEST(foreign_reserved_headers_change_nothing_else)
{
    /* A foreign msgbus-attempt through a topic exchange: the routing key
     * stays the key and the attempt is the broker's. Garbage timestamps
     * and no timestamp property: the receive time. */
    amqp_table_entry_t e[3];
    memset(e, 0, sizeof e);
    e[0] = str_entry("msgbus-attempt", "7", 1);
    e[1] = str_entry("msgbus-timestamp-ms", "soon", 4);
    e[2].key = amqp_cstring_bytes("msgbus-key");
    e[2].value.kind = AMQP_FIELD_KIND_I32; /* not a string: ignored */
    /* The clock msgbus stamps with: time() is a coarser one that can lag
     * it by a tick across a second boundary. */
    int64_t t0 = mb_now_ms();
    msgbus_msg_t *r = decode_foreign("id-1", 4, e, 3, "k-9");
    int64_t t1 = mb_now_ms();
    size_t kl;
    const char *k = msgbus_msg_key(r, &kl);
    ck_assert_ptr_nonnull(k);
    ck_assert_int_eq(kl, 3);
    ck_assert_int_eq(memcmp(k, "k-9", 3), 0);
    ck_assert_int_eq(msgbus_msg_attempt(r), 1);
    ck_assert_int_ge(msgbus_msg_timestamp(r), t0);
    ck_assert_int_le(msgbus_msg_timestamp(r), t1);
    ck_assert_uint_eq(msgbus_msg_header_count(r), 0);
    msgbus_msg_free(r);
}
END_TEST

START_TEST(empty_key_survives_the_round_trip)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_msg_set_key(m, "", 0));
    struct mb_amqp_out *o;
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 131072));
    ck_assert_uint_eq(o->routing_key.len, 0);
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, amqp_cstring_bytes("orders"), o->routing_key, false));
    size_t kl = 99;
    ck_assert_ptr_nonnull(msgbus_msg_key(r, &kl));
    ck_assert_uint_eq(kl, 0);
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    /* No key stays no key. */
    tu_ck_ok(msgbus_msg_set_key(m, NULL, 0));
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 131072));
    r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, amqp_cstring_bytes("orders"), o->routing_key, false));
    ck_assert_ptr_null(msgbus_msg_key(r, NULL));
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(headers_named_like_msgbus_wire_fields_do_not_double_them)
{
    /* A message received on Kafka keeps a foreign header "cloudEvents_id"
     * or "cloudEvents:id" (there it is not the id), or msgbus-key /
     * -attempt / -timestamp-ms. Republished to RabbitMQ, each would stand
     * next to msgbus's own entry of that name: two ids that disagree, and
     * the receiver keeps none. */
    msgbus_msg_t *m = mb_msg_alloc();
    tu_ck_ok(mb_msg_received_id(m, "real-id", 7));
    tu_ck_ok(mb_msg_received_header(m, "cloudEvents:id", 14, "other", 5));
    tu_ck_ok(mb_msg_received_header(m, "cloudEvents_id", 14, "other", 5));
    tu_ck_ok(mb_msg_received_header(m, "msgbus-key", 10, "forged", 6));
    tu_ck_ok(mb_msg_received_header(m, "msgbus-attempt", 14, "9", 1));
    tu_ck_ok(mb_msg_received_header(m, "msgbus-timestamp-ms", 19, "1", 1));
    tu_ck_ok(mb_msg_received_header(m, "plain", 5, "kept", 4));
    tu_ck_ok(msgbus_msg_set_key(m, "k", 1));
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1700000000123));
    struct mb_amqp_out *o;
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 131072));
    int ids = 0, old_ids = 0;
    for (int i = 0; i < o->props.headers.num_entries; i++) {
        ids += o->props.headers.entries[i].key.len == 14 &&
               memcmp(o->props.headers.entries[i].key.bytes, "cloudEvents_id", 14) == 0;
        old_ids += o->props.headers.entries[i].key.len == 14 &&
                   memcmp(o->props.headers.entries[i].key.bytes, "cloudEvents:id", 14) == 0;
    }
    ck_assert_int_eq(ids, 1);
    ck_assert_int_eq(old_ids, 0);
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, amqp_cstring_bytes("orders"), o->routing_key, false));
    ck_assert_str_eq(msgbus_msg_id(r), "real-id");
    size_t kl;
    const char *k = msgbus_msg_key(r, &kl);
    ck_assert(k && kl == 1 && k[0] == 'k');
    ck_assert_int_eq(msgbus_msg_timestamp(r), 1700000000123);
    ck_assert_int_eq(msgbus_msg_attempt(r), 1);
    ck_assert_str_eq(msgbus_msg_header(r, "plain"), "kept");
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(encoding_limits_fail_the_message_alone)
{
    msgbus_msg_t *m;
    struct mb_amqp_out *o = (void *)1;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    char key[300];
    memset(key, 'k', sizeof key);
    tu_ck_ok(msgbus_msg_set_key(m, key, sizeof key));
    tu_ck_err(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 131072), MSGBUS_ERR_INVALID);
    ck_assert_ptr_null(o);
    ck_assert_msg(strstr(msgbus_last_error(), "key of 300 bytes") &&
                      strstr(msgbus_last_error(), "255"),
                  "%s", msgbus_last_error());
    /* A copy routes by queue name and carries the long key in msgbus-key. */
    tu_ck_ok(mb_amqp_out_new(&o, "", "orders.billing", 14, m, 2, true, 131072));
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, amqp_empty_bytes, o->routing_key, false));
    size_t kl;
    ck_assert_ptr_nonnull(msgbus_msg_key(r, &kl));
    ck_assert_uint_eq(kl, 300);
    ck_assert_int_eq(msgbus_msg_attempt(r), 2);
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    tu_ck_ok(msgbus_msg_set_key(m, NULL, 0));

    /* A content-type longer than a short string stays a header only. */
    char ct[301];
    memset(ct, 'c', 300);
    ct[300] = '\0';
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", ct));
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 131072));
    ck_assert(!(o->props._flags & AMQP_BASIC_CONTENT_TYPE_FLAG));
    mb_amqp_out_free(o);

    /* Headers beyond one frame: TOO_LARGE naming frame_max. */
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 4096));
    mb_amqp_out_free(o);
    char *big = malloc(5000);
    memset(big, 'v', 4999);
    big[4999] = '\0';
    tu_ck_ok(msgbus_msg_set_header(m, "big", big));
    free(big);
    tu_ck_err(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 4096), MSGBUS_ERR_TOO_LARGE);
    ck_assert_msg(strstr(msgbus_last_error(), "frame_max=4096"), "%s", msgbus_last_error());
    /* Exactly at the limit fits: the size computed is the size written. */
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 1, false, 131072));
    ck_assert(mb_amqp_out_fits(o, 131072));
    mb_amqp_out_free(o);
    msgbus_msg_free(m);

    /* A dead letter of a foreign message without an id: no message_id. */
    r = decode_foreign(NULL, 0, NULL, 0, "k");
    tu_ck_ok(mb_amqp_out_new(&o, "orders.dlq", NULL, 0, r, 1, false, 131072));
    ck_assert(!(o->props._flags & AMQP_BASIC_MESSAGE_ID_FLAG));
    mb_amqp_out_free(o);
    msgbus_msg_free(r);
}
END_TEST

START_TEST(open_refused_port_is_connect_error)
{
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_err(msgbus_open(&bus, "amqp://guest:hunter2@127.0.0.1:1/?connect_timeout_ms=2000", NULL),
              MSGBUS_ERR_CONNECT);
    ck_assert_ptr_null(bus);
    ck_assert_msg(strstr(msgbus_last_error(), "connection refused at 127.0.0.1:1"), "%s",
                  msgbus_last_error());
    ck_assert_msg(!strstr(msgbus_last_error(), "hunter2"), "password leaked: %s",
                  msgbus_last_error());
    ck_assert_int_lt(tu_now_ms() - t0, 3000);
}
END_TEST

START_TEST(open_unknown_option_fails_before_connecting)
{
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    /* 10.255.255.1 would hang until the connect timeout if it were tried. */
    tu_ck_err(msgbus_open(&bus, "amqp://10.255.255.1/?prefech=10", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "prefech"), "%s", msgbus_last_error());
    ck_assert_int_lt(tu_now_ms() - t0, 1000);
}
END_TEST

START_TEST(open_unreachable_host_times_out)
{
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_err(msgbus_open(&bus, "amqp://10.255.255.1/?connect_timeout_ms=300", NULL),
              MSGBUS_ERR_CONNECT);
    int64_t took = tu_now_ms() - t0;
    ck_assert_int_lt(took, 3000);
}
END_TEST


/* Acks: one multiple=true ack for the settled run at the front, singles
 * after a message the application still holds. */
static void ack(struct mb_backend_sub *bs, uint64_t tag)
{
    struct mb_amqp_tag *t = mb_amqp_tag_find(bs, tag);
    ck_assert_ptr_nonnull(t);
    t->state = MB_AMQP_TAG_ACK_NOW;
}

START_TEST(acks_batch_into_one_multiple_ack)
{
    struct mb_backend_sub bs;
    memset(&bs, 0, sizeof bs);
    for (uint64_t t = 1; t <= 10; t++)
        mb_amqp_tag_push(&bs, t);
    ack(&bs, 1);
    ack(&bs, 2);
    ack(&bs, 3);
    ack(&bs, 5);
    ack(&bs, 6);
    uint64_t multi, singles[8];
    size_t n = mb_amqp_ack_plan(&bs, &multi, singles, 8);
    ck_assert_uint_eq(multi, 3);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(singles[0], 5);
    ck_assert_uint_eq(singles[1], 6);
    ck_assert_uint_eq(bs.tag_len, 7); /* 4..10 stay: 4 is unsettled */

    /* 4 settles: a multiple ack up to 4 only (5 and 6 went already). */
    ack(&bs, 4);
    n = mb_amqp_ack_plan(&bs, &multi, singles, 8);
    ck_assert_uint_eq(multi, 4);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(bs.tag_len, 4); /* 7..10 */
    ck_assert_ptr_null(mb_amqp_tag_find(&bs, 6));

    /* Nothing settled: nothing to send. */
    n = mb_amqp_ack_plan(&bs, &multi, singles, 8);
    ck_assert_uint_eq(multi, 0);
    ck_assert_uint_eq(n, 0);

    /* More singles than fit: the rest comes on the next call. */
    for (uint64_t t = 11; t <= 30; t++)
        mb_amqp_tag_push(&bs, t);
    for (uint64_t t = 8; t <= 30; t++)
        ack(&bs, t);
    n = mb_amqp_ack_plan(&bs, &multi, singles, 8);
    ck_assert_uint_eq(multi, 0);
    ck_assert_uint_eq(n, 8);
    ck_assert_uint_eq(singles[0], 8);
    n = mb_amqp_ack_plan(&bs, &multi, singles, 8);
    ck_assert_uint_eq(n, 8);
    ck_assert_uint_eq(singles[0], 16);
    ack(&bs, 7);
    n = mb_amqp_ack_plan(&bs, &multi, singles, 8);
    ck_assert_uint_eq(multi, 30); /* 7 plus the remaining 24..30 */
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(bs.tag_len, 0);
    free(bs.tags);
}
END_TEST

/* The capability table follows the configuration: durable unless
 * x-expires may delete an idle group queue; every bit not claimed has a
 * reason; the size limit is max_message_bytes. */
START_TEST(capabilities_as_configured)
{
    struct mb_url *u = parse("amqp://h/?max_message_bytes=1000&queue_type=quorum");
    struct mb_amqp_conf c;
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    struct mb_caps caps = {0};
    mb_amqp_caps(&c, &caps);
    ck_assert_uint_eq(caps.bits, MSGBUS_CAP_DURABLE | MSGBUS_CAP_SHARED |
                                     MSGBUS_CAP_REDELIVERED | MSGBUS_CAP_LAG);
    ck_assert_uint_eq(caps.max_message, 1000);
    for (int i = 0; i < 10; i++) {
        if (caps.bits & (1ull << i))
            ck_assert_ptr_null(caps.why_not[i]);
        else
            ck_assert_msg(caps.why_not[i] && strlen(caps.why_not[i]) > 20,
                          "capability bit %d has no reason", i);
    }
    ck_assert(strstr(caps.why_not[0], "round-robin"));       /* key_order */
    ck_assert(strstr(caps.why_not[1], "routed to it"));      /* replay */
    ck_assert(strstr(caps.why_not[7], "management plugin")); /* list */
    ck_assert(strstr(caps.why_not[8], "delayed-message"));   /* delayed */
    mb_amqp_conf_free(&c);
    mb_url_free(u);

    u = parse("amqp://h/?x-expires=60000");
    tu_ck_ok(mb_amqp_conf_parse(u, &c));
    memset(&caps, 0, sizeof caps);
    mb_amqp_caps(&c, &caps);
    ck_assert(!(caps.bits & MSGBUS_CAP_DURABLE));
    ck_assert(caps.bits & MSGBUS_CAP_SHARED);
    ck_assert(strstr(caps.why_not[2], "x-expires"));
    ck_assert_uint_eq(caps.max_message, 128u * 1024 * 1024);
    mb_amqp_conf_free(&c);
    mb_url_free(u);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_conf");
    TCase *tc = tcase_create("conf");
    tcase_add_test(tc, defaults_are_documented_values);
    tcase_add_test(tc, amqps_hosts_vhost_and_options);
    tcase_add_test(tc, named_vhost_without_slash);
    tcase_add_test(tc, bad_options_are_named);
    tcase_add_test(tc, environment_variables_set_options);
    tcase_add_test(tc, quorum_and_queue_arguments);
    tcase_add_test(tc, several_hosts_mean_quorum_by_default);
    tcase_add_test(tc, group_queue_names);
    tcase_add_test(tc, partition_options_names_share_and_caps);
    tcase_add_test(tc, capabilities_as_configured);
    tcase_add_test(tc, codec_round_trip);
    tcase_add_test(tc, codec_republish_keeps_key_and_raises_attempt);
    tcase_add_test(tc, codec_quorum_delivery_count_and_foreign_headers);
    tcase_add_test(tc, received_ids_follow_the_id_rule);
    tcase_add_test(tc, received_headers_of_every_type);
    tcase_add_test(tc, foreign_reserved_headers_change_nothing_else);
    tcase_add_test(tc, empty_key_survives_the_round_trip);
    tcase_add_test(tc, headers_named_like_msgbus_wire_fields_do_not_double_them);
    tcase_add_test(tc, encoding_limits_fail_the_message_alone);
    tcase_add_test(tc, acks_batch_into_one_multiple_ack);
    tcase_add_test(tc, open_refused_port_is_connect_error);
    tcase_add_test(tc, open_unknown_option_fails_before_connecting);
    tcase_add_test(tc, open_unreachable_host_times_out);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
