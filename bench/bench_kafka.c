/*
 * bench_kafka.c — msgbus's Kafka backend against raw librdkafka, on the same
 * broker, in the same run, alternating (msgbus first on even rounds, raw
 * first on odd ones), median of the rounds.
 *
 *   bench_kafka [messages=200000] [rounds=3] [case-filter]
 *   (URL from MSGBUS_TEST_KAFKA_URL; case-filter: run only cases whose name
 *   contains it, e.g. "consume" or "_64")
 *
 * Cases: produce_64 / produce_1024 — publish N messages with a delivery
 * report for each, until the last report; consume_64 / consume_1024 —
 * receive N messages that are already in the topic, acking each (msgbus)
 * or committing positions every 100 ms (raw), from the first message to
 * the N-th.
 *
 * Fairness: the raw client gets exactly the librdkafka settings msgbus
 * uses (idempotent producer, acks=all, defaults otherwise; consumer with
 * auto commit and offset store off, queued.min.messages=1000000) and
 * produces the same record: the
 * payload, the key-less partitioner, and the 36-byte id header (ce_id)
 * msgbus adds to every message.
 */
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "msgbus/msgbus.h"

static const char *g_url;   /* kafka://127.0.0.1:9092 */
static const char *g_hosts; /* 127.0.0.1:9092 */
static long g_n = 200000;
static int g_rounds = 3;
static const char *g_filter = "";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench_kafka: %s: %s\n", what, detail);
    exit(1);
}

static void unique(char *buf, size_t n, const char *prefix)
{
    static int counter;
    snprintf(buf, n, "%s-%d-%d-%ld", prefix, (int)getpid(), ++counter, (long)time(NULL));
}

static rd_kafka_conf_t *raw_conf(rd_kafka_type_t type, const char *group)
{
    char errstr[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    const char *p[] = {"bootstrap.servers", g_hosts,
                       "client.id", type == RD_KAFKA_PRODUCER ? "msgbus-producer" : "msgbus-consumer",
                       NULL};
    for (int i = 0; p[i]; i += 2)
        if (rd_kafka_conf_set(c, p[i], p[i + 1], errstr, sizeof errstr))
            die(p[i], errstr);
    if (type == RD_KAFKA_PRODUCER) {
        rd_kafka_conf_set(c, "enable.idempotence", "true", errstr, sizeof errstr);
        rd_kafka_conf_set(c, "acks", "all", errstr, sizeof errstr);
    } else {
        rd_kafka_conf_set(c, "group.id", group, errstr, sizeof errstr);
        rd_kafka_conf_set(c, "enable.auto.commit", "false", errstr, sizeof errstr);
        rd_kafka_conf_set(c, "enable.auto.offset.store", "false", errstr, sizeof errstr);
        rd_kafka_conf_set(c, "auto.offset.reset", "earliest", errstr, sizeof errstr);
        rd_kafka_conf_set(c, "queued.min.messages", "1000000", errstr, sizeof errstr);
    }
    return c;
}

/* ---- produce ---------------------------------------------------------------- */

static atomic_long g_reports;

static void mb_report(void *opaque, const msgbus_report_t *r)
{
    if (r->status != MSGBUS_OK)
        die("delivery", r->error);
    atomic_fetch_add(&g_reports, 1);
}

static double produce_msgbus(msgbus_t *bus, const char *topic, size_t size)
{
    char *payload = calloc(1, size);
    memset(payload, 'm', size);
    atomic_store(&g_reports, 0);
    double t0 = now_s();
    for (long i = 0; i < g_n; i++) {
        msgbus_msg_t *m = NULL;
        msgbus_msg_new(&m, payload, size);
        msgbus_err_t e;
        while ((e = msgbus_publish(bus, topic, m, mb_report, NULL)) == MSGBUS_ERR_QUEUE_FULL)
            msgbus_poll(bus, 1, NULL);
        if (e)
            die("publish", msgbus_last_error());
        msgbus_msg_free(m);
        if ((i & 1023) == 0)
            msgbus_poll(bus, 0, NULL);
    }
    if (msgbus_flush(bus, 120000, NULL) != MSGBUS_OK)
        die("flush", msgbus_last_error());
    double t = now_s() - t0;
    if (atomic_load(&g_reports) != g_n)
        die("reports", "count mismatch");
    free(payload);
    return (double)g_n / t;
}

static void raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    if (m->err)
        die("raw delivery", rd_kafka_err2str(m->err));
    atomic_fetch_add(&g_reports, 1);
}

static rd_kafka_t *raw_producer(void)
{
    char errstr[512];
    rd_kafka_conf_t *c = raw_conf(RD_KAFKA_PRODUCER, NULL);
    rd_kafka_conf_set_dr_msg_cb(c, raw_dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, errstr, sizeof errstr);
    if (!rk)
        die("raw producer", errstr);
    return rk;
}

static void raw_produce_all(rd_kafka_t *rk, const char *topic, size_t size, long n)
{
    char *payload = calloc(1, size);
    memset(payload, 'r', size);
    for (long i = 0; i < n; i++) {
        /* Same record as msgbus: payload plus a 36-byte ce_id header. */
        char id[64];
        snprintf(id, sizeof id, "0190a1b2-c3d4-7e5f-8a9b-%012ld", i % 1000000000000L);
        rd_kafka_headers_t *h = rd_kafka_headers_new(1);
        rd_kafka_header_add(h, "ce_id", 5, id, -1);
        rd_kafka_resp_err_t err;
        for (;;) {
            err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_VALUE(payload, size), RD_KAFKA_V_HEADERS(h),
                                    RD_KAFKA_V_TIMESTAMP(0), RD_KAFKA_V_END);
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                break;
            rd_kafka_poll(rk, 1);
        }
        if (err)
            die("raw produce", rd_kafka_err2str(err));
        if ((i & 1023) == 0)
            rd_kafka_poll(rk, 0);
    }
    while (rd_kafka_outq_len(rk) > 0)
        rd_kafka_poll(rk, 50);
    free(payload);
}

static double produce_raw(rd_kafka_t *rk, const char *topic, size_t size)
{
    atomic_store(&g_reports, 0);
    double t0 = now_s();
    raw_produce_all(rk, topic, size, g_n);
    double t = now_s() - t0;
    if (atomic_load(&g_reports) != g_n)
        die("raw reports", "count mismatch");
    return (double)g_n / t;
}

/* ---- consume ---------------------------------------------------------------- */

/* A fresh topic holding N messages and a group positioned at its start. */
static void fill_topic(msgbus_t *bus, rd_kafka_t *producer, char *topic, size_t tn, char *group,
                       size_t gn, size_t size)
{
    unique(topic, tn, "bench-consume");
    unique(group, gn, "bench-group");
    if (msgbus_declare(bus, topic, group) != MSGBUS_OK)
        die("declare", msgbus_last_error());
    atomic_store(&g_reports, 0);
    raw_produce_all(producer, topic, size, g_n);
}

static double consume_msgbus(msgbus_t *bus, const char *topic, const char *group)
{
    msgbus_sub_t *sub = NULL;
    if (msgbus_subscribe(bus, topic, group, &sub) != MSGBUS_OK)
        die("subscribe", msgbus_last_error());
    double t0 = 0;
    for (long got = 0; got < g_n;) {
        msgbus_msg_t *m = NULL;
        msgbus_err_t e = msgbus_receive(sub, 30000, &m);
        if (e)
            die("receive", msgbus_last_error());
        if (got == 0)
            t0 = now_s();
        got++;
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    double t = now_s() - t0;
    msgbus_sub_close(sub);
    return (double)(g_n - 1) / t;
}

static double consume_raw(const char *topic, const char *group)
{
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, raw_conf(RD_KAFKA_CONSUMER, group), errstr,
                                  sizeof errstr);
    if (!rk)
        die("raw consumer", errstr);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tl, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, tl);
    rd_kafka_topic_partition_list_destroy(tl);
    double t0 = 0, last_commit = 0;
    for (long got = 0; got < g_n;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 30000);
        if (!m)
            die("raw consume", "timeout");
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        if (got == 0)
            t0 = last_commit = now_s();
        got++;
        rd_kafka_message_destroy(m);
        double t = now_s();
        if (t - last_commit >= 0.1) {
            rd_kafka_topic_partition_list_t *pos = NULL;
            rd_kafka_assignment(rk, &pos);
            rd_kafka_position(rk, pos);
            rd_kafka_commit(rk, pos, 1);
            rd_kafka_topic_partition_list_destroy(pos);
            last_commit = t;
        }
    }
    double t = now_s() - t0;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return (double)(g_n - 1) / t;
}

/* ---- driver ---------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static void result(const char *name, double *mb, double *raw)
{
    double m = median(mb, g_rounds), r = median(raw, g_rounds);
    printf("RESULT case=%s msgbus=%.0f raw=%.0f ratio=%.3f\n", name, m, r, m / r);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        g_n = atol(argv[1]);
    if (argc > 2)
        g_rounds = atoi(argv[2]);
    if (argc > 3)
        g_filter = argv[3];
    g_url = getenv("MSGBUS_TEST_KAFKA_URL");
    if (!g_url || strncmp(g_url, "kafka://", 8) != 0)
        die("MSGBUS_TEST_KAFKA_URL", "not set (run scripts/brokers up; source .brokers/env)");
    g_hosts = g_url + 8;
    if (g_rounds < 1 || g_rounds > 15 || g_n < 2)
        die("arguments", "bench_kafka [messages>=2] [rounds 1..15]");

    msgbus_set_log(NULL, NULL, MSGBUS_LOG_ERROR);
    msgbus_t *bus = NULL;
    if (msgbus_open(&bus, g_url, NULL) != MSGBUS_OK)
        die("open", msgbus_last_error());
    rd_kafka_t *producer = raw_producer();
    size_t sizes[] = {64, 1024};
    double mb[16], raw[16];
    for (int s = 0; s < 2; s++) {
        size_t size = sizes[s];
        char topic[128], name[64];
        snprintf(name, sizeof name, "produce_%zu", size);
        if (!strstr(name, g_filter))
            goto consume;
        unique(topic, sizeof topic, "bench-produce");
        if (msgbus_declare(bus, topic, NULL) != MSGBUS_OK)
            die("declare", msgbus_last_error());
        for (int r = 0; r < g_rounds; r++) {
            if (r % 2 == 0) {
                mb[r] = produce_msgbus(bus, topic, size);
                raw[r] = produce_raw(producer, topic, size);
            } else {
                raw[r] = produce_raw(producer, topic, size);
                mb[r] = produce_msgbus(bus, topic, size);
            }
            fprintf(stderr, "produce_%zu round %d: msgbus=%.0f raw=%.0f\n", size, r, mb[r], raw[r]);
        }
        result(name, mb, raw);
    consume:
        snprintf(name, sizeof name, "consume_%zu", size);
        if (!strstr(name, g_filter))
            continue;

        for (int r = 0; r < g_rounds; r++) {
            char t1[128], g1[128], t2[128], g2[128];
            fill_topic(bus, producer, t1, sizeof t1, g1, sizeof g1, size);
            fill_topic(bus, producer, t2, sizeof t2, g2, sizeof g2, size);
            if (r % 2 == 0) {
                mb[r] = consume_msgbus(bus, t1, g1);
                raw[r] = consume_raw(t2, g2);
            } else {
                raw[r] = consume_raw(t2, g2);
                mb[r] = consume_msgbus(bus, t1, g1);
            }
            fprintf(stderr, "consume_%zu round %d: msgbus=%.0f raw=%.0f\n", size, r, mb[r], raw[r]);
        }
        result(name, mb, raw);
    }
    rd_kafka_destroy(producer);
    msgbus_close(bus);
    printf("(%ld messages per run, median of %d rounds, %s)\n", g_n, g_rounds, g_url);
    return 0;
}
