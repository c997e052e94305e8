/* cluster_admin.c — test_cluster's view of the cluster: its URL,
 * `scripts/brokers cluster` commands, and what the brokers are asked
 * directly (Kafka high watermarks; deleting the run's topic or queue). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"

#ifdef CLUSTER_WITH_KAFKA
#include <librdkafka/rdkafka.h>
#endif
#ifdef CLUSTER_WITH_AMQP
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#ifndef CLUSTER_REPO
#error "CLUSTER_REPO must name the source tree (for scripts/brokers)"
#endif

/* ---- the orchestrator: the cluster ----------------------------------------- */

/* Runs `scripts/brokers cluster <args>`; its whole output goes to `out`
 * (may be NULL). Dies when it fails. */
void cluster_cmd(char *out, size_t n, const char *fmt, ...)
{
    char args[512], cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s/scripts/brokers cluster %s 2>&1", CLUSTER_REPO, args);
    FILE *f = popen(cmd, "r");
    if (!f)
        die("%s: %s", cmd, strerror(errno));
    char line[512], all[4096] = "";
    while (fgets(line, sizeof line, f))
        if (strlen(all) + strlen(line) < sizeof all)
            strcat(all, line);
    int st = pclose(f);
    if (st != 0)
        die("'%s' failed (status %d): %s", cmd, st, all);
    fprintf(stderr, "cluster %s: %s", args, all[0] ? all : "(no output)\n");
    if (out)
        snprintf(out, n, "%s", all);
}

/* The first word of a command's output: a node name. */
void cluster_node(char *node, size_t n, const char *fmt, const char *a, const char *b)
{
    char out[4096];
    cluster_cmd(out, sizeof out, fmt, a, b);
    snprintf(node, n, "%.*s", (int)strcspn(out, " \t\r\n"), out);
    if (!node[0])
        die("'cluster %s' named no node", fmt);
}

void parse_url(const char *url, struct cluster_url *u)
{
    memset(u, 0, sizeof *u);
    const char *p = strstr(url, "://");
    if (!p)
        die("malformed cluster URL");
    p += 3;
    const char *at = strchr(p, '@'), *end = p + strcspn(p, "/?");
    if (at && at < end)
        p = at + 1;
    snprintf(u->scheme_auth, sizeof u->scheme_auth, "%.*s", (int)(p - url), url);
    snprintf(u->rest, sizeof u->rest, "%s", end);
    while (p < end && u->nhosts < 3) {
        size_t l = strcspn(p, ",/?");
        snprintf(u->hosts[u->nhosts++], sizeof u->hosts[0], "%.*s", (int)l, p);
        p += l + (*(p + l) == ',');
    }
}

/* The URL with host `first` first, then the others in order, plus extra
 * options. */
void url_from(char *buf, size_t n, const struct cluster_url *u, int first, const char *extra)
{
    int len = snprintf(buf, n, "%s%s", u->scheme_auth, u->hosts[first]);
    for (int i = 0; i < u->nhosts; i++)
        if (i != first)
            len += snprintf(buf + len, n - (size_t)len, ",%s", u->hosts[i]);
    const char *rest = u->rest;
    bool kafka = strncmp(u->scheme_auth, "kafka", 5) == 0;
    if (!kafka && !*rest)
        rest = "/";
    len += snprintf(buf + len, n - (size_t)len, "%s", rest);
    if (extra && *extra)
        snprintf(buf + len, n - (size_t)len, "%s%s", strchr(buf, '?') ? "&" : "?", extra);
}

#ifdef CLUSTER_WITH_KAFKA
/* A client of the cluster for the questions msgbus has no call for. */
static rd_kafka_t *kafka_client(const struct cluster_url *u)
{
    char brokers[256] = "", err[512];
    for (int i = 0; i < u->nhosts; i++)
        snprintf(brokers + strlen(brokers), sizeof brokers - strlen(brokers), "%s%s", i ? "," : "",
                 u->hosts[i]);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk)
        die("rd_kafka_new: %s", err);
    return rk;
}

static int kafka_partitions(rd_kafka_t *rk, const char *topic)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    if (rd_kafka_metadata(rk, 0, t, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 ||
        md->topics[0].err)
        die("metadata of %s: failed", topic);
    int n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    return n;
}

int busiest_partition(const struct cluster_url *u, const char *topic, int64_t *hw)
{
    rd_kafka_t *rk = kafka_client(u);
    int best = -1, n = kafka_partitions(rk, topic);
    *hw = -1;
    for (int p = 0; p < n; p++) {
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            die("watermarks of %s [%d]: %s", topic, p, rd_kafka_err2str(e));
        fprintf(stderr, "partition %d: high watermark %" PRId64 "\n", p, hi);
        if (hi > *hw) {
            *hw = hi;
            best = p;
        }
    }
    rd_kafka_destroy(rk);
    return best;
}

/* CRC-32 (IEEE, reflected), as librdkafka's rd_crc32. */
static uint32_t crc32_ieee(const char *s, size_t len)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= (unsigned char)s[i];
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

int predicted_busiest_partition(const struct cluster_url *u, const char *topic)
{
    rd_kafka_t *rk = kafka_client(u);
    int n = kafka_partitions(rk, topic);
    rd_kafka_destroy(rk);
    int count[64] = {0}, best = 0;
    if (n < 1 || n > 64)
        die("%s has %d partitions", topic, n);
    for (int k = 0; k < NKEYS; k++) {
        char key[16];
        int l = snprintf(key, sizeof key, "k%d", k);
        count[crc32_ieee(key, (size_t)l) % (uint32_t)n]++;
    }
    for (int p = 1; p < n; p++)
        if (count[p] > count[best])
            best = p;
    return best;
}

void delete_topic(const struct cluster_url *u, const char *topic)
{
    rd_kafka_t *rk = kafka_client(u);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
    rd_kafka_DeleteTopics(rk, &dt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
    const char *why = !ev ? "timed out" : rd_kafka_event_error(ev) ? rd_kafka_event_error_string(ev) : NULL;
    if (ev && !why) {
        size_t cnt = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_DeleteTopics_result_topics(rd_kafka_event_DeleteTopics_result(ev), &cnt);
        if (cnt == 1 && rd_kafka_topic_result_error(res[0]))
            why = rd_kafka_topic_result_error_string(res[0]);
    }
    if (why)
        fprintf(stderr, "deleting topic %s: %s (left behind)\n", topic, why);
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_DeleteTopic_destroy(dt);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}
#endif

#ifdef CLUSTER_WITH_AMQP
/* Deletes the group's queue and the topic's exchange (msgbus has no call
 * for it), through host `h` of the cluster URL. */
void delete_queue(const struct cluster_url *u, int h, const char *topic, const char *group)
{
    char url[1024], q[256];
    snprintf(url, sizeof url, "%s%s%s", u->scheme_auth, u->hosts[h], u->rest);
    char *query = strchr(url, '?');
    if (query)
        *query = 0;
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        fprintf(stderr, "deleting queue: cannot parse the cluster URL\n");
        return;
    }
    if (!ci.vhost[0])
        ci.vhost = "/"; /* amqp_parse_url reads ".../" as the vhost "" */
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(conn);
    snprintf(q, sizeof q, "%s.%s", topic, group);
    const char *why = NULL;
    if (!s || amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK)
        why = "cannot connect";
    else if (amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password)
                 .reply_type != AMQP_RESPONSE_NORMAL)
        why = "login failed";
    else if (!amqp_channel_open(conn, 1))
        why = "channel.open failed";
    else if (!amqp_queue_delete(conn, 1, amqp_cstring_bytes(q), 0, 0))
        why = "queue.delete failed";
    else if (!amqp_exchange_delete(conn, 1, amqp_cstring_bytes(topic), 0))
        why = "exchange.delete failed";
    if (why)
        fprintf(stderr, "deleting queue %s: %s (left behind)\n", q, why);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}
#endif
