/*
 * test_kafka_mock.c — the Kafka backend's error paths against librdkafka's
 * in-process mock cluster (rd_kafka_mock_*): no broker needed, each test
 * runs in about a second.
 *
 * Promises tested: an unreachable cluster is MSGBUS_ERR_CONNECT within the
 * configured timeout; a property librdkafka refuses is named in the error
 * with librdkafka's text; msgbus-owned properties are refused; oversized
 * messages are MSGBUS_ERR_TOO_LARGE, before sending and when the broker
 * refuses them; request errors the broker returns reach each message's
 * callback exactly once with their real outcome; retriable errors are
 * retried by the idempotent producer without duplicates in the reports;
 * auto.offset.reset is read as the default start position; the capability
 * bits follow the producer's settings; a refused commit is made again.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <errno.h> /* program_invocation_short_name */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"
#include "tu_kafka_raw.h"
#include "backends/kafka.h"
#include "core/bus.h"
#include "core/internal.h"
#include "core/msg.h"

/* A mock cluster lives inside a librdkafka handle of its own. */
struct mock {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    char url[512];
};

static void mock_start_n(struct mock *mk, int brokers, const char *query)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
    mk->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    ck_assert_msg(mk->rk != NULL, "rd_kafka_new: %s", errstr);
    mk->mc = rd_kafka_mock_cluster_new(mk->rk, brokers);
    ck_assert_ptr_nonnull(mk->mc);
    ck_assert_int_eq(rd_kafka_mock_topic_create(mk->mc, "t1", 1, 1), 0);
    snprintf(mk->url, sizeof mk->url, "kafka://%s%s%s", rd_kafka_mock_cluster_bootstraps(mk->mc),
             query && *query ? "?" : "", query ? query : "");
}

static void mock_start(struct mock *mk, const char *query)
{
    mock_start_n(mk, 1, query);
}

static void mock_stop(struct mock *mk)
{
    rd_kafka_mock_cluster_destroy(mk->mc);
    rd_kafka_destroy(mk->rk);
}

static void publish(msgbus_t *bus, const char *topic, size_t len, struct tu_reports *rp)
{
    char *buf = calloc(1, len + 1);
    memset(buf, 'x', len);
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, buf, len));
    tu_ck_ok(msgbus_publish(bus, topic, m, tu_on_report, rp));
    msgbus_msg_free(m);
    free(buf);
}

START_TEST(broker_down_is_connect_error_within_timeout)
{
    struct mock mk;
    mock_start(&mk, "connect_timeout_ms=800");
    rd_kafka_mock_broker_set_down(mk.mc, 1);
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_err(msgbus_open(&bus, mk.url, NULL), MSGBUS_ERR_CONNECT);
    int64_t took = tu_now_ms() - t0;
    printf("broker down: open failed after %lld ms: %s\n", (long long)took, msgbus_last_error());
    ck_assert_ptr_null(bus);
    ck_assert_int_ge(took, 700);
    ck_assert_int_lt(took, 2500);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "connect_timeout_ms"));
    mock_stop(&mk);
}
END_TEST

START_TEST(nothing_listening_is_connect_error)
{
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_err(msgbus_open(&bus, "kafka://127.0.0.1:1?connect_timeout_ms=500", NULL),
              MSGBUS_ERR_CONNECT);
    ck_assert_int_lt(tu_now_ms() - t0, 2000);
    ck_assert_ptr_null(bus);
}
END_TEST

START_TEST(refused_property_is_named_with_librdkafka_text)
{
    struct mock mk;
    mock_start(&mk, "linger.ms=banana");
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, mk.url, NULL), MSGBUS_ERR_CONFIG);
    printf("refused: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "linger.ms"));
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "Invalid value"));
    mock_stop(&mk);

    mock_start(&mk, "lingr.ms=5");
    tu_ck_err(msgbus_open(&bus, mk.url, NULL), MSGBUS_ERR_CONFIG);
    printf("unknown: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "lingr.ms"));
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "No such configuration property"));
    mock_stop(&mk);

    mock_start(&mk, "group.id=mine");
    tu_ck_err(msgbus_open(&bus, mk.url, NULL), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "group.id"));
    ck_assert_ptr_null(bus);
    mock_stop(&mk);
}
END_TEST

START_TEST(environment_property_passes_through)
{
    struct mock mk;
    mock_start(&mk, NULL);
    setenv("MSGBUS_KAFKA_LINGER_MS", "nope", 1);
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, mk.url, NULL), MSGBUS_ERR_CONFIG);
    printf("env: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "linger.ms"));
    setenv("MSGBUS_KAFKA_LINGER_MS", "2", 1);
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    unsetenv("MSGBUS_KAFKA_LINGER_MS");
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

START_TEST(too_large_is_refused_before_sending)
{
    struct mock mk;
    mock_start(&mk, "message.max.bytes=10000");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    char *big = calloc(1, 20000);
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, big, 20000));
    tu_ck_err(msgbus_publish(bus, "t1", m, NULL, NULL), MSGBUS_ERR_TOO_LARGE);
    printf("too large: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "message.max.bytes"));
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    msgbus_msg_free(m);
    free(big);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

START_TEST(every_message_confirmed_once)
{
    struct mock mk;
    mock_start(&mk, NULL);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    struct tu_reports rp = {0};
    for (int i = 0; i < 500; i++)
        publish(bus, "t1", 64, &rp);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    printf("confirmed: ok=%d failed=%d\n", rp.ok, rp.failed);
    ck_assert_int_eq(rp.ok, 500);
    ck_assert_int_eq(rp.failed, 0);
    msgbus_close(bus);
    ck_assert_int_eq(rp.ok, 500);
    mock_stop(&mk);
}
END_TEST

/* Reads every partition of `topic` from the start with a plain consumer
 * and checks that each of the `n` records carries the topic's own name. */
static void expect_records_named(struct mock *mk, const char *topic, int n)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(mk->mc), errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "group.id", "check", errstr, sizeof errstr);
    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", errstr, sizeof errstr);
    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    ck_assert_msg(rk != NULL, "rd_kafka_new: %s", errstr);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    ck_assert_int_eq(rd_kafka_metadata(rk, 0, rkt, &md, 5000), 0);
    ck_assert_int_eq(md->topic_cnt, 1);
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
    for (int p = 0; p < md->topics[0].partition_cnt; p++)
        rd_kafka_topic_partition_list_add(tl, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    ck_assert_int_eq(rd_kafka_assign(rk, tl), 0);
    rd_kafka_topic_partition_list_destroy(tl);
    int got = 0;
    for (int tries = 0; got < n && tries < 100; tries++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (!m->err) {
            ck_assert_msg(m->len == strlen(topic) && memcmp(m->payload, topic, m->len) == 0,
                          "a record in '%s' says '%.*s'", topic, (int)m->len,
                          (const char *)m->payload);
            got++;
        }
        rd_kafka_message_destroy(m);
    }
    ck_assert_int_eq(got, n);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

/* The producer keeps handles for its first 64 topics and names the rest
 * per message: both paths must land every record in its own topic. */
START_TEST(records_reach_their_topic_past_the_handle_cache)
{
    enum { TOPICS = 70, EACH = 5 };
    struct mock mk;
    mock_start(&mk, NULL);
    msgbus_t *bus = NULL; /* the mock cluster creates each topic on first use */
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    struct tu_reports rp = {0};
    for (int i = 0; i < EACH; i++) {
        for (int t = 0; t < TOPICS; t++) {
            char name[32];
            snprintf(name, sizeof name, "topic-%02d", t);
            msgbus_msg_t *m = NULL;
            tu_ck_ok(msgbus_msg_new(&m, name, strlen(name)));
            tu_ck_ok(msgbus_publish(bus, name, m, tu_on_report, &rp));
            msgbus_msg_free(m);
        }
    }
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    printf("topics: %d, confirmed ok=%d failed=%d\n", TOPICS, rp.ok, rp.failed);
    ck_assert_int_eq(rp.ok, TOPICS * EACH);
    msgbus_close(bus);
    expect_records_named(&mk, "topic-00", EACH);
    expect_records_named(&mk, "topic-63", EACH);
    expect_records_named(&mk, "topic-64", EACH);
    expect_records_named(&mk, "topic-69", EACH);
    mock_stop(&mk);
}
END_TEST

/* Received messages live inside their delivered batch (kafka_consumer.c):
 * the batch goes only when its last message is freed. Messages freed out
 * of order, one kept by a pending retry, and some kept past the
 * subscription's and the bus's close must all stay readable until freed
 * (ASan runs this suite: a batch freed early is a use-after-free here). */
START_TEST(received_messages_outlive_their_batch_order_and_close)
{
    enum { N = 3000, KEEP = 40 };
    struct mock mk;
    /* The mock cluster has t1 and cannot create topics through the Admin
     * API: subscribe first (a new group starts at the end), then publish. */
    mock_start(&mk, "create_topics=false&fetch.wait.max.ms=10");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t1", "g", "retry_initial_ms=10", &sub));
    struct tu_reports rp = {0};
    for (int i = 0; i < N; i++) {
        char text[16];
        int len = snprintf(text, sizeof text, "m%d", i);
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, text, (size_t)len));
        tu_ck_ok(msgbus_publish(bus, "t1", m, tu_on_report, &rp));
        msgbus_msg_free(m);
    }
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(rp.ok, N);
    static msgbus_msg_t *got[N + 1];
    static char want[N + 1][16];
    int n = 0, retried = 0;
    while (n < N + 1) {
        msgbus_msg_t *m = tu_receive(sub, 10000);
        ck_assert_ptr_nonnull(m);
        size_t len;
        const char *p = msgbus_msg_payload(m, &len);
        snprintf(want[n], sizeof want[n], "%.*s", (int)len, p);
        if (n == 10) { /* the core keeps this one for its retry */
            tu_ck_ok(msgbus_nack(m));
            msgbus_msg_free(m);
            got[n++] = NULL;
            continue;
        }
        if (msgbus_msg_attempt(m) == 2)
            retried++;
        tu_ck_ok(msgbus_ack(m));
        got[n++] = m;
    }
    ck_assert_int_eq(retried, 1);
    /* Free every third message, then the rest backwards, keeping KEEP. */
    for (int i = 0; i < n; i += 3) {
        msgbus_msg_free(got[i]);
        got[i] = NULL;
    }
    for (int i = n - 1, kept = 0; i >= 0; i--) {
        if (!got[i])
            continue;
        if (kept < KEEP && i % 7 == 1) {
            kept++;
            continue;
        }
        msgbus_msg_free(got[i]);
        got[i] = NULL;
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    int checked = 0;
    for (int i = 0; i < n; i++) {
        if (!got[i])
            continue;
        size_t len;
        const char *p = msgbus_msg_payload(got[i], &len);
        ck_assert_int_eq((int)len, (int)strlen(want[i]));
        ck_assert_int_eq(memcmp(p, want[i], len), 0);
        ck_assert_ptr_nonnull(msgbus_msg_id(got[i]));
        msgbus_msg_free(got[i]);
        checked++;
    }
    printf("embedded: %d received, %d kept past close and still intact\n", n, checked);
    ck_assert_int_eq(checked, KEEP);
    mock_stop(&mk);
}
END_TEST

START_TEST(broker_request_error_reaches_the_callback)
{
    struct mock mk;
    mock_start(&mk, NULL);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    struct tu_reports rp = {0};
    publish(bus, "t1", 10, &rp); /* warm up: producer id and leader known */
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));

    /* Broker-side size refusal: not retriable. */
    rd_kafka_mock_push_request_errors(mk.mc, 0 /* Produce */, 1,
                                      RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    publish(bus, "t1", 10, &rp);
    size_t failed = 0;
    tu_ck_err(msgbus_flush(bus, 5000, &failed), MSGBUS_ERR_DELIVERY);
    printf("broker refusal: failed=%zu status=%s error=%s\n", failed,
           msgbus_err_name(rp.status), rp.error);
    ck_assert_uint_eq(failed, 1);
    ck_assert_int_eq(rp.failed, 1);
    ck_assert_int_eq(rp.status, MSGBUS_ERR_TOO_LARGE);
    ck_assert_ptr_nonnull(strstr(rp.error, "MSG_SIZE_TOO_LARGE"));

    /* Retriable errors: the idempotent producer retries; one report each. */
    rd_kafka_mock_push_request_errors(mk.mc, 0, 2, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                      RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
    for (int i = 0; i < 10; i++)
        publish(bus, "t1", 10, &rp);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    printf("retried: ok=%d failed=%d\n", rp.ok, rp.failed);
    ck_assert_int_eq(rp.ok, 11);
    ck_assert_int_eq(rp.failed, 1);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

/* ---- settings msgbus cannot honour, credentials, secrets (issue 16) ---- */

/* Every log line msgbus emits, for tests that look for what must not be
 * there. */
struct lines {
    char *text;
    size_t len, cap;
    int count;
};

static void on_log_line(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)level;
    struct lines *l = opaque;
    size_t n = strlen(line);
    if (l->len + n + 2 > l->cap) {
        size_t cap = (l->cap + n + 2) * 2;
        char *t = realloc(l->text, cap);
        ck_assert_ptr_nonnull(t);
        l->text = t;
        l->cap = cap;
    }
    memcpy(l->text + l->len, line, n);
    l->len += n;
    l->text[l->len++] = '\n';
    l->text[l->len] = '\0';
    l->count++;
}

/* Opens `url` and expects `want`; returns msgbus_last_error() (copied). */
static const char *open_expect(const char *url, msgbus_err_t want)
{
    static char err[1024];
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, url, NULL), want);
    snprintf(err, sizeof err, "%s", msgbus_last_error());
    if (bus)
        msgbus_close(bus);
    return err;
}

START_TEST(options_msgbus_cannot_honour_are_refused_by_name)
{
    static const struct {
        const char *option, *alternative;
    } cases[] = {
        {"transactional.id=tx1", "outbox"},
        {"transaction.timeout.ms=60000", "outbox"},
        {"auto.offset.reset=error", "start="},
        {"auto.offset.reset=sometimes", "start=earliest"},
        {"enable.partition.eof=true", "end-of-partition"},
        {"group.instance.id=me", "one consumer per subscription"},
        {"delivery.report.only.error=true", "delivery report"},
        {"auto.commit.interval.ms=1000", "commit_interval_ms"},
        {"enable.auto.commit=true", "msgbus_ack"},
        {"log.queue=true", "msgbus_set_log"},
        {"offset.store.method=file", "group on the brokers"},
        {"bootstrap.servers=other:9092", "from the URL"},
        {"group.id=mine", "msgbus_subscribe"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char url[256], name[64];
        snprintf(url, sizeof url, "kafka://127.0.0.1:1?connect_timeout_ms=300&%s",
                 cases[i].option);
        snprintf(name, sizeof name, "'%.*s'", (int)strcspn(cases[i].option, "="),
                 cases[i].option);
        const char *err = open_expect(url, MSGBUS_ERR_CONFIG);
        printf("refused: %s\n", err);
        ck_assert_msg(strstr(err, name), "'%s' does not name %s", err, name);
        ck_assert_msg(strstr(err, cases[i].alternative), "'%s' does not say '%s'", err,
                      cases[i].alternative);
    }
    /* The same from the environment. */
    setenv("MSGBUS_KAFKA_TRANSACTIONAL_ID", "tx1", 1);
    const char *err = open_expect("kafka://127.0.0.1:1?connect_timeout_ms=300",
                                  MSGBUS_ERR_CONFIG);
    unsetenv("MSGBUS_KAFKA_TRANSACTIONAL_ID");
    ck_assert_ptr_nonnull(strstr(err, "MSGBUS_KAFKA_TRANSACTIONAL_ID"));
    ck_assert_ptr_nonnull(strstr(err, "outbox"));
}
END_TEST

/* auto.offset.reset is read, not passed on: each of librdkafka's spellings
 * becomes the backend's default start (start= not given), and the
 * consumers keep auto.offset.reset=earliest for offsets retention deleted. */
START_TEST(auto_offset_reset_is_the_default_start)
{
    static const struct {
        const char *value;
        enum mb_start_kind kind;
    } cases[] = {
        {"earliest", MB_START_EARLIEST}, {"smallest", MB_START_EARLIEST},
        {"beginning", MB_START_EARLIEST}, {"EARLIEST", MB_START_EARLIEST},
        {"latest", MB_START_LATEST},     {"largest", MB_START_LATEST},
        {"end", MB_START_LATEST},
    };
    struct mock mk;
    mock_start(&mk, NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0] + 1; i++) {
        char url[600];
        if (i < sizeof cases / sizeof cases[0])
            snprintf(url, sizeof url, "%s?auto.offset.reset=%s", mk.url, cases[i].value);
        else
            snprintf(url, sizeof url, "%s", mk.url); /* not given: latest */
        msgbus_t *bus = NULL;
        tu_ck_ok(msgbus_open(&bus, url, NULL));
        enum mb_start_kind want = i < sizeof cases / sizeof cases[0] ? cases[i].kind
                                                                     : MB_START_LATEST;
        printf("%s -> default start %d\n", url, (int)bus->be->default_start);
        ck_assert_int_eq(bus->be->default_start, want);
        ck_assert_ptr_null(mb_kafka_prop(bus->be, "auto.offset.reset"));
        msgbus_close(bus);
    }
    /* From the environment too. */
    setenv("MSGBUS_KAFKA_AUTO_OFFSET_RESET", "smallest", 1);
    msgbus_t *bus = NULL;
    msgbus_err_t e = msgbus_open(&bus, mk.url, NULL);
    unsetenv("MSGBUS_KAFKA_AUTO_OFFSET_RESET");
    tu_ck_ok(e);
    ck_assert_int_eq(bus->be->default_start, MB_START_EARLIEST);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

/* The capability bits follow the producer as configured:
 * no_duplicate_publish only with idempotence, durable not with acks=0;
 * max_message_size is message.max.bytes. */
START_TEST(capabilities_follow_the_producer_settings)
{
    struct mock mk;
    mock_start(&mk, NULL);
    const uint64_t always = MSGBUS_CAP_KEY_ORDER | MSGBUS_CAP_REPLAY | MSGBUS_CAP_SHARED |
                            MSGBUS_CAP_POSITIONS | MSGBUS_CAP_LIST | MSGBUS_CAP_LAG;
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    uint64_t caps = msgbus_caps(bus);
    printf("default caps 0x%llx, max %zu\n", (unsigned long long)caps,
           msgbus_max_message_size(bus));
    ck_assert_uint_eq(caps, always | MSGBUS_CAP_DURABLE | MSGBUS_CAP_NO_DUPLICATE_PUBLISH);
    ck_assert_uint_eq(msgbus_max_message_size(bus), 1000000);
    char *json = NULL;
    tu_ck_ok(msgbus_caps_json(bus, &json));
    ck_assert_ptr_nonnull(strstr(json, "no redelivered flag"));
    ck_assert_ptr_nonnull(strstr(json, "no delayed delivery"));
    msgbus_free(json);
    msgbus_close(bus);

    char url[600];
    snprintf(url, sizeof url, "%s?enable.idempotence=false&message.max.bytes=200000", mk.url);
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    caps = msgbus_caps(bus);
    printf("idempotence off: caps 0x%llx\n", (unsigned long long)caps);
    ck_assert_uint_eq(caps, always | MSGBUS_CAP_DURABLE);
    ck_assert_uint_eq(msgbus_max_message_size(bus), 200000);
    tu_ck_ok(msgbus_caps_json(bus, &json));
    ck_assert_ptr_nonnull(strstr(json, "enable.idempotence=false"));
    msgbus_free(json);
    msgbus_close(bus);

    snprintf(url, sizeof url, "%s?enable.idempotence=false&acks=0", mk.url);
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    ck_assert_uint_eq(msgbus_caps(bus), always);
    msgbus_close(bus);

    /* require= names what the bus as configured lacks. */
    snprintf(url, sizeof url, "%s?enable.idempotence=false&require=replay,no_duplicate_publish",
             mk.url);
    bus = NULL;
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONFIG);
    printf("require: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "no_duplicate_publish"));
    ck_assert_ptr_null(strstr(msgbus_last_error(), "replay"));
    mock_stop(&mk);
}
END_TEST

/* The effective producer configuration, from the debug-level line
 * "kafka producer config: ..." of an open of `url` (which fails or not). */
static void effective_config(const char *url, char *out, size_t n)
{
    struct lines l = {0};
    msgbus_set_log(on_log_line, &l, MSGBUS_LOG_DEBUG);
    msgbus_t *bus = NULL;
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    if (!e)
        msgbus_close(bus);
    const char *line = l.text ? strstr(l.text, "kafka producer config:") : NULL;
    ck_assert_msg(line != NULL, "no config line for %s (%s)", url, msgbus_last_error());
    snprintf(out, n, "%.*s", (int)strcspn(line, "\n"), line);
    free(l.text);
}

START_TEST(credentials_mean_sasl)
{
    char cfg[4096];
    /* user:password@ alone: SASL_SSL with SCRAM-SHA-512, never plaintext. */
    effective_config("kafka://alice:s3cret@127.0.0.1:1?connect_timeout_ms=300", cfg, sizeof cfg);
    printf("%s\n", cfg);
    ck_assert_ptr_nonnull(strstr(cfg, " sasl.username=alice"));
    ck_assert_ptr_nonnull(strstr(cfg, " sasl.password=***"));
    ck_assert_ptr_nonnull(strstr(cfg, " security.protocol=sasl_ssl"));
    ck_assert_ptr_nonnull(strstr(cfg, " sasl.mechanisms=SCRAM-SHA-512"));
    ck_assert_ptr_null(strstr(cfg, "s3cret"));
    /* The URL's own protocol and mechanism stay. */
    effective_config("kafka://alice:s3cret@127.0.0.1:1?connect_timeout_ms=300&"
                     "security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN", cfg, sizeof cfg);
    ck_assert_ptr_nonnull(strstr(cfg, " security.protocol=sasl_plaintext"));
    ck_assert_ptr_nonnull(strstr(cfg, " sasl.mechanisms=PLAIN"));
    /* Options alone mean SASL too; the password may come from a variable. */
    effective_config("kafka://127.0.0.1:1?connect_timeout_ms=300&sasl.username=bob&"
                     "sasl.password=s3cret", cfg, sizeof cfg);
    ck_assert_ptr_nonnull(strstr(cfg, " security.protocol=sasl_ssl"));
    setenv("MSGBUS_KAFKA_SASL_PASSWORD", "s3cret", 1);
    effective_config("kafka://carol@127.0.0.1:1?connect_timeout_ms=300", cfg, sizeof cfg);
    unsetenv("MSGBUS_KAFKA_SASL_PASSWORD");
    ck_assert_ptr_nonnull(strstr(cfg, " sasl.username=carol"));
    ck_assert_ptr_nonnull(strstr(cfg, " sasl.password=***"));
    /* No credentials: librdkafka's defaults, untouched. */
    effective_config("kafka://127.0.0.1:1?connect_timeout_ms=300", cfg, sizeof cfg);
    ck_assert_ptr_null(strstr(cfg, "security.protocol"));

    /* Never dropped silently, never ambiguous. */
    static const struct {
        const char *url, *says;
    } refused[] = {
        {"kafka://alice:s3cret@127.0.0.1:1?sasl.password=other", "password is given twice"},
        {"kafka://alice:s3cret@127.0.0.1:1?sasl.username=bob", "user name is given twice"},
        {"kafka://alice:s3cret@127.0.0.1:1?security.protocol=plaintext", "sends none"},
        {"kafka://alice:s3cret@127.0.0.1:1?security.protocol=SSL", "sends none"},
        {"kafka://127.0.0.1:1?sasl.username=bob&sasl.password=x&security.protocol=plaintext",
         "sends none"},
        {"kafka://alice:s3cret@127.0.0.1:1?sasl.mechanism=GSSAPI", "would go unused"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        const char *err = open_expect(refused[i].url, MSGBUS_ERR_CONFIG);
        printf("refused: %s\n", err);
        ck_assert_msg(strstr(err, refused[i].says), "'%s' does not say '%s'", err,
                      refused[i].says);
        ck_assert_ptr_null(strstr(err, "s3cret"));
    }
}
END_TEST

/* Issue 16 item 6: no secret in any log line (debug level, librdkafka's
 * own debug output included), in msgbus_url() or in msgbus_last_error(),
 * whether the bus opens or not. */
START_TEST(secrets_never_leave_msgbus)
{
    struct mock mk;
    mock_start(&mk, "ssl.key.password=PWsecret3&ssl.keystore.password=PWsecret4&"
                    "debug=conf,generic,broker,security&create_topics=false");
    struct lines l = {0};
    msgbus_set_log(on_log_line, &l, MSGBUS_LOG_DEBUG);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    printf("url: %s\n", msgbus_url(bus));
    ck_assert_ptr_null(strstr(msgbus_url(bus), "PWsecret"));
    struct tu_reports rp = {0};
    publish(bus, "t1", 10, &rp);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    msgbus_close(bus);

    static const char *const failing[] = {
        "kafka://u:PWsecret1@127.0.0.1:1?ssl.key.password=PWsecret3&connect_timeout_ms=300&"
        "debug=all",
        "kafka://127.0.0.1:1?sasl.username=u&sasl.password=PWsecret2&"
        "ssl.key.password=PWsecret3&security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN&"
        "connect_timeout_ms=300&debug=all",
        "kafka://u:PWsecret1@127.0.0.1:1?sasl.password=PWsecret2&ssl.key.password=PWsecret3",
        "kafka://u:PWsecret1@127.0.0.1:1?ssl.key.password=PWsecret3&linger.ms=banana",
    };
    for (size_t i = 0; i < sizeof failing / sizeof failing[0]; i++) {
        ck_assert_int_ne(msgbus_open(&bus, failing[i], NULL), MSGBUS_OK);
        printf("error: %s\n", msgbus_last_error());
        ck_assert_msg(!strstr(msgbus_last_error(), "PWsecret"), "secret in '%s'",
                      msgbus_last_error());
    }
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    printf("%d log lines at debug level, none with a secret\n", l.count);
    ck_assert_int_gt(l.count, 50);
    ck_assert_ptr_nonnull(strstr(l.text, "sasl.password=***"));
    const char *leak = strstr(l.text, "PWsecret");
    ck_assert_msg(leak == NULL, "secret in a log line: %.200s", leak ? leak - 100 : "");
    free(l.text);
    mock_stop(&mk);
}
END_TEST

/* Issue 16 item 9: with every broker down, a group member that holds
 * received messages (some acked, some not) and unconfirmed publishes must
 * close within close_timeout_ms plus a small margin: the subscription's
 * last commit and leaving the group must not wait for brokers that do not
 * answer (it took ~47 s before: an unbounded synchronous commit, then
 * rd_kafka_consumer_close). Unconfirmed messages get MSGBUS_ERR_CLOSED. */
static void close_with_brokers_down(bool sub_close_first)
{
    enum { N = 50 };
    struct mock mk;
    mock_start(&mk, "create_topics=false&fetch.wait.max.ms=10&session.timeout.ms=6000&"
                    "close_timeout_ms=2000&connect_timeout_ms=3000");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "t1", "closing", &sub));
    struct tu_reports rp = {0};
    for (int i = 0; i < N; i++)
        publish(bus, "t1", 16, &rp);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(rp.ok, N);
    msgbus_msg_t *held[N];
    int got = 0;
    for (; got < N; got++) {
        held[got] = tu_receive(sub, 10000);
        ck_assert_ptr_nonnull(held[got]);
        if (got % 2 == 0)
            tu_ck_ok(msgbus_ack(held[got])); /* every other one acked */
    }
    rd_kafka_mock_broker_set_down(mk.mc, 1);
    for (int i = 0; i < 5; i++) /* unconfirmed: the broker is gone */
        publish(bus, "t1", 16, &rp);
    int64_t t0 = tu_now_ms();
    if (sub_close_first) {
        msgbus_sub_close(sub);
        int64_t took = tu_now_ms() - t0;
        printf("brokers down: msgbus_sub_close took %lld ms (close_timeout_ms=2000)\n",
               (long long)took);
        ck_assert_int_lt(took, 3000);
        t0 = tu_now_ms();
    }
    msgbus_close(bus);
    int64_t took = tu_now_ms() - t0;
    printf("brokers down: msgbus_close%s took %lld ms (close_timeout_ms=2000); reports ok=%d "
           "failed=%d (%s)\n", sub_close_first ? " after sub_close" : " with a subscription",
           (long long)took, rp.ok, rp.failed, msgbus_err_name(rp.status));
    ck_assert_int_lt(took, 3000);
    ck_assert_int_eq(rp.ok + rp.failed, N + 5);
    ck_assert_int_eq(rp.failed, 5);
    ck_assert_int_eq(rp.status, MSGBUS_ERR_CLOSED);
    for (int i = 0; i < got; i++)
        msgbus_msg_free(held[i]);
    mock_stop(&mk);
}

START_TEST(close_is_bounded_with_brokers_down)
{
    close_with_brokers_down(false);
}
END_TEST

START_TEST(sub_close_is_bounded_with_brokers_down)
{
    close_with_brokers_down(true);
}
END_TEST

/* The brokers answer, but slowly (a round trip of 8 s): the subscription
 * has started leaving the group when its close bound runs out. It must
 * return in time anyway and leave the rest of the leaving to a thread of
 * its own (destroying a consumer in the middle of its close deadlocks
 * librdkafka 2.0.2). */
START_TEST(sub_close_is_bounded_with_slow_brokers)
{
    enum { N = 20 };
    struct mock mk;
    mock_start(&mk, "create_topics=false&fetch.wait.max.ms=10&session.timeout.ms=6000&"
                    "close_timeout_ms=2000");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "t1", "slow", &sub));
    struct tu_reports rp = {0};
    for (int i = 0; i < N; i++)
        publish(bus, "t1", 16, &rp);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    msgbus_msg_t *held[N];
    for (int i = 0; i < N; i++) { /* held, none acked: nothing to commit */
        held[i] = tu_receive(sub, 10000);
        ck_assert_ptr_nonnull(held[i]);
    }
    rd_kafka_mock_broker_set_rtt(mk.mc, 1, 8000);
    int64_t t0 = tu_now_ms();
    msgbus_sub_close(sub);
    int64_t took = tu_now_ms() - t0;
    t0 = tu_now_ms();
    msgbus_close(bus);
    int64_t took_bus = tu_now_ms() - t0;
    printf("slow brokers: msgbus_sub_close took %lld ms, then msgbus_close %lld ms "
           "(close_timeout_ms=2000)\n", (long long)took, (long long)took_bus);
    ck_assert_int_lt(took, 3000);
    ck_assert_int_lt(took_bus, 3000);
    for (int i = 0; i < N; i++) /* readable after close, freed while the close goes on */
        msgbus_msg_free(held[i]);
    mock_stop(&mk);
}
END_TEST

/* librdkafka 2.0.2's idempotent producer can hit a fatal error when a
 * partition leader changes (a broker of a cluster dies): msgbus then
 * replaces the producer. What it held unconfirmed is reported failed
 * (MSGBUS_ERR_BROKER, saying so), and publishing goes on on the new one. */
struct fatal_states {
    int reconnecting, up;
    char reason[512];
};

static void on_fatal_state(void *opaque, const msgbus_state_event_t *ev)
{
    struct fatal_states *fs = opaque;
    if (ev->topic)
        return;
    printf("state: %s -> %s (%s)\n", msgbus_state_name(ev->previous),
           msgbus_state_name(ev->state), ev->reason);
    if (ev->state == MSGBUS_STATE_RECONNECTING && strstr(ev->reason, "fatal producer error")) {
        fs->reconnecting++;
        snprintf(fs->reason, sizeof fs->reason, "%s", ev->reason);
    }
    if (ev->state == MSGBUS_STATE_UP && fs->reconnecting)
        fs->up++;
}

START_TEST(fatal_producer_error_replaces_the_producer)
{
    enum { N = 20, HELD = 5 };
    struct mock mk;
    mock_start(&mk, "");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    struct fatal_states fs = {0};
    tu_ck_ok(msgbus_set_state_cb(bus, on_fatal_state, &fs));
    struct tu_reports before = {0}, held = {0}, after = {0};
    for (int i = 0; i < N; i++)
        publish(bus, "t1", 16, &before);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(before.ok, N);

    /* Messages in flight (the broker answers in 3 s) when the error comes. */
    rd_kafka_mock_broker_set_rtt(mk.mc, 1, 3000);
    for (int i = 0; i < HELD; i++)
        publish(bus, "t1", 16, &held);
    struct timespec ts = {0, 200 * 1000000};
    nanosleep(&ts, NULL);
    rd_kafka_t *old = bus->be->producer;
    ck_assert_int_eq(rd_kafka_test_fatal_error(old, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                               "test: sequence desynchronization"),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    int64_t t0 = tu_now_ms();
    while (held.ok + held.failed < HELD && tu_now_ms() - t0 < 10000)
        msgbus_poll(bus, 50, NULL);
    printf("held: ok=%d failed=%d after %lld ms: %s: %s\n", held.ok, held.failed,
           (long long)(tu_now_ms() - t0), msgbus_err_name(held.status), held.error);
    ck_assert_int_eq(held.failed, HELD);
    ck_assert_int_eq(held.status, MSGBUS_ERR_BROKER);
    ck_assert_msg(strstr(held.error, "fatal error") && strstr(held.error, "publish the message "
                                                                          "again"),
                  "%s", held.error);
    ck_assert_msg(strstr(held.error, "sequence desynchronization"), "%s", held.error);
    ck_assert_ptr_ne(bus->be->producer, old);
    /* (flush says what failed since the last one) */
    tu_ck_err(msgbus_flush(bus, 10000, NULL), MSGBUS_ERR_DELIVERY);

    /* The new producer takes over. */
    rd_kafka_mock_broker_set_rtt(mk.mc, 1, 0);
    for (int i = 0; i < N; i++)
        publish(bus, "t1", 16, &after);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(after.ok, N);
    t0 = tu_now_ms();
    while (!fs.up && tu_now_ms() - t0 < 5000)
        msgbus_poll(bus, 50, NULL);
    ck_assert_int_eq(fs.reconnecting, 1);
    ck_assert_int_ge(fs.up, 1);
    ck_assert_msg(strstr(fs.reason, "replacing the producer"), "%s", fs.reason);
    ck_assert_int_eq(msgbus_state(bus, NULL, 0), MSGBUS_STATE_UP);
    json_t *st = tu_stats(bus);
    ck_assert_int_eq(tu_json_int(st, "detail.producers_replaced"), 1);
    json_decref(st);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

/* Topics msgbus creates get one copy per broker, up to 3, and then need
 * 2 in sync, unless the URL says otherwise; an impossible
 * min.insync.replicas is refused. (The sizing rule alone: the mock
 * cluster of librdkafka 2.0.2 names no controller, so it cannot create
 * topics; the cluster tests check what a real 3-node cluster gets.) */
static void sized(long brokers, long rf_opt, long isr_opt, long rf_want, long isr_want)
{
    long rf = -1, isr = -1;
    tu_ck_ok(mb_kafka_topic_size(brokers, rf_opt, isr_opt, &rf, &isr));
    ck_assert_int_eq(rf, rf_want);
    ck_assert_int_eq(isr, isr_want);
}

START_TEST(topics_are_sized_to_the_cluster)
{
    sized(1, 0, 0, 1, 0);
    sized(2, 0, 0, 2, 0);
    sized(3, 0, 0, 3, 2);
    sized(5, 0, 0, 3, 2);
    sized(0, 0, 0, 1, 0); /* (no broker listed: the broker will refuse, not msgbus) */
    sized(3, 2, 0, 2, 0);
    sized(1, 3, 0, 3, 2); /* named: used as is, the broker refuses if it cannot */
    sized(3, 0, 3, 3, 3);
    sized(3, 0, 1, 3, 1);
    long rf, isr;
    tu_ck_err(mb_kafka_topic_size(3, 2, 3, &rf, &isr), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "min_insync_replicas"));
    /* A bad value is refused at open, naming the option and 'auto'. */
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, "kafka://127.0.0.1:1?replication_factor=three", NULL),
              MSGBUS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "replication_factor"));
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "auto"));
    tu_ck_err(msgbus_open(&bus, "kafka://127.0.0.1:1?min_insync_replicas=0", NULL),
              MSGBUS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "min_insync_replicas"));
    tu_ck_err(msgbus_open(&bus, "kafka://127.0.0.1:1?replication.factor=101", NULL),
              MSGBUS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "replication.factor"));
}
END_TEST

/* ---- CloudEvents on the wire (issue 21; docs/kafka.md, "What msgbus
 * writes", "What arrives") ---- */

/* raw_read: `n` records of partition 0 of `topic` from offset `from`. */
static void raw_read(struct mock *mk, const char *topic, int64_t from, int n, struct tu_raw_rec *out)
{
    tu_raw_read(rd_kafka_mock_cluster_bootstraps(mk->mc), topic, from, n, 100, out);
}

/* Publishes `m` to t1 and waits for its confirm. */
static void publish_one(msgbus_t *bus, const char *topic, msgbus_msg_t *m)
{
    struct tu_reports rp = {0};
    tu_ck_ok(msgbus_publish(bus, topic, m, tu_on_report, &rp));
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    ck_assert_int_eq(rp.ok, 1);
}

/* The source msgbus writes when the bus has no ce_source: //host/program. */
static const char *default_source(void)
{
    static char out[600];
    char host[256] = "localhost";
    if (gethostname(host, sizeof host) != 0 || !host[0])
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(out, sizeof out, "//%s/%s", host, program_invocation_short_name);
    return out;
}

static void ck_time_is(const char *got, int64_t ms)
{
    char want[32];
    mb_rfc3339_format(ms, want);
    ck_assert_msg(got && strcmp(got, want) == 0, "ce_time '%s', want '%s' (%lld ms)",
                  got ? got : "(none)", want, (long long)ms);
}

/* Binary mode (the default): the context attributes as ce_* headers in a
 * fixed order, before the application's headers; the payload as it is. */
START_TEST(binary_publish_writes_ce_headers)
{
    struct mock mk;
    mock_start(&mk, NULL);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));

    /* Defaults: type = topic, source = //host/program, time = timestamp. */
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "{\"a\":1}", 7));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "ce_traceparent", "00-abc-def-01"));
    tu_ck_ok(msgbus_msg_set_header(m, "app", "x"));
    char id1[64];
    snprintf(id1, sizeof id1, "%s", msgbus_msg_id(m));
    publish_one(bus, "t1", m);
    msgbus_msg_free(m);

    /* The message's own type, source, subject and timestamp. */
    tu_ck_ok(msgbus_msg_new(&m, "two", 3));
    tu_ck_ok(msgbus_msg_set_id(m, "order-42"));
    tu_ck_ok(msgbus_msg_set_type(m, "com.example.order.created"));
    tu_ck_ok(msgbus_msg_set_source(m, "/orders/eu"));
    tu_ck_ok(msgbus_msg_set_subject(m, "order 42 \xc3\xa9"));
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1700000000123));
    tu_ck_ok(msgbus_msg_set_key(m, "k42", 3));
    publish_one(bus, "t1", m);
    msgbus_msg_free(m);
    msgbus_close(bus);

    struct tu_raw_rec r[2];
    raw_read(&mk, "t1", RD_KAFKA_OFFSET_BEGINNING, 2, r);
    printf("binary #1 headers: %s\n", tu_raw_names(&r[0]));
    for (int k = 0; k < r[0].nh; k++)
        printf("  %s: %s\n", r[0].hn[k], r[0].hv[k]);
    ck_assert_str_eq(tu_raw_names(&r[0]),
                     "ce_specversion,ce_id,ce_source,ce_type,ce_time,content-type,"
                     "ce_traceparent,app");
    ck_assert_str_eq(tu_raw_header(&r[0], "ce_specversion"), "1.0");
    ck_assert_str_eq(tu_raw_header(&r[0], "ce_id"), id1);
    ck_assert_str_eq(tu_raw_header(&r[0], "ce_source"), default_source());
    ck_assert_str_eq(tu_raw_header(&r[0], "ce_type"), "t1");
    ck_time_is(tu_raw_header(&r[0], "ce_time"), r[0].ts);
    ck_assert_str_eq(tu_raw_header(&r[0], "content-type"), "application/json");
    ck_assert_str_eq(tu_raw_header(&r[0], "ce_traceparent"), "00-abc-def-01");
    ck_assert_str_eq(r[0].value, "{\"a\":1}");
    ck_assert_ptr_null(r[0].key);

    printf("binary #2 headers: %s\n", tu_raw_names(&r[1]));
    ck_assert_str_eq(tu_raw_names(&r[1]),
                     "ce_specversion,ce_id,ce_source,ce_type,ce_time,ce_subject");
    ck_assert_str_eq(tu_raw_header(&r[1], "ce_id"), "order-42");
    ck_assert_str_eq(tu_raw_header(&r[1], "ce_type"), "com.example.order.created");
    ck_assert_str_eq(tu_raw_header(&r[1], "ce_source"), "/orders/eu");
    ck_assert_str_eq(tu_raw_header(&r[1], "ce_subject"), "order 42 \xc3\xa9");
    ck_assert_str_eq(tu_raw_header(&r[1], "ce_time"), "2023-11-14T22:13:20.123Z");
    ck_assert_int_eq(r[1].ts, 1700000000123);
    ck_assert_str_eq(r[1].key, "k42");
    tu_raw_free(r, 2);
    mock_stop(&mk);
}
END_TEST

/* Structured mode: the value is the JSON event, content-type says so,
 * no ce_* header (extensions are inside), other headers and the key stay. */
START_TEST(structured_publish_writes_one_json_event)
{
    struct mock mk;
    mock_start(&mk, "cloudevents=structured&ce_source=//test/kafka21");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "{\"a\":[1,2]}", 11));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "ce_traceparent", "00-abc-def-01"));
    tu_ck_ok(msgbus_msg_set_header(m, "app", "x"));
    tu_ck_ok(msgbus_msg_set_key(m, "k1", 2));
    tu_ck_ok(msgbus_msg_set_subject(m, "s1"));
    char id1[64];
    snprintf(id1, sizeof id1, "%s", msgbus_msg_id(m));
    publish_one(bus, "t1", m);
    msgbus_msg_free(m);
    /* Bytes that are not text travel as data_base64. */
    tu_ck_ok(msgbus_msg_new(&m, "\x00\x01\x02\xff", 4));
    tu_ck_ok(msgbus_msg_set_type(m, "bin"));
    publish_one(bus, "t1", m);
    msgbus_msg_free(m);
    msgbus_close(bus);

    struct tu_raw_rec r[2];
    raw_read(&mk, "t1", RD_KAFKA_OFFSET_BEGINNING, 2, r);
    printf("structured headers: %s\nvalue: %s\n", tu_raw_names(&r[0]), r[0].value);
    ck_assert_str_eq(tu_raw_names(&r[0]), "content-type,app");
    ck_assert_str_eq(tu_raw_header(&r[0], "content-type"), "application/cloudevents+json");
    ck_assert_str_eq(r[0].key, "k1");
    json_error_t je;
    json_t *o = json_loads(r[0].value, 0, &je);
    ck_assert_msg(o != NULL, "not JSON: %s", je.text);
    ck_assert_str_eq(json_string_value(json_object_get(o, "specversion")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(o, "id")), id1);
    ck_assert_str_eq(json_string_value(json_object_get(o, "source")), "//test/kafka21");
    ck_assert_str_eq(json_string_value(json_object_get(o, "type")), "t1");
    ck_assert_str_eq(json_string_value(json_object_get(o, "subject")), "s1");
    ck_assert_str_eq(json_string_value(json_object_get(o, "datacontenttype")),
                     "application/json");
    ck_assert_str_eq(json_string_value(json_object_get(o, "traceparent")), "00-abc-def-01");
    ck_time_is(json_string_value(json_object_get(o, "time")), r[0].ts);
    json_t *want = json_loads("{\"a\":[1,2]}", 0, NULL);
    ck_assert_msg(json_equal(json_object_get(o, "data"), want), "data is not {\"a\":[1,2]}");
    json_decref(want);
    json_decref(o);

    printf("structured binary data: %s\n", r[1].value);
    ck_assert_str_eq(tu_raw_names(&r[1]), "content-type");
    ck_assert_ptr_null(r[1].key);
    o = json_loads(r[1].value, 0, &je);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(json_string_value(json_object_get(o, "type")), "bin");
    ck_assert_str_eq(json_string_value(json_object_get(o, "data_base64")), "AAEC/w==");
    ck_assert_ptr_null(json_object_get(o, "data"));
    json_decref(o);
    tu_raw_free(r, 2);
    mock_stop(&mk);
}
END_TEST

/* cloudevents=off: the record as before CloudEvents, only ce_id. */
START_TEST(off_writes_only_the_id)
{
    struct mock mk;
    mock_start(&mk, "cloudevents=off");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "bare", 4));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
    tu_ck_ok(msgbus_msg_set_type(m, "ignored"));
    publish_one(bus, "t1", m);
    msgbus_msg_free(m);
    msgbus_close(bus);
    struct tu_raw_rec r[1];
    raw_read(&mk, "t1", RD_KAFKA_OFFSET_BEGINNING, 1, r);
    printf("off headers: %s\n", tu_raw_names(&r[0]));
    ck_assert_str_eq(tu_raw_names(&r[0]), "ce_id,content-type");
    ck_assert_str_eq(r[0].value, "bare");
    tu_raw_free(r, 1);
    mock_stop(&mk);
}
END_TEST

/* The size check counts what is sent: the attributes in binary mode, the
 * JSON (base64 data and all) in structured mode. */
START_TEST(too_large_counts_the_attributes_and_the_json)
{
    struct mock mk;
    mock_start(&mk, "message.max.bytes=2000");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    char payload[1500], subject[701];
    memset(payload, 0xfe, sizeof payload);
    memset(subject, 's', 700);
    subject[700] = '\0';
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, sizeof payload));
    publish_one(bus, "t1", m); /* ~1,650 bytes with the attributes: fits */
    tu_ck_ok(msgbus_msg_set_subject(m, subject));
    tu_ck_err(msgbus_publish(bus, "t1", m, NULL, NULL), MSGBUS_ERR_TOO_LARGE);
    printf("binary: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "message.max.bytes (2000)"));
    msgbus_msg_free(m);
    msgbus_close(bus);

    char url[600];
    snprintf(url, sizeof url, "%s&cloudevents=structured", mk.url);
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_msg_new(&m, payload, 1100)); /* base64: 1,468 bytes + attributes */
    publish_one(bus, "t1", m);
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_msg_new(&m, payload, sizeof payload)); /* base64: 2,000 bytes */
    tu_ck_err(msgbus_publish(bus, "t1", m, NULL, NULL), MSGBUS_ERR_TOO_LARGE);
    printf("structured: %s\n", msgbus_last_error());
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    msgbus_msg_free(m);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

/* A raw producer on the mock cluster (another client's records). */
static rd_kafka_t *raw_producer(struct mock *mk)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(mk->mc), errstr,
                      sizeof errstr);
    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    ck_assert_msg(rk != NULL, "rd_kafka_new: %s", errstr);
    return rk;
}

/* Produces one record to t1 partition 0: headers as name, value pairs
 * (NULL-terminated), record timestamp `ts`. */
static void raw_produce(rd_kafka_t *rk, const char *value, size_t len, int64_t ts,
                        const char *const *hv)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    for (size_t i = 0; hv[i]; i += 2)
        rd_kafka_header_add(h, hv[i], -1, hv[i + 1], -1);
    ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t1"), RD_KAFKA_V_PARTITION(0),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_VALUE((void *)value, len),
                                       RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_TIMESTAMP(ts),
                                       RD_KAFKA_V_END),
                     0);
    ck_assert_int_eq(rd_kafka_flush(rk, 5000), 0);
}

static void ck_header(msgbus_msg_t *m, const char *name, const char *want)
{
    const char *got = msgbus_msg_header(m, name);
    if (!want)
        ck_assert_msg(!got, "header %s is '%s', want none", name, got);
    else
        ck_assert_msg(got && strcmp(got, want) == 0, "header %s is '%s', want '%s'", name,
                      got ? got : "(none)", want);
}

static void ck_str(const char *what, const char *got, const char *want)
{
    if (!want)
        ck_assert_msg(!got, "%s is '%s', want none", what, got);
    else
        ck_assert_msg(got && strcmp(got, want) == 0, "%s is '%s', want '%s'", what,
                      got ? got : "(none)", want);
}

static void print_msg(const char *what, msgbus_msg_t *m)
{
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    char t[32];
    mb_rfc3339_format(msgbus_msg_timestamp(m), t);
    printf("%s: id=%s type=%s source=%s subject=%s time=%s payload=%zu bytes '%.*s'\n", what,
           msgbus_msg_id(m) ? msgbus_msg_id(m) : "-", msgbus_msg_type(m) ? msgbus_msg_type(m) : "-",
           msgbus_msg_source(m) ? msgbus_msg_source(m) : "-",
           msgbus_msg_subject(m) ? msgbus_msg_subject(m) : "-", t, len, (int)len, p);
    for (size_t i = 0; i < msgbus_msg_header_count(m); i++) {
        const char *n, *v;
        msgbus_msg_header_at(m, i, &n, &v);
        printf("    %s: %s\n", n, v);
    }
}

/* What other clients write reads right: an SDK's binary event (its time
 * wins over the record's), a structured event with data_base64, a broken
 * structured payload (delivered as it came, marked), names that only look
 * like the binding's; and msgbus's own records, both modes, round trip;
 * a nacked CloudEvent comes again as the same event. */
START_TEST(foreign_records_decode_right)
{
    struct mock mk;
    mock_start(&mk, "create_topics=false&fetch.wait.max.ms=10");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t1", "ce-reader", "retry_initial_ms=10", &sub));
    rd_kafka_t *rk = raw_producer(&mk);

    static const char *const sdk_binary[] = {
        "ce_specversion", "1.0", "ce_id", "sdk-1", "ce_source", "/sdk/py", "ce_type",
        "com.example.sdk", "ce_time", "2024-01-02T03:04:05.678Z", "ce_subject", "subj",
        "content-type", "text/plain", "ce_partitionkey", "pk-1", NULL};
    raw_produce(rk, "hello", 5, 1800000000000, sdk_binary);
    static const char sdk_structured[] =
        "{\"specversion\":\"1.0\",\"id\":\"sdk-2\",\"source\":\"/sdk/py\",\"type\":\"t.b64\","
        "\"time\":\"2024-05-06T07:08:09Z\",\"datacontenttype\":\"application/octet-stream\","
        "\"data_base64\":\"AAEC/w==\",\"ext1\":\"v1\",\"count\":3}";
    static const char *const structured_hdrs[] = {
        "content-type", "application/cloudevents+json; charset=utf-8", "trace", "t-2", NULL};
    raw_produce(rk, sdk_structured, sizeof sdk_structured - 1, 1800000000000, structured_hdrs);
    static const char *const broken_hdrs[] = {"content-type", "application/cloudevents+json",
                                              "ce_id", "raw-3", NULL};
    raw_produce(rk, "{not json", 9, 1800000000000, broken_hdrs);
    static const char *const lookalike[] = {"ce_id",   "raw-4",     "ce_Type",   "Upper",
                                            "CE_id",   "other",     "ce_time",   "yesterday",
                                            "ce_x-y",  "dash",      "ce_type",   "bad\x01type",
                                            NULL};
    raw_produce(rk, "four", 4, 1700000000000, lookalike);
    /* Over 512 bytes: the received payload is borrowed from the record
     * (kafka_consumer.c), and unpacking replaces it. */
    static char big[1200];
    int bn = snprintf(big, sizeof big,
                      "{\"specversion\":\"1.0\",\"id\":\"sdk-5\",\"source\":\"/s\","
                      "\"type\":\"big\",\"datacontenttype\":\"text/plain\",\"data\":\"");
    memset(big + bn, 'x', 1000);
    snprintf(big + bn + 1000, sizeof big - (size_t)bn - 1000, "\"}");
    static const char *const big_hdrs[] = {"content-type", "application/cloudevents+json", NULL};
    raw_produce(rk, big, strlen(big), 1700000000000, big_hdrs);
    rd_kafka_destroy(rk);

    msgbus_msg_t *m = tu_receive(sub, 15000);
    ck_assert_ptr_nonnull(m);
    print_msg("sdk binary", m);
    ck_str("id", msgbus_msg_id(m), "sdk-1");
    ck_str("type", msgbus_msg_type(m), "com.example.sdk");
    ck_str("source", msgbus_msg_source(m), "/sdk/py");
    ck_str("subject", msgbus_msg_subject(m), "subj");
    ck_assert_int_eq(msgbus_msg_timestamp(m), 1704164645678); /* ce_time, not the record's */
    ck_header(m, "content-type", "text/plain");
    ck_header(m, "ce_partitionkey", "pk-1");
    ck_header(m, "ce_specversion", NULL);
    ck_header(m, "ce_type", NULL);
    ck_assert_uint_eq(msgbus_msg_header_count(m), 2);
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    ck_assert_int_eq((int)len, 5);
    ck_assert_int_eq(memcmp(p, "hello", 5), 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    m = tu_receive(sub, 5000);
    ck_assert_ptr_nonnull(m);
    print_msg("sdk structured", m);
    ck_str("id", msgbus_msg_id(m), "sdk-2");
    ck_str("type", msgbus_msg_type(m), "t.b64");
    ck_str("source", msgbus_msg_source(m), "/sdk/py");
    ck_assert_int_eq(msgbus_msg_timestamp(m), 1714979289000);
    ck_header(m, "content-type", "application/octet-stream");
    ck_header(m, "ce_ext1", "v1");
    ck_header(m, "ce_count", "3");
    ck_header(m, "trace", "t-2");
    ck_header(m, MB_H_INVALID_CE, NULL);
    p = msgbus_msg_payload(m, &len);
    ck_assert_int_eq((int)len, 4);
    ck_assert_int_eq(memcmp(p, "\x00\x01\x02\xff", 4), 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    m = tu_receive(sub, 5000);
    ck_assert_ptr_nonnull(m);
    print_msg("broken structured", m);
    ck_str("id", msgbus_msg_id(m), "raw-3");
    ck_assert_ptr_nonnull(msgbus_msg_header(m, MB_H_INVALID_CE));
    ck_header(m, "content-type", "application/cloudevents+json");
    ck_assert_int_eq(msgbus_msg_timestamp(m), 1800000000000);
    p = msgbus_msg_payload(m, &len);
    ck_assert_int_eq((int)len, 9);
    ck_assert_int_eq(memcmp(p, "{not json", 9), 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    /* Kafka header names are case-sensitive and attribute names are
     * a-z 0-9: ce_Type, CE_id and ce_x-y are the producer's own headers.
     * A ce_time or ce_type that fails its rule stays a header. */
    m = tu_receive(sub, 5000);
    ck_assert_ptr_nonnull(m);
    print_msg("look-alikes", m);
    ck_str("id", msgbus_msg_id(m), "raw-4");
    ck_str("type", msgbus_msg_type(m), NULL);
    ck_header(m, "ce_Type", "Upper");
    ck_header(m, "CE_id", "other");
    ck_header(m, "ce_x-y", "dash");
    ck_header(m, "ce_time", "yesterday");
    ck_header(m, "ce_type", "bad\x01type");
    ck_assert_int_eq(msgbus_msg_timestamp(m), 1700000000000); /* the record's */
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    m = tu_receive(sub, 5000);
    ck_assert_ptr_nonnull(m);
    ck_str("id", msgbus_msg_id(m), "sdk-5");
    ck_header(m, "content-type", "text/plain");
    p = msgbus_msg_payload(m, &len);
    printf("big structured: id=%s, %zu bytes of data\n", msgbus_msg_id(m), len);
    ck_assert_int_eq((int)len, 1000);
    ck_assert_int_eq(p[0], 'x');
    ck_assert_int_eq(p[999], 'x');
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    /* msgbus to msgbus, both modes: the same event comes out. */
    for (int structured = 0; structured < 2; structured++) {
        char url[600];
        snprintf(url, sizeof url, "%s&cloudevents=%s&ce_source=//pub/%d", mk.url,
                 structured ? "structured" : "binary", structured);
        msgbus_t *pub = NULL;
        tu_ck_ok(msgbus_open(&pub, url, NULL));
        tu_ck_ok(msgbus_msg_new(&m, "{\"n\":1}", 7));
        tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
        tu_ck_ok(msgbus_msg_set_header(m, "ce_traceparent", "00-1-2-01"));
        tu_ck_ok(msgbus_msg_set_header(m, "app", "a"));
        tu_ck_ok(msgbus_msg_set_subject(m, "sub"));
        tu_ck_ok(msgbus_msg_set_key(m, "key", 3));
        tu_ck_ok(msgbus_msg_set_timestamp(m, 1710000000999));
        char id[64], src[32];
        snprintf(id, sizeof id, "%s", msgbus_msg_id(m));
        snprintf(src, sizeof src, "//pub/%d", structured);
        publish_one(pub, "t1", m);
        msgbus_msg_free(m);
        msgbus_close(pub);

        m = tu_receive(sub, 5000);
        ck_assert_ptr_nonnull(m);
        print_msg(structured ? "msgbus structured" : "msgbus binary", m);
        ck_str("id", msgbus_msg_id(m), id);
        ck_str("type", msgbus_msg_type(m), "t1");
        ck_str("source", msgbus_msg_source(m), src);
        ck_str("subject", msgbus_msg_subject(m), "sub");
        ck_assert_int_eq(msgbus_msg_timestamp(m), 1710000000999);
        ck_header(m, "content-type", "application/json");
        ck_header(m, "ce_traceparent", "00-1-2-01");
        ck_header(m, "app", "a");
        ck_assert_uint_eq(msgbus_msg_header_count(m), 3);
        p = msgbus_msg_payload(m, &len);
        ck_assert_int_eq((int)len, 7);
        ck_assert_int_eq(memcmp(p, "{\"n\":1}", 7), 0);
        p = msgbus_msg_key(m, &len);
        ck_assert_int_eq((int)len, 3);
        if (structured) { /* a nack: the copy is the same event */
            tu_ck_ok(msgbus_nack(m));
            msgbus_msg_free(m);
            m = tu_receive(sub, 5000);
            ck_assert_ptr_nonnull(m);
            print_msg("redelivered", m);
            ck_assert_int_eq(msgbus_msg_attempt(m), 2);
            ck_str("id", msgbus_msg_id(m), id);
            ck_str("type", msgbus_msg_type(m), "t1");
            ck_str("source", msgbus_msg_source(m), src);
            ck_str("subject", msgbus_msg_subject(m), "sub");
            ck_assert_int_eq(msgbus_msg_timestamp(m), 1710000000999);
        }
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

/* A commit the coordinator refuses (after a broker restart: still loading
 * its offsets; here an error librdkafka does not retry on its own) is made
 * again at the next round: the group's
 * committed offset reaches the acked point and the lag goes to 0 without
 * another ack. */
START_TEST(refused_commit_is_made_again)
{
    struct mock mk;
    mock_start(&mk, "create_topics=false&fetch.wait.max.ms=10&commit_interval_ms=50");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "t1", "gc", &sub));
    struct tu_reports rp = {0};
    publish(bus, "t1", 10, &rp);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(rp.ok, 1);
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    /* More refusals than librdkafka retries on its own. */
    rd_kafka_mock_push_request_errors(
        mk.mc, 8 /* OffsetCommit */, 6, RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE,
        RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE, RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE,
        RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE, RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE,
        RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    json_int_t lag = -1;
    int64_t until = tu_now_ms() + 10000;
    while (tu_now_ms() < until) {
        json_t *o = tu_stats(bus);
        json_t *v = tu_json_at(o, "subscriptions.0.lag");
        lag = json_is_integer(v) ? json_integer_value(v) : -1;
        json_decref(o);
        if (lag == 0)
            break;
        usleep(50000);
    }
    ck_assert_int_eq(lag, 0);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

/* Payloads of 512 bytes and more are sent in place, the message held until
 * its report: the application may free or change the message right after
 * publishing, with or without a report callback, and the broker still gets
 * the bytes it published (ASan would see a use after free). */
START_TEST(in_place_payloads_survive_free_and_change)
{
    enum { N = 6, SZ = 4096 };
    struct mock mk;
    mock_start(&mk, "create_topics=false&linger.ms=50");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    struct tu_reports rp = {0};
    static char buf[SZ];
    for (int i = 0; i < N; i++) {
        memset(buf, 'a' + i, sizeof buf);
        size_t len = i % 2 ? 600 : SZ; /* a non-inline one, and one inline */
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, buf, len));
        /* every other one without a callback: no token to hold it */
        tu_ck_ok(msgbus_publish(bus, "t1", m, i % 3 ? tu_on_report : NULL, &rp));
        if (i >= 3) /* replaced while librdkafka still has the old bytes */
            tu_ck_ok(msgbus_msg_set_payload(m, "changed", 7));
        msgbus_msg_free(m);
    }
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    ck_assert_int_eq(rp.ok, 4);
    struct tu_raw_rec got[N];
    raw_read(&mk, "t1", RD_KAFKA_OFFSET_BEGINNING, N, got);
    for (int i = 0; i < N; i++) {
        ck_assert_uint_eq(got[i].len, i % 2 ? 600 : SZ);
        for (size_t k = 0; k < got[i].len; k++)
            ck_assert_msg(got[i].value[k] == 'a' + i, "record %d byte %zu: %c", i, k,
                          got[i].value[k]);
    }
    tu_raw_free(got, N);
    msgbus_close(bus);
    /* A held message is released by a failed report too: closed before
     * librdkafka sent it, the purge reports it (ASan: no leak). */
    char url[600];
    snprintf(url, sizeof url, "%s", mk.url);
    *strstr(url, "&linger.ms=50") = '\0';
    strcat(url, "&linger.ms=60000&close_timeout_ms=200");
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    memset(&rp, 0, sizeof rp);
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, buf, SZ));
    tu_ck_ok(msgbus_publish(bus, "t1", m, tu_on_report, &rp));
    tu_ck_ok(msgbus_publish(bus, "t1", m, NULL, NULL));
    msgbus_msg_free(m);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

/* A received record's CloudEvents type and source are stored in its
 * batch's block, room sized by the batch's first record (kafka_consumer.c):
 * later records with longer strings, repeated attributes and records
 * without any all read right, and the strings can be replaced, cleared
 * and freed in any order (ASan: no free of block memory, no leak). */
START_TEST(ce_strings_live_in_the_batch)
{
    enum { N = 40 };
    struct mock mk;
    mock_start(&mk, "create_topics=false&auto.offset.reset=earliest");
    rd_kafka_t *rk = raw_producer(&mk);
    static char types[N][200], sources[N][64], payload[700];
    memset(payload, 'p', sizeof payload);
    for (int i = 0; i < N; i++) {
        /* the first short; then growing, over the first's room */
        snprintf(types[i], sizeof types[i], "t%d.%.*s", i, i * 4,
                 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        snprintf(sources[i], sizeof sources[i], "/src/%d", i);
        rd_kafka_headers_t *h = rd_kafka_headers_new(8);
        if (i % 7 != 3) { /* some records carry no attributes at all */
            rd_kafka_header_add(h, "ce_id", -1, "id", -1);
            if (i % 5 == 1) /* repeated: the last one wins */
                rd_kafka_header_add(h, "ce_type", -1, "first-of-two", -1);
            rd_kafka_header_add(h, "ce_type", -1, types[i], -1);
            rd_kafka_header_add(h, "ce_source", -1, sources[i], -1);
        }
        /* short payloads are copied, long ones borrowed: both kinds */
        size_t len = i % 2 ? sizeof payload : 10;
        ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t1"), RD_KAFKA_V_PARTITION(0),
                                           RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                           RD_KAFKA_V_VALUE(payload, len), RD_KAFKA_V_HEADERS(h),
                                           RD_KAFKA_V_END),
                         0);
    }
    ck_assert_int_eq(rd_kafka_flush(rk, 5000), 0);
    rd_kafka_destroy(rk);

    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, mk.url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "t1", "ce-batch", &sub));
    msgbus_msg_t *got[N];
    for (int i = 0; i < N; i++) {
        got[i] = tu_receive(sub, 15000);
        ck_assert_ptr_nonnull(got[i]);
        msgbus_msg_t *m = got[i];
        if (i % 7 == 3) {
            ck_assert_ptr_null(msgbus_msg_type(m));
            ck_assert_ptr_null(msgbus_msg_source(m));
        } else {
            ck_str("type", msgbus_msg_type(m), types[i]);
            ck_str("source", msgbus_msg_source(m), sources[i]);
        }
        tu_ck_ok(msgbus_ack(m));
        if (i % 3 == 0) /* replaced while in the block */
            tu_ck_ok(msgbus_msg_set_type(m, "replaced.type"));
        if (i % 4 == 0)
            tu_ck_ok(msgbus_msg_set_source(m, NULL));
    }
    /* freed out of order, the block's last message in the middle */
    for (int i = 0; i < N; i += 2)
        msgbus_msg_free(got[i]);
    for (int i = N - 1; i > 0; i -= 2) {
        if (i % 3 == 0)
            ck_str("type", msgbus_msg_type(got[i]), "replaced.type");
        else if (i % 7 != 3)
            ck_str("type", msgbus_msg_type(got[i]), types[i]);
        msgbus_msg_free(got[i]);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    mock_stop(&mk);
}
END_TEST

static Suite *kafka_mock_suite(void)
{
    Suite *s = suite_create("kafka_mock");
    TCase *tc = tcase_create("errors");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, broker_down_is_connect_error_within_timeout);
    tcase_add_test(tc, nothing_listening_is_connect_error);
    tcase_add_test(tc, refused_property_is_named_with_librdkafka_text);
    tcase_add_test(tc, environment_property_passes_through);
    tcase_add_test(tc, too_large_is_refused_before_sending);
    tcase_add_test(tc, every_message_confirmed_once);
    tcase_add_test(tc, records_reach_their_topic_past_the_handle_cache);
    tcase_add_test(tc, broker_request_error_reaches_the_callback);
    tcase_add_test(tc, received_messages_outlive_their_batch_order_and_close);
    tcase_add_test(tc, options_msgbus_cannot_honour_are_refused_by_name);
    tcase_add_test(tc, auto_offset_reset_is_the_default_start);
    tcase_add_test(tc, capabilities_follow_the_producer_settings);
    tcase_add_test(tc, credentials_mean_sasl);
    tcase_add_test(tc, secrets_never_leave_msgbus);
    tcase_add_test(tc, topics_are_sized_to_the_cluster);
    tcase_add_test(tc, fatal_producer_error_replaces_the_producer);
    tcase_add_test(tc, refused_commit_is_made_again);
    tcase_add_test(tc, in_place_payloads_survive_free_and_change);
    suite_add_tcase(s, tc);
    /* Timeouts far above the bound, so that an overrun is measured and
     * reported, not cut short. */
    TCase *close = tcase_create("close");
    tcase_set_timeout(close, 180);
    tcase_add_test(close, close_is_bounded_with_brokers_down);
    tcase_add_test(close, sub_close_is_bounded_with_brokers_down);
    tcase_add_test(close, sub_close_is_bounded_with_slow_brokers);
    suite_add_tcase(s, close);
    TCase *ce = tcase_create("cloudevents");
    tcase_set_timeout(ce, 60);
    tcase_add_test(ce, binary_publish_writes_ce_headers);
    tcase_add_test(ce, structured_publish_writes_one_json_event);
    tcase_add_test(ce, off_writes_only_the_id);
    tcase_add_test(ce, too_large_counts_the_attributes_and_the_json);
    tcase_add_test(ce, foreign_records_decode_right);
    tcase_add_test(ce, ce_strings_live_in_the_batch);
    suite_add_tcase(s, ce);
    return s;
}

int main(void)
{
    return tu_run_suite(kafka_mock_suite());
}
