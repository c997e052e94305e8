/*
 * test_kafka_errors.c — Kafka backend behaviours that need the real broker
 * (the mock cluster creates any topic it is asked about):
 *  - subscribing to a missing topic with create_topics=false is
 *    MSGBUS_ERR_NOT_FOUND naming the topic, and creates nothing;
 *  - a 2 MB message is MSGBUS_ERR_TOO_LARGE at publish (the mock suite
 *    covers the broker's own refusal);
 *  - declare fixes a group's start: a message published after declare and
 *    before the group's first consumer is received; one published before
 *    declare is not.
 *  - nack redelivers with attempt 2 while other messages keep flowing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

struct reports {
    int ok, failed;
    msgbus_err_t status;
};

static void on_report(void *opaque, const msgbus_report_t *r)
{
    struct reports *rp = opaque;
    if (r->status == MSGBUS_OK) {
        rp->ok++;
    } else {
        rp->failed++;
        rp->status = r->status;
        printf("report: %s: %s\n", msgbus_err_name(r->status), r->error);
    }
}

START_TEST(missing_topic_without_creation_is_not_found)
{
    char url[512], topic[128];
    snprintf(url, sizeof url, "%s?create_topics=false&connect_timeout_ms=3000",
             tu_broker_url("kafka"));
    tu_unique(topic, sizeof topic, "missing");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_err(msgbus_subscribe(bus, topic, "g", &sub), MSGBUS_ERR_NOT_FOUND);
    printf("missing topic after %lld ms: %s\n", (long long)(tu_now_ms() - t0), msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), topic));
    ck_assert_ptr_null(sub);
    /* Still missing: the check created nothing. */
    tu_ck_err(msgbus_subscribe(bus, topic, "g", &sub), MSGBUS_ERR_NOT_FOUND);
    msgbus_close(bus);
}
END_TEST

START_TEST(declare_fixes_group_start)
{
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "declare");
    tu_unique(group, sizeof group, "declare-g");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, tu_broker_url("kafka"), NULL));
    tu_ck_ok(msgbus_declare(bus, topic, NULL));
    tu_publish_str(bus, topic, "k", "before-declare");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, group));
    tu_ck_ok(msgbus_declare(bus, topic, group)); /* idempotent */
    tu_publish_str(bus, topic, "k", "after-declare");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    printf("declared group first got: %.*s\n", (int)len, p);
    ck_assert_int_eq((int)len, 13);
    ck_assert_int_eq(memcmp(p, "after-declare", 13), 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_ptr_null(tu_receive(sub, 1000));
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(two_megabytes_is_too_large)
{
    char topic[128];
    tu_unique(topic, sizeof topic, "big");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, tu_broker_url("kafka"), NULL));
    tu_ck_ok(msgbus_declare(bus, topic, NULL));
    size_t n = 2 * 1000 * 1000;
    char *big = calloc(1, n);
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, big, n));
    tu_ck_err(msgbus_publish(bus, topic, m, NULL, NULL), MSGBUS_ERR_TOO_LARGE);
    printf("too large: %s\n", msgbus_last_error());
    msgbus_msg_free(m);
    free(big);
    msgbus_close(bus);
}
END_TEST

START_TEST(nack_redelivers_with_attempt_two)
{
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "nack");
    tu_unique(group, sizeof group, "nack-g");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, tu_broker_url("kafka"), NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    struct reports rp = {0};
    for (int i = 0; i < 3; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "m%d", i);
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
        tu_ck_ok(msgbus_msg_set_key(m, "same", 4));
        tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
        tu_ck_ok(msgbus_publish(bus, topic, m, on_report, &rp));
        msgbus_msg_free(m);
    }
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(rp.ok, 3);
    int seen = 0, redelivered = 0;
    while (seen < 4) {
        msgbus_msg_t *m = tu_receive(sub, 10000);
        ck_assert_ptr_nonnull(m);
        seen++;
        size_t len;
        const char *p = msgbus_msg_payload(m, &len);
        ck_assert_str_eq(msgbus_msg_header(m, "content-type"), "text/plain");
        ck_assert_ptr_nonnull(msgbus_msg_id(m));
        if (len == 2 && memcmp(p, "m0", 2) == 0 && msgbus_msg_attempt(m) == 1) {
            tu_ck_ok(msgbus_nack(m));
        } else {
            if (len == 2 && memcmp(p, "m0", 2) == 0) {
                ck_assert_int_eq(msgbus_msg_attempt(m), 2);
                redelivered++;
            }
            tu_ck_ok(msgbus_ack(m));
        }
        msgbus_msg_free(m);
    }
    printf("nack: seen=%d redelivered=%d\n", seen, redelivered);
    ck_assert_int_eq(redelivered, 1);
    ck_assert_ptr_null(tu_receive(sub, 500));
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kafka_errors");
    TCase *tc = tcase_create("errors");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, missing_topic_without_creation_is_not_found);
    tcase_add_test(tc, declare_fixes_group_start);
    tcase_add_test(tc, two_megabytes_is_too_large);
    tcase_add_test(tc, nack_redelivers_with_attempt_two);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
