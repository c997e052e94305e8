/*
 * kafka.c — the Kafka backend over librdkafka (configuration: kafka_conf.c),
 * the producer (idempotent, acks=all, one delivery report per message),
 * topic creation through the Admin API, and the ops table.
 *
 * The consumer half (subscriptions, acked-prefix commits, rebalances,
 * declare's group positions) lives in kafka_consumer.c.
 *
 * Threads: librdkafka does the network I/O on its own threads; delivery
 * reports are served by one poll thread of ours, which wakes once per
 * batch of reports (librdkafka enqueues a whole produce response's reports
 * as one event), never once per message.
 */
#include "backends/kafka.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
/* msgbus's own options (not librdkafka properties), for suggestions. */
static const char *const mb_kafka_options[] = {
    "partitions",     "replication_factor", "connect_timeout_ms", "subscribe_timeout_ms",
    "commit_interval_ms", "create_topics", "max_unacked", "min_insync_replicas", NULL};

msgbus_err_t mb_kafka_err(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return MSGBUS_OK;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return MSGBUS_ERR_TOO_LARGE;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return MSGBUS_ERR_QUEUE_FULL;
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return MSGBUS_ERR_TIMEOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
        return MSGBUS_ERR_CONNECT;
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
        return MSGBUS_ERR_AUTH;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
        return MSGBUS_ERR_NOT_FOUND;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__DESTROY:
        return MSGBUS_ERR_CLOSED;
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return MSGBUS_ERR_INVALID;
    default:
        return MSGBUS_ERR_BROKER;
    }
}

/* ---- producer ------------------------------------------------------------ */

/* Topic handles for publishing. Naming the topic in rd_kafka_producev
 * (RD_KAFKA_V_TOPIC) makes librdkafka take its client lock and search its
 * topic list by name on every message (~290 instructions per message in
 * bench_kafka produce_64); a handle kept here skips that. The first
 * MB_KAFKA_TOPICS topics published to get a handle, held until close;
 * further topics are named per message as before. */
struct mb_kafka_topic {
    rd_kafka_topic_t *rkt;
    rd_kafka_t *rk; /* the producer it belongs to */
    struct mb_kafka_topic *next; /* in topics_retired */
    size_t len;
    char name[]; /* len + 1 bytes */
};

/* Producer rk's handle for `topic` (len bytes), made on first use; NULL
 * when the cache is full, librdkafka refused, or rk is no longer the
 * current producer: the caller then names the topic per message, so
 * errors are the same as without the cache. */
static rd_kafka_topic_t *mb_kafka_topic(struct mb_backend *be, rd_kafka_t *rk, const char *topic,
                                        size_t len)
{
    size_t n = atomic_load_explicit(&be->ntopics, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        const struct mb_kafka_topic *t = be->topics[i];
        if (t->len == len && t->rk == rk && memcmp(t->name, topic, len) == 0)
            return t->rkt;
    }
    if (n == MB_KAFKA_TOPICS)
        return NULL;
    rd_kafka_topic_t *rkt = NULL;
    pthread_mutex_lock(&be->topics_mu);
    size_t now = atomic_load_explicit(&be->ntopics, memory_order_relaxed);
    for (size_t i = 0; i < now && !rkt; i++) /* added meanwhile (or a replacement reset it) */
        if (be->topics[i]->len == len && be->topics[i]->rk == rk &&
            memcmp(be->topics[i]->name, topic, len) == 0)
            rkt = be->topics[i]->rkt;
    /* (the swap to a new producer happens under topics_mu: an rk that is
     * not current gets no handle, so none outlives its cache slot) */
    if (!rkt && now < MB_KAFKA_TOPICS && rk == be->producer) {
        struct mb_kafka_topic *t = malloc(sizeof *t + len + 1);
        if (t && (t->rkt = rd_kafka_topic_new(rk, topic, NULL))) {
            t->rk = rk;
            t->next = NULL;
            t->len = len;
            memcpy(t->name, topic, len + 1);
            be->topics[now] = t;
            atomic_store_explicit(&be->ntopics, now + 1, memory_order_release);
            rkt = t->rkt;
        } else {
            free(t);
        }
    }
    pthread_mutex_unlock(&be->topics_mu);
    return rkt;
}

/* Before rd_kafka_destroy: nobody publishes any more. */
static void mb_kafka_topics_release(struct mb_backend *be)
{
    size_t n = atomic_load(&be->ntopics);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_topic_destroy(be->topics[i]->rkt);
        free(be->topics[i]);
    }
    atomic_store(&be->ntopics, 0);
    while (be->topics_retired) {
        struct mb_kafka_topic *t = be->topics_retired;
        be->topics_retired = t->next;
        rd_kafka_topic_destroy(t->rkt);
        free(t);
    }
}

/* ---- connection state (docs/kafka.md, "Stats and state") ----------------- */

static void mb_kafka_dr_flush(struct mb_backend *be);
static rd_kafka_t *mb_kafka_new_producer(struct mb_backend *be);

/* The cluster answered (a delivery succeeded, or a probe's metadata
 * request): UP again after RECONNECTING or DOWN. dr_mu held. */
static void mb_kafka_conn_ok(struct mb_backend *be, const char *how)
{
    int c = atomic_load_explicit(&be->conn, memory_order_relaxed);
    if (c == MB_KAFKA_CONN_UP || c == MB_KAFKA_CONN_FATAL)
        return;
    atomic_store_explicit(&be->conn, MB_KAFKA_CONN_UP, memory_order_relaxed);
    mb_bus_state(be->bus, MSGBUS_STATE_UP, "cluster reachable again (%s)", how);
}

void mb_kafka_conn_error(struct mb_backend *be, int err, const char *reason)
{
    /* While open waits for the cluster its own error says what went wrong;
     * the core reports UP ("connected") once open succeeds. */
    if (be->opening)
        return;
    be->conn_errors++;
    int c = atomic_load_explicit(&be->conn, memory_order_relaxed);
    if (c == MB_KAFKA_CONN_FATAL)
        return;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        atomic_store_explicit(&be->conn, MB_KAFKA_CONN_FATAL, memory_order_relaxed);
        if (atomic_load(&be->nreplaced) < MB_KAFKA_MAX_REPLACED) {
            mb_bus_state(be->bus, MSGBUS_STATE_RECONNECTING, "fatal producer error, replacing "
                         "the producer (its unconfirmed messages fail): %s", reason);
            atomic_store(&be->fatal_pending, true); /* the poll thread's job */
        } else {
            mb_bus_state(be->bus, MSGBUS_STATE_DOWN, "fatal producer error, every publish now "
                         "fails (the producer was replaced %d times already; reopen the bus): "
                         "%s", MB_KAFKA_MAX_REPLACED, reason);
        }
    } else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        atomic_store_explicit(&be->conn, MB_KAFKA_CONN_DOWN, memory_order_relaxed);
        mb_bus_state(be->bus, MSGBUS_STATE_DOWN, "all brokers down");
    } else if ((err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE ||
                err == RD_KAFKA_RESP_ERR__SSL || err == RD_KAFKA_RESP_ERR__AUTHENTICATION) &&
               c == MB_KAFKA_CONN_UP) {
        /* One broker connection lost, others may still serve: librdkafka
         * reconnects on its own. (Reported once per outage: the reason
         * text changes with every attempt.) */
        atomic_store_explicit(&be->conn, MB_KAFKA_CONN_RECONNECTING, memory_order_relaxed);
        mb_bus_state(be->bus, MSGBUS_STATE_RECONNECTING, "connection lost: %s", reason);
    }
}

/* While the state is not UP, the poll thread asks the cluster for its
 * brokers (a metadata request, MB_KAFKA_PROBE_WAIT_MS at most) every
 * MB_KAFKA_PROBE_EVERY_MS: an answer means reachable again, even when
 * nothing is published (a successful delivery says so too). Outside
 * dr_mu: publishers serve their reports meanwhile. */
#define MB_KAFKA_PROBE_EVERY_MS 500
#define MB_KAFKA_PROBE_WAIT_MS 250
static void mb_kafka_probe(struct mb_backend *be, int64_t *next)
{
    int c = atomic_load_explicit(&be->conn, memory_order_relaxed);
    if (c == MB_KAFKA_CONN_UP || c == MB_KAFKA_CONN_FATAL || mb_mono_ms() < *next)
        return;
    *next = mb_mono_ms() + MB_KAFKA_PROBE_EVERY_MS;
    pthread_mutex_lock(&be->dr_mu);
    unsigned long errors = be->conn_errors;
    pthread_mutex_unlock(&be->dr_mu);
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(be->producer, 0, NULL, &md, MB_KAFKA_PROBE_WAIT_MS) !=
        RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    int brokers = md->broker_cnt;
    rd_kafka_metadata_destroy(md);
    pthread_mutex_lock(&be->dr_mu);
    rd_kafka_poll(be->producer, 0); /* errors that came meanwhile first */
    mb_kafka_dr_flush(be);
    if (brokers > 0 && be->conn_errors == errors)
        mb_kafka_conn_ok(be, "metadata");
    pthread_mutex_unlock(&be->dr_mu);
}

/* ---- statistics ------------------------------------------------------------- */

/* librdkafka's statistics (only with the user's statistics.interval.ms),
 * on the thread serving the producer: keep a copy of the last one. */
static int mb_kafka_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    struct mb_backend *be = opaque;
    char *copy = malloc(len + 1);
    if (!copy)
        return 0;
    memcpy(copy, json, len);
    copy[len] = '\0';
    pthread_mutex_lock(&be->stats_mu);
    char *old = be->stats_json;
    be->stats_json = copy;
    pthread_mutex_unlock(&be->stats_mu);
    free(old);
    return 0; /* librdkafka frees its own */
}

/* ops->stats: a few figures of our own, and librdkafka's last statistics
 * as one object under "librdkafka" (absent without statistics.interval.ms,
 * or before the first). */
static void mb_kafka_stats(struct mb_backend *be, json_t *detail)
{
    json_object_set_new(detail, "outq_len", json_integer(rd_kafka_outq_len(be->producer)));
    json_object_set_new(detail, "topic_handles",
                        json_integer((json_int_t)atomic_load(&be->ntopics)));
    json_object_set_new(detail, "producers_replaced",
                        json_integer((json_int_t)atomic_load(&be->nreplaced)));
    char *copy = NULL;
    pthread_mutex_lock(&be->stats_mu);
    if (be->stats_json)
        copy = mb_strdup(be->stats_json);
    pthread_mutex_unlock(&be->stats_mu);
    if (!copy)
        return;
    json_error_t jerr;
    json_t *o = json_loads(copy, 0, &jerr);
    free(copy);
    if (o && json_is_object(o))
        json_object_set_new(detail, "librdkafka", o);
    else if (o)
        json_decref(o);
}

/* ---- delivery reports ------------------------------------------------------- */

/* Hands the gathered successful reports to the core. */
static void mb_kafka_dr_flush(struct mb_backend *be)
{
    if (be->dr_n && atomic_load_explicit(&be->conn, memory_order_relaxed) != MB_KAFKA_CONN_UP)
        mb_kafka_conn_ok(be, "delivery");
    mb_bus_confirm_batch(be->bus, be->dr_batch, be->dr_n);
    be->dr_n = 0;
}

static void mb_kafka_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    struct mb_backend *be = opaque;
    struct mb_confirm *token = rkm->_private;
    /* librdkafka is done with a payload it sent in place: let go of the
     * message (mb_kafka_publish; a tagged pointer when there is no token). */
    if ((uintptr_t)token & 1) {
        msgbus_msg_free((msgbus_msg_t *)((uintptr_t)token & ~(uintptr_t)1));
        token = NULL;
    } else {
        msgbus_msg_free(mb_confirm_unhold(token));
    }
    if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* Free: librdkafka timestamped the message when it was produced.
         * Successes only: the histogram's count is the confirmed count. */
        mb_bus_confirm_latency(be->bus, token, rd_kafka_message_latency(rkm));
        /* Confirms per message cost a lock and maybe an eventfd write
         * each; gather them and push once per rd_kafka_poll. */
        be->dr_batch[be->dr_n++] = token;
        if (be->dr_n == sizeof be->dr_batch / sizeof be->dr_batch[0])
            mb_kafka_dr_flush(be);
        return;
    }
    /* Keep reports in delivery order: earlier successes go first. */
    mb_kafka_dr_flush(be);
    char detail[600];
    const char *topic = rkm->rkt ? rd_kafka_topic_name(rkm->rkt)
                        : token     ? mb_confirm_topic(token)
                                    : "?";
    msgbus_err_t code = mb_kafka_err(rkm->err);
    if (rk != be->producer || rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
        /* The producer hit a fatal error (and is replaced): whatever it
         * had not confirmed fails, with a code that is not "closed". */
        char why[400] = "";
        rd_kafka_fatal_error(rk, why, sizeof why);
        mb_kafka_scrub_conf(rk, why, sizeof why);
        code = MSGBUS_ERR_BROKER;
        snprintf(detail, sizeof detail,
                 "kafka: not confirmed: the idempotent producer hit a fatal error (%s) and is "
                 "replaced by a new one; publish the message again (if it was written after "
                 "all, the inbox absorbs the copy)", why[0] ? why : rd_kafka_err2str(rkm->err));
    } else if (rkm->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
        rkm->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        snprintf(detail, sizeof detail,
                 "topic '%s' does not exist and the broker did not create it (automatic topic "
                 "creation is off?): create it with msgbus_declare (%s)",
                 topic, rd_kafka_err2str(rkm->err));
    else
        snprintf(detail, sizeof detail, "kafka: %s (%s)", rd_kafka_err2str(rkm->err),
                 rd_kafka_err2name(rkm->err));
    mb_bus_confirm(be->bus, token, code, detail);
}

/* Serves the delivery reports already queued, unless another thread is
 * serving them right now. */
static void mb_kafka_serve_now(struct mb_backend *be)
{
    if (pthread_mutex_trylock(&be->dr_mu) != 0)
        return;
    rd_kafka_poll(be->producer, 0);
    mb_kafka_dr_flush(be);
    atomic_fetch_add(&be->served, 1);
    pthread_mutex_unlock(&be->dr_mu);
}

/* Serves delivery reports while the application does not publish: then
 * rd_kafka_poll returns as soon as a batch of reports arrives, so confirms
 * reach the core without added latency. While publishes keep coming, the
 * publishing threads serve them (mb_kafka_publish, every
 * MB_KAFKA_SERVE_EVERY publishes) and this thread naps: when nobody served
 * during a nap (publishing stopped, or goes on too slowly to reach the
 * next serve), it serves them itself and naps 1 ms next; when a publisher
 * served, it doubles the nap, up to MB_KAFKA_NAP_MAX_MS. A fast publisher
 * thus costs ~125 wake-ups a second, not 1,000 (each was a context switch
 * on the publisher's cores). A report reaches the core at most about
 * MB_KAFKA_NAP_MAX_MS after the broker's answer while publishing goes on,
 * and so do the last reports of a burst, unless a msgbus_flush
 * (mb_kafka_flush wakes this thread) asks for them. */
/* The poll thread, after error_cb said the producer hit a fatal error:
 * a new producer takes over, and everything the old one still held is
 * reported failed (mb_kafka_dr_cb says why). librdkafka's advice for a
 * fatal error is exactly this: the instance is unusable, make a new one.
 * The old instance is kept (idle) until close, as a publisher may still
 * be inside a call on it; that one then gets __FATAL and tries again on
 * the new producer (mb_kafka_publish). */
static void mb_kafka_replace(struct mb_backend *be)
{
    if (!atomic_exchange(&be->fatal_pending, false))
        return;
    rd_kafka_t *old = be->producer;
    rd_kafka_t *rk = mb_kafka_new_producer(be);
    if (!rk) {
        mb_log(MSGBUS_LOG_ERROR, "kafka: cannot replace the producer after its fatal error: "
                                 "%s; trying again", msgbus_last_error());
        struct timespec ts = {0, 200 * 1000000};
        nanosleep(&ts, NULL);
        atomic_store(&be->fatal_pending, true);
        return;
    }
    pthread_mutex_lock(&be->topics_mu);
    size_t n = atomic_load(&be->ntopics);
    for (size_t i = 0; i < n; i++) {
        be->topics[i]->next = be->topics_retired;
        be->topics_retired = be->topics[i];
    }
    atomic_store(&be->ntopics, 0);
    be->producer = rk;
    pthread_mutex_unlock(&be->topics_mu);
    size_t k = atomic_load(&be->nreplaced);
    be->replaced[k] = old;
    atomic_store(&be->nreplaced, k + 1);

    /* Fail what the old one holds: purged messages are reported at once. */
    pthread_mutex_lock(&be->dr_mu);
    rd_kafka_purge(old, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    int64_t until = mb_mono_ms() + 2000;
    do {
        rd_kafka_poll(old, 10);
        mb_kafka_dr_flush(be);
    } while (rd_kafka_outq_len(old) > 0 && mb_mono_ms() < until);
    int left = rd_kafka_outq_len(old);
    char why[400] = "";
    rd_kafka_fatal_error(old, why, sizeof why);
    mb_kafka_scrub_conf(old, why, sizeof why);
    atomic_store_explicit(&be->conn, MB_KAFKA_CONN_RECONNECTING, memory_order_relaxed);
    pthread_mutex_unlock(&be->dr_mu);
    mb_log(MSGBUS_LOG_WARN, "kafka: replaced the producer after its fatal error (%s); its "
                            "unconfirmed messages were reported failed%s",
           why, left ? " (some reports still pending)" : "");
}

#define MB_KAFKA_NAP_MAX_MS 8
/* Publishing at fewer than this many messages per millisecond (50,000/s),
 * the thread does not nap: it waits in rd_kafka_poll, which returns as soon
 * as a report arrives, so confirms come without the nap's delay (up to
 * MB_KAFKA_NAP_MAX_MS; bench/bench_latency.c). Above it the reports
 * come in batches anyway and napping saves the publisher's cores. */
#define MB_KAFKA_NAP_FROM_PER_MS 50
static void *mb_kafka_poll_main(void *arg)
{
    mb_thread_name("msgbus-kpoll");
    struct mb_backend *be = arg;
    unsigned long seen = atomic_load(&be->published);
    int nap_ms = 1;
    int64_t next_probe = 0, last_ms = mb_mono_ms();
    while (!atomic_load(&be->stopping)) {
        mb_kafka_replace(be);
        mb_kafka_probe(be, &next_probe);
        unsigned long now = atomic_load(&be->published);
        int64_t now_ms = mb_mono_ms();
        bool busy = now - seen >= (unsigned long)(MB_KAFKA_NAP_FROM_PER_MS * (now_ms - last_ms + 1));
        last_ms = now_ms;
        pthread_mutex_lock(&be->nap_mu);
        bool woken = be->wake;
        be->wake = false;
        if (now != seen && !woken && busy) {
            seen = now;
            unsigned long served = atomic_load(&be->served);
            struct timespec dl;
            mb_deadline(&dl, nap_ms);
            while (!be->wake && pthread_cond_timedwait(&be->nap_cv, &be->nap_mu, &dl) == 0)
                ;
            pthread_mutex_unlock(&be->nap_mu);
            if (atomic_load(&be->served) == served) {
                mb_kafka_serve_now(be);
                nap_ms = 1;
            } else if (nap_ms < MB_KAFKA_NAP_MAX_MS) {
                nap_ms *= 2;
            }
            continue;
        }
        pthread_mutex_unlock(&be->nap_mu);
        nap_ms = 1;
        seen = now;
        pthread_mutex_lock(&be->dr_mu);
        /* Returns as soon as reports arrive: at a moderate rate each
         * batch reaches the core at once. */
        rd_kafka_poll(be->producer, 100);
        mb_kafka_dr_flush(be);
        pthread_mutex_unlock(&be->dr_mu);
    }
    return NULL;
}

/* A publishing thread serves the reports every this many publishes
 * (power of two): as often as a raw librdkafka loop typically polls. Every
 * 64, the publishing thread took librdkafka's report-queue lock 16 times
 * as often while its broker thread filled that queue. */
#define MB_KAFKA_SERVE_EVERY 1024

/* Payloads from this size on are sent in place (the message held until its
 * report) instead of copied by librdkafka: below it the copy goes into the
 * allocation librdkafka makes for the message anyway and costs less than
 * holding (docs/kafka.md, "Publishing"). */
#define MB_KAFKA_IN_PLACE 512

/* ops->flush: librdkafka sends on its own; what a flush changes is who
 * waits for the reports. The core then waits for the confirms itself. */
static msgbus_err_t mb_kafka_flush(struct mb_backend *be, int timeout_ms)
{
    (void)timeout_ms;
    mb_kafka_serve_now(be);
    pthread_mutex_lock(&be->nap_mu);
    be->wake = true;
    pthread_cond_signal(&be->nap_cv);
    pthread_mutex_unlock(&be->nap_mu);
    return MSGBUS_OK;
}

/* Whether a metadata request for `topic` on rk says it exists (up to 3
 * requests, 100 ms apart: each may reach another broker). The answer also
 * updates rk's view of the topic. */
static bool mb_kafka_topic_seen(struct mb_backend *be, rd_kafka_t *rk, const char *topic)
{
    (void)be;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt)
        return false;
    bool seen = false;
    for (int i = 0; i < 3 && !seen; i++) {
        if (i) {
            struct timespec ts = {0, 100 * 1000000};
            nanosleep(&ts, NULL);
        }
        const struct rd_kafka_metadata *md = NULL;
        if (rd_kafka_metadata(rk, 0, rkt, &md, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            seen = md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0;
            rd_kafka_metadata_destroy(md);
        }
    }
    rd_kafka_topic_destroy(rkt);
    return seen;
}

static msgbus_err_t mb_kafka_publish(struct mb_backend *be, const char *topic,
                                     const msgbus_msg_t *m, struct mb_confirm *token)
{
    /* The CloudEvents Kafka binding (kafka_codec.c): ce_* headers, or the
     * structured event as the value, as the bus's cloudevents= says. */
    struct mb_kafka_record r;
    if (mb_kafka_encode(be->bus, topic, m, &r) != MSGBUS_OK)
        return MSGBUS_ERR_NOMEM;
    /* What is sent, attributes and structured JSON included. */
    size_t size = r.size;
    if (be->max_message_bytes > 0 && size > (size_t)be->max_message_bytes) {
        mb_kafka_record_clear(&r);
        return mb_error(MSGBUS_ERR_TOO_LARGE,
                        "message of %zu bytes (value, key and headers as sent) exceeds the Kafka "
                        "producer's message.max.bytes (%ld)",
                        size, be->max_message_bytes);
    }
    rd_kafka_headers_t *hdrs = r.hdrs;
    rd_kafka_resp_err_t err;
    bool refreshed = false;
    /* The value without a copy where one can be saved: a payload of
     * MB_KAFKA_IN_PLACE bytes or more is sent in place, the message held
     * until its report (smaller ones librdkafka copies into the allocation
     * it makes anyway); the structured event's JSON is handed over. */
    int flags = RD_KAFKA_MSG_F_COPY;
    void *opq = token;
    msgbus_msg_t *held = NULL;
    if (r.json) {
        flags = RD_KAFKA_MSG_F_FREE;
    } else if (r.value == m->payload && r.len >= MB_KAFKA_IN_PLACE) {
        flags = 0;
        held = mb_msg_hold(m);
        if (token)
            mb_confirm_hold(token, held);
        else
            opq = (void *)((uintptr_t)held | 1);
    }
    for (int attempt = 0;; attempt++) {
        rd_kafka_t *rk = be->producer;
        rd_kafka_topic_t *rkt = mb_kafka_topic(be, rk, topic, strlen(topic));
        if (rkt)
            err = rd_kafka_producev(
                rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_MSGFLAGS(flags),
                RD_KAFKA_V_VALUE((void *)r.value, r.len),
                RD_KAFKA_V_KEY((void *)m->key, m->key_len), RD_KAFKA_V_HEADERS(hdrs),
                RD_KAFKA_V_TIMESTAMP(m->timestamp), RD_KAFKA_V_OPAQUE(opq), RD_KAFKA_V_END);
        else
            err = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(flags),
                RD_KAFKA_V_VALUE((void *)r.value, r.len),
                RD_KAFKA_V_KEY((void *)m->key, m->key_len), RD_KAFKA_V_HEADERS(hdrs),
                RD_KAFKA_V_TIMESTAMP(m->timestamp), RD_KAFKA_V_OPAQUE(opq), RD_KAFKA_V_END);
        /* "Unknown topic" from librdkafka's cache: on a cluster that can be
         * a broker that had not heard of a new topic yet. Ask again
         * (twice at most, on this one error path) before believing it. */
        if (err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC && !refreshed) {
            refreshed = true;
            if (mb_kafka_topic_seen(be, rk, topic))
                continue;
            break;
        }
        /* A producer in a fatal state refuses; once the poll thread has
         * replaced it (within milliseconds), the new one takes the message. */
        if (err != RD_KAFKA_RESP_ERR__FATAL || attempt == 50 ||
            atomic_load(&be->nreplaced) == MB_KAFKA_MAX_REPLACED)
            break;
        if (rk == be->producer) {
            mb_kafka_serve_now(be); /* serves the error_cb if nobody did */
            struct timespec ts = {0, 2 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) { /* librdkafka owns hdrs (and the JSON) now */
        if ((atomic_fetch_add(&be->published, 1) & (MB_KAFKA_SERVE_EVERY - 1)) == 0)
            mb_kafka_serve_now(be);
        return MSGBUS_OK;
    }
    mb_kafka_record_clear(&r);
    if (held) { /* refused: librdkafka keeps nothing */
        mb_confirm_unhold(token);
        msgbus_msg_free(held);
    }
    switch (err) {
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        /* Make room: the queue empties as reports are served. */
        mb_kafka_serve_now(be);
        return mb_error(MSGBUS_ERR_QUEUE_FULL, "librdkafka's local queue is full "
                        "(queue.buffering.max.messages/kbytes): poll, then retry");
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        return mb_error(MSGBUS_ERR_TOO_LARGE, "message of %zu bytes is too large for Kafka: %s",
                        size, rd_kafka_err2str(err));
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
        return mb_error(MSGBUS_ERR_NOT_FOUND,
                        "topic '%s' does not exist and the broker does not create topics "
                        "automatically: create it with msgbus_declare", topic);
    case RD_KAFKA_RESP_ERR__FATAL:
        return mb_error(MSGBUS_ERR_BROKER, "kafka: cannot publish to '%s': the producer hit a "
                        "fatal error and %s", topic,
                        atomic_load(&be->nreplaced) == MB_KAFKA_MAX_REPLACED
                            ? "was replaced too often already: reopen the bus"
                            : "is being replaced: publish again");
    default:
        return mb_error(mb_kafka_err(err), "kafka: cannot publish to '%s': %s", topic,
                        rd_kafka_err2str(err));
    }
}

/* ---- topics --------------------------------------------------------------- */

msgbus_err_t mb_kafka_topic_partitions(struct mb_backend *be, rd_kafka_t *rk, const char *topic,
                                       bool just_created, int *out)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt)
        return mb_error(MSGBUS_ERR_INVALID, "kafka: bad topic '%s': %s", topic,
                        rd_kafka_err2str(rd_kafka_last_error()));
    int64_t deadline = mb_mono_ms() + be->connect_timeout_ms;
    msgbus_err_t e = MSGBUS_OK;
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        int64_t left = deadline - mb_mono_ms();
        rd_kafka_resp_err_t err =
            rd_kafka_metadata(rk, 0, rkt, &md, (int)(left > 0 ? left : 1));
        rd_kafka_resp_err_t terr = err;
        int n = 0;
        bool leaders = true;
        if (!err) {
            terr = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
            if (!terr) {
                n = md->topics[0].partition_cnt;
                for (int i = 0; i < n; i++)
                    if (md->topics[0].partitions[i].leader < 0 || md->topics[0].partitions[i].err)
                        leaders = false;
            }
            rd_kafka_metadata_destroy(md);
        }
        if (!terr && n > 0 && leaders) {
            *out = n;
            break;
        }
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR && terr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
            !just_created) {
            e = mb_error(MSGBUS_ERR_NOT_FOUND,
                         "topic '%s' does not exist on %s: create it with msgbus_declare (or "
                         "let subscribe create it: create_topics=true)",
                         topic, mb_bus_url(be->bus));
            break;
        }
        if (mb_mono_ms() >= deadline) {
            e = mb_error(err ? mb_kafka_err(err) : MSGBUS_ERR_TIMEOUT,
                         "kafka: no metadata with partition leaders for topic '%s' within %ld ms: %s",
                         topic, be->connect_timeout_ms, rd_kafka_err2str(terr ? terr : err));
            if (e == MSGBUS_ERR_NOT_FOUND)
                e = MSGBUS_ERR_TIMEOUT;
            break;
        }
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    rd_kafka_topic_destroy(rkt);
    return e;
}

/* The replication factor and min.insync.replicas of a topic msgbus
 * creates. `auto` (the default) sizes them to the cluster: one copy per
 * broker up to 3, and with 3 copies a write needs 2 of them (with acks=all,
 * which msgbus's idempotent producer uses, a confirmed message then
 * survives the loss of any one broker, and a partition stays writable while
 * one replica is down). The broker count is the metadata's: brokers alive
 * now, so a topic created while a node of a 3-node cluster is down gets 2
 * copies (docs/kafka.md says so; name replication_factor=3 to be refused
 * instead). */
/* Whether the broker at `hostport` alone knows `topic` with a leader for
 * every partition. A handle of its own whose only known broker is that
 * one: its first metadata request can go nowhere else. */
static bool mb_kafka_broker_knows(struct mb_backend *be, const char *hostport, const char *topic,
                                  int timeout_ms)
{
    rd_kafka_conf_t *conf = mb_kafka_conf_new(be, RD_KAFKA_CONSUMER, NULL);
    if (!conf)
        return false;
    char errstr[256];
    if (rd_kafka_conf_set(conf, "bootstrap.servers", hostport, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return false;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return false;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    bool ok = false;
    const struct rd_kafka_metadata *md = NULL;
    if (rkt && rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        ok = md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0;
        for (int i = 0; ok && i < md->topics[0].partition_cnt; i++)
            ok = md->topics[0].partitions[i].leader >= 0 && !md->topics[0].partitions[i].err;
        rd_kafka_metadata_destroy(md);
    }
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return ok;
}

/* A topic just created: returns when every broker of the cluster knows it
 * (connect_timeout_ms at most; then it goes on, and the waits that follow
 * say what is missing). Brokers learn a new topic one after another (on
 * this project's 3-node cluster up to ~0.6 s apart); a client that asks a
 * late one meanwhile is told "unknown topic", and librdkafka 2.0.2 then
 * fails publishes to a topic it had already seen, or a consumer group's
 * leader assigns nobody any partition until its next metadata refresh
 * (minutes). Asking each broker itself is the only way to know. */
static void mb_kafka_wait_everywhere(struct mb_backend *be, const struct rd_kafka_metadata *md,
                                     const char *topic)
{
    if (md->broker_cnt < 2)
        return;
    int64_t deadline = mb_mono_ms() + be->connect_timeout_ms;
    for (int i = 0; i < md->broker_cnt; i++) {
        char hp[300];
        snprintf(hp, sizeof hp, "%s:%d", md->brokers[i].host, md->brokers[i].port);
        for (;;) {
            int64_t left = deadline - mb_mono_ms();
            if (left <= 0) {
                mb_log(MSGBUS_LOG_WARN, "kafka: topic '%s' created, but broker %d (%s) does "
                       "not know it after %ld ms", topic, (int)md->brokers[i].id, hp,
                       be->connect_timeout_ms);
                return;
            }
            if (mb_kafka_broker_knows(be, hp, topic, (int)(left < 2000 ? left : 2000)))
                break;
            struct timespec ts = {0, 50 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

/* Creates `topic` (already there is fine), sized to the cluster, and when
 * it made it, returns once every broker knows it (mb_kafka_wait_everywhere).
 * The producer does not ask about the topic here: librdkafka 2.0.2 gives a
 * topic it once saw no grace when a late broker says "unknown", and then
 * fails publishes to it (a topic it has never seen gets
 * topic.metadata.propagation.max.ms); callers that need the partitions ask
 * on a consumer handle of their own (mb_kafka_topic_partitions). */
msgbus_err_t mb_kafka_ensure_topic(struct mb_backend *be, const char *topic)
{
    char errstr[512];
    rd_kafka_t *rk = be->producer;
    /* The brokers: how many (the replication factor's `auto`), and where
     * (mb_kafka_wait_everywhere). */
    const struct rd_kafka_metadata *cluster = NULL;
    rd_kafka_resp_err_t merr = rd_kafka_metadata(rk, 0, NULL, &cluster,
                                                 (int)be->connect_timeout_ms);
    if (merr)
        return mb_error(mb_kafka_err(merr), "kafka: asking the cluster's brokers to create "
                        "topic '%s': %s", topic, rd_kafka_err2str(merr));
    long rf = 0, min_isr = 0;
    msgbus_err_t se = mb_kafka_topic_size(cluster->broker_cnt, be->replication_factor,
                                          be->min_insync_replicas, &rf, &min_isr);
    if (se) {
        rd_kafka_metadata_destroy(cluster);
        return se;
    }
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, (int)be->partitions, (int)rf, errstr,
                                                    sizeof errstr);
    if (!nt) {
        rd_kafka_metadata_destroy(cluster);
        return mb_error(MSGBUS_ERR_INVALID, "kafka: cannot create topic '%s': %s", topic, errstr);
    }
    if (min_isr > 0) {
        char v[24];
        snprintf(v, sizeof v, "%ld", min_isr);
        if (rd_kafka_NewTopic_set_config(nt, "min.insync.replicas", v)) {
            rd_kafka_NewTopic_destroy(nt);
            rd_kafka_metadata_destroy(cluster);
            return mb_error(MSGBUS_ERR_NOMEM, "kafka: cannot create topic '%s': out of memory",
                            topic);
        }
    }
    bool created = false;
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(ao, (int)be->connect_timeout_ms, errstr,
                                              sizeof errstr);
    /* Let the controller wait until the topic exists everywhere. */
    rd_kafka_AdminOptions_set_operation_timeout(ao, (int)be->connect_timeout_ms, errstr,
                                                sizeof errstr);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &nt, 1, ao, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, (int)be->connect_timeout_ms * 2 + 1000);
    msgbus_err_t e = MSGBUS_OK;
    if (!ev) {
        e = mb_error(MSGBUS_ERR_TIMEOUT, "kafka: creating topic '%s': no answer within %ld ms",
                     topic, be->connect_timeout_ms * 2);
    } else if (rd_kafka_event_error(ev)) {
        rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
        e = mb_error(mb_kafka_err(err), "kafka: creating topic '%s': %s", topic,
                     rd_kafka_event_error_string(ev));
    } else {
        size_t cnt = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
        rd_kafka_resp_err_t terr = cnt ? rd_kafka_topic_result_error(res[0])
                                       : RD_KAFKA_RESP_ERR_NO_ERROR;
        created = terr == RD_KAFKA_RESP_ERR_NO_ERROR;
        if (terr && terr != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            const char *s = rd_kafka_topic_result_error_string(res[0]);
            e = mb_error(mb_kafka_err(terr), "kafka: creating topic '%s' (%ld partitions, "
                         "replication factor %ld): %s", topic, be->partitions, rf,
                         s ? s : rd_kafka_err2str(terr));
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_NewTopic_destroy(nt);
    if (!e && created)
        mb_kafka_wait_everywhere(be, cluster, topic);
    rd_kafka_metadata_destroy(cluster);
    return e;
}

static msgbus_err_t mb_kafka_declare(struct mb_backend *be, const char *topic, const char *group)
{
    msgbus_err_t e = mb_kafka_ensure_topic(be, topic);
    if (e)
        return e;
    if (group)
        return mb_kafka_declare_group(be, topic, group);
    /* Declare returns once the topic is there: asked on a handle of its
     * own (see mb_kafka_ensure_topic: not the producer). */
    rd_kafka_t *rk = mb_kafka_consumer_new(be, "msgbus-declare", NULL, NULL, NULL, NULL);
    if (!rk)
        return MSGBUS_ERR_CONFIG;
    int n;
    e = mb_kafka_topic_partitions(be, rk, topic, true, &n);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    return e;
}

/* ---- lifecycle -------------------------------------------------------- */

static void mb_kafka_free(struct mb_backend *be)
{
    for (size_t i = 0; i < be->nprops; i++) {
        free(be->props[i].key);
        free(be->props[i].value);
    }
    free(be->props);
    free(be->bootstrap);
    pthread_mutex_destroy(&be->dr_mu);
    pthread_mutex_destroy(&be->nap_mu);
    pthread_cond_destroy(&be->nap_cv);
    pthread_mutex_destroy(&be->topics_mu);
    pthread_mutex_destroy(&be->stats_mu);
    free(be->stats_json);
    free(be);
}

/* The error open fails with: what the error_cb kept (open_code), said
 * in words that name the likely cause, or the connect timeout with
 * librdkafka's latest complaint. `url` is redacted. */
static msgbus_err_t mb_kafka_open_error(const struct mb_backend *be, const char *url,
                                        rd_kafka_resp_err_t err)
{
    const char *why = be->open_reason;
    const char *proto = mb_kafka_prop(be, "security.protocol");
    if (!proto)
        proto = "PLAINTEXT";
    if (be->open_code == MSGBUS_ERR_AUTH) {
        const char *mech = mb_kafka_prop(be, "sasl.mechanism");
        if (!mech)
            mech = mb_kafka_prop(be, "sasl.mechanisms");
        return mb_error(MSGBUS_ERR_AUTH, "kafka: the cluster at %s refused the SASL login "
                        "(sasl.mechanism=%s, user '%s'): check the user name and password: %s",
                        url, mech ? mech : "GSSAPI",
                        mb_kafka_prop(be, "sasl.username") ? mb_kafka_prop(be, "sasl.username")
                                                           : "",
                        why);
    }
    if (be->open_code != MSGBUS_OK && strstr(why, "SSL handshake failed") &&
        strstr(why, "certificate verify failed"))
        return mb_error(MSGBUS_ERR_CONNECT, "kafka: TLS certificate verification of the broker "
                        "at %s failed: its certificate is not signed by a CA in "
                        "ssl.ca.location (or the system's), or does not name the host "
                        "connected to: %s", url, why);
    if (be->open_code != MSGBUS_OK && strstr(why, "SSL handshake failed"))
        return mb_error(MSGBUS_ERR_CONNECT, "kafka: TLS handshake failed with the broker at %s "
                        "(security.protocol=%s): maybe that listener is not TLS (a PLAINTEXT "
                        "or SASL_PLAINTEXT one fails this way): %s", url, proto, why);
    if (be->open_code != MSGBUS_OK)
        return mb_error(MSGBUS_ERR_CONNECT, "kafka: the broker at %s hung up on the first "
                        "request (ApiVersion) from a security.protocol=%s client: the listener "
                        "may require TLS or SASL (security.protocol=SSL or SASL_SSL; "
                        "user:password@ in the URL means SASL_SSL): %s", url, proto, why);
    return mb_error(MSGBUS_ERR_CONNECT, "kafka: cannot reach the cluster at %s within %ld ms "
                    "(connect_timeout_ms): %s%s%s", url, be->connect_timeout_ms,
                    err ? rd_kafka_err2str(err) : "no brokers in metadata",
                    be->open_last[0] ? "; last error: " : "", be->open_last);
}

/* A producer for the bus (at open, and to replace one that hit a fatal
 * error); NULL with the error recorded. */
static rd_kafka_t *mb_kafka_new_producer(struct mb_backend *be)
{
    static const char *const producer_defaults[] = {"enable.idempotence", "true", "acks", "all",
                                                    NULL};
    rd_kafka_conf_t *conf = mb_kafka_conf_new(be, RD_KAFKA_PRODUCER, producer_defaults);
    if (!conf)
        return NULL;
    rd_kafka_conf_set_dr_msg_cb(conf, mb_kafka_dr_cb);
    rd_kafka_conf_set_error_cb(conf, mb_kafka_producer_error_cb);
    /* Statistics cost (librdkafka builds a JSON of every broker, topic and
     * partition each interval): only when the user asked for them. */
    const char *sint = mb_kafka_prop(be, "statistics.interval.ms");
    if (sint && strtol(sint, NULL, 10) > 0)
        rd_kafka_conf_set_stats_cb(conf, mb_kafka_stats_cb);
    rd_kafka_conf_set_opaque(conf, be);
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        mb_kafka_scrub_props(be, errstr, sizeof errstr);
        rd_kafka_conf_destroy(conf);
        mb_error(MSGBUS_ERR_CONFIG, "kafka: cannot create the producer: %s", errstr);
    }
    return rk;
}

static msgbus_err_t mb_kafka_open(msgbus_t *bus, struct mb_url *url, struct mb_backend **out)
{
    struct mb_backend *be = calloc(1, sizeof *be);
    if (!be)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&be->topics_mu, NULL);
    pthread_mutex_init(&be->stats_mu, NULL);
    atomic_init(&be->ntopics, 0);
    atomic_init(&be->conn, MB_KAFKA_CONN_UP);
    be->bus = bus;
    be->max_message_bytes = 1000000;
    pthread_mutex_init(&be->dr_mu, NULL);
    pthread_mutex_init(&be->nap_mu, NULL);
    mb_cond_init(&be->nap_cv);
    msgbus_err_t e = mb_kafka_bootstrap(be, url);
    /* The core's own option, read here too: it bounds each subscription's
     * close (kafka_consumer.c), same default and range as the core's. */
    if (!e)
        e = mb_url_opt_int(url, "close_timeout_ms", 5000, 0, 3600000, &be->close_timeout_ms);
    if (!e)
        e = mb_kafka_parse_options(be, url);
    if (!e)
        e = mb_kafka_credentials(be, url);
    if (!e)
        e = mb_url_check_unused(url, mb_kafka_options);
    if (e) {
        mb_kafka_free(be);
        return e;
    }

    be->producer = mb_kafka_new_producer(be);
    if (!be->producer) {
        mb_kafka_free(be);
        return MSGBUS_ERR_CONFIG;
    }

    /* Prove the cluster answers before saying the bus is open: a metadata
     * request for no topic in particular, bounded by connect_timeout_ms,
     * asked in short slices so that between them the error_cb can end the
     * wait as soon as librdkafka reports an error no retry cures. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
    int64_t deadline = mb_mono_ms() + be->connect_timeout_ms;
    be->opening = true;
    for (;;) {
        int64_t left = deadline - mb_mono_ms();
        if (left <= 0)
            break;
        err = rd_kafka_metadata(be->producer, 0, NULL, &md, (int)(left < 100 ? left : 100));
        if (!err && md->broker_cnt > 0)
            break;
        if (md)
            rd_kafka_metadata_destroy(md);
        md = NULL;
        rd_kafka_poll(be->producer, 0); /* serves the error_cb */
        if (be->open_code != MSGBUS_OK)
            break;
    }
    be->opening = false;
    if (!md) {
        e = mb_kafka_open_error(be, mb_bus_url(bus), err);
        rd_kafka_destroy(be->producer);
        mb_kafka_free(be);
        return e;
    }
    rd_kafka_metadata_destroy(md);

    if (pthread_create(&be->poll_thread, NULL, mb_kafka_poll_main, be) != 0) {
        rd_kafka_destroy(be->producer);
        mb_kafka_free(be);
        return mb_error(MSGBUS_ERR_INTERNAL, "kafka: cannot start the delivery thread");
    }
    *out = be;
    return MSGBUS_OK;
}

static void mb_kafka_close(struct mb_backend *be)
{
    atomic_store(&be->stopping, true);
    pthread_join(be->poll_thread, NULL);
    /* Held to the end: a late publisher's try-lock then leaves the
     * reports to us. */
    pthread_mutex_lock(&be->dr_mu);
    /* The core already waited for confirms. Whatever is left is failed
     * with a report each (librdkafka reports purged messages as
     * __PURGE_QUEUE / __PURGE_INFLIGHT, which map to MSGBUS_ERR_CLOSED). */
    if (rd_kafka_outq_len(be->producer) > 0) {
        rd_kafka_purge(be->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        /* Purged messages are reported at once; the wait is bounded (the
         * core already spent close_timeout_ms), rd_kafka_destroy reports
         * whatever is left. */
        rd_kafka_flush(be->producer, 500);
    }
    rd_kafka_poll(be->producer, 0);
    mb_kafka_dr_flush(be);
    mb_kafka_topics_release(be);
    for (size_t i = 0; i < atomic_load(&be->nreplaced); i++) {
        rd_kafka_poll(be->replaced[i], 0); /* (reported when it was replaced) */
        mb_kafka_dr_flush(be);
        rd_kafka_destroy(be->replaced[i]);
    }
    rd_kafka_destroy(be->producer);
    mb_kafka_dr_flush(be); /* destroy may serve the last reports */
    pthread_mutex_unlock(&be->dr_mu);
    mb_kafka_free(be);
}

/* ---- capabilities (docs/kafka.md, "Capabilities") ------------------------ */

/* Whether the current producer's `property` is `value`, as librdkafka
 * holds it after msgbus's defaults and the user's settings. */
static bool mb_kafka_producer_says(struct mb_backend *be, const char *property, const char *value)
{
    char v[64];
    size_t n = sizeof v;
    const rd_kafka_conf_t *conf = rd_kafka_conf(be->producer);
    return conf && rd_kafka_conf_get(conf, property, v, &n) == RD_KAFKA_CONF_OK &&
           strcmp(v, value) == 0;
}

/* ops->capabilities. Everything but no_duplicate_publish and durable holds
 * however the bus is configured; those two follow the producer's
 * settings, read back from librdkafka so that an alias or an environment
 * variable counts the same as the URL. */
static void mb_kafka_capabilities(struct mb_backend *be, struct mb_caps *out)
{
    out->bits = MSGBUS_CAP_KEY_ORDER | MSGBUS_CAP_REPLAY | MSGBUS_CAP_SHARED |
                MSGBUS_CAP_POSITIONS | MSGBUS_CAP_LIST | MSGBUS_CAP_LAG;
    if (mb_kafka_producer_says(be, "enable.idempotence", "true"))
        out->bits |= MSGBUS_CAP_NO_DUPLICATE_PUBLISH;
    else
        out->why_not[MB_CAP_INDEX(MSGBUS_CAP_NO_DUPLICATE_PUBLISH)] = "the bus is opened with enable.idempotence=false: a publish librdkafka "
                          "retries after a lost acknowledgement may be written twice (the "
                          "inbox absorbs the copy)";
    /* acks=0: the delivery report says "sent", not "written". */
    if (mb_kafka_producer_says(be, "acks", "0"))
        out->why_not[MB_CAP_INDEX(MSGBUS_CAP_DURABLE)] = "the bus is opened with acks=0: a confirm only says the message was "
                          "sent, not that a broker wrote it";
    else
        out->bits |= MSGBUS_CAP_DURABLE;
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_REDELIVERED)] = "Kafka has no redelivered flag: a message read again is the same offset "
                      "read again (after a restart or a rebalance), and msgbus_msg_attempt "
                      "counts the deliveries msgbus knows of";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_DELAYED)] = "Kafka has no delayed delivery: a record is readable as soon as it is "
                      "written";
    out->max_message = be->max_message_bytes > 0 ? (size_t)be->max_message_bytes : 0;
}

static const char *const mb_kafka_schemes[] = {"kafka", NULL};

MB_HIDDEN const struct mb_backend_ops mb_kafka_ops = {
    .version = MB_BACKEND_VERSION,
    .scheme = "kafka",
    .schemes = mb_kafka_schemes,
    .caps = MB_CAP_PASSTHROUGH_OPTIONS,
    .options = mb_kafka_options,
    .env_prefix = "KAFKA",
    .env_separator = '.',
    .open = mb_kafka_open,
    .close = mb_kafka_close,
    .publish = mb_kafka_publish,
    .flush = mb_kafka_flush,
    .declare = mb_kafka_declare,
    .subscribe = mb_kafka_subscribe,
    .unsubscribe = mb_kafka_unsubscribe,
    .settle = mb_kafka_settle,
    .release = mb_kafka_release,
    .stats = mb_kafka_stats,
    .sub_stats = mb_kafka_sub_stats,
    .capabilities = mb_kafka_capabilities,
    .pause = mb_kafka_sub_pause,
    .group_reset = mb_kafka_group_reset,
    .inspect = mb_kafka_inspect,
};
