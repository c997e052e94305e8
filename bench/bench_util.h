/*
 * bench_util.h — what several benches share:
 * - CPU per message: bench_cpu_s() (this process's CPU time, every thread)
 *   read around each side's run, bench_median() over rounds, and
 *   bench_print_cpu(), which ends a RESULT line with
 *   " cpu_msgbus=<µs> cpu_raw=<µs> cpu_ratio=<msgbus/raw>" (medians over the
 *   rounds, µs of process CPU per message), after the line's own fields;
 * - deleting the topic (and the group's queue) a bench made on the broker,
 *   so a run leaves the broker as it found it. msgbus has no delete; this
 *   goes to the broker's own client (librdkafka's Admin API, rabbitmq-c),
 *   each only when msgbus is built with that backend (BENCH_HAVE_KAFKA,
 *   BENCH_HAVE_AMQP from bench/CMakeLists.txt).
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The wall-clock time as msgbus writes it on a published event: `when`
 * RFC 3339 with milliseconds (cloudEvents_time), `ms` milliseconds since
 * the epoch (msgbus-timestamp-ms); returns the seconds (the AMQP
 * timestamp property). The raw sides of the benches write the same. */
static inline uint64_t bench_event_time(char *when, size_t wn, char *ms, size_t mn)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t t_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(when, wn, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + k, wn - k, ".%03dZ", (int)(t_ms % 1000));
    snprintf(ms, mn, "%lld", (long long)t_ms);
    return (uint64_t)ts.tv_sec;
}

#ifdef BENCH_HAVE_KAFKA
#include <librdkafka/rdkafka.h>
#endif
#ifdef BENCH_HAVE_AMQP
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

/* CPU time this process has used (all its threads), in seconds. Read it
 * before and after one side's run: (after - before) * 1e6 / messages is
 * that side's CPU per message in µs, the client library's own threads
 * included. */
static inline double bench_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (sorts v in place). */
static inline double bench_median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return v[n / 2];
}

/* Ends a RESULT line: the medians of both sides' CPU per message (µs) and
 * their ratio, then a newline. */
static inline void bench_print_cpu(double cpu_msgbus_us, double cpu_raw_us)
{
    printf("cpu_msgbus=%.2f cpu_raw=%.2f cpu_ratio=%.2f\n", cpu_msgbus_us, cpu_raw_us,
           cpu_raw_us > 0 ? cpu_msgbus_us / cpu_raw_us : 0);
}

#ifdef BENCH_HAVE_KAFKA
/* Deletes the Kafka topics and consumer groups named names[0 .. n-1] (each
 * name as both: a name that is only one of them is refused for the other,
 * which is fine) through a client made from `conf` (taken over). */
static inline void bench_kafka_delete(rd_kafka_conf_t *conf, char *const *names, int n)
{
    char err[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "bench: deleting what it made: %s; it is left\n", err);
        return;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    for (int i = 0; i < n; i++) {
        /* One call per name: the Admin API answers per request. */
        rd_kafka_DeleteGroup_t *g = rd_kafka_DeleteGroup_new(names[i]);
        rd_kafka_DeleteGroups(rk, &g, 1, NULL, q);
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
        if (ev)
            rd_kafka_event_destroy(ev);
        rd_kafka_DeleteGroup_destroy(g);
        rd_kafka_DeleteTopic_t *t = rd_kafka_DeleteTopic_new(names[i]);
        rd_kafka_DeleteTopics(rk, &t, 1, NULL, q);
        ev = rd_kafka_queue_poll(q, 30000);
        if (!ev)
            fprintf(stderr, "bench: deleting '%s': no answer; it is left\n", names[i]);
        else
            rd_kafka_event_destroy(ev);
        rd_kafka_DeleteTopic_destroy(t);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}

/* bench_kafka_delete of the names a bench collected (malloc'd), which are
 * freed; *n becomes 0. */
static inline void bench_kafka_delete_made(rd_kafka_conf_t *conf, char **names, int *n)
{
    bench_kafka_delete(conf, names, *n);
    for (int i = 0; i < *n; i++)
        free(names[i]);
    *n = 0;
}
#endif

/* Deletes `topic` and, when not NULL, `group` (Kafka: the consumer group;
 * RabbitMQ: the group's queue "<topic>.<group>") on the broker of the
 * plain msgbus URL `url` (kafka:// or amqp:// without TLS; anything else is
 * left alone). Prints a line when the broker refused or did not answer. */
static inline void bench_delete(const char *url, const char *topic, const char *group)
{
    char u[1024];
    snprintf(u, sizeof u, "%s", url);
    u[strcspn(u, "?")] = '\0';
#ifdef BENCH_HAVE_KAFKA
    if (strncmp(u, "kafka://", 8) == 0 && !strchr(u, '@')) {
        char err[256];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_conf_set(conf, "bootstrap.servers", u + 8, err, sizeof err);
        rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
        char *names[2] = {(char *)topic, (char *)group};
        bench_kafka_delete(conf, names, group ? 2 : 1);
        return;
    }
#endif
#ifdef BENCH_HAVE_AMQP
    if (strncmp(u, "amqp://", 7) == 0) {
        struct amqp_connection_info ci;
        if (amqp_parse_url(u, &ci) != AMQP_STATUS_OK)
            return;
        amqp_connection_state_t c = amqp_new_connection();
        amqp_socket_t *s = amqp_tcp_socket_new(c);
        if (s && amqp_socket_open(s, ci.host, ci.port) == AMQP_STATUS_OK &&
            amqp_login(c, ci.vhost && *ci.vhost ? ci.vhost : "/", 0, 131072, 0,
                       AMQP_SASL_METHOD_PLAIN, ci.user, ci.password)
                    .reply_type == AMQP_RESPONSE_NORMAL &&
            amqp_channel_open(c, 1)) {
            if (group) {
                char q[600];
                snprintf(q, sizeof q, "%s.%s", topic, group);
                amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0);
                amqp_get_rpc_reply(c);
            }
            amqp_exchange_delete(c, 1, amqp_cstring_bytes(topic), 0);
            amqp_get_rpc_reply(c);
            amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        } else {
            fprintf(stderr, "bench: deleting '%s': cannot reach the broker; it is left\n", topic);
        }
        amqp_destroy_connection(c);
        return;
    }
#endif
    (void)topic;
    (void)group;
}

#endif
