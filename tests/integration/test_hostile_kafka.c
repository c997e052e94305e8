/*
 * test_hostile_kafka.c — records msgbus did not write, sent by a raw
 * librdkafka producer inside the test to the real Kafka
 * (MSGBUS_TEST_KAFKA_URL), and what a msgbus subscriber makes of them
 * (docs/kafka.md, "What arrives → what msgbus reports"):
 *  - ce_id empty, null, with a space, a tab, non-ASCII, 400 bytes, with a
 *    NUL inside ("abc\0def" next to a real "abc"), repeated with equal and
 *    with different values: only a value that follows the id rule is an
 *    id; the raw value stays readable in msgbus-invalid-id; the memory
 *    inbox refuses the id-less ones (MSGBUS_ERR_INVALID) and never drops a
 *    different message as a duplicate;
 *  - header values with a NUL, 300-byte header names (counted in
 *    msgbus-invalid-headers), 10,000 headers, reserved msgbus-* names,
 *    null vs empty key, null payload, timestamps -1 and 1;
 *  - a message at and over the topic's max.message.bytes: MSGBUS_ERR_TOO_LARGE,
 *    nothing delivered, the consumer goes on;
 *  - a record with a 400-byte ce_id bridged to RabbitMQ
 *    (MSGBUS_TEST_AMQP_URL) with msgbus_publish: published once and
 *    confirmed, with a fresh id and the msgbus-invalid-id header;
 *  - the dead letter of a record without an id is written without ce_id.
 * Every test ends with a normal message: the consumer is not wedged.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "msgbus/inbox.h"
#include "testutil.h"

/* ---- the raw producer ---------------------------------------------------- */

struct hdr {
    const char *name;
    ssize_t name_len; /* -1: strlen */
    const void *value; /* NULL: a null value */
    ssize_t value_len; /* -1: strlen */
};

struct rec {
    const char *label; /* the payload, unless null_payload */
    bool null_payload;
    const void *key;   /* NULL: no key */
    size_t key_len;
    int64_t timestamp; /* 0: now (librdkafka's meaning of 0) */
    const struct hdr *hdrs;
    size_t nhdrs;
};

static rd_kafka_t *raw_producer(void)
{
    char errstr[512];
    const char *url = tu_broker_url("kafka");
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert_int_eq(rd_kafka_conf_set(conf, "bootstrap.servers", url + strlen("kafka://"),
                                       errstr, sizeof errstr), RD_KAFKA_CONF_OK);
    rd_kafka_conf_set(conf, "linger.ms", "0", errstr, sizeof errstr);
    rd_kafka_conf_set(conf, "message.max.bytes", "10000000", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    ck_assert_msg(rk != NULL, "rd_kafka_new: %s", errstr);
    return rk;
}

static void raw_send(rd_kafka_t *rk, const char *topic, const struct rec *r)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(r->nhdrs ? r->nhdrs : 1);
    for (size_t i = 0; i < r->nhdrs; i++)
        ck_assert_int_eq(rd_kafka_header_add(h, r->hdrs[i].name, r->hdrs[i].name_len,
                                             r->hdrs[i].value, r->hdrs[i].value_len), 0);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE(r->null_payload ? NULL : (void *)r->label,
                         r->null_payload ? 0 : strlen(r->label)),
        RD_KAFKA_V_KEY((void *)r->key, r->key_len), RD_KAFKA_V_TIMESTAMP(r->timestamp),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
    ck_assert_msg(err == 0, "producev: %s", rd_kafka_err2str(err));
}

static void raw_flush(rd_kafka_t *rk)
{
    ck_assert_int_eq(rd_kafka_flush(rk, 30000), 0);
    ck_assert_int_eq(rd_kafka_outq_len(rk), 0);
}

/* ---- the msgbus side ----------------------------------------------------- */

struct fixture {
    msgbus_t *bus;
    msgbus_sub_t *sub;
    char topic[128];
};

static void fixture_open(struct fixture *f, const char *prefix)
{
    char url[512];
    snprintf(url, sizeof url, "%s?partitions=1&fetch.wait.max.ms=10", tu_broker_url("kafka"));
    tu_unique(f->topic, sizeof f->topic, prefix);
    tu_ck_ok(msgbus_open(&f->bus, url, NULL));
    tu_ck_ok(msgbus_declare(f->bus, f->topic, "hostile"));
    tu_ck_ok(msgbus_subscribe(f->bus, f->topic, "hostile", &f->sub));
}

/* Receives `n` messages in publish order (one partition). */
static void receive_n(struct fixture *f, msgbus_msg_t **out, int n)
{
    for (int i = 0; i < n; i++) {
        out[i] = tu_receive(f->sub, 20000);
        ck_assert_msg(out[i] != NULL, "message %d of %d did not arrive", i + 1, n);
    }
}

static void expect_payload(msgbus_msg_t *m, const char *label)
{
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    ck_assert_msg(len == strlen(label) && memcmp(p, label, len) == 0, "got '%.*s', want '%s'",
                  (int)len, p, label);
}

/* A normal msgbus message after the hostile ones arrives: not wedged. */
static void expect_not_wedged(struct fixture *f)
{
    tu_publish_str(f->bus, f->topic, NULL, "still-flowing");
    msgbus_msg_t *m = tu_receive(f->sub, 20000);
    ck_assert_ptr_nonnull(m);
    expect_payload(m, "still-flowing");
    ck_assert_ptr_nonnull(msgbus_msg_id(m));
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
}

static void fixture_close(struct fixture *f)
{
    msgbus_sub_close(f->sub);
    msgbus_close(f->bus);
}

static int handled;
static int count_handled(void *opaque, msgbus_msg_t *msg)
{
    (void)opaque;
    (void)msg;
    handled++;
    return 0;
}

/* ---- ids ------------------------------------------------------------------ */

START_TEST(received_ids_follow_the_one_id_rule)
{
    static char long_id[401], id255[256], id256[257];
    memset(long_id, 'x', 400);
    memset(id255, 'k', 255);
    memset(id256, 'k', 256);
    static const struct {
        const char *label;
        struct hdr h[2];
        size_t nh;
        const char *id;      /* NULL: no id */
        const char *invalid; /* msgbus-invalid-id, NULL: none */
    } cases[] = {
        {"empty", {{"ce_id", -1, "", 0}}, 1, NULL, ""},
        {"null", {{"ce_id", -1, NULL, 0}}, 1, NULL, ""},
        {"space", {{"ce_id", -1, "a b", -1}}, 1, NULL, "a%20b"},
        {"tab", {{"ce_id", -1, "a\tb", -1}}, 1, NULL, "a%09b"},
        {"non-ascii", {{"ce_id", -1, "caf\xc3\xa9", -1}}, 1, NULL, "caf%C3%A9"},
        {"long", {{"ce_id", -1, long_id, 400}}, 1, NULL, long_id},
        {"nul-inside", {{"ce_id", -1, "abc\0def", 7}}, 1, NULL, "abc%00def"},
        {"real-abc", {{"ce_id", -1, "abc", -1}}, 1, "abc", NULL},
        {"repeat-same", {{"ce_id", -1, "dup1", -1}, {"ce_id", -1, "dup1", -1}}, 2, "dup1", NULL},
        {"repeat-differ", {{"ce_id", -1, "d1", -1}, {"ce_id", -1, "d2", -1}}, 2, NULL, "d1,d2"},
        {"id-255", {{"ce_id", -1, id255, 255}}, 1, id255, NULL},
        {"id-256", {{"ce_id", -1, id256, 256}}, 1, NULL, id256},
        {"no-ce_id", {{"other", -1, "v", -1}}, 1, NULL, NULL},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    struct fixture f;
    fixture_open(&f, "hostile-ids");
    rd_kafka_t *rk = raw_producer();
    for (int i = 0; i < N; i++) {
        struct rec r = {.label = cases[i].label, .hdrs = cases[i].h, .nhdrs = cases[i].nh};
        raw_send(rk, f.topic, &r);
    }
    raw_flush(rk);
    msgbus_msg_t *got[N];
    receive_n(&f, got, N);

    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "hostile", 1000, 0));
    int applied = 0, refused = 0, duplicates = 0;
    handled = 0;
    for (int i = 0; i < N; i++) {
        msgbus_msg_t *m = got[i];
        expect_payload(m, cases[i].label);
        const char *id = msgbus_msg_id(m), *inv = msgbus_msg_header(m, "msgbus-invalid-id");
        if (cases[i].id) {
            ck_assert_msg(id && strcmp(id, cases[i].id) == 0, "%s: id '%s'", cases[i].label,
                          id ? id : "(none)");
        } else {
            ck_assert_msg(id == NULL, "%s: id '%s', want none", cases[i].label, id);
        }
        if (cases[i].invalid)
            ck_assert_msg(inv && strcmp(inv, cases[i].invalid) == 0,
                          "%s: msgbus-invalid-id '%s', want '%s'", cases[i].label,
                          inv ? inv : "(none)", cases[i].invalid);
        else
            ck_assert_msg(inv == NULL, "%s: msgbus-invalid-id '%s'", cases[i].label, inv);
        ck_assert_ptr_null(msgbus_msg_header(m, "ce_id")); /* the id is not a header */

        msgbus_inbox_outcome_t out = MSGBUS_INBOX_REJECTED;
        msgbus_err_t e = msgbus_inbox_handle(ib, m, count_handled, NULL, &out);
        if (e == MSGBUS_ERR_INVALID) { /* no id: refused, left unsettled */
            ck_assert_ptr_null(id);
            refused++;
            tu_ck_ok(msgbus_ack(m));
        } else {
            tu_ck_ok(e);
            if (out == MSGBUS_INBOX_DUPLICATE)
                duplicates++;
            else if (out == MSGBUS_INBOX_APPLIED)
                applied++;
        }
        msgbus_msg_free(m);
    }
    msgbus_inbox_close(ib);
    printf("ids: %d records, %d applied by the inbox, %d refused (no id), %d dropped as "
           "duplicates, handler ran %d times\n", N, applied, refused, duplicates, handled);
    ck_assert_int_eq(applied, 3); /* abc (after "abc\0def"), dup1, the 255-byte id */
    ck_assert_int_eq(refused, N - 3);
    ck_assert_int_eq(duplicates, 0);
    ck_assert_int_eq(handled, 3);
    expect_not_wedged(&f);
    rd_kafka_destroy(rk);
    fixture_close(&f);
}
END_TEST

/* ---- headers, keys, payloads, timestamps --------------------------------- */

START_TEST(received_headers_keys_payloads_and_timestamps)
{
    static char name300[301];
    memset(name300, 'n', 300);
    enum { MANY = 10000 };
    static struct hdr many[MANY + 1];
    static char many_names[MANY][8];
    many[0] = (struct hdr){"ce_id", -1, "many-id", -1};
    for (int i = 0; i < MANY; i++) {
        snprintf(many_names[i], sizeof many_names[i], "h%d", i);
        many[i + 1] = (struct hdr){many_names[i], -1, "v", -1};
    }
    const struct hdr nul_value[] = {{"ce_id", -1, "nulv", -1}, {"h-nul", -1, "a\0b", 3},
                                    {"ok", -1, "kept", -1}};
    const struct hdr long_name[] = {{"ce_id", -1, "longn", -1}, {name300, 300, "v", -1}};
    const struct hdr reserved[] = {{"ce_id", -1, "resv", -1},
                                   {"msgbus-attempt", -1, "7", -1},
                                   {"msgbus-dlq-topic", -1, "elsewhere", -1},
                                   {"msgbus-invalid-id", -1, "forged", -1}};
    const struct hdr forged_and_own[] = {{"msgbus-invalid-id", -1, "forged", -1},
                                         {"ce_id", -1, "bad id", -1},
                                         {"msgbus-invalid-headers", -1, "5", -1},
                                         {"x", -1, "a\0b", 3}};
    const struct hdr null_value[] = {{"ce_id", -1, "nullh", -1}, {"empty-ish", -1, NULL, 0}};
    const struct hdr plain[] = {{"ce_id", -1, "plain", -1}};
    const struct rec recs[] = {
        {.label = "nul-value", .hdrs = nul_value, .nhdrs = 3},
        {.label = "name-300", .hdrs = long_name, .nhdrs = 2},
        {.label = "many", .hdrs = many, .nhdrs = MANY + 1},
        {.label = "reserved", .hdrs = reserved, .nhdrs = 4},
        {.label = "forged-and-own", .hdrs = forged_and_own, .nhdrs = 4},
        {.label = "null-value", .hdrs = null_value, .nhdrs = 2},
        {.label = "null-key", .hdrs = plain, .nhdrs = 1},
        {.label = "empty-key", .key = "", .key_len = 0, .hdrs = plain, .nhdrs = 1},
        {.label = "null-payload", .null_payload = true, .hdrs = plain, .nhdrs = 1},
        {.label = "ts-minus-1", .timestamp = -1, .hdrs = plain, .nhdrs = 1},
        {.label = "ts-1", .timestamp = 1, .hdrs = plain, .nhdrs = 1},
    };
    enum { N = sizeof recs / sizeof recs[0] };
    struct fixture f;
    fixture_open(&f, "hostile-hdrs");
    rd_kafka_t *rk = raw_producer();
    for (int i = 0; i < N; i++)
        raw_send(rk, f.topic, &recs[i]);
    raw_flush(rk);
    int64_t t0 = tu_now_ms();
    msgbus_msg_t *got[N];
    receive_n(&f, got, N);
    int64_t took = tu_now_ms() - t0;

    /* a NUL in a value: left out, counted; the others kept */
    ck_assert_ptr_null(msgbus_msg_header(got[0], "h-nul"));
    ck_assert_str_eq(msgbus_msg_header(got[0], "ok"), "kept");
    ck_assert_str_eq(msgbus_msg_header(got[0], "msgbus-invalid-headers"), "1");
    ck_assert_str_eq(msgbus_msg_id(got[0]), "nulv");
    /* a 300-byte name: left out, counted */
    ck_assert_ptr_null(msgbus_msg_header(got[1], name300));
    ck_assert_str_eq(msgbus_msg_header(got[1], "msgbus-invalid-headers"), "1");
    /* 10,000 headers: all there */
    ck_assert_uint_eq(msgbus_msg_header_count(got[2]), MANY);
    ck_assert_str_eq(msgbus_msg_header(got[2], "h9999"), "v");
    ck_assert_str_eq(msgbus_msg_id(got[2]), "many-id");
    /* reserved names from the wire are headers like any other: they do not
     * change the attempt; a foreign msgbus-invalid-id next to a valid id
     * stays as it came */
    ck_assert_int_eq(msgbus_msg_attempt(got[3]), 1);
    ck_assert_str_eq(msgbus_msg_header(got[3], "msgbus-attempt"), "7");
    ck_assert_str_eq(msgbus_msg_header(got[3], "msgbus-dlq-topic"), "elsewhere");
    ck_assert_str_eq(msgbus_msg_header(got[3], "msgbus-invalid-id"), "forged");
    ck_assert_str_eq(msgbus_msg_id(got[3]), "resv");
    /* the record's own invalid id wins over a forged one (then counted),
     * and a msgbus-invalid-headers from the wire is added to */
    ck_assert_ptr_null(msgbus_msg_id(got[4]));
    ck_assert_str_eq(msgbus_msg_header(got[4], "msgbus-invalid-id"), "bad%20id");
    ck_assert_str_eq(msgbus_msg_header(got[4], "msgbus-invalid-headers"), "7");
    /* a null header value is "" */
    ck_assert_str_eq(msgbus_msg_header(got[5], "empty-ish"), "");
    /* null key vs empty key */
    size_t kl = 99;
    ck_assert_ptr_null(msgbus_msg_key(got[6], &kl));
    ck_assert_uint_eq(kl, 0);
    ck_assert_ptr_nonnull(msgbus_msg_key(got[7], &kl));
    ck_assert_uint_eq(kl, 0);
    /* null payload: empty */
    size_t pl = 99;
    ck_assert_ptr_nonnull(msgbus_msg_payload(got[8], &pl));
    ck_assert_uint_eq(pl, 0);
    /* no timestamp (-1): the receive time; 1 stays 1 */
    int64_t now = (int64_t)time(NULL) * 1000;
    ck_assert_int_gt(msgbus_msg_timestamp(got[9]), now - 600000);
    ck_assert_int_lt(msgbus_msg_timestamp(got[9]), now + 600000);
    ck_assert_int_eq(msgbus_msg_timestamp(got[10]), 1);
    printf("headers: %d records checked (10,000 headers on one, received with the rest in "
           "%lld ms)\n", N, (long long)took);
    for (int i = 0; i < N; i++) {
        if (i != 8) /* the null payload was checked above */
            expect_payload(got[i], recs[i].label);
        tu_ck_ok(msgbus_ack(got[i]));
        msgbus_msg_free(got[i]);
    }
    expect_not_wedged(&f);
    rd_kafka_destroy(rk);
    fixture_close(&f);
}
END_TEST

/* ---- sizes ------------------------------------------------------------------ */

static void create_topic_limited(const char *topic, const char *max_bytes)
{
    char errstr[512];
    const char *url = tu_broker_url("kafka");
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", url + strlen("kafka://"), errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    ck_assert_ptr_nonnull(rk);
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, 1, 1, errstr, sizeof errstr);
    ck_assert_int_eq(rd_kafka_NewTopic_set_config(nt, "max.message.bytes", max_bytes), 0);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    ck_assert_ptr_nonnull(ev);
    size_t n = 0;
    const rd_kafka_topic_result_t **res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_msg(rd_kafka_topic_result_error(res[0]) == 0, "create %s: %s", topic,
                  rd_kafka_topic_result_error_string(res[0]));
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_destroy(rk);
}

static msgbus_err_t publish_size(msgbus_t *bus, const char *topic, const char *label, size_t size,
                                 struct tu_reports *rp)
{
    char *buf = malloc(size);
    memset(buf, 'z', size);
    memcpy(buf, label, strlen(label)); /* starts with its label */
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, buf, size));
    msgbus_err_t e = msgbus_publish(bus, topic, m, tu_on_report, rp);
    msgbus_msg_free(m);
    free(buf);
    return e;
}

START_TEST(payloads_at_and_over_the_topic_limit)
{
    enum { LIMIT = 16384 };
    struct fixture f;
    char url[512];
    snprintf(url, sizeof url, "%s?fetch.wait.max.ms=10", tu_broker_url("kafka"));
    tu_unique(f.topic, sizeof f.topic, "hostile-size");
    create_topic_limited(f.topic, "16384");
    tu_ck_ok(msgbus_open(&f.bus, url, NULL));
    tu_ck_ok(msgbus_subscribe(f.bus, f.topic, "hostile", &f.sub));

    /* The broker's limit: refused in the report, nothing delivered. */
    struct tu_reports rp = {0};
    tu_ck_ok(publish_size(f.bus, f.topic, "fits", LIMIT - 600, &rp));
    tu_ck_ok(msgbus_flush(f.bus, 30000, NULL));
    tu_ck_ok(publish_size(f.bus, f.topic, "exact", LIMIT, &rp));
    tu_ck_err(msgbus_flush(f.bus, 30000, NULL), MSGBUS_ERR_DELIVERY);
    ck_assert_int_eq(rp.status, MSGBUS_ERR_TOO_LARGE);
    printf("at the limit: %s: %s\n", msgbus_err_name(rp.status), rp.error);
    tu_ck_ok(publish_size(f.bus, f.topic, "over", LIMIT + 1, &rp));
    tu_ck_err(msgbus_flush(f.bus, 30000, NULL), MSGBUS_ERR_DELIVERY);
    ck_assert_int_eq(rp.status, MSGBUS_ERR_TOO_LARGE);
    ck_assert_int_eq(rp.ok, 1);
    ck_assert_int_eq(rp.failed, 2);

    /* The producer told the limit (message.max.bytes): refused at publish,
     * nothing sent, nothing owed. */
    msgbus_t *bus2 = NULL;
    snprintf(url, sizeof url, "%s?message.max.bytes=%d", tu_broker_url("kafka"), LIMIT);
    tu_ck_ok(msgbus_open(&bus2, url, NULL));
    struct tu_reports rp2 = {0};
    tu_ck_err(publish_size(bus2, f.topic, "over-local", LIMIT + 1, &rp2), MSGBUS_ERR_TOO_LARGE);
    printf("over the producer's limit: %s\n", msgbus_last_error());
    ck_assert_uint_eq(msgbus_outstanding(bus2), 0);
    msgbus_close(bus2);
    ck_assert_int_eq(rp2.ok + rp2.failed, 0);

    msgbus_msg_t *m = tu_receive(f.sub, 20000);
    ck_assert_ptr_nonnull(m);
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    ck_assert_uint_eq(len, LIMIT - 600);
    ck_assert_int_eq(memcmp(p, "fits", 4), 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    expect_not_wedged(&f); /* and nothing else came in between */
    printf("sizes: 1 delivered, 2 refused by the broker, 1 refused at publish\n");
    fixture_close(&f);
}
END_TEST

/* ---- bridge to RabbitMQ --------------------------------------------------- */

START_TEST(invalid_id_bridged_to_amqp_publishes_once)
{
    static char long_id[401];
    memset(long_id, 'x', 400);
    struct fixture f;
    fixture_open(&f, "hostile-bridge");
    rd_kafka_t *rk = raw_producer();
    const struct hdr h[] = {{"ce_id", -1, long_id, 400}};
    struct rec r = {.label = "bridged", .hdrs = h, .nhdrs = 1};
    raw_send(rk, f.topic, &r);
    raw_flush(rk);
    msgbus_msg_t *in = tu_receive(f.sub, 20000);
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_null(msgbus_msg_id(in));

    msgbus_t *amqp = NULL;
    char topic[128];
    tu_unique(topic, sizeof topic, "hostile-bridge");
    tu_ck_ok(msgbus_open(&amqp, tu_broker_url("amqp"), NULL));
    tu_ck_ok(msgbus_declare(amqp, topic, "bridge"));
    msgbus_sub_t *out = NULL;
    tu_ck_ok(msgbus_subscribe(amqp, topic, "bridge", &out));
    struct tu_reports rp = {0};
    int64_t t0 = tu_now_ms();
    tu_ck_ok(msgbus_publish(amqp, topic, in, tu_on_report, &rp));
    tu_ck_ok(msgbus_flush(amqp, 10000, NULL));
    int64_t took = tu_now_ms() - t0;
    ck_assert_int_eq(rp.ok, 1);
    ck_assert_int_eq(rp.failed, 0);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);

    msgbus_msg_t *copy = tu_receive(out, 10000);
    ck_assert_ptr_nonnull(copy);
    expect_payload(copy, "bridged");
    ck_assert_ptr_nonnull(msgbus_msg_id(copy)); /* a fresh one */
    ck_assert_str_eq(msgbus_msg_header(copy, "msgbus-invalid-id"), long_id);
    tu_ck_ok(msgbus_ack(copy));
    msgbus_msg_free(copy);
    msgbus_msg_t *extra = tu_receive(out, 2000);
    ck_assert_msg(extra == NULL, "a second copy arrived");
    printf("bridge: confirmed once in %lld ms, one copy with a fresh id and msgbus-invalid-id "
           "(400 bytes)\n", (long long)took);
    msgbus_sub_close(out);
    msgbus_close(amqp);
    expect_not_wedged(&f);
    rd_kafka_destroy(rk);
    fixture_close(&f);
}
END_TEST

/* A dead letter of a message that came without an id is written without
 * ce_id (not an empty or null one): it arrives without an id and without
 * msgbus-invalid-id, as the original did. */
START_TEST(dead_letter_of_an_id_less_record_has_no_ce_id)
{
    struct fixture f;
    fixture_open(&f, "hostile-dlq");
    char dlq[160];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.topic);
    tu_ck_ok(msgbus_declare(f.bus, dlq, "letters"));
    msgbus_sub_t *letters = NULL;
    tu_ck_ok(msgbus_subscribe(f.bus, dlq, "letters", &letters));
    rd_kafka_t *rk = raw_producer();
    const struct hdr h[] = {{"other", -1, "v", -1}};
    struct rec r = {.label = "no-id", .hdrs = h, .nhdrs = 1};
    raw_send(rk, f.topic, &r);
    raw_flush(rk);
    msgbus_msg_t *m = tu_receive(f.sub, 20000);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_null(msgbus_msg_id(m));
    tu_ck_ok(msgbus_dead_letter(m, "poison"));
    msgbus_msg_free(m);
    msgbus_msg_t *l = tu_receive(letters, 20000);
    ck_assert_ptr_nonnull(l);
    expect_payload(l, "no-id");
    ck_assert_ptr_null(msgbus_msg_id(l));
    ck_assert_ptr_null(msgbus_msg_header(l, "msgbus-invalid-id"));
    ck_assert_str_eq(msgbus_msg_header(l, "other"), "v");
    ck_assert_ptr_nonnull(msgbus_msg_header(l, "msgbus-dlq-error"));
    printf("dead letter of an id-less record: no id, no msgbus-invalid-id, dlq headers set\n");
    tu_ck_ok(msgbus_ack(l));
    msgbus_msg_free(l);
    msgbus_sub_close(letters);
    expect_not_wedged(&f);
    rd_kafka_destroy(rk);
    fixture_close(&f);
}
END_TEST

static Suite *hostile_suite(void)
{
    Suite *s = suite_create("hostile_kafka");
    TCase *tc = tcase_create("hostile");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, received_ids_follow_the_one_id_rule);
    tcase_add_test(tc, received_headers_keys_payloads_and_timestamps);
    tcase_add_test(tc, payloads_at_and_over_the_topic_limit);
    tcase_add_test(tc, invalid_id_bridged_to_amqp_publishes_once);
    tcase_add_test(tc, dead_letter_of_an_id_less_record_has_no_ce_id);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run_suite(hostile_suite());
}
