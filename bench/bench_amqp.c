/*
 * bench_amqp.c — publish throughput of msgbus's AMQP backend against raw
 * rabbitmq-c 0.11 on the same broker, in the same run, alternating.
 *
 * Both sides put the same message on the wire: persistent (delivery_mode 2),
 * message id, timestamp, the headers msgbus writes by default (the
 * CloudEvents attributes and msgbus-timestamp-ms, as strings), mandatory,
 * to a durable topic exchange with one durable queue bound, publisher confirms with the same window (1000 by
 * default) and a wait for every confirm at the end. The queue is purged
 * between runs so every run starts from the same broker state.
 *
 *   bench_amqp [url] [messages] [rounds] [case-filter]
 *   url defaults to $MSGBUS_TEST_AMQP_URL, messages to 100000, rounds to 3;
 *   case-filter runs only the cases whose name contains it (e.g. "64B").
 *
 * Over TLS: give an amqps:// URL, e.g. "$MSGBUS_TEST_AMQPS_URL" (a client
 * certificate listener). The raw side then opens an amqp_ssl_socket_new
 * socket set up as msgbus sets up its own (src/backends/amqp_conn.c): peer
 * and host name verified unless tls_verify_peer / tls_verify_hostname say
 * false, the URL's cacert= trusted, its cert= / key= presented.
 * Cases: persistent_64B / persistent_1KiB (publish with confirms) and
 * consume_64B / consume_1KiB (receive and ack what is already queued);
 * persistent_64B_stats / consume_64B_stats: the same with msgbus's stats on
 * (stats_interval_ms=1000 and a stats callback served by the bench's
 * msgbus_poll calls, so every second a snapshot is built — with the group
 * queue's lag asked of the broker — and handed over), against the same raw
 * client: what observability costs.
 * Prints per case the median rate of each side and the median of the
 * per-round ratios (robust against load that drifts during the run):
 *   RESULT case=<name> msgbus=<msg/s> raw=<msg/s> ratio=<msgbus/raw>
 *          cpu_msgbus=<µs> cpu_raw=<µs> cpu_ratio=<msgbus/raw>
 * (cpu_*: the median over the rounds of the process's CPU time per
 * message over the timed part of a run — every thread, msgbus's I/O
 * thread included; the runs of a round are back to back in this process,
 * so only one side's client is alive at a time) and for the _stats cases how many snapshots the callback got, the size of
 * the last, and the time the measured loops spent in msgbus_poll (where
 * snapshots are built; for persistent_64B_stats that includes the wait for
 * confirms), summed over the case's msgbus runs:
 *   INFO case=<name> stats_callbacks=<n> last_snapshot_bytes=<n> poll_ms=<ms>
 * partitioned_publish_64B / partitioned_consume_64B compare msgbus with
 * itself: a partitioned group against an unpartitioned one (below).
 */
#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "msgbus/msgbus.h"

#define WINDOW 1000

/* Process CPU (every thread, bench_util.h) per message in µs over the
 * timed part of the last run of msgbus_run, raw_run, msgbus_consume or
 * raw_consume. */
static double g_cpu_us;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench_amqp: %s: %s\n", what, detail);
    exit(1);
}

static void check_reply(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die(what, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                      ? amqp_error_string2(r.library_error)
                      : "broker refused");
}

/* ---- raw rabbitmq-c --------------------------------------------------------- */

/* The URL's TLS options, for the raw side (amqps:// only). */
static struct {
    char *cacert, *cert, *key;
    bool verify_peer, verify_hostname;
} g_tls = {NULL, NULL, NULL, true, true};

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

/* Reads cacert, cert, key, tls_verify_peer and tls_verify_hostname from
 * the query `q` (after '?'), with msgbus's defaults. */
static void parse_tls(const char *q)
{
    while (q && *q) {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        if (eq) {
            size_t kn = (size_t)(eq - q);
            char *v = decode(eq + 1, len - kn - 1);
            bool off = strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "no") == 0;
            if (kn == 6 && strncmp(q, "cacert", 6) == 0)
                g_tls.cacert = v, v = NULL;
            else if (kn == 4 && strncmp(q, "cert", 4) == 0)
                g_tls.cert = v, v = NULL;
            else if (kn == 3 && strncmp(q, "key", 3) == 0)
                g_tls.key = v, v = NULL;
            else if (kn == 15 && strncmp(q, "tls_verify_peer", 15) == 0)
                g_tls.verify_peer = !off;
            else if (kn == 19 && strncmp(q, "tls_verify_hostname", 19) == 0)
                g_tls.verify_hostname = !off;
            free(v);
        }
        q += len;
        if (*q == '&')
            q++;
    }
}

/* heartbeat_s: 10 as msgbus's default for the measured side; 0 for the
 * admin connection, which idles through whole runs and would otherwise be
 * dropped by the broker for missed heartbeats (rabbitmq-c sends them only
 * inside its calls). */
static amqp_connection_state_t raw_connect(const struct amqp_connection_info *ci,
                                           int heartbeat_s)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s;
    if (ci->ssl) {
        /* The same TLS set-up as msgbus's (verification, CA, client
         * certificate and key). */
        if (!(s = amqp_ssl_socket_new(c)))
            die("raw connect", "cannot create a TLS socket");
        amqp_ssl_socket_set_verify_peer(s, g_tls.verify_peer);
        amqp_ssl_socket_set_verify_hostname(s, g_tls.verify_hostname);
        if (g_tls.cacert && amqp_ssl_socket_set_cacert(s, g_tls.cacert) != AMQP_STATUS_OK)
            die("raw cacert", g_tls.cacert);
        if (g_tls.cert && amqp_ssl_socket_set_key(s, g_tls.cert, g_tls.key) != AMQP_STATUS_OK)
            die("raw cert/key", g_tls.cert);
    } else {
        s = amqp_tcp_socket_new(c);
    }
    int st = amqp_socket_open(s, ci->host, ci->port);
    if (st != AMQP_STATUS_OK)
        die("raw connect", amqp_error_string2(st));
    check_reply(amqp_login(c, ci->vhost && *ci->vhost ? ci->vhost : "/", 0, 131072, heartbeat_s,
                           AMQP_SASL_METHOD_PLAIN, ci->user, ci->password),
                "raw login");
    amqp_channel_open(c, 1);
    check_reply(amqp_get_rpc_reply(c), "channel.open");
    return c;
}

static void raw_topology(amqp_connection_state_t c, const char *topic, const char *queue)
{
    amqp_exchange_declare(c, 1, amqp_cstring_bytes(topic), amqp_cstring_bytes("topic"), 0, 1, 0,
                          0, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(c), "exchange.declare");
    amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(c), "queue.declare");
    amqp_queue_bind(c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(topic),
                    amqp_cstring_bytes("#"), amqp_empty_table);
    check_reply(amqp_get_rpc_reply(c), "queue.bind");
}

static void raw_purge(amqp_connection_state_t c, const char *queue)
{
    amqp_queue_purge(c, 1, amqp_cstring_bytes(queue));
    check_reply(amqp_get_rpc_reply(c), "queue.purge");
}

/* Reads confirms until at most `keep` are outstanding. */
static void raw_wait_confirms(amqp_connection_state_t c, uint64_t sent, uint64_t *acked,
                              uint64_t keep)
{
    while (sent - *acked > keep) {
        amqp_frame_t f;
        if (amqp_simple_wait_frame(c, &f) != AMQP_STATUS_OK)
            die("raw confirms", "connection failed");
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            if (a->multiple)
                *acked = a->delivery_tag;
            else
                (*acked)++; /* single acks arrive in order for a single queue */
        } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            die("raw confirms", "broker nacked");
        }
        amqp_maybe_release_buffers(c);
    }
}

/* `same_headers`: also write the headers msgbus writes on every message in
 * its default mode (cloudEvents_specversion/id/source/type/time and
 * msgbus-timestamp-ms, all strings), so the broker does the same work
 * for both sides; without them (false) it shows what the table costs. */
static double raw_run(const struct amqp_connection_info *ci, const char *topic,
                      const char *queue, size_t n, size_t size, bool same_headers)
{
    amqp_connection_state_t c = raw_connect(ci, 10);
    raw_topology(c, topic, queue);
    amqp_confirm_select(c, 1);
    check_reply(amqp_get_rpc_reply(c), "confirm.select");
    char *body = malloc(size);
    memset(body, 'x', size);
    char id[64];
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    p.delivery_mode = 2;
    /* What msgbus writes in its default mode (cloudevents=binary): the
     * CloudEvents attributes and the exact timestamp, every value a string. */
    amqp_table_entry_t hdr[6];
    char host[300], source[400], when[40], ms[24];
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    snprintf(source, sizeof source, "//%s/bench_amqp", host);
    const char *names[6] = {"cloudEvents_specversion", "cloudEvents_id", "cloudEvents_source",
                            "cloudEvents_type", "cloudEvents_time", "msgbus-timestamp-ms"};
    for (int k = 0; k < 6; k++) {
        hdr[k].key = amqp_cstring_bytes(names[k]);
        hdr[k].value.kind = AMQP_FIELD_KIND_UTF8;
    }
    hdr[0].value.value.bytes = amqp_cstring_bytes("1.0");
    hdr[2].value.value.bytes = amqp_cstring_bytes(source);
    hdr[3].value.value.bytes = amqp_cstring_bytes(topic);
    if (same_headers) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers.num_entries = 6;
        p.headers.entries = hdr;
    }
    uint64_t acked = 0;
    double t0 = now_s(), c0 = bench_cpu_s();
    for (size_t i = 0; i < n; i++) {
        /* An id as long as a UUIDv7, like msgbus's. */
        snprintf(id, sizeof id, "00000000-0000-7000-8000-%012zu", i);
        p.message_id = amqp_cstring_bytes(id);
        p.timestamp = bench_event_time(when, sizeof when, ms, sizeof ms);
        hdr[1].value.value.bytes = p.message_id;
        hdr[4].value.value.bytes = amqp_cstring_bytes(when);
        hdr[5].value.value.bytes = amqp_cstring_bytes(ms);
        amqp_bytes_t b = {size, body};
        if (amqp_basic_publish(c, 1, amqp_cstring_bytes(topic), amqp_empty_bytes, 1, 0, &p, b) !=
            AMQP_STATUS_OK)
            die("raw publish", "failed");
        raw_wait_confirms(c, i + 1, &acked, WINDOW - 1);
    }
    raw_wait_confirms(c, n, &acked, 0);
    double rate = n / (now_s() - t0);
    g_cpu_us = (bench_cpu_s() - c0) * 1e6 / (double)n;
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    free(body);
    return rate;
}

/* Receives n messages already in `queue`, the way msgbus's subscription
 * does: basic.qos prefetch (msgbus's default 200), manual acks, batched —
 * one basic.ack multiple=true for what arrived since the last time the
 * socket ran dry (msgbus acks what the application acked since its I/O
 * thread's last wake-up), at most PREFETCH/2 apart. Reads each message's
 * id, as msgbus hands every received message its id. Timed from the first
 * message to the n-th. */
#define PREFETCH 200
static double raw_consume(const struct amqp_connection_info *ci, const char *queue, size_t n)
{
    amqp_connection_state_t c = raw_connect(ci, 10);
    amqp_basic_qos(c, 1, 0, PREFETCH, 0);
    check_reply(amqp_get_rpc_reply(c), "basic.qos");
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    check_reply(amqp_get_rpc_reply(c), "basic.consume");
    double t0 = 0, c0 = 0;
    uint64_t last = 0, acked = 0;
    for (size_t got = 0; got < n;) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(c);
        struct timeval tv = {30, 0};
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
        check_reply(r, "raw consume");
        if (got++ == 0)
            t0 = now_s(), c0 = bench_cpu_s();
        if (env.message.properties.message_id.len != 36)
            die("raw consume", "message without a 36-byte message id");
        last = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (got == n || last - acked >= PREFETCH / 2 ||
            (!amqp_data_in_buffer(c) && !amqp_frames_enqueued(c))) {
            if (amqp_basic_ack(c, 1, last, 1) != AMQP_STATUS_OK)
                die("raw ack", "failed");
            acked = last;
        }
    }
    double rate = (n - 1) / (now_s() - t0);
    g_cpu_us = (bench_cpu_s() - c0) * 1e6 / (double)(n - 1);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return rate;
}

/* ---- msgbus ------------------------------------------------------------------------ */

/* stats_interval_ms for the _stats cases, and their callback: counts the
 * snapshots and keeps the size of the last one (printed as INFO). */
#define STATS_INTERVAL_MS 1000
static struct {
    long calls;
    size_t last_len;
    double poll_s; /* time the measured loop spent in msgbus_poll (snapshots included) */
} g_stats;

static void on_stats(void *opaque, const char *json)
{
    (void)opaque;
    g_stats.calls++;
    g_stats.last_len = strlen(json);
}

/* The URL with `extra` options appended. */
static void url_plus(char *buf, size_t n, const char *url, const char *extra)
{
    snprintf(buf, n, "%s%s%s", url, strchr(url, '?') ? "&" : "?", extra);
}

static msgbus_t *bench_open(const char *url, bool stats)
{
    msgbus_t *bus;
    char full[1200];
    if (stats) {
        char opt[64];
        snprintf(opt, sizeof opt, "stats_interval_ms=%d", STATS_INTERVAL_MS);
        url_plus(full, sizeof full, url, opt);
    } else {
        snprintf(full, sizeof full, "%s", url);
    }
    if (msgbus_open(&bus, full, NULL) != MSGBUS_OK)
        die("msgbus_open", msgbus_last_error());
    if (stats && msgbus_set_stats_cb(bus, on_stats, NULL) != MSGBUS_OK)
        die("msgbus_set_stats_cb", msgbus_last_error());
    return bus;
}

/* Receives n messages already in the group's queue, acking each. */
static double msgbus_consume(const char *url, const char *topic, size_t n, bool stats)
{
    msgbus_t *bus = bench_open(url, stats);
    msgbus_sub_t *sub = NULL;
    if (msgbus_subscribe(bus, topic, "bench", &sub) != MSGBUS_OK)
        die("msgbus_subscribe", msgbus_last_error());
    double t0 = 0, c0 = 0;
    for (size_t got = 0; got < n;) {
        msgbus_msg_t *m = NULL;
        if (msgbus_receive(sub, 30000, &m) != MSGBUS_OK)
            die("msgbus_receive", msgbus_last_error());
        if (got++ == 0)
            t0 = now_s(), c0 = bench_cpu_s();
        if (strlen(msgbus_msg_id(m)) != 36)
            die("msgbus_receive", "message without a 36-byte id");
        msgbus_ack(m);
        msgbus_msg_free(m);
        if (stats && (got & 1023) == 0) { /* serves the stats callback */
            double p0 = now_s();
            msgbus_poll(bus, 0, NULL);
            g_stats.poll_s += now_s() - p0;
        }
    }
    double rate = (n - 1) / (now_s() - t0);
    g_cpu_us = (bench_cpu_s() - c0) * 1e6 / (double)(n - 1);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return rate;
}

static double msgbus_run(const char *url, const char *topic, size_t n, size_t size,
                         bool stats, bool keyed)
{
    char full[1024], opt[64];
    snprintf(opt, sizeof opt, "confirm_window=%d", WINDOW);
    url_plus(full, sizeof full, url, opt);
    msgbus_t *bus = bench_open(full, stats);
    if (msgbus_declare(bus, topic, "bench") != MSGBUS_OK)
        die("msgbus_declare", msgbus_last_error());
    char *body = malloc(size);
    memset(body, 'x', size);
    msgbus_msg_t *m;
    double t0 = now_s(), c0 = bench_cpu_s();
    for (size_t i = 0; i < n; i++) {
        /* A fresh message each time, as an application would (new id). */
        if (msgbus_msg_new(&m, body, size) != MSGBUS_OK)
            die("msgbus_msg_new", msgbus_last_error());
        if (keyed) {
            char k[16];
            int kl = snprintf(k, sizeof k, "k%zu", i % 1000);
            if (msgbus_msg_set_key(m, k, (size_t)kl) != MSGBUS_OK)
                die("msgbus_msg_set_key", msgbus_last_error());
        }
        msgbus_err_t e;
        while ((e = msgbus_publish(bus, topic, m, NULL, NULL)) == MSGBUS_ERR_QUEUE_FULL)
            msgbus_poll(bus, 1, NULL);
        if (e != MSGBUS_OK)
            die("msgbus_publish", msgbus_last_error());
        msgbus_msg_free(m);
        if ((i & 1023) == 0) {
            double p0 = now_s();
            msgbus_poll(bus, 0, NULL);
            if (stats)
                g_stats.poll_s += now_s() - p0;
        }
    }
    /* With stats on, the confirms are waited for in a poll loop: the stats
     * callback is served by msgbus_poll (not by msgbus_flush), and most of
     * a run is this wait, the publishes having been queued in the first
     * second. */
    while (stats && msgbus_outstanding(bus) > 0) {
        double p0 = now_s();
        msgbus_poll(bus, 100, NULL);
        g_stats.poll_s += now_s() - p0;
    }
    size_t failed = 0;
    if (msgbus_flush(bus, 120000, &failed) != MSGBUS_OK)
        die("msgbus_flush", msgbus_last_error());
    double rate = n / (now_s() - t0);
    g_cpu_us = (bench_cpu_s() - c0) * 1e6 / (double)n;
    msgbus_close(bus);
    free(body);
    return rate;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* consume_64B / consume_1KiB: receive n persistent messages that are
 * already in the group's durable queue (published by the raw publisher,
 * the same record for both sides), ack each; alternating as above. */
static void consume_case(const char *url, const struct amqp_connection_info *ci,
                         const char *name, size_t k, size_t size, size_t n, int rounds,
                         bool stats)
{
    char topic[128], queue[160];
    snprintf(topic, sizeof topic, "bench-amqp-%d-c%zu", (int)getpid(), k);
    snprintf(queue, sizeof queue, "%s.bench", topic);
    double mb[16], raw[16], ratio[16], mbc[16], rawc[16];
    amqp_connection_state_t admin = raw_connect(ci, 0);
    raw_topology(admin, topic, queue);
    for (int r = 0; r < rounds; r++) {
        for (int side = 0; side < 2; side++) {
            raw_purge(admin, queue);
            raw_run(ci, topic, queue, n, size, true);
            if ((side == 0) == (r % 2 == 0))
                mb[r] = msgbus_consume(url, topic, n, stats), mbc[r] = g_cpu_us;
            else
                raw[r] = raw_consume(ci, queue, n), rawc[r] = g_cpu_us;
        }
        fprintf(stderr, "  %s round %d: msgbus %.0f/s raw %.0f/s, cpu %.2f / %.2f µs/message\n",
                name, r + 1, mb[r], raw[r], mbc[r], rawc[r]);
        ratio[r] = mb[r] / raw[r];
    }
    qsort(mb, rounds, sizeof mb[0], cmp_double);
    qsort(raw, rounds, sizeof raw[0], cmp_double);
    qsort(ratio, rounds, sizeof ratio[0], cmp_double);
    printf("RESULT case=%s msgbus=%.0f raw=%.0f ratio=%.2f ", name, mb[rounds / 2],
           raw[rounds / 2], ratio[rounds / 2]);
    bench_print_cpu(bench_median(mbc, rounds), bench_median(rawc, rounds));
    if (stats)
        printf("INFO case=%s stats_callbacks=%ld last_snapshot_bytes=%zu poll_ms=%.1f\n", name,
               g_stats.calls, g_stats.last_len, g_stats.poll_s * 1000);
    fflush(stdout);
    amqp_queue_delete(admin, 1, amqp_cstring_bytes(queue), 0, 0);
    amqp_get_rpc_reply(admin);
    amqp_exchange_delete(admin, 1, amqp_cstring_bytes(topic), 0);
    amqp_get_rpc_reply(admin);
    amqp_connection_close(admin, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(admin);
}

/* partitioned_publish_64B / partitioned_consume_64B: msgbus against
 * itself — a group of partitions=4 (docs/amqp.md "Partitioned groups")
 * against an unpartitioned one, same run, alternating who goes first; 1000
 * keys. Publish: to the topic whose group it is (the consistent-hash
 * exchange is the extra hop). Consume: one member receives and acks n
 * messages already waiting (over the 4 partition queues, each with its own
 * channel and prefetch). Groups are emptied with msgbus_group_reset before
 * each run. Prints
 *   RESULT case=<name> partitioned=<msg/s> unpartitioned=<msg/s> ratio=<p/u> */
static void bench_reset(const char *url, const char *topic)
{
    msgbus_t *bus = bench_open(url, false);
    if (msgbus_group_reset(bus, topic, "bench", "latest") != MSGBUS_OK)
        die("msgbus_group_reset", msgbus_last_error());
    msgbus_close(bus);
}

static void partitioned_case(const char *url, const struct amqp_connection_info *ci,
                             bool consume, size_t n, int rounds)
{
    const char *name = consume ? "partitioned_consume_64B" : "partitioned_publish_64B";
    char purl[1100], topic[2][128];
    url_plus(purl, sizeof purl, url, "partitions=4");
    const char *urls[2] = {url, purl};
    for (int side = 0; side < 2; side++) {
        snprintf(topic[side], sizeof topic[side], "bench-amqp-%d-%s%d", (int)getpid(),
                 consume ? "pc" : "pp", side);
        msgbus_t *bus = bench_open(urls[side], false);
        if (msgbus_declare(bus, topic[side], "bench") != MSGBUS_OK)
            die("msgbus_declare", msgbus_last_error());
        msgbus_close(bus);
    }
    double rate[2][16], ratio[16], cpu[2][16];
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < 2; i++) {
            int side = (r % 2 == 0) == (i == 0); /* partitioned first in even rounds */
            bench_reset(urls[side], topic[side]);
            if (consume) {
                msgbus_run(urls[side], topic[side], n, 64, false, true);
                rate[side][r] = msgbus_consume(urls[side], topic[side], n, false);
            } else {
                rate[side][r] = msgbus_run(urls[side], topic[side], n, 64, false, true);
            }
            cpu[side][r] = g_cpu_us;
        }
        fprintf(stderr, "  %s round %d: partitioned %.0f/s unpartitioned %.0f/s\n", name, r + 1,
                rate[1][r], rate[0][r]);
        ratio[r] = rate[1][r] / rate[0][r];
    }
    qsort(rate[0], rounds, sizeof rate[0][0], cmp_double);
    qsort(rate[1], rounds, sizeof rate[1][0], cmp_double);
    qsort(ratio, rounds, sizeof ratio[0], cmp_double);
    /* Both sides are msgbus: cpu_msgbus= the partitioned group's, cpu_raw=
     * the unpartitioned one's (the baseline), as the fields are named on
     * every RESULT line. */
    printf("RESULT case=%s partitioned=%.0f unpartitioned=%.0f ratio=%.2f ", name,
           rate[1][rounds / 2], rate[0][rounds / 2], ratio[rounds / 2]);
    bench_print_cpu(bench_median(cpu[1], rounds), bench_median(cpu[0], rounds));
    fflush(stdout);
    /* Remove what the two groups made. */
    amqp_connection_state_t c = raw_connect(ci, 0);
    for (int side = 0; side < 2; side++) {
        char q[300];
        for (int i = 0; i < (side ? 4 : 1); i++) {
            if (side)
                snprintf(q, sizeof q, "%s.bench~%d", topic[side], i);
            else
                snprintf(q, sizeof q, "%s.bench", topic[side]);
            amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0);
            amqp_get_rpc_reply(c);
        }
        if (side) {
            snprintf(q, sizeof q, "%s.bench~hash", topic[side]);
            amqp_exchange_delete(c, 1, amqp_cstring_bytes(q), 0);
            amqp_get_rpc_reply(c);
        }
        amqp_exchange_delete(c, 1, amqp_cstring_bytes(topic[side]), 0);
        amqp_get_rpc_reply(c);
    }
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : getenv("MSGBUS_TEST_AMQP_URL");
    size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : 100000;
    int rounds = argc > 3 ? atoi(argv[3]) : 3;
    const char *filter = argc > 4 ? argv[4] : "";
    if (!url || !*url)
        die("no broker", "pass a URL or set MSGBUS_TEST_AMQP_URL (scripts/brokers up)");
    if (rounds < 1 || rounds > 15)
        rounds = 3;

    /* rabbitmq-c parses the same URL for the raw side (without the query). */
    char raw_url[1024];
    snprintf(raw_url, sizeof raw_url, "%s", url);
    char *q = strchr(raw_url, '?');
    if (q) {
        parse_tls(q + 1);
        *q = '\0';
    }
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(raw_url, &ci) != AMQP_STATUS_OK)
        die("bad URL", url);
    if (ci.vhost && strcmp(ci.vhost, "") == 0)
        ci.vhost = "/";

    static const struct {
        const char *name;
        size_t size;
        bool stats;
    } cases[] = {{"persistent_64B", 64, false},
                 {"persistent_1KiB", 1024, false},
                 {"persistent_64B_stats", 64, true}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char cname[64];
        snprintf(cname, sizeof cname, "consume_%s", cases[k].name + 11);
        memset(&g_stats, 0, sizeof g_stats);
        if (strstr(cname, filter))
            consume_case(url, &ci, cname, k, cases[k].size, n, rounds, cases[k].stats);
        memset(&g_stats, 0, sizeof g_stats);
        if (!strstr(cases[k].name, filter))
            continue;
        char topic[128], queue[160];
        snprintf(topic, sizeof topic, "bench-amqp-%d-%zu", (int)getpid(), k);
        snprintf(queue, sizeof queue, "%s.bench", topic); /* msgbus's group queue */
        double mb[16], raw[16], mbc[16], rawc[16];
        /* An admin connection: same topology for both, emptied before each run. */
        amqp_connection_state_t admin = raw_connect(&ci, 0);
        raw_topology(admin, topic, queue);
        for (int r = 0; r < rounds; r++) {
            /* Alternate who goes first so broker warm-up favours neither. */
            if (r % 2 == 0) {
                raw_purge(admin, queue);
                mb[r] = msgbus_run(url, topic, n, cases[k].size, cases[k].stats, false);
                mbc[r] = g_cpu_us;
                raw_purge(admin, queue);
                raw[r] = raw_run(&ci, topic, queue, n, cases[k].size, true);
                rawc[r] = g_cpu_us;
            } else {
                raw_purge(admin, queue);
                raw[r] = raw_run(&ci, topic, queue, n, cases[k].size, true);
                rawc[r] = g_cpu_us;
                raw_purge(admin, queue);
                mb[r] = msgbus_run(url, topic, n, cases[k].size, cases[k].stats, false);
                mbc[r] = g_cpu_us;
            }
            fprintf(stderr, "  %s round %d: msgbus %.0f/s raw %.0f/s, cpu %.2f / %.2f µs/message\n",
                    cases[k].name, r + 1, mb[r], raw[r], mbc[r], rawc[r]);
        }
        /* The ratio is the median of the per-round ratios: each round's
         * two runs are back to back, so load from other processes on a
         * shared machine hits both sides of a pair alike. */
        double ratio[16];
        for (int r = 0; r < rounds; r++)
            ratio[r] = mb[r] / raw[r];
        qsort(mb, rounds, sizeof mb[0], cmp_double);
        qsort(raw, rounds, sizeof raw[0], cmp_double);
        qsort(ratio, rounds, sizeof ratio[0], cmp_double);
        double m = mb[rounds / 2], w = raw[rounds / 2];
        printf("RESULT case=%s msgbus=%.0f raw=%.0f ratio=%.2f ", cases[k].name, m, w,
               ratio[rounds / 2]);
        bench_print_cpu(bench_median(mbc, rounds), bench_median(rawc, rounds));
        if (cases[k].stats)
            printf("INFO case=%s stats_callbacks=%ld last_snapshot_bytes=%zu poll_ms=%.1f\n",
                   cases[k].name, g_stats.calls, g_stats.last_len, g_stats.poll_s * 1000);
        /* For the record: the same raw publisher without a headers table. */
        raw_purge(admin, queue);
        double bare = raw_run(&ci, topic, queue, n, cases[k].size, false);
        printf("INFO case=%s raw_without_headers=%.0f (RabbitMQ's cost of any headers table)\n",
               cases[k].name, bare);
        fflush(stdout);
        /* Remove the bench's queue and exchange. */
        amqp_connection_state_t c = admin;
        amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
        amqp_get_rpc_reply(c);
        amqp_exchange_delete(c, 1, amqp_cstring_bytes(topic), 0);
        amqp_get_rpc_reply(c);
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(c);
    }
    for (int consume = 0; consume < 2; consume++)
        if (strstr(consume ? "partitioned_consume_64B" : "partitioned_publish_64B", filter))
            partitioned_case(url, &ci, consume, n, rounds);
    return 0;
}
