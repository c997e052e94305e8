/*
 * tu_cleanup.c — deleting what a test program made on the shared brokers
 * (tu_cleanup in testutil.h), by the marker its tu_unique names carry.
 * Kafka through librdkafka's Admin API; RabbitMQ has no listing in AMQP,
 * so the names come from rabbitmqctl of the test node (scripts/brokers
 * writes .brokers/rabbitmq/env) and the deletes go through rabbitmq-c.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#ifdef TU_HAVE_KAFKA
#include <librdkafka/rdkafka.h>
#endif
#ifdef TU_HAVE_AMQP
#include "tu_amqp.h"
#endif

enum { TU_CLEAN_MAX = 4096 };

#ifdef TU_HAVE_KAFKA
/* A librdkafka configuration from a msgbus kafka:// URL: its brokers, its
 * credentials (SASL as msgbus makes them: SASL_SSL, SCRAM-SHA-512 unless
 * the query says otherwise) and the librdkafka properties of its query. */
static rd_kafka_conf_t *tu_kafka_conf(const char *url)
{
    char u[2048], err[256];
    snprintf(u, sizeof u, "%s", url + (strncmp(url, "kafka://", 8) == 0 ? 8 : 0));
    char *query = strchr(u, '?');
    if (query)
        *query++ = '\0';
    char *hosts = u, *at = strrchr(u, '@');
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    bool protocol = false, mechanism = false;
    for (char *kv = query ? strtok(query, "&") : NULL; kv; kv = strtok(NULL, "&")) {
        char *eq = strchr(kv, '=');
        if (!eq || !strchr(kv, '.') || eq < strchr(kv, '.'))
            continue; /* msgbus's own options have no dots */
        *eq = '\0';
        protocol |= strcmp(kv, "security.protocol") == 0;
        mechanism |= strcmp(kv, "sasl.mechanism") == 0;
        rd_kafka_conf_set(conf, kv, eq + 1, err, sizeof err);
    }
    if (at) {
        *at = '\0';
        hosts = at + 1;
        char *colon = strchr(u, ':');
        if (colon)
            *colon = '\0';
        rd_kafka_conf_set(conf, "sasl.username", u, err, sizeof err);
        rd_kafka_conf_set(conf, "sasl.password", colon ? colon + 1 : "", err, sizeof err);
        if (!protocol)
            rd_kafka_conf_set(conf, "security.protocol", "SASL_SSL", err, sizeof err);
        if (!mechanism)
            rd_kafka_conf_set(conf, "sasl.mechanism", "SCRAM-SHA-512", err, sizeof err);
    }
    rd_kafka_conf_set(conf, "bootstrap.servers", hosts, err, sizeof err);
    return conf;
}

/* Waits for the admin result of type `type` on `q`; NULL on timeout. */
static rd_kafka_event_t *tu_kafka_wait(rd_kafka_queue_t *q, rd_kafka_event_type_t type)
{
    for (int i = 0; i < 100; i++) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
        if (ev && rd_kafka_event_type(ev) == type)
            return ev;
        if (ev)
            rd_kafka_event_destroy(ev);
    }
    return NULL;
}

static void tu_cleanup_kafka(const char *url, const char *marker)
{
    char err[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, tu_kafka_conf(url), err, sizeof err);
    if (!rk) {
        printf("cleanup: kafka: %s\n", err);
        return;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY);
    rd_kafka_AdminOptions_set_request_timeout(opt, 10000, err, sizeof err);
    int topics = 0, groups = 0;

    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(rk, 1, NULL, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_DeleteTopic_t **del = calloc(TU_CLEAN_MAX, sizeof *del);
        for (int i = 0; del && i < md->topic_cnt && topics < TU_CLEAN_MAX; i++)
            if (strstr(md->topics[i].topic, marker))
                del[topics++] = rd_kafka_DeleteTopic_new(md->topics[i].topic);
        if (topics) {
            rd_kafka_DeleteTopics(rk, del, (size_t)topics, opt, q);
            rd_kafka_event_t *ev = tu_kafka_wait(q, RD_KAFKA_EVENT_DELETETOPICS_RESULT);
            if (!ev)
                printf("cleanup: kafka: deleting %d topics: no answer\n", topics);
            else
                rd_kafka_event_destroy(ev);
            rd_kafka_DeleteTopic_destroy_array(del, (size_t)topics);
        }
        free(del);
        rd_kafka_metadata_destroy(md);
    } else {
        printf("cleanup: kafka: the broker did not answer; topics of %s are left\n", marker);
    }

    rd_kafka_ListConsumerGroups(rk, opt, q);
    rd_kafka_event_t *ev = tu_kafka_wait(q, RD_KAFKA_EVENT_LISTCONSUMERGROUPS_RESULT);
    const rd_kafka_ListConsumerGroups_result_t *res =
        ev ? rd_kafka_event_ListConsumerGroups_result(ev) : NULL;
    if (res) {
        size_t n = 0;
        const rd_kafka_ConsumerGroupListing_t **l =
            rd_kafka_ListConsumerGroups_result_valid(res, &n);
        rd_kafka_DeleteGroup_t **del = calloc(TU_CLEAN_MAX, sizeof *del);
        for (size_t i = 0; del && i < n && groups < TU_CLEAN_MAX; i++) {
            const char *g = rd_kafka_ConsumerGroupListing_group_id(l[i]);
            if (strstr(g, marker))
                del[groups++] = rd_kafka_DeleteGroup_new(g);
        }
        if (groups) {
            rd_kafka_DeleteGroups(rk, del, (size_t)groups, opt, q);
            rd_kafka_event_t *dev = tu_kafka_wait(q, RD_KAFKA_EVENT_DELETEGROUPS_RESULT);
            if (dev)
                rd_kafka_event_destroy(dev);
            rd_kafka_DeleteGroup_destroy_array(del, (size_t)groups);
        }
        free(del);
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    printf("cleanup: kafka: deleted %d topics and %d groups named *%s*\n", topics, groups, marker);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}
#endif

#ifdef TU_HAVE_AMQP
static void tu_cleanup_amqp(const char *url, const char *marker)
{
    char root[1024], cmd[2400];
    snprintf(root, sizeof root, "%s", __FILE__);
    char *cut = strstr(root, "/tests/util/");
    if (cut)
        *cut = '\0';
    snprintf(cmd, sizeof cmd,
             ". '%s/.brokers/rabbitmq/env' 2>/dev/null && { rabbitmqctl -q list_queues name "
             "| sed 's/^/q /'; rabbitmqctl -q list_exchanges name | sed 's/^/x /'; }",
             root);
    FILE *f = popen(cmd, "r");
    if (!f) {
        printf("cleanup: amqp: cannot run rabbitmqctl; queues of %s are left\n", marker);
        return;
    }
    int queues = 0, exchanges = 0, failed = 0;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strlen(line) < 3 || !strstr(line + 2, marker))
            continue;
        bool q = line[0] == 'q';
        if (tu_amqp_delete(url, q ? line + 2 : NULL, q ? NULL : line + 2))
            q ? queues++ : exchanges++;
        else
            failed++;
    }
    int rc = pclose(f);
    if (rc != 0)
        printf("cleanup: amqp: rabbitmqctl of the test node failed (status %d); what is "
               "named *%s* may be left\n", rc, marker);
    printf("cleanup: amqp: deleted %d queues and %d exchanges named *%s*%s\n", queues, exchanges,
           marker, failed ? " (some deletes failed)" : "");
}
#endif

void tu_cleanup(const char *kind, const char *url, const char *marker)
{
    (void)url;
    (void)marker;
#ifdef TU_HAVE_KAFKA
    if (strcmp(kind, "kafka") == 0)
        tu_cleanup_kafka(url, marker);
#endif
#ifdef TU_HAVE_AMQP
    if (strcmp(kind, "amqp") == 0)
        tu_cleanup_amqp(url, marker);
#endif
    (void)kind;
}
