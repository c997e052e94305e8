/*
 * bench_kafka.c — msgbus's Kafka backend against raw librdkafka, on the same
 * broker, in the same run, alternating (msgbus first on even rounds, raw
 * first on odd ones), median of the rounds.
 *
 *   bench_kafka [messages=200000] [rounds=3] [case-filter] [side]
 *   (URL from MSGBUS_TEST_KAFKA_URL; case-filter: run only cases whose name
 *   contains it, e.g. "consume" or "_64"; side: "msgbus" or "raw" runs only
 *   that side, for profilers such as callgrind; the RESULT line then shows
 *   0 for the other side)
 *
 * Over TLS / SASL: give the secured listener's URL, e.g.
 *   MSGBUS_TEST_KAFKA_URL="$MSGBUS_TEST_KAFKA_SASL_URL" bench_kafka 50000 3 _64
 * The raw client then gets what msgbus makes of that URL: every query
 * option that is a librdkafka property (ssl.ca.location, security.protocol,
 * sasl.mechanism, ...), and for user:password@ sasl.username/sasl.password
 * with security.protocol=SASL_SSL and sasl.mechanism=SCRAM-SHA-512 unless
 * the URL names them (src/backends/kafka.c). The "config" lines show both
 * sides' properties (secrets as ***) so a mismatch is visible.
 *
 * Prints per case the median rate of each side over the rounds, and each
 * side's process CPU per message (every thread, librdkafka's included; µs,
 * median over the rounds; the round lines on stderr also give the
 * publishing or receiving thread's own):
 *   RESULT case=<name> msgbus=<msg/s> raw=<msg/s> ratio=<msgbus/raw>
 *          cpu_msgbus=<µs> cpu_raw=<µs> cpu_ratio=<msgbus/raw>
 *
 * Cases: produce_64 / produce_1024 — publish N messages with a delivery
 * report for each, until the last report; consume_64 / consume_1024 —
 * receive N messages that are already in the topic, acking each (msgbus)
 * or committing positions every 100 ms (raw), from the first message to
 * the N-th. produce_64_stats / consume_64_stats — the same with msgbus's
 * stats on (stats_interval_ms=1000, a stats callback served by the
 * bench's msgbus_poll calls: a snapshot with each subscription's lag every
 * second, or every MSGBUS_BENCH_STATS_INTERVAL_MS; librdkafka's own
 * statistics stay off), against the same raw loops (docs/stats.md: the
 * hot path must not pay for stats). Each run says how many callbacks it
 * served: a run shorter than the interval serves none.
 *
 * Isolation: every timed run is a process of its own (forked, then it
 * connects, warms up with one message and a flush, and only then starts
 * the clock), and so is every topic fill. Both clients in one process
 * share one heap: one side's freed blocks shaped the other's allocations,
 * and msgbus's produce_64 measured 0.87-0.91 M msg/s before the raw
 * client's first round and 0.33-0.50 M after it (docs/performance.md).
 * A service links one client, not both; each run now starts as it would.
 *
 * Fairness: the raw client gets exactly the librdkafka settings msgbus
 * uses (idempotent producer, acks=all, defaults otherwise; consumer with
 * auto commit and offset store off, queued.min.messages=1000000; both
 * sides' non-default properties are printed once, "config ...", msgbus's
 * from its debug log) and produces the same record: the payload, the
 * key-less partitioner, and the CloudEvents headers msgbus writes on every
 * message by default (ce_specversion, the 36-byte ce_id, ce_source,
 * ce_type, ce_time; the time formatted once per second, as msgbus caches
 * it). Bench msgbus's bare record with ?cloudevents=off in the URL (the raw
 * side then still writes the five: compare with care). On consume the raw loop reads that id header from each
 * record, as a raw user who wants message ids must (msgbus hands every
 * received message its id).
 */
#include <librdkafka/rdkafka.h>
#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"
#include "msgbus/msgbus.h"

static const char *g_url;   /* kafka://127.0.0.1:9092 */
static char g_hosts[512];   /* 127.0.0.1:9092 */
static char g_shown[1024];  /* g_url with its password as *** */

/* librdkafka properties taken from the URL for the raw side (key, value
 * pairs), in the order msgbus applies them. */
#define MAX_PROPS 32
static char *g_props[2 * MAX_PROPS + 2];
static int g_nprops;

/* msgbus's own Kafka options (not librdkafka properties): the raw side
 * ignores them (src/backends/kafka.c, mb_kafka_options). */
static const char *const g_msgbus_opts[] = {
    "partitions", "replication_factor", "connect_timeout_ms", "subscribe_timeout_ms",
    "commit_interval_ms", "create_topics", "max_unacked", "close_timeout_ms",
    "stats_interval_ms", "cloudevents", "ce_source", NULL};
static long g_n = 200000;
static int g_rounds = 3;
static const char *g_filter = "";
static const char *g_side = ""; /* "", "msgbus" or "raw" */
static bool g_stats;            /* the msgbus side runs with stats on */
static long g_stats_seen;       /* stats callbacks served in the child */

static int side(const char *name)
{
    return !*g_side || strcmp(g_side, name) == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the measuring thread (the publishing or receiving one) per
 * message in the timed part of the last run, for the round lines. */
static double g_cpu_ns;
/* The whole process's CPU (every thread: librdkafka's and msgbus's own
 * included) per message in µs over the same timed part (bench_util.h), for
 * the RESULT lines; and the last child's, in the parent. */
static double g_pcpu_us, g_child_pcpu_us;

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench_kafka: %s: %s\n", what, detail);
    exit(1);
}

/* Every topic and group name the bench made, deleted at the end
 * (delete_made): the bench leaves the broker as it found it. */
enum { MAX_MADE = 1024 };
static char *g_made[MAX_MADE];
static int g_nmade;

static void unique(char *buf, size_t n, const char *prefix)
{
    static int counter;
    snprintf(buf, n, "%s-%d-%d-%ld", prefix, (int)getpid(), ++counter, (long)time(NULL));
    if (g_nmade < MAX_MADE)
        g_made[g_nmade++] = strdup(buf);
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
    /* The URL's security settings (TLS, SASL), as msgbus sets them. */
    for (int i = 0; i < g_nprops; i += 2)
        if (rd_kafka_conf_set(c, g_props[i], g_props[i + 1], errstr, sizeof errstr))
            die(g_props[i], errstr);
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

static void on_stats(void *opaque, const char *json)
{
    (void)opaque;
    if (!json || json[0] != '{')
        die("stats", "not a JSON object");
    g_stats_seen++;
}

/* A bus of the child's own; with g_stats, stats every second served to
 * on_stats by the run's msgbus_poll calls. */
static msgbus_t *open_bus(void)
{
    msgbus_t *bus = NULL;
    /* 1000 ms by default: a run of the default 200,000 messages ends
     * before the first callback; give more messages (or a shorter interval
     * through MSGBUS_BENCH_STATS_INTERVAL_MS) to time some. */
    const char *iv = getenv("MSGBUS_BENCH_STATS_INTERVAL_MS");
    char url[1200];
    snprintf(url, sizeof url, "%s%sstats_interval_ms=%s", g_url, strchr(g_url, '?') ? "&" : "?",
             iv && *iv ? iv : "1000");
    if (!g_stats)
        snprintf(url, sizeof url, "%s", g_url);
    if (msgbus_open(&bus, url, NULL) != MSGBUS_OK)
        die("open", msgbus_last_error());
    if (g_stats && msgbus_set_stats_cb(bus, on_stats, NULL) != MSGBUS_OK)
        die("stats callback", msgbus_last_error());
    return bus;
}

/* Publishes n messages, each with a delivery report, and waits for the
 * last report. */
static void mb_publish_n(msgbus_t *bus, const char *topic, const char *payload, size_t size,
                         long n)
{
    for (long i = 0; i < n; i++) {
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
}

static double produce_msgbus(const char *topic, size_t size)
{
    msgbus_t *bus = open_bus();
    char *payload = calloc(1, size);
    memset(payload, 'm', size);
    /* Warm up: connection, producer id, the topic's metadata. */
    mb_publish_n(bus, topic, payload, size, 1);
    atomic_store(&g_reports, 0);
    double t0 = now_s(), c0 = cpu_s(), pc0 = bench_cpu_s();
    mb_publish_n(bus, topic, payload, size, g_n);
    double t = now_s() - t0;
    g_cpu_ns = (cpu_s() - c0) * 1e9 / (double)g_n;
    g_pcpu_us = (bench_cpu_s() - pc0) * 1e6 / (double)g_n;
    if (atomic_load(&g_reports) != g_n)
        die("reports", "count mismatch");
    free(payload);
    msgbus_close(bus);
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
    char source[300], host[256] = "localhost";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    snprintf(source, sizeof source, "//%s/bench_kafka", host);
    char when[40] = "";
    time_t when_s = 0;
    for (long i = 0; i < n; i++) {
        /* Same record as msgbus: payload plus its CloudEvents headers. */
        char id[64];
        snprintf(id, sizeof id, "0190a1b2-c3d4-7e5f-8a9b-%012ld", i % 1000000000000L);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        if (ts.tv_sec != when_s) {
            struct tm tm;
            gmtime_r(&ts.tv_sec, &tm);
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
            when_s = ts.tv_sec;
        }
        char time_ms[48];
        snprintf(time_ms, sizeof time_ms, "%s.%03dZ", when, (int)(ts.tv_nsec / 1000000));
        rd_kafka_headers_t *h = rd_kafka_headers_new(5);
        rd_kafka_header_add(h, "ce_specversion", 14, "1.0", 3);
        rd_kafka_header_add(h, "ce_id", 5, id, -1);
        rd_kafka_header_add(h, "ce_source", 9, source, -1);
        rd_kafka_header_add(h, "ce_type", 7, topic, -1);
        rd_kafka_header_add(h, "ce_time", 7, time_ms, -1);
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

static double produce_raw(const char *topic, size_t size)
{
    rd_kafka_t *rk = raw_producer();
    raw_produce_all(rk, topic, size, 1); /* warm up, as msgbus does */
    atomic_store(&g_reports, 0);
    double t0 = now_s(), c0 = cpu_s(), pc0 = bench_cpu_s();
    raw_produce_all(rk, topic, size, g_n);
    double t = now_s() - t0;
    g_cpu_ns = (cpu_s() - c0) * 1e9 / (double)g_n;
    g_pcpu_us = (bench_cpu_s() - pc0) * 1e6 / (double)g_n;
    if (atomic_load(&g_reports) != g_n)
        die("raw reports", "count mismatch");
    rd_kafka_destroy(rk);
    return (double)g_n / t;
}

/* ---- consume ---------------------------------------------------------------- */

/* Fills a fresh topic with N messages, its group positioned at the start. */
static double fill_topic(const char *topic, const char *group, size_t size)
{
    msgbus_t *bus = open_bus();
    if (msgbus_declare(bus, topic, group) != MSGBUS_OK)
        die("declare", msgbus_last_error());
    rd_kafka_t *producer = raw_producer();
    atomic_store(&g_reports, 0);
    raw_produce_all(producer, topic, size, g_n);
    rd_kafka_destroy(producer);
    msgbus_close(bus);
    return 0;
}

static double consume_msgbus(const char *topic, const char *group)
{
    msgbus_t *bus = open_bus();
    msgbus_sub_t *sub = NULL;
    if (msgbus_subscribe(bus, topic, group, &sub) != MSGBUS_OK)
        die("subscribe", msgbus_last_error());
    double t0 = 0, c0 = 0, pc0 = 0;
    for (long got = 0; got < g_n;) {
        msgbus_msg_t *m = NULL;
        msgbus_err_t e = msgbus_receive(sub, 30000, &m);
        if (e)
            die("receive", msgbus_last_error());
        if (got == 0)
            t0 = now_s(), c0 = cpu_s(), pc0 = bench_cpu_s();
        got++;
        msgbus_ack(m);
        msgbus_msg_free(m);
        /* With stats on, the application's loop serves the callback. */
        if (g_stats && (got & 1023) == 0)
            msgbus_poll(bus, 0, NULL);
    }
    double t = now_s() - t0;
    g_cpu_ns = (cpu_s() - c0) * 1e9 / (double)(g_n - 1);
    g_pcpu_us = (bench_cpu_s() - pc0) * 1e6 / (double)(g_n - 1);
    msgbus_sub_close(sub);
    msgbus_close(bus);
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
    double t0 = 0, c0 = 0, pc0 = 0, last_commit = 0;
    for (long got = 0; got < g_n;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 30000);
        if (!m)
            die("raw consume", "timeout");
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        if (got == 0)
            t0 = last_commit = now_s(), c0 = cpu_s(), pc0 = bench_cpu_s();
        got++;
        /* The message id, as msgbus gives it to its receivers. */
        rd_kafka_headers_t *h = NULL;
        const void *id = NULL;
        size_t idlen = 0;
        if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
            rd_kafka_header_get_last(h, "ce_id", &id, &idlen) != RD_KAFKA_RESP_ERR_NO_ERROR ||
            idlen != 36)
            die("raw consume", "record without a 36-byte ce_id header");
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
    g_cpu_ns = (cpu_s() - c0) * 1e9 / (double)(g_n - 1);
    g_pcpu_us = (bench_cpu_s() - pc0) * 1e6 / (double)(g_n - 1);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return (double)(g_n - 1) / t;
}

/* ---- settings check -------------------------------------------------------- */

/* Properties whose values are never printed. */
static bool secret(const char *key)
{
    return strstr(key, "password") || strstr(key, "secret") || strcmp(key, "ssl.key.pem") == 0 ||
           strcmp(key, "sasl.oauthbearer.config") == 0;
}

/* Prints the properties of `c` that differ from librdkafka's defaults,
 * callbacks left out (the same filter msgbus's debug log uses). */
static void print_raw_config(const char *what, rd_kafka_conf_t *c)
{
    rd_kafka_conf_t *def = rd_kafka_conf_new();
    size_t n = 0, dn = 0;
    const char **kv = rd_kafka_conf_dump(c, &n), **dkv = rd_kafka_conf_dump(def, &dn);
    fprintf(stderr, "config raw %s:", what);
    for (size_t i = 0; i + 1 < n; i += 2) {
        size_t kl = strlen(kv[i]);
        if ((kl > 3 && strcmp(kv[i] + kl - 3, "_cb") == 0) || strcmp(kv[i], "opaque") == 0 ||
            strcmp(kv[i], "default_topic_conf") == 0)
            continue;
        const char *dv = NULL;
        for (size_t k = 0; k + 1 < dn; k += 2)
            if (strcmp(dkv[k], kv[i]) == 0)
                dv = dkv[k + 1];
        if (!dv || strcmp(dv, kv[i + 1]) != 0)
            fprintf(stderr, " %s=%s", kv[i], secret(kv[i]) ? "***" : kv[i + 1]);
    }
    rd_kafka_conf_dump_free(kv, n);
    rd_kafka_conf_dump_free(dkv, dn);
    rd_kafka_topic_conf_t *tc = rd_kafka_conf_get_default_topic_conf(c);
    rd_kafka_topic_conf_t *dtc = rd_kafka_topic_conf_new();
    if (tc) {
        kv = rd_kafka_topic_conf_dump(tc, &n);
        dkv = rd_kafka_topic_conf_dump(dtc, &dn);
        for (size_t i = 0; i + 1 < n; i += 2) {
            size_t kl = strlen(kv[i]);
            if ((kl > 3 && strcmp(kv[i] + kl - 3, "_cb") == 0) || strcmp(kv[i], "opaque") == 0)
                continue;
            const char *dv = NULL;
            for (size_t k = 0; k + 1 < dn; k += 2)
                if (strcmp(dkv[k], kv[i]) == 0)
                    dv = dkv[k + 1];
            if (!dv || strcmp(dv, kv[i + 1]) != 0)
                fprintf(stderr, " %s=%s", kv[i], kv[i + 1]);
        }
        rd_kafka_conf_dump_free(kv, n);
        rd_kafka_conf_dump_free(dkv, dn);
    }
    rd_kafka_topic_conf_destroy(dtc);
    fprintf(stderr, "\n");
    rd_kafka_conf_destroy(def);
    rd_kafka_conf_destroy(c);
}

/* msgbus logs its librdkafka settings at debug level ("kafka producer
 * config: ..."): print the first of each kind. */
static void config_log(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    static int seen_producer, seen_consumer;
    if (level == MSGBUS_LOG_ERROR)
        fprintf(stderr, "msgbus: %s\n", line);
    int *seen = strstr(line, "kafka producer config:") ? &seen_producer
                : strstr(line, "kafka consumer config:") ? &seen_consumer
                                                           : NULL;
    if (seen && !(*seen)++)
        fprintf(stderr, "config msgbus: %s\n", line);
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

static void result(const char *name, double *mb, double *raw, double *mbc, double *rawc)
{
    double m = median(mb, g_rounds), r = median(raw, g_rounds);
    printf("RESULT case=%s msgbus=%.0f raw=%.0f ratio=%.3f ", name, m, r, r > 0 ? m / r : 0);
    bench_print_cpu(bench_median(mbc, g_rounds), bench_median(rawc, g_rounds));
    fflush(stdout);
}

/* Both sides' settings once: msgbus's from its debug log (a declare with
 * a group creates a consumer), raw's from raw_conf. */
static void delete_made(void);

static double print_config(void)
{
    msgbus_set_log(config_log, NULL, MSGBUS_LOG_DEBUG);
    msgbus_t *bus = open_bus();
    char topic[128], group[128];
    unique(topic, sizeof topic, "bench-config");
    unique(group, sizeof group, "bench-config");
    if (msgbus_declare(bus, topic, group) != MSGBUS_OK)
        die("declare", msgbus_last_error());
    msgbus_close(bus);
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_ERROR);
    print_raw_config("producer", raw_conf(RD_KAFKA_PRODUCER, NULL));
    print_raw_config("consumer", raw_conf(RD_KAFKA_CONSUMER, "bench-group"));
    delete_made(); /* this runs in a child of its own: its names die with it */
    return 0;
}

static double declare_topic(const char *topic)
{
    msgbus_t *bus = open_bus();
    if (msgbus_declare(bus, topic, NULL) != MSGBUS_OK)
        die("declare", msgbus_last_error());
    msgbus_close(bus);
    return 0;
}

enum job {
    CONFIG,
    DECLARE,
    FILL,
    PRODUCE_MSGBUS,
    PRODUCE_RAW,
    CONSUME_MSGBUS,
    CONSUME_RAW,
    PRODUCE_MSGBUS_STATS,
    CONSUME_MSGBUS_STATS
};

/* Runs one job in a child process of its own; returns the rate it
 * measured and sets *cpu_ns (NULL: not wanted). The parent never loads a
 * client, so each child starts clean. */
static double in_child(enum job job, const char *topic, const char *group, size_t size,
                       double *cpu_ns)
{
    int fd[2];
    if (pipe(fd) != 0)
        die("pipe", strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        die("fork", strerror(errno));
    if (pid == 0) {
        close(fd[0]);
        double v[3] = {0, 0, 0};
        switch (job) {
        case CONFIG: v[0] = print_config(); break;
        case DECLARE: v[0] = declare_topic(topic); break;
        case FILL: v[0] = fill_topic(topic, group, size); break;
        case PRODUCE_MSGBUS: v[0] = produce_msgbus(topic, size); break;
        case PRODUCE_RAW: v[0] = produce_raw(topic, size); break;
        case CONSUME_MSGBUS: v[0] = consume_msgbus(topic, group); break;
        case CONSUME_RAW: v[0] = consume_raw(topic, group); break;
        case PRODUCE_MSGBUS_STATS: g_stats = true; v[0] = produce_msgbus(topic, size); break;
        case CONSUME_MSGBUS_STATS: g_stats = true; v[0] = consume_msgbus(topic, group); break;
        }
        if (g_stats)
            fprintf(stderr, "(stats callbacks served during the run: %ld)\n", g_stats_seen);
        v[1] = g_cpu_ns;
        v[2] = g_pcpu_us;
        fflush(stderr);
        _exit(write(fd[1], v, sizeof v) == (ssize_t)sizeof v ? 0 : 1);
    }
    close(fd[1]);
    double v[3] = {0, 0, 0};
    ssize_t n = read(fd[0], v, sizeof v);
    close(fd[0]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        n != (ssize_t)sizeof v)
        die("child", "a measuring process failed (its error is above)");
    if (cpu_ns)
        *cpu_ns = v[1];
    g_child_pcpu_us = v[2];
    return v[0];
}

/* One round of a case, msgbus first on even rounds, raw first on odd;
 * prints the round's line with each side's CPU per message (the measuring
 * thread's and the whole process's); *mbc / *rawc get the process's (µs). */
static void round_pair(const char *name, int r, enum job mb_job, enum job raw_job,
                       const char *t1, const char *g1, const char *t2, const char *g2,
                       size_t size, double *mb, double *raw, double *mbc, double *rawc)
{
    double mb_cpu = 0, raw_cpu = 0;
    *mb = *raw = *mbc = *rawc = 0;
    for (int k = 0; k < 2; k++) {
        bool mb_turn = (k == 0) == (r % 2 == 0);
        if (mb_turn && side("msgbus"))
            *mb = in_child(mb_job, t1, g1, size, &mb_cpu), *mbc = g_child_pcpu_us;
        else if (!mb_turn && side("raw"))
            *raw = in_child(raw_job, t2, g2, size, &raw_cpu), *rawc = g_child_pcpu_us;
    }
    fprintf(stderr, "%s round %d: msgbus=%.0f raw=%.0f  (CPU of the %s thread per message: "
            "msgbus %.0f ns, raw %.0f ns; of the process: msgbus %.2f µs, raw %.2f µs)\n",
            name, r, *mb, *raw,
            mb_job == PRODUCE_MSGBUS || mb_job == PRODUCE_MSGBUS_STATS ? "publishing"
                                                                        : "receiving",
            mb_cpu, raw_cpu, *mbc, *rawc);
}

/* Percent-decodes s[0..n) into a new string. */
static char *decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (!out)
        die("decode", "out of memory");
    for (size_t i = 0; i < n; i++) {
        char hex[3] = {0};
        if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            hex[0] = s[i + 1], hex[1] = s[i + 2];
            *o++ = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

static const char *prop(const char *key)
{
    for (int i = 0; i < g_nprops; i += 2)
        if (strcmp(g_props[i], key) == 0)
            return g_props[i + 1];
    return NULL;
}

static void add_prop(const char *key, size_t kn, const char *val, size_t vn)
{
    if (g_nprops >= 2 * MAX_PROPS)
        die("URL", "too many options");
    g_props[g_nprops++] = decode(key, kn);
    g_props[g_nprops++] = decode(val, vn);
}

/* kafka://[user[:password]@]host:port[,host:port...][/][?k=v&...]: the
 * bootstrap list, the librdkafka properties of the query and the SASL
 * credentials, mapped as msgbus maps them; g_shown gets the URL without
 * its password, for printing. */
static void parse_url(void)
{
    const char *p = g_url + 8, *end = p + strcspn(p, "/?");
    const char *at = memchr(p, '@', (size_t)(end - p));
    const char *hosts = at ? at + 1 : p;
    snprintf(g_hosts, sizeof g_hosts, "%.*s", (int)(end - hosts), hosts);
    const char *user = NULL, *pass = NULL;
    size_t un = 0, pn = 0;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        user = p;
        un = (size_t)((colon ? colon : at) - p);
        if (colon)
            pass = colon + 1, pn = (size_t)(at - pass);
    }
    if (pass)
        snprintf(g_shown, sizeof g_shown, "kafka://%.*s:***@%s", (int)un, user, pass + pn + 1);
    else
        snprintf(g_shown, sizeof g_shown, "%s", g_url);
    const char *q = strchr(end, '?');
    while (q && *q) {
        q++;
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        if (len && eq) {
            size_t kn = (size_t)(eq - q);
            bool own = false;
            for (int i = 0; g_msgbus_opts[i]; i++)
                own |= strlen(g_msgbus_opts[i]) == kn && strncmp(g_msgbus_opts[i], q, kn) == 0;
            if (!own)
                add_prop(q, kn, eq + 1, len - kn - 1);
        }
        q += len;
    }
    if (user) {
        add_prop("sasl.username", 13, user, un);
        if (pass)
            add_prop("sasl.password", 13, pass, pn);
        if (!prop("security.protocol"))
            add_prop("security.protocol", 17, "SASL_SSL", 8);
        if (!prop("sasl.mechanism") && !prop("sasl.mechanisms"))
            add_prop("sasl.mechanism", 14, "SCRAM-SHA-512", 13);
    }
}

/* Deletes every topic and group the bench named (bench_util.h). */
static void delete_made(void)
{
    bench_kafka_delete_made(raw_conf(RD_KAFKA_PRODUCER, NULL), g_made, &g_nmade);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        g_n = atol(argv[1]);
    if (argc > 2)
        g_rounds = atoi(argv[2]);
    if (argc > 3)
        g_filter = argv[3];
    if (argc > 4)
        g_side = argv[4];
    g_url = getenv("MSGBUS_TEST_KAFKA_URL");
    if (!g_url || strncmp(g_url, "kafka://", 8) != 0)
        die("MSGBUS_TEST_KAFKA_URL", "not set (run scripts/brokers up; source .brokers/env)");
    parse_url();
    if (g_rounds < 1 || g_rounds > 15 || g_n < 2 ||
        (*g_side && strcmp(g_side, "msgbus") != 0 && strcmp(g_side, "raw") != 0))
        die("arguments", "bench_kafka [messages>=2] [rounds 1..15] [case-filter] [msgbus|raw]");

    msgbus_set_log(NULL, NULL, MSGBUS_LOG_ERROR);
    in_child(CONFIG, NULL, NULL, 0, NULL);
    /* The last one: 64-byte messages with msgbus's stats on. */
    size_t sizes[] = {64, 1024, 64};
    double mb[16], raw[16], mbc[16], rawc[16];
    for (int s = 0; s < 3; s++) {
        size_t size = sizes[s];
        bool stats = s == 2;
        const char *suffix = stats ? "_stats" : "";
        char topic[128], name[64];
        snprintf(name, sizeof name, "produce_%zu%s", size, suffix);
        if (strstr(name, g_filter)) {
            unique(topic, sizeof topic, "bench-produce");
            in_child(DECLARE, topic, NULL, 0, NULL);
            for (int r = 0; r < g_rounds; r++) {
                round_pair(name, r, stats ? PRODUCE_MSGBUS_STATS : PRODUCE_MSGBUS, PRODUCE_RAW,
                           topic, NULL, topic, NULL, size, &mb[r], &raw[r], &mbc[r], &rawc[r]);
            }
            result(name, mb, raw, mbc, rawc);
        }
        snprintf(name, sizeof name, "consume_%zu%s", size, suffix);
        if (!strstr(name, g_filter))
            continue;
        for (int r = 0; r < g_rounds; r++) {
            char t1[128], g1[128], t2[128], g2[128];
            unique(t1, sizeof t1, "bench-consume");
            unique(g1, sizeof g1, "bench-group");
            unique(t2, sizeof t2, "bench-consume");
            unique(g2, sizeof g2, "bench-group");
            if (side("msgbus"))
                in_child(FILL, t1, g1, size, NULL);
            if (side("raw"))
                in_child(FILL, t2, g2, size, NULL);
            round_pair(name, r, stats ? CONSUME_MSGBUS_STATS : CONSUME_MSGBUS, CONSUME_RAW, t1,
                       g1, t2, g2, size, &mb[r], &raw[r], &mbc[r], &rawc[r]);
        }
        result(name, mb, raw, mbc, rawc);
    }
    printf("(%ld messages per run, median of %d rounds, each run a process of its own, %s)\n",
           g_n, g_rounds, g_shown);
    delete_made();
    return 0;
}
