/*
 * bench.c — `msgbus bench`: publishes N messages to a scratch group and
 * consumes them in the same process, measuring publish and consume
 * throughput and the publish-to-receive latency of every message (one
 * monotonic clock, so no clock skew). A progress bar when stdout is a
 * terminal; otherwise one JSON line.
 */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char bench_help[] =
    "usage: msgbus bench [options]\n"
    "\n"
    "Publishes --count messages of --size bytes to a scratch topic and group\n"
    "and consumes them in the same process. Reports publish throughput (until\n"
    "every confirm arrived), consume throughput and the latency from publish\n"
    "to receive (p50, p90, p99, max). On a terminal it draws a progress bar and\n"
    "prints a table; otherwise (or with --json) it prints one JSON line:\n"
    "  {\"backend\",\"url\",\"count\",\"size\",\"received\",\"publish_msgs_per_s\",\n"
    "   \"consume_msgs_per_s\",\"p50_us\",\"p90_us\",\"p99_us\",\"max_us\",\"seconds\"}\n"
    "\n"
    "options:\n"
    "  -u, --url URL      broker URL (default: $MSGBUS_URL)\n"
    "  -n, --count N      messages (default 10000)\n"
    "  -s, --size BYTES   payload size, at least 24 (default 100)\n"
    "  -r, --rate R       publish at most R messages per second (default: no limit)\n"
    "      --topic TOPIC  scratch topic (default: msgbus-bench)\n"
    "      --group GROUP  scratch group (default: msgbus-bench)\n"
    "  -t, --timeout MS   give up when no message came for MS (default 30000)\n"
    "  -j, --json         JSON line even on a terminal\n"
    "  -v, --verbose      library log at info level (-vv: debug)\n"
    "  -h, --help         this text\n"
    "\n"
    "exit: 0 done, 1 usage/config, 2 connect, 3 publish failed, 5 messages\n"
    "      missing after --timeout (see docs/cli.md)\n";

/* Payload layout: run id, sequence number, publish time (µs), padding. */
typedef struct stamp {
    uint64_t run, seq;
    int64_t sent_us;
} stamp_t;

typedef struct bench {
    msgbus_sub_t *sub;
    uint64_t run, count;
    int64_t timeout_us;
    int64_t *latency;       /* per sequence number; 0: not yet received */
    atomic_ullong received; /* distinct messages */
    atomic_llong last_us;   /* time of the last one */
    atomic_int done;
    msgbus_err_t error;
} bench_t;

static void *consumer(void *arg)
{
    bench_t *b = arg;
    int64_t idle_since = cli_now_us();
    while (atomic_load(&b->received) < b->count && !cli_stop) {
        msgbus_msg_t *m;
        msgbus_err_t e = msgbus_receive(b->sub, 100, &m);
        if (e == MSGBUS_ERR_TIMEOUT) {
            if (cli_now_us() - idle_since > b->timeout_us) {
                b->error = MSGBUS_ERR_TIMEOUT;
                break;
            }
            continue;
        }
        if (e) {
            b->error = e;
            break;
        }
        int64_t now = cli_now_us();
        idle_since = now;
        size_t len;
        const void *p = msgbus_msg_payload(m, &len);
        stamp_t st;
        if (len >= sizeof st) {
            memcpy(&st, p, sizeof st);
            /* Skip messages of another run and redeliveries. */
            if (st.run == b->run && st.seq < b->count && b->latency[st.seq] == 0) {
                int64_t lat = now - st.sent_us;
                b->latency[st.seq] = lat > 0 ? lat : 1;
                atomic_store(&b->last_us, now);
                atomic_fetch_add(&b->received, 1);
            }
        }
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    atomic_store(&b->done, 1);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void progress(uint64_t published, uint64_t received, uint64_t count)
{
    int width = 40, fill = (int)(received * (uint64_t)width / (count ? count : 1));
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    printf("\r[%s] %3d%%  published %llu  received %llu ", bar,
           (int)(received * 100 / (count ? count : 1)), (unsigned long long)published,
           (unsigned long long)received);
    fflush(stdout);
}

int cli_bench(int argc, char **argv)
{
    enum { OPT_TOPIC = 256, OPT_GROUP };
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},   {"count", required_argument, 0, 'n'},
        {"size", required_argument, 0, 's'},  {"rate", required_argument, 0, 'r'},
        {"topic", required_argument, 0, OPT_TOPIC}, {"group", required_argument, 0, OPT_GROUP},
        {"timeout", required_argument, 0, 't'}, {"json", no_argument, 0, 'j'},
        {"verbose", no_argument, 0, 'v'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *url = NULL, *topic = "msgbus-bench", *group = "msgbus-bench";
    uint64_t count = 10000, size = 100, timeout = 30000;
    double rate = 0;
    int json = !isatty(STDOUT_FILENO), verbose = 0, c;
    while ((c = cli_getopt("bench", argc, argv, "u:n:s:r:t:jvh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'n':
            if (cli_parse_range("bench", "--count", optarg, 1, 100000000, "", &count))
                return CLI_USAGE;
            break;
        case 's':
            if (cli_parse_range("bench", "--size", optarg, sizeof(stamp_t), 64 * 1024 * 1024,
                                "bytes", &size))
                return CLI_USAGE;
            break;
        case 'r':
            if (cli_parse_double("bench", "--rate", optarg, &rate))
                return CLI_USAGE;
            break;
        case OPT_TOPIC: topic = optarg; break;
        case OPT_GROUP: group = optarg; break;
        case 't':
            if (cli_parse_range("bench", "--timeout", optarg, 1, 3600000, "ms", &timeout))
                return CLI_USAGE;
            break;
        case 'j': json = 1; break;
        case 'v': verbose++; break;
        case 'h': fputs(bench_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc)
        return cli_usage_error("bench", "unexpected argument '%s'", argv[optind]);
    cli_set_verbosity(verbose);
    cli_catch_signals();

    msgbus_t *bus;
    int rc = cli_open_bus("bench", url, &bus);
    if (rc)
        return rc;
    bench_t b;
    memset(&b, 0, sizeof b);
    b.count = count;
    b.timeout_us = (int64_t)timeout * 1000;
    b.run = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ (uint64_t)cli_now_us();
    b.latency = calloc((size_t)count, sizeof *b.latency);
    char *payload = calloc(1, (size_t)size);
    msgbus_err_t e;
    if (!b.latency || !payload) {
        fprintf(stderr, "msgbus bench: out of memory\n");
        rc = CLI_FAILED;
        goto out;
    }
    if ((e = msgbus_declare(bus, topic, group)) ||
        (e = msgbus_subscribe(bus, topic, group, &b.sub))) {
        rc = cli_fail("bench", "declare/subscribe", e);
        goto out;
    }
    memset(payload + sizeof(stamp_t), 'x', (size_t)size - sizeof(stamp_t));
    pthread_t th;
    if (pthread_create(&th, NULL, consumer, &b)) {
        fprintf(stderr, "msgbus bench: cannot start the consumer thread\n");
        rc = CLI_FAILED;
        goto out;
    }

    int64_t start = cli_now_us(), last_draw = 0;
    uint64_t published = 0;
    msgbus_msg_t *m = NULL;
    if ((e = msgbus_msg_new(&m, NULL, 0))) {
        rc = cli_fail("bench", "message", e);
        cli_stop = 1;
    }
    for (; published < count && !cli_stop && !rc; published++) {
        if (rate > 0) {
            int64_t due = start + (int64_t)((double)published * 1e6 / rate), now = cli_now_us();
            if (due > now) {
                struct timespec ts = {(time_t)((due - now) / 1000000),
                                      (long)((due - now) % 1000000) * 1000};
                nanosleep(&ts, NULL);
            }
        }
        stamp_t st = {b.run, published, cli_now_us()};
        memcpy(payload, &st, sizeof st);
        if ((e = msgbus_msg_set_payload(m, payload, (size_t)size))) {
            rc = cli_fail("bench", "message", e);
            break;
        }
        while ((e = msgbus_publish(bus, topic, m, NULL, NULL)) == MSGBUS_ERR_QUEUE_FULL &&
               !cli_stop)
            msgbus_poll(bus, 10, NULL);
        if (e) {
            rc = cli_fail("bench", "publish", e);
            break;
        }
        if ((published & 1023) == 0) {
            msgbus_poll(bus, 0, NULL);
            if (!json && cli_now_us() - last_draw > 100000) {
                last_draw = cli_now_us();
                progress(published, atomic_load(&b.received), count);
            }
        }
    }
    msgbus_msg_free(m);
    size_t failed = 0;
    e = msgbus_flush(bus, (int)timeout, &failed);
    int64_t published_us = cli_now_us();
    if (e && !rc)
        rc = cli_fail("bench", "confirms", e);
    while (!atomic_load(&b.done)) {
        if (rc)
            cli_stop = 1; /* nothing more will come: stop the consumer */
        if (!json)
            progress(published, atomic_load(&b.received), count);
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    pthread_join(th, NULL);
    if (!json) {
        progress(published, atomic_load(&b.received), count);
        printf("\n");
    }

    uint64_t received = atomic_load(&b.received);
    if (!rc && b.error) {
        if (b.error == MSGBUS_ERR_TIMEOUT)
            fprintf(stderr, "msgbus bench: %llu of %llu messages not received within %llu ms\n",
                    (unsigned long long)(count - received), (unsigned long long)count,
                    (unsigned long long)timeout);
        else
            fprintf(stderr, "msgbus bench: receive: %s\n", msgbus_strerror(b.error));
        rc = cli_exit_code(b.error);
    }
    /* Percentiles over the messages received. */
    size_t n = 0;
    for (uint64_t i = 0; i < count; i++)
        if (b.latency[i])
            b.latency[n++] = b.latency[i];
    qsort(b.latency, n, sizeof *b.latency, cmp_i64);
#define PCT(p) (n ? b.latency[(size_t)((double)(n - 1) * (p))] : 0)
    double pub_s = (double)(published_us - start) / 1e6;
    double con_s = (double)(atomic_load(&b.last_us) - start) / 1e6;
    double pub_rate = pub_s > 0 ? (double)published / pub_s : 0;
    double con_rate = con_s > 0 && received ? (double)received / con_s : 0;
    if (json) {
        json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}",
                              "backend", msgbus_backend(bus), "url", msgbus_url(bus), "count",
                              (json_int_t)count, "size", (json_int_t)size, "received",
                              (json_int_t)received, "publish_msgs_per_s", (json_int_t)(pub_rate + 0.5),
                              "consume_msgs_per_s", (json_int_t)(con_rate + 0.5), "p50_us",
                              (json_int_t)PCT(0.50), "p90_us", (json_int_t)PCT(0.90), "p99_us",
                              (json_int_t)PCT(0.99), "max_us", (json_int_t)(n ? b.latency[n - 1] : 0),
                              "seconds", (double)(cli_now_us() - start) / 1e6);
        char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
        puts(text ? text : "{}");
        free(text);
        json_decref(j);
    } else {
        printf("%s: %llu x %llu B, %llu received\n", msgbus_url(bus), (unsigned long long)count,
               (unsigned long long)size, (unsigned long long)received);
        printf("publish   %10.0f msg/s  (until the last confirm)\n", pub_rate);
        printf("consume   %10.0f msg/s\n", con_rate);
        printf("latency   p50 %lld us  p90 %lld us  p99 %lld us  max %lld us\n",
               (long long)PCT(0.50), (long long)PCT(0.90), (long long)PCT(0.99),
               (long long)(n ? b.latency[n - 1] : 0));
    }
#undef PCT
out:
    msgbus_sub_close(b.sub);
    msgbus_close(bus);
    free(b.latency);
    free(payload);
    return rc;
}
