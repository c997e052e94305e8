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
 *  - declare against a group whose first member is still positioning itself
 *    waits for that member's start commit, so a message published right
 *    after declare is not below the member's start;
 *  - nack redelivers with attempt 2 while other messages keep flowing.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "testutil.h"

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

/* Subscribes `group` and checks that the first message it gets is the
 * one published right after declare; acks it, returns the subscription. */
static msgbus_sub_t *first_is_after_declare(msgbus_t *bus, const char *topic, const char *group)
{
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
    return sub;
}

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
    msgbus_sub_t *sub = first_is_after_declare(bus, topic, group);
    ck_assert_ptr_null(tu_receive(sub, 1000));
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* A member of the group that positions itself late, as a msgbus member
 * whose assignment is still being resolved: it joins, and only 700 ms
 * later commits its start (the partitions' end as of then). */
struct late_member {
    rd_kafka_t *rk;
    const char *topic;
    rd_kafka_topic_partition_list_t *assigned;
    int64_t commit_sent_ms; /* declare cannot see the commit before this */
    int64_t committed_at_ms;
    int64_t start;
};

static void late_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct late_member *lm = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (!lm->assigned)
            lm->assigned = rd_kafka_topic_partition_list_copy(parts);
        rd_kafka_assign(rk, parts);
    } else {
        rd_kafka_assign(rk, NULL);
    }
}

static void *late_commit(void *arg)
{
    struct late_member *lm = arg;
    struct timespec ts = {0, 700 * 1000000};
    nanosleep(&ts, NULL);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(lm->assigned);
    for (int i = 0; i < l->cnt; i++) {
        int64_t lo = 0, hi = 0;
        ck_assert_int_eq(rd_kafka_query_watermark_offsets(lm->rk, lm->topic, l->elems[i].partition,
                                                          &lo, &hi, 10000), 0);
        l->elems[i].offset = hi;
        lm->start += hi;
    }
    lm->commit_sent_ms = tu_now_ms();
    ck_assert_int_eq(rd_kafka_commit(lm->rk, l, 0), 0);
    lm->committed_at_ms = tu_now_ms();
    rd_kafka_topic_partition_list_destroy(l);
    return NULL;
}

START_TEST(declare_waits_for_a_joining_member)
{
    char topic[128], group[128], errstr[512];
    tu_unique(topic, sizeof topic, "declare-join");
    tu_unique(group, sizeof group, "declare-join-g");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, tu_broker_url("kafka"), NULL));
    tu_ck_ok(msgbus_declare(bus, topic, NULL));

    struct late_member lm = {.topic = topic};
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *hosts = strstr(tu_broker_url("kafka"), "://") + 3;
    ck_assert_int_eq(rd_kafka_conf_set(conf, "bootstrap.servers", hosts, errstr, sizeof errstr), 0);
    ck_assert_int_eq(rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof errstr), 0);
    ck_assert_int_eq(rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof errstr),
                     0);
    rd_kafka_conf_set_rebalance_cb(conf, late_rebalance);
    rd_kafka_conf_set_opaque(conf, &lm);
    lm.rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    ck_assert_ptr_nonnull(lm.rk);
    rd_kafka_poll_set_consumer(lm.rk);
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tl, topic, RD_KAFKA_PARTITION_UA);
    ck_assert_int_eq(rd_kafka_subscribe(lm.rk, tl), 0);
    rd_kafka_topic_partition_list_destroy(tl);
    int64_t until = tu_now_ms() + 30000;
    while (!lm.assigned && tu_now_ms() < until) {
        rd_kafka_message_t *rm = rd_kafka_consumer_poll(lm.rk, 100);
        if (rm)
            rd_kafka_message_destroy(rm);
    }
    ck_assert_ptr_nonnull(lm.assigned);

    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, late_commit, &lm), 0);
    int64_t t0 = tu_now_ms();
    tu_ck_ok(msgbus_declare(bus, topic, group));
    int64_t returned_at = tu_now_ms();
    tu_publish_str(bus, topic, "k", "after-declare");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    pthread_join(th, NULL);
    printf("declare on a joining group returned after %lld ms; the member sent its start "
           "commit at %lld ms, got the answer at %lld ms (start offsets sum %lld)\n",
           (long long)(returned_at - t0), (long long)(lm.commit_sent_ms - t0),
           (long long)(lm.committed_at_ms - t0), (long long)lm.start);
    /* Not the answer's time: declare may read the stored offset before the
     * member has processed the broker's answer. */
    ck_assert_int_ge(returned_at, lm.commit_sent_ms);
    ck_assert_int_eq(lm.start, 0);
    rd_kafka_topic_partition_list_destroy(lm.assigned);
    rd_kafka_consumer_close(lm.rk);
    rd_kafka_destroy(lm.rk);

    /* The group, now in msgbus's hands, starts where its member did. */
    msgbus_sub_close(first_is_after_declare(bus, topic, group));
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
    struct tu_reports rp = {0};
    for (int i = 0; i < 3; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "m%d", i);
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
        tu_ck_ok(msgbus_msg_set_key(m, "same", 4));
        tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
        tu_ck_ok(msgbus_publish(bus, topic, m, tu_on_report, &rp));
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
    tcase_add_test(tc, declare_waits_for_a_joining_member);
    tcase_add_test(tc, two_megabytes_is_too_large);
    tcase_add_test(tc, nack_redelivers_with_attempt_two);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
