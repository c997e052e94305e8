/*
 * test_amqp_features.c — what only the AMQP backend promises, on the real
 * RabbitMQ: error codes that say what happened, failover between hosts,
 * unroutable and broker-refused (basic.nack) outcomes, queue arguments,
 * quorum queues, and nack → redelivery with the attempt raised on both
 * classic and quorum queues, and publishes written by the publishing thread
 * itself while the connection is idle, in order with those the I/O thread
 * writes.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_amqp.h"

/* "host:port/vhost…" of the test broker, without credentials. */
static const char *broker_rest(void)
{
    const char *u = tu_broker_url("amqp");
    const char *at = strrchr(u, '@');
    return at ? at + 1 : u + strlen("amqp://");
}

static void url_with(char *buf, size_t n, const char *query)
{
    const char *base = tu_broker_url("amqp");
    snprintf(buf, n, "%s%s%s", base, strchr(base, '?') ? "&" : "?", query);
}

START_TEST(wrong_password_is_auth_error)
{
    char url[1024];
    snprintf(url, sizeof url, "amqp://guest:not-the-password@%s", broker_rest());
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_AUTH);
    printf("wrong password: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "ACCESS_REFUSED"));
    ck_assert(!strstr(msgbus_last_error(), "not-the-password"));
}
END_TEST

START_TEST(failover_skips_a_dead_host)
{
    char url[1024];
    snprintf(url, sizeof url, "amqp://guest:guest@127.0.0.1:1,%s", broker_rest());
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    char topic[128];
    tu_unique(topic, sizeof topic, "failover");
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_close(bus);
}
END_TEST

START_TEST(oversized_message_is_refused_before_sending)
{
    char url[1024], topic[128];
    url_with(url, sizeof url, "max_message_bytes=1000");
    tu_unique(topic, sizeof topic, "big");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    char payload[1001] = {0};
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, payload, sizeof payload));
    tu_ck_err(msgbus_publish(bus, topic, m, NULL, NULL), MSGBUS_ERR_TOO_LARGE);
    ck_assert(strstr(msgbus_last_error(), "max_message_bytes"));
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    tu_ck_ok(msgbus_msg_set_payload(m, payload, 1000));
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    msgbus_msg_free(m);
    msgbus_close(bus);
    tu_amqp_drop(topic, "g");
}
END_TEST

START_TEST(unroutable_is_reported_unless_allowed)
{
    char topic[128], url[1024];
    tu_unique(topic, sizeof topic, "nobody");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, tu_broker_url("amqp"), NULL));
    struct tu_reports o = {0};
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_publish(bus, topic, m, tu_on_report, &o));
    size_t failed = 0;
    tu_ck_err(msgbus_flush(bus, 10000, &failed), MSGBUS_ERR_DELIVERY);
    ck_assert_uint_eq(failed, 1);
    ck_assert_int_eq(o.ok + o.failed, 1);
    ck_assert_int_eq(o.status, MSGBUS_ERR_BROKER);
    printf("unroutable: %s\n", o.error);
    ck_assert(strstr(o.error, "unroutable"));
    msgbus_close(bus);

    url_with(url, sizeof url, "unroutable=ok");
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    memset(&o, 0, sizeof o);
    tu_ck_ok(msgbus_publish(bus, topic, m, tu_on_report, &o));
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(o.ok, 1);
    ck_assert_int_eq(o.failed, 0);
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

START_TEST(queue_arguments_reach_the_broker)
{
    /* x-max-length=1 with reject-publish: the broker nacks the overflow. */
    char url[1024], topic[128];
    url_with(url, sizeof url, "x-max-length=1&x-overflow=reject-publish");
    tu_unique(topic, sizeof topic, "qargs");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    struct tu_reports o[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        msgbus_msg_t *m;
        tu_ck_ok(msgbus_msg_new(&m, "x", 1));
        tu_ck_ok(msgbus_publish(bus, topic, m, tu_on_report, &o[i]));
        msgbus_msg_free(m);
        /* One at a time, so the order at the queue is certain. */
        msgbus_flush(bus, 10000, NULL);
    }
    ck_assert_int_eq(o[0].ok, 1);
    ck_assert_int_eq(o[1].failed, 1);
    ck_assert_int_eq(o[1].status, MSGBUS_ERR_BROKER);
    ck_assert_int_eq(o[2].failed, 1);
    ck_assert_int_eq(o[2].status, MSGBUS_ERR_BROKER);
    printf("nacked by the broker: %s\n", o[1].error);
    ck_assert(strstr(o[1].error, "basic.nack"));
    msgbus_close(bus);

    /* Declaring the same queue with other arguments: the broker's text. */
    url_with(url, sizeof url, "queue_type=quorum");
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_err(msgbus_declare(bus, topic, "g"), MSGBUS_ERR_BROKER);
    printf("inequivalent queue: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "PRECONDITION_FAILED"));
    /* The bus still works afterwards. */
    char other[128];
    tu_unique(other, sizeof other, "qargs2");
    tu_ck_ok(msgbus_declare(bus, other, "g"));
    msgbus_close(bus);
    tu_amqp_drop(topic, "g");
    tu_amqp_drop(other, "g");
}
END_TEST

static void nack_round_trip(const char *query)
{
    char url[1024], topic[128];
    url_with(url, sizeof url, query);
    tu_unique(topic, sizeof topic, "nack");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "workers", &sub));
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "retry me", 8));
    tu_ck_ok(msgbus_msg_set_key(m, "order-7", 7));
    tu_ck_ok(msgbus_msg_set_header(m, "trace", "t-1"));
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1700000000123));
    char id[64];
    snprintf(id, sizeof id, "%s", msgbus_msg_id(m));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));

    for (int attempt = 1; attempt <= 3; attempt++) {
        msgbus_msg_t *in = tu_receive(sub, 10000);
        ck_assert_msg(in != NULL, "attempt %d not delivered", attempt);
        ck_assert_int_eq(msgbus_msg_attempt(in), attempt);
        ck_assert_str_eq(msgbus_msg_id(in), id);
        size_t kl;
        const char *k = msgbus_msg_key(in, &kl);
        ck_assert_int_eq(kl, 7);
        ck_assert_int_eq(memcmp(k, "order-7", 7), 0);
        ck_assert_str_eq(msgbus_msg_header(in, "trace"), "t-1");
        ck_assert_int_eq(msgbus_msg_timestamp(in), 1700000000123);
        if (attempt < 3)
            tu_ck_ok(msgbus_nack(in));
        else
            tu_ck_ok(msgbus_ack(in));
        msgbus_msg_free(in);
    }
    ck_assert_ptr_null(tu_receive(sub, 1500));
    printf("%s: nack → attempts 1, 2, 3 then ack; nothing after\n", query);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}

START_TEST(nack_raises_attempt_on_classic_queue)
{
    nack_round_trip("queue_type=classic");
}
END_TEST

START_TEST(nack_raises_attempt_on_quorum_queue)
{
    nack_round_trip("queue_type=quorum");
}
END_TEST

/* messages_sent_by_caller as the bus says it now. */
static long long sent_by_caller(msgbus_t *bus)
{
    json_t *s = tu_stats(bus);
    long long n = (long long)tu_json_int(s, "detail.messages_sent_by_caller");
    json_decref(s);
    return n;
}

/* One publish at a time, the I/O thread idle in between: the publishing
 * thread writes each one itself (no hand-off). A burst: most go through
 * the I/O thread, many to a send(). Either way every message is confirmed
 * once and arrives in the order published. */
START_TEST(a_publish_on_an_idle_connection_is_written_by_the_caller)
{
    char topic[128];
    tu_unique(topic, sizeof topic, "bycaller");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, tu_broker_url("amqp"), NULL));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "workers", &sub));
    enum { SLOW = 20, BURST = 3000 };
    char body[32];
    /* The first publish declares the topic's exchange (the I/O thread's
     * broker call); those after it may go out on the caller's thread. */
    tu_publish_str(bus, topic, NULL, "first");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    long long before = sent_by_caller(bus);
    for (int i = 0; i < SLOW; i++) {
        usleep(20000); /* the I/O thread is back asleep in poll() */
        snprintf(body, sizeof body, "%d", i);
        tu_publish_str(bus, topic, NULL, body);
        tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    }
    long long slow = sent_by_caller(bus) - before;
    /* A loaded machine may wake the I/O thread for something else at the
     * moment of a publish; most must still go out on the caller's thread. */
    ck_assert_msg(slow >= SLOW / 2 && slow <= SLOW,
                  "%lld of %d spaced publishes written by the caller", slow, SLOW);
    for (int i = SLOW; i < SLOW + BURST; i++) {
        snprintf(body, sizeof body, "%d", i);
        tu_publish_str(bus, topic, NULL, body);
    }
    tu_ck_ok(msgbus_flush(bus, 30000, NULL));
    long long burst = sent_by_caller(bus) - before - slow;
    ck_assert_msg(burst < BURST / 2, "%lld of a burst of %d written by the caller", burst, BURST);
    json_t *s = tu_stats(bus);
    ck_assert_int_eq(tu_json_int(s, "confirmed"), 1 + SLOW + BURST);
    ck_assert_int_eq(tu_json_int(s, "failed"), 0);
    json_decref(s);

    msgbus_msg_t *in = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(in);
    size_t len;
    const void *p = msgbus_msg_payload(in, &len);
    ck_assert_int_eq(len, 5);
    ck_assert_int_eq(memcmp(p, "first", 5), 0);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    for (int i = 0; i < SLOW + BURST; i++) {
        in = tu_receive(sub, 10000);
        ck_assert_msg(in != NULL, "message %d of %d not delivered", i, SLOW + BURST);
        p = msgbus_msg_payload(in, &len);
        int n = snprintf(body, sizeof body, "%d", i);
        ck_assert_msg(len == (size_t)n && memcmp(p, body, len) == 0,
                      "message %d arrived out of order (%.*s)", i, (int)len, (const char *)p);
        tu_ck_ok(msgbus_ack(in));
        msgbus_msg_free(in);
    }
    ck_assert_ptr_null(tu_receive(sub, 500));
    printf("by the caller: %lld of %d spaced publishes, %lld of a burst of %d; all in order\n",
           slow, SLOW, burst, BURST);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_features");
    TCase *tc = tcase_create("features");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, wrong_password_is_auth_error);
    tcase_add_test(tc, failover_skips_a_dead_host);
    tcase_add_test(tc, oversized_message_is_refused_before_sending);
    tcase_add_test(tc, unroutable_is_reported_unless_allowed);
    tcase_add_test(tc, queue_arguments_reach_the_broker);
    tcase_add_test(tc, nack_raises_attempt_on_classic_queue);
    tcase_add_test(tc, nack_raises_attempt_on_quorum_queue);
    tcase_add_test(tc, a_publish_on_an_idle_connection_is_written_by_the_caller);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
