/*
 * bench_latency_kafka.c — latency at a fixed load, not throughput: msgbus
 * on Kafka against raw librdkafka with the same settings, and msgbus on
 * mem:// alone, publishing at a fixed rate from one thread that serves its
 * callbacks at once, receiving on another.
 *
 *   bench_latency_kafka [rate=1000] [seconds=10] [rounds=3] [filter]
 *   (Kafka URL from MSGBUS_TEST_KAFKA_URL; filter: run only cases whose
 *   name contains it, e.g. "mem" or "kafka_20000")
 *
 * Per message it measures publish→confirm (from just before the publish
 * call to the delivery report on the publishing thread) and
 * publish→receive (to the moment the receiving thread has it; the send
 * time travels in the payload), and prints p50/p99/p99.9 of both for each
 * run, then per case the median over the rounds and msgbus − raw:
 *
 *   RESULT case=kafka_1000 confirm_p50_us msgbus=… raw=… diff=…
 *
 * Cases: kafka_<rate>, for the rate given and for 20 × it (capped at
 * 20000/s), msgbus and raw alternating (msgbus first on even rounds),
 * each run a process of its own on a fresh topic (3 partitions) and group;
 * mem_<rate>: msgbus on mem:// only (no raw client to compare with).
 *
 * Fairness: both producers are idempotent with acks=all and librdkafka's
 * defaults otherwise (linger.ms 5); both consumers have auto commit off
 * and queued.min.messages=1000000 (as msgbus sets them); msgbus writes its
 * record with cloudevents=off (the payload and a ce_id header), raw the
 * payload alone. The publishing thread waits for the next send time in
 * msgbus_poll / rd_kafka_poll (a callback wakes it at once) and spins
 * below 1 ms. Everything made on the broker is deleted at the end.
 */
#include <librdkafka/rdkafka.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "msgbus/msgbus.h"

enum { PAYLOAD = 64, MAX_MADE = 256 };

static long g_rate = 1000, g_seconds = 10, g_rounds = 3;
static const char *g_filter;
static char g_hosts[512];
static char *g_made[MAX_MADE];
static int g_nmade;

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench_latency_kafka: %s: %s\n", what, detail);
    exit(2);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void unique(char *buf, size_t n, const char *prefix)
{
    static int counter;
    snprintf(buf, n, "%s-%d-%d-%ld", prefix, (int)getpid(), ++counter, (long)time(NULL));
    if (g_nmade < MAX_MADE)
        g_made[g_nmade++] = strdup(buf);
}

/* ---- one run's measurements ----------------------------------------- */

struct run {
    long n;                   /* messages sent */
    int64_t *sent;            /* send time by sequence number */
    int64_t *confirm, *recv;  /* latencies (ns) in arrival order */
    _Atomic long nconfirm, nrecv;
    _Atomic bool stop;
};

static void run_init(struct run *r, long n)
{
    memset(r, 0, sizeof *r);
    r->n = n;
    r->sent = calloc((size_t)n, sizeof *r->sent);
    r->confirm = calloc((size_t)n, sizeof *r->confirm);
    r->recv = calloc((size_t)n, sizeof *r->recv);
    if (!r->sent || !r->confirm || !r->recv)
        die("memory", "for the latencies");
}

/* The payload: sequence number and send time, padded to PAYLOAD bytes. */
static void fill(unsigned char *p, long seq, int64_t t)
{
    memset(p, 'x', PAYLOAD);
    memcpy(p, &seq, sizeof seq);
    memcpy(p + 8, &t, sizeof t);
}

static void got_payload(struct run *r, const void *p, size_t len)
{
    if (len < 16)
        return;
    long seq;
    int64_t t;
    memcpy(&seq, p, sizeof seq);
    memcpy(&t, (const char *)p + 8, sizeof t);
    if (seq < 0)
        return; /* the warm-up message */
    long i = atomic_fetch_add(&r->nrecv, 1);
    if (i < r->n)
        r->recv[i] = now_ns() - t;
}

static void got_confirm(struct run *r, long seq)
{
    if (seq < 0 || seq >= r->n)
        return;
    long i = atomic_fetch_add(&r->nconfirm, 1);
    if (i < r->n)
        r->confirm[i] = now_ns() - r->sent[seq];
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* p50, p99, p99.9 of v[0..n) in µs. */
static void pcts(int64_t *v, long n, double out[3])
{
    if (n <= 0) {
        out[0] = out[1] = out[2] = -1;
        return;
    }
    qsort(v, (size_t)n, sizeof *v, cmp64);
    static const double q[3] = {0.50, 0.99, 0.999};
    for (int k = 0; k < 3; k++) {
        long i = (long)(q[k] * (double)(n - 1) + 0.5);
        out[k] = (double)v[i] / 1000.0;
    }
}

/* Publishes r->n messages at `rate`, calling send(seq) and serving
 * callbacks with wait(ms) between sends; then waits up to 30 s for every
 * confirm and receive. */
static void pace(struct run *r, long rate, void (*send)(void *, long), void (*wait)(void *, int),
                 void *arg)
{
    int64_t gap = 1000000000 / rate, t0 = now_ns();
    for (long i = 0; i < r->n; i++) {
        int64_t due = t0 + i * gap;
        for (;;) {
            int64_t left = due - now_ns();
            if (left <= 0)
                break;
            wait(arg, left >= 2000000 ? (int)(left / 1000000) - 1 : 0);
        }
        r->sent[i] = now_ns();
        send(arg, i);
    }
    int64_t until = now_ns() + 30 * 1000000000LL;
    while ((atomic_load(&r->nconfirm) < r->n || atomic_load(&r->nrecv) < r->n) &&
           now_ns() < until)
        wait(arg, 10);
    atomic_store(&r->stop, true);
}

/* ---- msgbus -------------------------------------------------------------- */

struct mb_side {
    struct run *r;
    msgbus_t *bus;
    msgbus_sub_t *sub;
    const char *topic;
    _Atomic bool warm;
};

static struct mb_side *g_mb; /* the child's one run */

/* opaque carries the sequence number. */
static void mb_report_seq(void *opaque, const msgbus_report_t *rep)
{
    if (rep->status == MSGBUS_OK)
        got_confirm(g_mb->r, (long)(intptr_t)opaque);
}

static void *mb_receiver(void *arg)
{
    struct mb_side *s = arg;
    while (!atomic_load(&s->r->stop)) {
        msgbus_msg_t *m = NULL;
        if (msgbus_receive(s->sub, 100, &m) != MSGBUS_OK || !m)
            continue;
        size_t len = 0;
        const void *p = msgbus_msg_payload(m, &len);
        long seq = -2;
        if (len >= 8)
            memcpy(&seq, p, sizeof seq);
        if (seq < 0)
            atomic_store(&s->warm, true);
        else
            got_payload(s->r, p, len);
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    return NULL;
}

static void mb_send(void *arg, long seq)
{
    struct mb_side *s = arg;
    unsigned char p[PAYLOAD];
    fill(p, seq, s->r->sent[seq]);
    msgbus_msg_t *m = NULL;
    if (msgbus_msg_new(&m, p, sizeof p) != MSGBUS_OK)
        die("msgbus_msg_new", msgbus_last_error());
    msgbus_err_t e;
    while ((e = msgbus_publish(s->bus, s->topic, m, mb_report_seq, (void *)(intptr_t)seq)) ==
           MSGBUS_ERR_QUEUE_FULL)
        msgbus_poll(s->bus, 1, NULL);
    if (e != MSGBUS_OK)
        die("msgbus_publish", msgbus_last_error());
    msgbus_msg_free(m);
}

static void mb_wait(void *arg, int ms)
{
    struct mb_side *s = arg;
    msgbus_poll(s->bus, ms, NULL);
}

static void run_msgbus(struct run *r, const char *url, const char *topic, const char *group,
                       long rate)
{
    struct mb_side s = {.r = r, .topic = topic};
    g_mb = &s;
    if (msgbus_open(&s.bus, url, NULL) != MSGBUS_OK)
        die("msgbus_open", msgbus_last_error());
    if (msgbus_declare(s.bus, topic, group) != MSGBUS_OK ||
        msgbus_subscribe(s.bus, topic, group, &s.sub) != MSGBUS_OK)
        die("subscribe", msgbus_last_error());
    pthread_t t;
    pthread_create(&t, NULL, mb_receiver, &s);
    /* Warm-up: one message through, so the assignment is in place. */
    int64_t until = now_ns() + 60 * 1000000000LL;
    while (!atomic_load(&s.warm) && now_ns() < until) {
        unsigned char p[PAYLOAD];
        fill(p, -1, 0);
        msgbus_msg_t *m = NULL;
        msgbus_msg_new(&m, p, sizeof p);
        msgbus_publish(s.bus, topic, m, NULL, NULL);
        msgbus_msg_free(m);
        msgbus_flush(s.bus, 5000, NULL);
        for (int i = 0; i < 10 && !atomic_load(&s.warm); i++)
            usleep(100000);
    }
    if (!atomic_load(&s.warm))
        die("warm-up", "the first message never arrived");
    pace(r, rate, mb_send, mb_wait, &s);
    pthread_join(t, NULL);
    msgbus_sub_close(s.sub);
    msgbus_close(s.bus);
}

/* ---- raw librdkafka ---------------------------------------------------- */

struct raw_side {
    struct run *r;
    rd_kafka_t *producer, *consumer;
    rd_kafka_topic_t *rkt;
    _Atomic bool warm;
};

static struct raw_side *g_raw;

static void raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (!m->err)
        got_confirm(g_raw->r, (long)(intptr_t)m->_private);
}

static rd_kafka_conf_t *raw_conf(rd_kafka_type_t type, const char *group)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", g_hosts, err, sizeof err);
    if (type == RD_KAFKA_PRODUCER) {
        rd_kafka_conf_set(c, "enable.idempotence", "true", err, sizeof err);
        rd_kafka_conf_set(c, "acks", "all", err, sizeof err);
        rd_kafka_conf_set_dr_msg_cb(c, raw_dr);
    } else {
        rd_kafka_conf_set(c, "group.id", group, err, sizeof err);
        rd_kafka_conf_set(c, "enable.auto.commit", "false", err, sizeof err);
        rd_kafka_conf_set(c, "enable.auto.offset.store", "false", err, sizeof err);
        rd_kafka_conf_set(c, "auto.offset.reset", "earliest", err, sizeof err);
        rd_kafka_conf_set(c, "queued.min.messages", "1000000", err, sizeof err);
    }
    return c;
}

static void *raw_receiver(void *arg)
{
    struct raw_side *s = arg;
    while (!atomic_load(&s->r->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, 100);
        if (!m)
            continue;
        if (!m->err) {
            long seq = -2;
            if (m->len >= 8)
                memcpy(&seq, m->payload, sizeof seq);
            if (seq < 0)
                atomic_store(&s->warm, true);
            else
                got_payload(s->r, m->payload, m->len);
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

static void raw_send(void *arg, long seq)
{
    struct raw_side *s = arg;
    unsigned char p[PAYLOAD];
    fill(p, seq, seq >= 0 ? s->r->sent[seq] : 0);
    while (rd_kafka_produce(s->rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY, p, sizeof p,
                            NULL, 0, (void *)(intptr_t)seq) != 0) {
        if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            die("rd_kafka_produce", rd_kafka_err2str(rd_kafka_last_error()));
        rd_kafka_poll(s->producer, 1);
    }
}

static void raw_wait(void *arg, int ms)
{
    struct raw_side *s = arg;
    rd_kafka_poll(s->producer, ms);
}

static void run_raw(struct run *r, const char *topic, const char *group, long rate)
{
    char err[512];
    struct raw_side s = {.r = r};
    g_raw = &s;
    s.producer = rd_kafka_new(RD_KAFKA_PRODUCER, raw_conf(RD_KAFKA_PRODUCER, NULL), err, sizeof err);
    s.consumer = rd_kafka_new(RD_KAFKA_CONSUMER, raw_conf(RD_KAFKA_CONSUMER, group), err, sizeof err);
    if (!s.producer || !s.consumer)
        die("rd_kafka_new", err);
    s.rkt = rd_kafka_topic_new(s.producer, topic, NULL);
    rd_kafka_poll_set_consumer(s.consumer);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
    if (rd_kafka_subscribe(s.consumer, l))
        die("subscribe", topic);
    rd_kafka_topic_partition_list_destroy(l);
    pthread_t t;
    pthread_create(&t, NULL, raw_receiver, &s);
    int64_t until = now_ns() + 60 * 1000000000LL;
    while (!atomic_load(&s.warm) && now_ns() < until) {
        raw_send(&s, -1);
        rd_kafka_flush(s.producer, 5000);
        for (int i = 0; i < 10 && !atomic_load(&s.warm); i++)
            usleep(100000);
    }
    if (!atomic_load(&s.warm))
        die("warm-up", "the first message never arrived");
    pace(r, rate, raw_send, raw_wait, &s);
    pthread_join(t, NULL);
    rd_kafka_consumer_close(s.consumer);
    rd_kafka_destroy(s.consumer);
    rd_kafka_topic_destroy(s.rkt);
    rd_kafka_flush(s.producer, 5000);
    rd_kafka_destroy(s.producer);
}

/* ---- runs, each a process of its own ------------------------------------- */

/* results: confirm p50 p99 p999, receive p50 p99 p999 (µs), messages. */
enum { NRES = 7 };

static void in_child(bool raw, const char *url, long rate, double res[NRES])
{
    char topic[128], group[128];
    unique(topic, sizeof topic, "lat");
    unique(group, sizeof group, "lat-g");
    int fd[2];
    if (pipe(fd))
        die("pipe", "failed");
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        struct run r;
        run_init(&r, rate * g_seconds);
        if (raw) {
            /* The topic as msgbus declares it (3 partitions), before the clock. */
            msgbus_t *bus = NULL;
            if (msgbus_open(&bus, url, NULL) != MSGBUS_OK ||
                msgbus_declare(bus, topic, NULL) != MSGBUS_OK)
                die("declare", msgbus_last_error());
            msgbus_close(bus);
            run_raw(&r, topic, group, rate);
        } else {
            run_msgbus(&r, url, topic, group, rate);
        }
        double out[NRES];
        long nc = atomic_load(&r.nconfirm), nr = atomic_load(&r.nrecv);
        pcts(r.confirm, nc < r.n ? nc : r.n, out);
        pcts(r.recv, nr < r.n ? nr : r.n, out + 3);
        out[6] = (double)(nc < nr ? nc : nr);
        if (write(fd[1], out, sizeof out) != (ssize_t)sizeof out)
            _exit(3);
        _exit(0);
    }
    close(fd[1]);
    if (read(fd[0], res, sizeof(double) * NRES) != (ssize_t)(sizeof(double) * NRES))
        die("run", "the child gave no result");
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmpd);
    return v[n / 2];
}

static const char *const g_names[6] = {"confirm_p50_us", "confirm_p99_us", "confirm_p999_us",
                                       "receive_p50_us", "receive_p99_us", "receive_p999_us"};

static void print_run(const char *name, int round, const char *side, const double *v)
{
    printf("%s round %d %s: confirm p50/p99/p99.9 %.0f/%.0f/%.0f µs, receive %.0f/%.0f/%.0f µs "
           "(%.0f messages)\n",
           name, round, side, v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
}

static void kafka_case(const char *url, long rate)
{
    char name[64];
    snprintf(name, sizeof name, "kafka_%ld", rate);
    if (g_filter && !strstr(name, g_filter))
        return;
    double mb[16][NRES], raw[16][NRES];
    for (int r = 0; r < g_rounds; r++) {
        bool raw_first = r % 2;
        if (raw_first)
            in_child(true, url, rate, raw[r]);
        in_child(false, url, rate, mb[r]);
        if (!raw_first)
            in_child(true, url, rate, raw[r]);
        print_run(name, r, "msgbus", mb[r]);
        print_run(name, r, "raw", raw[r]);
        fflush(stdout);
    }
    for (int k = 0; k < 6; k++) {
        double a[16], b[16];
        for (int r = 0; r < g_rounds; r++) {
            a[r] = mb[r][k];
            b[r] = raw[r][k];
        }
        double ma = median(a, (int)g_rounds), mr = median(b, (int)g_rounds);
        printf("RESULT case=%s %s msgbus=%.0f raw=%.0f diff=%+.0f\n", name, g_names[k], ma, mr,
               ma - mr);
    }
}

static void mem_case(long rate)
{
    char name[64];
    snprintf(name, sizeof name, "mem_%ld", rate);
    if (g_filter && !strstr(name, g_filter))
        return;
    double v[16][NRES];
    for (int r = 0; r < g_rounds; r++) {
        char url[128];
        snprintf(url, sizeof url, "mem://lat-%d-%d", (int)getpid(), r);
        in_child(false, url, rate, v[r]);
        print_run(name, r, "msgbus", v[r]);
        fflush(stdout);
    }
    for (int k = 0; k < 6; k++) {
        double a[16];
        for (int r = 0; r < g_rounds; r++)
            a[r] = v[r][k];
        printf("RESULT case=%s %s msgbus=%.0f\n", name, g_names[k], median(a, (int)g_rounds));
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
        g_rate = atol(argv[1]);
    if (argc > 2)
        g_seconds = atol(argv[2]);
    if (argc > 3)
        g_rounds = atol(argv[3]);
    if (argc > 4)
        g_filter = argv[4];
    if (g_rate < 1 || g_rate > 100000 || g_seconds < 1 || g_rounds < 1 || g_rounds > 15)
        die("arguments", "bench_latency_kafka [rate 1..100000] [seconds>=1] [rounds 1..15] [filter]");
    const char *url = getenv("MSGBUS_TEST_KAFKA_URL");
    if (!url || strncmp(url, "kafka://", 8) != 0 || strchr(url, '@'))
        die("MSGBUS_TEST_KAFKA_URL", "set it to a plain kafka://host:port URL (. .brokers/env)");
    snprintf(g_hosts, sizeof g_hosts, "%s", url + 8);
    g_hosts[strcspn(g_hosts, "?/")] = '\0';
    char mburl[600];
    snprintf(mburl, sizeof mburl, "%s%scloudevents=off", url, strchr(url, '?') ? "&" : "?");
    long high = g_rate * 20 > 20000 ? 20000 : g_rate * 20;
    mem_case(g_rate);
    if (high != g_rate)
        mem_case(high);
    kafka_case(mburl, g_rate);
    if (high != g_rate)
        kafka_case(mburl, high);
    printf("(%ld s per run, median of %ld rounds, each run a process of its own, %s)\n", g_seconds,
           g_rounds, g_hosts);
    delete_made();
    return 0;
}
