/*
 * test_amqp_conf.c — the AMQP backend without a broker: URL options and
 * their errors, topology names, queue arguments, and the message codec
 * (msgbus message → AMQP properties → msgbus message).
 */
#include <amqp.h>
#include <stdlib.h>
#include <string.h>

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
    struct mb_amqp_out *o = mb_amqp_out_new("orders", NULL, 0, m, 1, false);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(o->topic, "orders");
    ck_assert_int_eq(o->routing_key.len, 3);
    ck_assert_int_eq(o->body.len, 8);
    ck_assert_int_eq(o->props.delivery_mode, 2);
    ck_assert_int_eq(o->props.timestamp, 1700000000);
    ck_assert_int_eq(o->props.message_id.len, strlen(msgbus_msg_id(m)));
    ck_assert(o->props._flags & AMQP_BASIC_CONTENT_TYPE_FLAG);

    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, o->routing_key, false));
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
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(codec_republish_keeps_key_and_raises_attempt)
{
    msgbus_msg_t *m = sample();
    struct mb_amqp_out *o = mb_amqp_out_new("", "orders.billing", 14, m, 3, true);
    ck_assert_str_eq(o->topic, "");
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, o->routing_key, false));
    size_t kl;
    const char *k = msgbus_msg_key(r, &kl);
    ck_assert_int_eq(kl, 3);
    ck_assert_int_eq(memcmp(k, "k-1", 3), 0);
    ck_assert_int_eq(msgbus_msg_attempt(r), 3);
    msgbus_msg_free(r);
    /* Redelivered by a classic queue: one more. */
    r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &o->props, o->routing_key, true));
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
    ck_assert(mb_amqp_decode(r, &p, amqp_empty_bytes, true));
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

START_TEST(open_refused_port_is_connect_error)
{
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_err(msgbus_open(&bus, "amqp://guest:hunter2@127.0.0.1:1/?connect_timeout_ms=2000", NULL),
              MSGBUS_ERR_CONNECT);
    ck_assert_ptr_null(bus);
    ck_assert_msg(strstr(msgbus_last_error(), "127.0.0.1:1"), "%s", msgbus_last_error());
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
    tcase_add_test(tc, group_queue_names);
    tcase_add_test(tc, codec_round_trip);
    tcase_add_test(tc, codec_republish_keeps_key_and_raises_attempt);
    tcase_add_test(tc, codec_quorum_delivery_count_and_foreign_headers);
    tcase_add_test(tc, acks_batch_into_one_multiple_ack);
    tcase_add_test(tc, open_refused_port_is_connect_error);
    tcase_add_test(tc, open_unknown_option_fails_before_connecting);
    tcase_add_test(tc, open_unreachable_host_times_out);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
