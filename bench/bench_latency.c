/*
 * bench_latency.c — latency at a fixed load, not throughput: msgbus on
 * Kafka against raw librdkafka and on RabbitMQ against raw rabbitmq-c, each
 * with the same settings as msgbus, and msgbus on mem:// alone, publishing
 * at a fixed rate from one thread that serves its callbacks at once.
 *
 *   bench_latency [rate=1000] [seconds=10] [rounds=3] [filter]
 *   (Kafka URL from MSGBUS_TEST_KAFKA_URL, RabbitMQ URL from
 *   MSGBUS_TEST_AMQP_URL, both plain; filter: run only cases whose name
 *   contains it — the backend, "mem", "kafka", "amqp", or one case such
 *   as "amqp_20000". A broker whose URL is not set is skipped.)
 *
 * Per message it measures publish→confirm (from just before the publish
 * call to the confirm on the publishing thread) and publish→receive (to
 * the moment the receiving side has it; the send time travels in the
 * payload), and prints p50/p99/p99.9 of both for each run, then per case
 * the median over the rounds and msgbus − raw:
 *
 *   RESULT case=kafka_1000 confirm_p50_us msgbus=… raw=… diff=…
 *
 * (mem_ cases have msgbus= only.) Unlike the throughput benches this one
 * prints no CPU per message: the publishing thread spins for the last
 * 2 ms before each send to send on time, so the process's CPU is the
 * pacing's (a core at 1,000/s), not the clients'; bench_kafka and
 * bench_amqp measure CPU per message.
 *
 * Cases: kafka_<rate> and amqp_<rate>, for the rate given and for 20 × it
 * (capped at 20000/s), msgbus and raw alternating (msgbus first on even
 * rounds), each run a process of its own on a fresh topic and group;
 * mem_<rate>: msgbus on mem:// only (no raw client to compare with).
 *
 * Kafka fairness: both producers are idempotent with acks=all and
 * librdkafka's defaults otherwise (linger.ms 5); both consumers have auto
 * commit off and queued.min.messages=1000000 (as msgbus sets them); msgbus
 * writes its record with cloudevents=off (the payload and a ce_id header),
 * raw the payload alone; the topic has 3 partitions on both sides.
 *
 * RabbitMQ fairness: msgbus runs with its defaults (one connection; a
 * publish channel in confirm mode, a channel per subscription with
 * basic.qos prefetch 200; heartbeat 10 s; persistent, mandatory messages
 * with a message id, timestamp and the six CloudEvents/timestamp headers it
 * writes by default). The raw side mirrors that with one rabbitmq-c
 * connection (heartbeat 10 s) and one thread: channel 1 in confirm mode
 * publishes the same message (same properties and headers table, built per
 * message as msgbus does), channel 2 consumes the group's queue with
 * prefetch 200 and manual acks, one basic.ack multiple=true whenever the
 * socket has run dry (as msgbus's I/O thread acks what arrived since its
 * last wake-up). rabbitmq-c cannot be used from two threads, so the raw
 * publishing thread is also its receiver: it reads confirms and
 * deliveries while it waits for the next send, which is the shortest path
 * a raw application can have. msgbus's path is longer on purpose: its I/O
 * thread reads the socket and hands confirms to msgbus_poll on the
 * publishing thread and messages to msgbus_receive on a receiving thread.
 * The exchange and the group's queue are declared by msgbus_declare for
 * both sides; raw runs must use a plain amqp:// URL.
 *
 * The publishing thread waits for the next send time in msgbus_poll /
 * rd_kafka_poll / reading rabbitmq-c frames (a confirm wakes it at once)
 * and spins below 2 ms — at 500/s and more it spins all the time and holds
 * a core, which the raw clients' single thread does not mind but msgbus's
 * I/O thread, needing a core of its own, does on a 2-core machine. With
 * BENCH_LATENCY_PACE=sleep it waits below 2 ms in ppoll() on msgbus_fd or
 * the raw RabbitMQ socket instead (raw Kafka, which has no descriptor for
 * its callbacks, in rd_kafka_poll with a timeout of the whole milliseconds
 * left, rounded up: a send may go up to 1 ms late, which moves when it is
 * timed from, not what is measured). Everything made on the brokers is
 * deleted at the end.
 */
#include <inttypes.h>
#include <poll.h>
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
/* BENCH_LATENCY_PACE=sleep: below 2 ms before a send, wait in ppoll() on
 * the side's descriptor (msgbus_fd, the raw RabbitMQ socket) instead of
 * spinning, so the pacing does not hold a core; Kafka's raw side, which
 * has no such descriptor, waits in rd_kafka_poll (whole milliseconds). */
static bool g_sleep_pace;
static const char *g_filter;
#ifdef BENCH_HAVE_KAFKA
static char g_hosts[512];
#endif
static char *g_made[MAX_MADE];
static int g_nmade;

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench_latency: %s: %s\n", what, detail);
    exit(2);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A fresh name; `keep`: remembered for the Kafka delete at the end. */
static void unique(char *buf, size_t n, const char *prefix, bool keep)
{
    static int counter;
    snprintf(buf, n, "%s-%d-%d-%ld", prefix, (int)getpid(), ++counter, (long)time(NULL));
    if (keep && g_nmade < MAX_MADE)
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
 * callbacks with wait(ms) between sends (with BENCH_LATENCY_PACE=sleep and
 * an fd(arg) callback, below 2 ms a ppoll() on that descriptor, then
 * wait(0)); then waits up to 30 s for every confirm and receive. */
static void pace(struct run *r, long rate, void (*send)(void *, long), void (*wait)(void *, int),
                 int (*fd)(void *), void *arg)
{
    int64_t gap = 1000000000 / rate, t0 = now_ns();
    for (long i = 0; i < r->n; i++) {
        int64_t due = t0 + i * gap;
        for (;;) {
            int64_t left = due - now_ns();
            if (left <= 0)
                break;
            if (left < 2000000 && g_sleep_pace && fd) {
                struct pollfd p = {fd(arg), POLLIN, 0};
                struct timespec ts = {0, (long)left};
                if (p.fd >= 0)
                    ppoll(&p, 1, &ts, NULL);
                wait(arg, 0);
                continue;
            }
            if (left < 2000000 && g_sleep_pace) { /* no descriptor: raw Kafka */
                wait(arg, (int)((left + 999999) / 1000000));
                continue;
            }
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

static int mb_fd(void *arg)
{
    struct mb_side *s = arg;
    return msgbus_fd(s->bus);
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
    pace(r, rate, mb_send, mb_wait, mb_fd, &s);
    pthread_join(t, NULL);
    msgbus_sub_close(s.sub);
    msgbus_close(s.bus);
}

#ifdef BENCH_HAVE_KAFKA
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
    pace(r, rate, raw_send, raw_wait, NULL, &s);
    pthread_join(t, NULL);
    rd_kafka_consumer_close(s.consumer);
    rd_kafka_destroy(s.consumer);
    rd_kafka_topic_destroy(s.rkt);
    rd_kafka_flush(s.producer, 5000);
    rd_kafka_destroy(s.producer);
}

/* Deletes every topic and group the bench named (bench_util.h). */
static void delete_made(void)
{
    bench_kafka_delete_made(raw_conf(RD_KAFKA_PRODUCER, NULL), g_made, &g_nmade);
}
#endif

#ifdef BENCH_HAVE_AMQP
/* ---- raw rabbitmq-c -------------------------------------------------------- */

enum { AMQP_PUB_CH = 1, AMQP_SUB_CH = 2, AMQP_PREFETCH = 200 };

struct amqp_side {
    struct run *r;
    amqp_connection_state_t c;
    const char *topic;
    uint64_t tags;      /* publishes so far (the last delivery tag) */
    uint64_t confirmed; /* publishes confirmed so far */
    uint64_t warm_tags; /* publishes before the first timed one */
    bool timed;         /* warm-up over: confirms are measured */
    uint64_t last_delivery, acked_delivery;
    bool warm;
    char source[400];
};

static struct amqp_connection_info g_amqp_ci;

static void amqp_check(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die(what, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                      ? amqp_error_string2(r.library_error)
                      : "the broker refused");
}

/* Settles tags up to `tag` (or only `tag`): one confirm each, in order (a
 * single queue confirms in order). */
static void amqp_settle(struct amqp_side *s, uint64_t tag, bool multiple)
{
    uint64_t upto = multiple ? tag : s->confirmed + 1;
    for (; s->confirmed < upto; s->confirmed++) {
        uint64_t t = s->confirmed + 1;
        /* Not during the warm-up: warm_tags is not known yet there (the
         * first warm-up confirm was once taken for message 0's). */
        if (s->timed && t > s->warm_tags)
            got_confirm(s->r, (long)(t - s->warm_tags - 1));
    }
}

/* Reads frames for up to `ms` (0: only what is already here), serving
 * confirms and deliveries; returns after the first batch of frames. */
static void amqp_wait(void *arg, int ms)
{
    struct amqp_side *s = arg;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    for (bool first = true;; first = false) {
        amqp_frame_t f;
        struct timeval zero = {0, 0};
        int st = amqp_simple_wait_frame_noblock(s->c, &f, first ? &tv : &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            break;
        if (st != AMQP_STATUS_OK)
            die("raw amqp", amqp_error_string2(st));
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            amqp_settle(s, a->delivery_tag, a->multiple);
            break;
        }
        case AMQP_BASIC_NACK_METHOD:
            die("raw amqp", "the broker nacked a publish");
            break;
        case AMQP_BASIC_RETURN_METHOD: {
            amqp_message_t m; /* its header and body follow */
            amqp_check(amqp_read_message(s->c, f.channel, &m, 0), "raw amqp: basic.return");
            amqp_destroy_message(&m);
            die("raw amqp", "a publish was returned: no queue bound");
            break;
        }
        case AMQP_BASIC_DELIVER_METHOD: {
            amqp_basic_deliver_t *d = f.payload.method.decoded;
            uint64_t tag = d->delivery_tag;
            amqp_message_t m;
            amqp_check(amqp_read_message(s->c, f.channel, &m, 0), "raw amqp: delivery");
            long seq = -2;
            if (m.body.len >= 8)
                memcpy(&seq, m.body.bytes, sizeof seq);
            if (m.properties.message_id.len != 36)
                die("raw amqp", "a delivery without a 36-byte message id");
            if (seq < 0)
                s->warm = true;
            else
                got_payload(s->r, m.body.bytes, m.body.len);
            amqp_destroy_message(&m);
            s->last_delivery = tag;
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
            die("raw amqp", "the broker closed the channel or connection");
            break;
        default:
            break;
        }
        /* The socket has run dry: ack what arrived (multiple). */
        if (!amqp_data_in_buffer(s->c) && !amqp_frames_enqueued(s->c)) {
            if (s->last_delivery > s->acked_delivery) {
                if (amqp_basic_ack(s->c, AMQP_SUB_CH, s->last_delivery, 1) != AMQP_STATUS_OK)
                    die("raw amqp", "basic.ack failed");
                s->acked_delivery = s->last_delivery;
            }
            amqp_maybe_release_buffers(s->c);
            break;
        }
    }
}

/* What msgbus writes by default: persistent, mandatory, a UUID-long message
 * id, the timestamp in seconds, the CloudEvents attributes and the exact
 * milliseconds as string headers. */
static void amqp_send(void *arg, long seq)
{
    struct amqp_side *s = arg;
    unsigned char body[PAYLOAD];
    fill(body, seq, seq >= 0 ? s->r->sent[seq] : 0);
    char id[64], when[40], ms[24];
    snprintf(id, sizeof id, "00000000-0000-7000-8000-%012lu", (unsigned long)s->tags);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
               AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.delivery_mode = 2;
    p.message_id = amqp_cstring_bytes(id);
    p.timestamp = bench_event_time(when, sizeof when, ms, sizeof ms);
    static const char *const names[6] = {"cloudEvents_specversion", "cloudEvents_id",
                                         "cloudEvents_source",      "cloudEvents_type",
                                         "cloudEvents_time",        "msgbus-timestamp-ms"};
    const char *values[6] = {"1.0", id, s->source, s->topic, when, ms};
    amqp_table_entry_t hdr[6];
    for (int k = 0; k < 6; k++) {
        hdr[k].key = amqp_cstring_bytes(names[k]);
        hdr[k].value.kind = AMQP_FIELD_KIND_UTF8;
        hdr[k].value.value.bytes = amqp_cstring_bytes(values[k]);
    }
    p.headers.num_entries = 6;
    p.headers.entries = hdr;
    amqp_bytes_t b = {sizeof body, body};
    if (amqp_basic_publish(s->c, AMQP_PUB_CH, amqp_cstring_bytes(s->topic), amqp_empty_bytes, 1,
                           0, &p, b) != AMQP_STATUS_OK)
        die("raw amqp", "basic.publish failed");
    s->tags++;
}

/* The socket, or -1 while rabbitmq-c holds unread data (then no wait). */
static int amqp_fd(void *arg)
{
    struct amqp_side *s = arg;
    if (amqp_data_in_buffer(s->c) || amqp_frames_enqueued(s->c))
        return -1;
    return amqp_get_sockfd(s->c);
}

static void run_raw_amqp(struct run *r, const char *topic, const char *group, long rate)
{
    struct amqp_side s = {.r = r, .topic = topic};
    char host[300];
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    snprintf(s.source, sizeof s.source, "//%s/bench_latency", host);
    s.c = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(s.c);
    int st = sock ? amqp_socket_open(sock, g_amqp_ci.host, g_amqp_ci.port) : AMQP_STATUS_NO_MEMORY;
    if (st != AMQP_STATUS_OK)
        die("raw amqp connect", amqp_error_string2(st));
    amqp_check(amqp_login(s.c, g_amqp_ci.vhost, 0, 131072, 10, AMQP_SASL_METHOD_PLAIN,
                          g_amqp_ci.user, g_amqp_ci.password),
               "raw amqp login");
    /* TCP_NODELAY as msgbus sets it (rabbitmq-c sets it too). */
    amqp_channel_open(s.c, AMQP_PUB_CH);
    amqp_check(amqp_get_rpc_reply(s.c), "channel.open");
    amqp_confirm_select(s.c, AMQP_PUB_CH);
    amqp_check(amqp_get_rpc_reply(s.c), "confirm.select");
    amqp_channel_open(s.c, AMQP_SUB_CH);
    amqp_check(amqp_get_rpc_reply(s.c), "channel.open");
    amqp_basic_qos(s.c, AMQP_SUB_CH, 0, AMQP_PREFETCH, 0);
    amqp_check(amqp_get_rpc_reply(s.c), "basic.qos");
    char queue[300];
    snprintf(queue, sizeof queue, "%s.%s", topic, group);
    amqp_basic_consume(s.c, AMQP_SUB_CH, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    amqp_check(amqp_get_rpc_reply(s.c), "basic.consume");
    int64_t until = now_ns() + 60 * 1000000000LL;
    while (!s.warm && now_ns() < until) {
        amqp_send(&s, -1);
        for (int i = 0; i < 10 && !s.warm; i++)
            amqp_wait(&s, 100);
    }
    if (!s.warm)
        die("warm-up", "the first message never arrived");
    /* Every warm-up publish confirmed, so the timed tags start after them. */
    while (s.confirmed < s.tags && now_ns() < until)
        amqp_wait(&s, 100);
    s.warm_tags = s.tags;
    s.timed = true;
    pace(r, rate, amqp_send, amqp_wait, amqp_fd, &s);
    amqp_channel_close(s.c, AMQP_SUB_CH, AMQP_REPLY_SUCCESS);
    amqp_channel_close(s.c, AMQP_PUB_CH, AMQP_REPLY_SUCCESS);
    amqp_connection_close(s.c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(s.c);
}
#endif

/* ---- runs, each a process of its own ------------------------------------- */

enum backend { B_MEM, B_KAFKA, B_AMQP };

/* results: confirm p50 p99 p999, receive p50 p99 p999 (µs), messages. */
enum { NRES = 7 };

static void in_child(enum backend b, bool raw, const char *url, long rate, double res[NRES])
{
    char topic[128], group[128];
    unique(topic, sizeof topic, "lat", b == B_KAFKA);
    unique(group, sizeof group, "lat-g", b == B_KAFKA);
    int fd[2];
    if (pipe(fd))
        die("pipe", "failed");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        struct run r;
        run_init(&r, rate * g_seconds);
        if (raw) {
            /* The topic (and group queue) as msgbus declares them, before
             * the clock. */
            msgbus_t *bus = NULL;
            if (msgbus_open(&bus, url, NULL) != MSGBUS_OK ||
                msgbus_declare(bus, topic, b == B_AMQP ? group : NULL) != MSGBUS_OK)
                die("declare", msgbus_last_error());
            msgbus_close(bus);
#ifdef BENCH_HAVE_KAFKA
            if (b == B_KAFKA)
                run_raw(&r, topic, group, rate);
#endif
#ifdef BENCH_HAVE_AMQP
            if (b == B_AMQP)
                run_raw_amqp(&r, topic, group, rate);
#endif
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
    if (b == B_AMQP)
        bench_delete(url, topic, group);
}

static const char *const g_names[6] = {"confirm_p50_us", "confirm_p99_us", "confirm_p999_us",
                                       "receive_p50_us", "receive_p99_us", "receive_p999_us"};

static void print_run(const char *name, int round, const char *side, const double *v)
{
    printf("%s round %d %s: confirm p50/p99/p99.9 %.0f/%.0f/%.0f µs, receive %.0f/%.0f/%.0f µs "
           "(%.0f messages)\n",
           name, round, side, v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
}

#if defined(BENCH_HAVE_KAFKA) || defined(BENCH_HAVE_AMQP)
static void broker_case(enum backend b, const char *url, long rate)
{
    char name[64];
    snprintf(name, sizeof name, "%s_%ld", b == B_KAFKA ? "kafka" : "amqp", rate);
    if (g_filter && !strstr(name, g_filter))
        return;
    double mb[16][NRES], raw[16][NRES];
    for (int r = 0; r < g_rounds; r++) {
        bool raw_first = r % 2;
        if (raw_first)
            in_child(b, true, url, rate, raw[r]);
        in_child(b, false, url, rate, mb[r]);
        if (!raw_first)
            in_child(b, true, url, rate, raw[r]);
        print_run(name, r, "msgbus", mb[r]);
        print_run(name, r, "raw", raw[r]);
        fflush(stdout);
    }
    double a[16], c[16];
    for (int k = 0; k < 6; k++) {
        for (int r = 0; r < g_rounds; r++) {
            a[r] = mb[r][k];
            c[r] = raw[r][k];
        }
        double ma = bench_median(a, (int)g_rounds), mr = bench_median(c, (int)g_rounds);
        printf("RESULT case=%s %s msgbus=%.0f raw=%.0f diff=%+.0f\n", name, g_names[k], ma, mr,
               ma - mr);
    }
}

#endif

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
        in_child(B_MEM, false, url, rate, v[r]);
        print_run(name, r, "msgbus", v[r]);
        fflush(stdout);
    }
    double a[16];
    for (int k = 0; k < 6; k++) {
        for (int r = 0; r < g_rounds; r++)
            a[r] = v[r][k];
        printf("RESULT case=%s %s msgbus=%.0f\n", name, g_names[k], bench_median(a, (int)g_rounds));
    }
}

#if defined(BENCH_HAVE_KAFKA) || defined(BENCH_HAVE_AMQP)
/* Whether any case of `backend` passes the filter. */
static bool wanted(const char *backend, long rate, long high)
{
    char a[64], b[64];
    snprintf(a, sizeof a, "%s_%ld", backend, rate);
    snprintf(b, sizeof b, "%s_%ld", backend, high);
    return !g_filter || strstr(a, g_filter) || strstr(b, g_filter);
}
#endif

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
    const char *pace_env = getenv("BENCH_LATENCY_PACE");
    g_sleep_pace = pace_env && strcmp(pace_env, "sleep") == 0;
    if (g_rate < 1 || g_rate > 100000 || g_seconds < 1 || g_rounds < 1 || g_rounds > 15)
        die("arguments", "bench_latency [rate 1..100000] [seconds>=1] [rounds 1..15] [filter]");
    long high = g_rate * 20 > 20000 ? 20000 : g_rate * 20;
    if (high < g_rate)
        high = g_rate;
    mem_case(g_rate);
    if (high != g_rate)
        mem_case(high);
    const char *kurl = getenv("MSGBUS_TEST_KAFKA_URL");
    const char *aurl = getenv("MSGBUS_TEST_AMQP_URL");
#ifdef BENCH_HAVE_KAFKA
    if (wanted("kafka", g_rate, high) && (!kurl || !*kurl)) {
        fprintf(stderr, "bench_latency: MSGBUS_TEST_KAFKA_URL not set: Kafka skipped\n");
    } else if (wanted("kafka", g_rate, high)) {
        if (strncmp(kurl, "kafka://", 8) != 0 || strchr(kurl, '@'))
            die("MSGBUS_TEST_KAFKA_URL", "set it to a plain kafka://host:port URL (. .brokers/env)");
        snprintf(g_hosts, sizeof g_hosts, "%s", kurl + 8);
        g_hosts[strcspn(g_hosts, "?/")] = '\0';
        char mburl[600];
        snprintf(mburl, sizeof mburl, "%s%scloudevents=off", kurl, strchr(kurl, '?') ? "&" : "?");
        broker_case(B_KAFKA, mburl, g_rate);
        if (high != g_rate)
            broker_case(B_KAFKA, mburl, high);
        printf("(kafka: %s)\n", g_hosts);
        delete_made();
    }
#else
    (void)kurl;
#endif
#ifdef BENCH_HAVE_AMQP
    if (wanted("amqp", g_rate, high) && (!aurl || !*aurl)) {
        fprintf(stderr, "bench_latency: MSGBUS_TEST_AMQP_URL not set: RabbitMQ skipped\n");
    } else if (wanted("amqp", g_rate, high)) {
        /* rabbitmq-c parses the same URL for the raw side (without the query). */
        static char raw_url[1024];
        snprintf(raw_url, sizeof raw_url, "%s", aurl);
        raw_url[strcspn(raw_url, "?")] = '\0';
        amqp_default_connection_info(&g_amqp_ci);
        if (strncmp(aurl, "amqp://", 7) != 0 || amqp_parse_url(raw_url, &g_amqp_ci) != AMQP_STATUS_OK)
            die("MSGBUS_TEST_AMQP_URL", "set it to a plain amqp:// URL (. .brokers/env)");
        if (!g_amqp_ci.vhost || !*g_amqp_ci.vhost)
            g_amqp_ci.vhost = "/";
        broker_case(B_AMQP, aurl, g_rate);
        if (high != g_rate)
            broker_case(B_AMQP, aurl, high);
        printf("(amqp: %s:%d)\n", g_amqp_ci.host, g_amqp_ci.port);
    }
#else
    (void)aurl;
#endif
    printf("(%ld s per run, median of %ld rounds, each run a process of its own)\n", g_seconds,
           g_rounds);
    return 0;
}
