/*
 * cluster_settings_kafka_amqp.c — what msgbus creates on a 3-node cluster
 * (scripts/brokers cluster up; MSGBUS_TEST_KAFKA_CLUSTER_URL and
 * MSGBUS_TEST_AMQP_CLUSTER_URL from .brokers/env), asked of the brokers
 * themselves:
 *  - Kafka: a topic msgbus declares has 3 copies of every partition and
 *    min.insync.replicas=2 set on the topic (not the broker's default);
 *    replication_factor / min_insync_replicas in the URL override both.
 *  - RabbitMQ: with several hosts in the URL a group queue is a quorum
 *    queue (declaring it classic is refused as inequivalent), and
 *    queue_type=classic keeps classic.
 * docs/clusters.md. A missing cluster URL is a failure, never a skip.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ---- Kafka -------------------------------------------------------------------------------- */

/* "host:port,host:port" of a kafka:// URL (no query). */
static void kafka_bootstrap(const char *url, char *out, size_t n)
{
    const char *p = strstr(url, "://");
    ck_assert_ptr_nonnull(p);
    snprintf(out, n, "%s", p + 3);
    out[strcspn(out, "/?")] = '\0';
}

static rd_kafka_t *raw_client(void)
{
    char bs[512], errstr[256];
    kafka_bootstrap(tu_broker_url("kafka_cluster"), bs, sizeof bs);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert_int_eq(rd_kafka_conf_set(conf, "bootstrap.servers", bs, errstr, sizeof errstr),
                     RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    ck_assert_msg(rk != NULL, "rd_kafka_new: %s", errstr);
    return rk;
}

/* The fewest and most replicas over the topic's partitions. */
static void replicas(rd_kafka_t *rk, const char *topic, int *lo, int *hi, int *parts)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    ck_assert_int_eq(rd_kafka_metadata(rk, 0, rkt, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    ck_assert_int_eq(md->topic_cnt, 1);
    ck_assert_int_eq(md->topics[0].err, RD_KAFKA_RESP_ERR_NO_ERROR);
    *parts = md->topics[0].partition_cnt;
    *lo = 1000;
    *hi = 0;
    for (int i = 0; i < *parts; i++) {
        int r = md->topics[0].partitions[i].replica_cnt;
        *lo = r < *lo ? r : *lo;
        *hi = r > *hi ? r : *hi;
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
}

/* The topic's min.insync.replicas and whether it is set on the topic. */
static void min_isr(rd_kafka_t *rk, const char *topic, char *value, size_t n, bool *on_topic)
{
    rd_kafka_ConfigResource_t *res = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DescribeConfigs(rk, &res, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
    ck_assert_ptr_nonnull(ev);
    ck_assert_msg(!rd_kafka_event_error(ev), "DescribeConfigs: %s", rd_kafka_event_error_string(ev));
    size_t cnt = 0;
    const rd_kafka_ConfigResource_t **rs =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &cnt);
    ck_assert_uint_eq(cnt, 1);
    ck_assert_int_eq(rd_kafka_ConfigResource_error(rs[0]), RD_KAFKA_RESP_ERR_NO_ERROR);
    size_t ne = 0;
    const rd_kafka_ConfigEntry_t **es = rd_kafka_ConfigResource_configs(rs[0], &ne);
    value[0] = '\0';
    *on_topic = false;
    for (size_t i = 0; i < ne; i++)
        if (strcmp(rd_kafka_ConfigEntry_name(es[i]), "min.insync.replicas") == 0) {
            snprintf(value, n, "%s", rd_kafka_ConfigEntry_value(es[i]));
            *on_topic =
                rd_kafka_ConfigEntry_source(es[i]) == RD_KAFKA_CONFIG_SOURCE_DYNAMIC_TOPIC_CONFIG;
        }
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_ConfigResource_destroy(res);
}

static void delete_topic(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DeleteTopics(rk, &dt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_DeleteTopic_destroy(dt);
}

/* Declares a topic through a bus opened on the cluster URL + `query` and
 * checks the copies and min.insync.replicas the cluster gave it. */
static void kafka_declared(const char *query, int want_rf, const char *want_isr,
                           bool want_on_topic)
{
    char url[1024], topic[128];
    snprintf(url, sizeof url, "%s%s%s", tu_broker_url("kafka_cluster"), *query ? "?" : "", query);
    tu_unique(topic, sizeof topic, "cluster-settings");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_close(bus);
    rd_kafka_t *rk = raw_client();
    int lo, hi, parts;
    replicas(rk, topic, &lo, &hi, &parts);
    char isr[32];
    bool on_topic;
    min_isr(rk, topic, isr, sizeof isr, &on_topic);
    printf("kafka '%s': %d partitions, %d..%d replicas, min.insync.replicas=%s (%s)\n", query,
           parts, lo, hi, isr, on_topic ? "set on the topic" : "broker default");
    ck_assert_int_eq(parts, 3);
    ck_assert_int_eq(lo, want_rf);
    ck_assert_int_eq(hi, want_rf);
    ck_assert_str_eq(isr, want_isr);
    ck_assert_int_eq(on_topic, want_on_topic);
    delete_topic(rk, topic);
    rd_kafka_destroy(rk);
}

START_TEST(kafka_topics_get_three_copies_and_two_in_sync)
{
    kafka_declared("", 3, "2", true);
    kafka_declared("min_insync_replicas=3", 3, "3", true);
    /* Named: 2 copies, and min.insync.replicas left to the broker (whose
     * default on this cluster is 2, so not set on the topic). */
    kafka_declared("replication_factor=2", 2, "2", false);
}
END_TEST

/* ---- RabbitMQ ----------------------------------------------------------------------------- */

/* A plain connection to the first host of the cluster URL. */
static amqp_connection_state_t raw_amqp(void)
{
    const char *url = tu_broker_url("amqp_cluster");
    const char *at = strchr(url, '@');
    ck_assert_ptr_nonnull(at);
    char host[256];
    int port = 0;
    ck_assert_int_eq(sscanf(at + 1, "%255[^:]:%d", host, &port), 2);
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    ck_assert_int_eq(amqp_socket_open(s, host, port), AMQP_STATUS_OK);
    ck_assert_int_eq(
        amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest").reply_type,
        AMQP_RESPONSE_NORMAL);
    return c;
}

/* Declares `queue` as the given type on a fresh channel: true when the
 * broker accepts it (the queue is of that type, or new). */
static bool declare_as(amqp_connection_state_t c, int ch, const char *queue, const char *type,
                       char *why, size_t n)
{
    ck_assert(amqp_channel_open(c, (amqp_channel_t)ch) != NULL);
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-queue-type"),
                            .value = {.kind = AMQP_FIELD_KIND_UTF8,
                                      .value.bytes = amqp_cstring_bytes(type)}};
    amqp_table_t args = {1, &e};
    amqp_queue_declare(c, (amqp_channel_t)ch, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    why[0] = '\0';
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_channel_close(c, (amqp_channel_t)ch, AMQP_REPLY_SUCCESS);
        return true;
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *cc = r.reply.decoded;
        snprintf(why, n, "%u %.*s", cc->reply_code, (int)cc->reply_text.len,
                 (const char *)cc->reply_text.bytes);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(c, (amqp_channel_t)ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    }
    return false;
}

static void delete_queue(amqp_connection_state_t c, int ch, const char *queue)
{
    ck_assert(amqp_channel_open(c, (amqp_channel_t)ch) != NULL);
    amqp_queue_delete(c, (amqp_channel_t)ch, amqp_cstring_bytes(queue), 0, 0);
    amqp_get_rpc_reply(c);
}

/* A group queue made through the cluster URL (+ query) answers to `type`
 * and refuses `other`. */
static void amqp_group_queue(const char *query, const char *type, const char *other)
{
    char url[1024], topic[128], q[300], why[512];
    snprintf(url, sizeof url, "%s%s%s", tu_broker_url("amqp_cluster"), *query ? "?" : "", query);
    tu_unique(topic, sizeof topic, "cluster-settings");
    snprintf(q, sizeof q, "%s.g", topic);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_close(bus);
    amqp_connection_state_t c = raw_amqp();
    bool other_ok = declare_as(c, 1, q, other, why, sizeof why);
    printf("amqp '%s': declaring '%s' as %s: %s\n", query, q, other,
           other_ok ? "accepted" : why);
    ck_assert_msg(!other_ok, "the group queue accepted x-queue-type=%s", other);
    ck_assert_msg(strstr(why, "406") && strstr(why, "x-queue-type"), "refused with: %s", why);
    ck_assert_msg(declare_as(c, 2, q, type, why, sizeof why), "as %s: %s", type, why);
    delete_queue(c, 3, q);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

START_TEST(amqp_several_hosts_mean_quorum_group_queues)
{
    amqp_group_queue("", "quorum", "classic");
    amqp_group_queue("queue_type=classic", "classic", "quorum");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cluster_settings");
    TCase *k = tcase_create("kafka");
    tcase_set_timeout(k, 120);
    tcase_add_test(k, kafka_topics_get_three_copies_and_two_in_sync);
    suite_add_tcase(s, k);
    TCase *a = tcase_create("amqp");
    tcase_set_timeout(a, 120);
    tcase_add_test(a, amqp_several_hosts_mean_quorum_group_queues);
    suite_add_tcase(s, a);
    return tu_run_suite(s);
}
