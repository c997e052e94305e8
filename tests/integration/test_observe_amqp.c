/*
 * test_observe_amqp.c — what the AMQP backend tells an operator
 * (docs/stats.md, docs/amqp.md "Stats and state"), on the real RabbitMQ:
 *
 *  - every counter of msgbus_stats_json exact against known traffic:
 *    published / confirmed / failed by error code (an unroutable message
 *    the broker returns), the confirm latency count, per subscription
 *    received / acked / nacked / retried / dead_lettered / unsettled /
 *    queued; the connection detail (channels, confirm window, heartbeat);
 *  - lag: the group queue's ready count, > 0 before the consumer catches
 *    up and 0 after it has received and acked everything; the same for a
 *    broadcast subscription's server-named queue;
 *  - a group queue deleted under its consumer: the subscription says so
 *    (RECONNECTING, "cancelled"), declares it again and consumes (UP);
 *  - on a PRIVATE node (tests/integration/amqp_private_node.sh; the shared
 *    broker is never stopped): the bus goes RECONNECTING then DOWN when the
 *    node is stopped, UP when it is back, its subscription RECONNECTING →
 *    UP "resubscribed", the reconnect counted — in that order through the
 *    state callback; and a resource alarm: still UP, the reason and
 *    detail.blocked say publishing is blocked, then unblocked.
 * Prints each snapshot it checks.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_amqp.h"

/* ---- helpers ------------------------------------------------------------------ */

static void url_with(char *buf, size_t n, const char *base, const char *query)
{
    snprintf(buf, n, "%s%s%s", base, strchr(base, '?') ? "&" : "?", query);
}

static json_t *snapshot(msgbus_t *bus)
{
    char *text = NULL;
    tu_ck_ok(msgbus_stats_json(bus, &text));
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    ck_assert_msg(o != NULL, "stats are not JSON: %s (%s)", err.text, text);
    printf("stats: %s\n", text);
    msgbus_stats_free(text);
    return o;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_string(v), "stats '%s' is not a string", key);
    return json_string_value(v);
}

/* The subscription object of `topic`/`group` (NULL: broadcast). */
static json_t *sub_of(json_t *snap, const char *topic, const char *group)
{
    json_t *arr = json_object_get(snap, "subscriptions"), *s;
    size_t i;
    json_array_foreach(arr, i, s)
    {
        json_t *g = json_object_get(s, "group");
        if (strcmp(json_string_value(json_object_get(s, "topic")), topic) == 0 &&
            (group ? json_is_string(g) && strcmp(json_string_value(g), group) == 0
                   : json_is_null(g)))
            return s;
    }
    ck_abort_msg("no subscription %s/%s in the stats", topic, group ? group : "(broadcast)");
    return NULL;
}

/* State events as the callback saw them (served by msgbus_poll). */
#define MAX_EVENTS 64
struct events {
    int n;
    struct {
        msgbus_state_t state, previous;
        bool bus; /* the connection (not a subscription) */
        char group[64];
        char reason[256];
    } e[MAX_EVENTS];
};

static void on_state(void *opaque, const msgbus_state_event_t *ev)
{
    struct events *evs = opaque;
    printf("state event: %s %s: %s -> %s (%s)\n", ev->topic ? "sub" : "bus",
           ev->topic ? (ev->group ? ev->group : "(broadcast)") : "-",
           msgbus_state_name(ev->previous), msgbus_state_name(ev->state), ev->reason);
    if (evs->n >= MAX_EVENTS)
        return;
    evs->e[evs->n].state = ev->state;
    evs->e[evs->n].previous = ev->previous;
    evs->e[evs->n].bus = ev->topic == NULL;
    snprintf(evs->e[evs->n].group, sizeof evs->e[evs->n].group, "%s",
             ev->group ? ev->group : "");
    snprintf(evs->e[evs->n].reason, sizeof evs->e[evs->n].reason, "%s", ev->reason);
    evs->n++;
}

/* Index of the first event from `from` on that matches, or -1. */
static int find_event(const struct events *evs, int from, bool bus, const char *group,
                      msgbus_state_t state, const char *reason_part)
{
    for (int i = from; i < evs->n; i++)
        if (evs->e[i].bus == bus && evs->e[i].state == state &&
            (bus || strcmp(evs->e[i].group, group) == 0) &&
            (!reason_part || strstr(evs->e[i].reason, reason_part)))
            return i;
    return -1;
}

static void publish_i(msgbus_t *bus, const char *topic, int i, struct tu_reports *r)
{
    char p[32];
    snprintf(p, sizeof p, "%d", i);
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, p, strlen(p) + 1));
    tu_ck_ok(msgbus_publish(bus, topic, m, tu_on_report, r));
    msgbus_msg_free(m);
}

/* Serves msgbus_poll until `sub` (NULL: the bus) is in `want`, or ms pass. */
static bool wait_state(msgbus_t *bus, msgbus_sub_t *sub, msgbus_state_t want, int ms,
                       int64_t *took)
{
    int64_t t0 = tu_now_ms();
    for (;;) {
        msgbus_poll(bus, 50, NULL);
        msgbus_state_t s = sub ? msgbus_sub_state(sub, NULL, 0) : msgbus_state(bus, NULL, 0);
        if (s == want) {
            if (took)
                *took = tu_now_ms() - t0;
            return true;
        }
        if (tu_now_ms() - t0 > ms)
            return false;
    }
}

/* ---- counters, lag, detail ---------------------------------------------------------- */

START_TEST(counters_lag_and_detail_are_exact)
{
    enum { N = 20, PREFETCH = 5 };
    const char *base = tu_broker_url("amqp");
    char url[1200], topic[128], nowhere[128], q[300];
    /* Fast retries so the nacked messages come back quickly. */
    url_with(url, sizeof url, base,
             "prefetch=5&retry_initial_ms=10&retry_max_ms=50&retry_jitter=0&heartbeat=10");
    tu_unique(topic, sizeof topic, "observe");
    tu_unique(nowhere, sizeof nowhere, "observe-unbound");
    snprintf(q, sizeof q, "%s.g", topic);

    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    struct events evs = {0};
    tu_ck_ok(msgbus_set_state_cb(bus, on_state, &evs));
    char reason[256];
    ck_assert_int_eq(msgbus_state(bus, reason, sizeof reason), MSGBUS_STATE_UP);
    ck_assert_msg(strstr(reason, "connected to"), "reason: %s", reason);

    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    struct tu_reports r = {0};
    for (int i = 0; i < N; i++)
        publish_i(bus, topic, i, &r);
    /* No queue is bound to this topic: the broker returns the message and
     * msgbus reports it failed (unroutable=error, the default). */
    publish_i(bus, nowhere, 999, &r);
    size_t failed = 0;
    tu_ck_err(msgbus_flush(bus, 15000, &failed), MSGBUS_ERR_DELIVERY);
    ck_assert_uint_eq(failed, 1);
    ck_assert_int_eq(r.ok, N);
    ck_assert_int_eq(r.status, MSGBUS_ERR_BROKER);

    json_t *s = snapshot(bus);
    ck_assert_str_eq(jstr(s, "backend"), "amqp");
    ck_assert_str_eq(jstr(s, "state"), "UP");
    ck_assert_int_eq(tu_json_int(s, "published"), N + 1);
    ck_assert_int_eq(tu_json_int(s, "confirmed"), N);
    ck_assert_int_eq(tu_json_int(s, "failed"), 1);
    ck_assert_int_eq(tu_json_int(s, "failed_by_error.MSGBUS_ERR_BROKER"), 1);
    ck_assert_int_eq(tu_json_int(s, "outstanding"), 0);
    ck_assert_int_eq(tu_json_int(s, "reconnects"), 0);
    /* One latency per confirmed message (the returned one is not confirmed). */
    ck_assert_int_eq(tu_json_int(s, "confirm_latency_us.count"), N);
    ck_assert_int_ge(tu_json_int(s, "confirm_latency_us.p50"), 1);
    ck_assert_int_ge(tu_json_int(s, "confirm_latency_us.max"), tu_json_int(s, "confirm_latency_us.p99"));
    ck_assert_int_eq(tu_json_int(s, "detail.confirm_window.limit"), 1000);
    ck_assert_int_eq(tu_json_int(s, "detail.heartbeat_s"), 10);
    ck_assert_int_eq(tu_json_int(s, "detail.connections_lost"), 0);
    ck_assert_int_eq(tu_json_int(s, "detail.reconnect_attempts"), 0);
    ck_assert(json_is_true(json_object_get(json_object_get(s, "detail"), "connected")));
    ck_assert(json_is_false(json_object_get(json_object_get(s, "detail"), "blocked")));
    json_decref(s);
    /* The I/O thread publishes its figures once per round: the window
     * empties and the two channels (publish, control) show at once. */
    int64_t t0 = tu_now_ms();
    for (;;) {
        s = snapshot(bus);
        /* messages_sent too is published once per round: right after the
         * flush it can still read the previous round's count. */
        if (tu_json_int(s, "detail.confirm_window.in_flight") == 0 &&
            tu_json_int(s, "detail.channels_open") == 2 &&
            tu_json_int(s, "detail.messages_sent") >= N + 1)
            break;
        ck_assert_msg(tu_now_ms() - t0 < 3000,
                      "confirm window / channels / messages_sent (%lld, want >= %d) not as "
                      "expected",
                      (long long)tu_json_int(s, "detail.messages_sent"), N + 1);
        json_decref(s);
        usleep(100000);
    }
    ck_assert_int_eq(tu_json_int(s, "confirm_latency_us.count"), 0); /* since the previous snapshot */
    ck_assert(json_is_null(json_object_get(json_object_get(s, "confirm_latency_us"), "p50")));
    json_decref(s);

    /* The consumer takes PREFETCH messages; the rest wait in the queue. */
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    t0 = tu_now_ms();
    json_t *so;
    for (;;) {
        s = snapshot(bus);
        so = sub_of(s, topic, "g");
        json_t *lag = json_object_get(so, "lag");
        /* channels_open too is published once per I/O round: the lag can
         * settle a round before the consumer's channel shows. */
        if (lag && json_integer_value(lag) == N - PREFETCH && tu_json_int(so, "queued") == PREFETCH &&
            tu_json_int(so, "lag_detail.unacked") == PREFETCH &&
            tu_json_int(s, "detail.channels_open") == 3)
            break;
        ck_assert_msg(tu_now_ms() - t0 < 10000, "lag never settled at %d with 3 channels open (%lld)",
                      N - PREFETCH, (long long)tu_json_int(s, "detail.channels_open"));
        json_decref(s);
        usleep(100000);
    }
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(so, "lag_detail"),
                                                       "queue")),
                     q);
    ck_assert_int_eq(tu_json_int(so, "lag_detail.ready"), N - PREFETCH);
    ck_assert_int_eq(tu_json_int(so, "lag_detail.consumers"), 1);
    ck_assert_int_eq(tu_json_int(so, "received"), 0);
    ck_assert_str_eq(jstr(so, "state"), "UP");
    ck_assert_int_eq(tu_json_int(s, "detail.channels_open"), 3);
    json_decref(s);

    /* Three received, none settled yet. */
    msgbus_msg_t *held[3];
    for (int i = 0; i < 3; i++) {
        held[i] = tu_receive(sub, 10000);
        ck_assert_ptr_nonnull(held[i]);
    }
    s = snapshot(bus);
    so = sub_of(s, topic, "g");
    ck_assert_int_eq(tu_json_int(so, "received"), 3);
    ck_assert_int_eq(tu_json_int(so, "unsettled"), 3);
    ck_assert_int_eq(tu_json_int(so, "acked"), 0);
    json_decref(s);
    /* Of the first N: 2 nacked (retried, then acked on their second
     * attempt), 2 dead-lettered, the rest acked. */
    int acked = 0, nacked = 0, dead = 0, received = 3, retried_back = 0;
    for (int i = 0; i < 3; i++) {
        tu_ck_ok(msgbus_ack(held[i]));
        msgbus_msg_free(held[i]);
        acked++;
    }
    while (received < N + 2) {
        msgbus_msg_t *m = tu_receive(sub, 10000);
        ck_assert_msg(m != NULL, "only %d of %d deliveries arrived", received, N + 2);
        received++;
        msgbus_poll(bus, 0, NULL);
        if (msgbus_msg_attempt(m) > 1) {
            retried_back++;
            tu_ck_ok(msgbus_ack(m));
            acked++;
        } else if (nacked < 2) {
            tu_ck_ok(msgbus_nack(m));
            nacked++;
        } else if (dead < 2) {
            tu_ck_ok(msgbus_dead_letter(m, "poison, for the test"));
            dead++;
        } else {
            tu_ck_ok(msgbus_ack(m));
            acked++;
        }
        msgbus_msg_free(m);
    }
    ck_assert_int_eq(retried_back, 2);
    ck_assert_int_eq(acked, N + 2 - 2 - 2);
    /* Caught up: nothing ready, nothing held, both dead letters confirmed. */
    t0 = tu_now_ms();
    for (;;) {
        msgbus_poll(bus, 0, NULL);
        s = snapshot(bus);
        so = sub_of(s, topic, "g");
        json_t *lag = json_object_get(so, "lag");
        if (lag && json_integer_value(lag) == 0 && tu_json_int(so, "lag_detail.unacked") == 0 &&
            tu_json_int(so, "dead_lettered") == 2)
            break;
        ck_assert_msg(tu_now_ms() - t0 < 10000, "lag did not reach 0 after catching up");
        json_decref(s);
        usleep(100000);
    }
    ck_assert_int_eq(tu_json_int(so, "received"), N + 2);
    ck_assert_int_eq(tu_json_int(so, "acked"), acked);
    ck_assert_int_eq(tu_json_int(so, "nacked"), 2);
    ck_assert_int_eq(tu_json_int(so, "retried"), 2);
    ck_assert_int_eq(tu_json_int(so, "dead_lettered"), 2);
    ck_assert_int_eq(tu_json_int(so, "unsettled"), 0);
    ck_assert_int_eq(tu_json_int(so, "queued"), 0);
    ck_assert_int_eq(tu_json_int(so, "lag_detail.ready"), 0);
    /* Retry copies and dead letters are not the application's publishes. */
    ck_assert_int_eq(tu_json_int(s, "published"), N + 1);
    ck_assert_int_eq(tu_json_int(s, "confirmed"), N);
    json_decref(s);

    /* A broadcast subscriber: its server-named queue, the same way. */
    msgbus_sub_t *bc;
    tu_ck_ok(msgbus_subscribe(bus, topic, NULL, &bc));
    for (int i = 0; i < 3; i++)
        publish_i(bus, topic, 100 + i, &r);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    for (int i = 0; i < 3; i++) {
        msgbus_msg_t *m = tu_receive(bc, 10000);
        ck_assert_ptr_nonnull(m);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    t0 = tu_now_ms();
    for (;;) {
        s = snapshot(bus);
        so = sub_of(s, topic, NULL);
        json_t *lag = json_object_get(so, "lag");
        if (lag && json_integer_value(lag) == 0 && tu_json_int(so, "lag_detail.unacked") == 0 &&
            tu_json_int(s, "detail.channels_open") == 4)
            break;
        ck_assert_msg(tu_now_ms() - t0 < 10000,
                      "broadcast lag did not reach 0 with 4 channels open (%lld)",
                      (long long)tu_json_int(s, "detail.channels_open"));
        json_decref(s);
        usleep(100000);
    }
    const char *bq =
        json_string_value(json_object_get(json_object_get(so, "lag_detail"), "queue"));
    ck_assert_msg(bq && strncmp(bq, "amq.gen-", 8) == 0, "broadcast queue '%s'", bq);
    ck_assert_int_eq(tu_json_int(so, "received"), 3);
    ck_assert_int_eq(tu_json_int(so, "acked"), 3);
    ck_assert_int_eq(tu_json_int(s, "detail.channels_open"), 4);
    json_decref(s);

    /* The events, in order: both subscriptions came UP; the connection
     * itself did not change. */
    msgbus_poll(bus, 0, NULL);
    int a = find_event(&evs, 0, false, "g", MSGBUS_STATE_UP, "subscribed");
    int b = find_event(&evs, a + 1, false, "", MSGBUS_STATE_UP, "subscribed");
    ck_assert_msg(a >= 0 && b > a, "subscription events out of order (%d, %d)", a, b);
    ck_assert_int_eq(find_event(&evs, 0, true, NULL, MSGBUS_STATE_DOWN, NULL), -1);
    ck_assert_int_eq(find_event(&evs, 0, true, NULL, MSGBUS_STATE_RECONNECTING, NULL), -1);

    msgbus_sub_close(bc);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    ck_assert(tu_amqp_delete(base, q, topic));
    char dq[300], dlq[200];
    snprintf(dlq, sizeof dlq, "%s.dlq", topic);
    snprintf(dq, sizeof dq, "%s.dlq", dlq);
    ck_assert(tu_amqp_delete(base, dq, dlq));
    ck_assert(tu_amqp_delete(base, NULL, nowhere));
}
END_TEST

/* ---- queue deleted ---------------------------------------------------------------------- */

START_TEST(deleted_queue_is_declared_again_and_consumed)
{
    const char *base = tu_broker_url("amqp");
    char topic[128], q[300];
    tu_unique(topic, sizeof topic, "observe-del");
    snprintf(q, sizeof q, "%s.gone", topic);
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, base, NULL));
    struct events evs = {0};
    tu_ck_ok(msgbus_set_state_cb(bus, on_state, &evs));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "gone", &sub));
    ck_assert_int_eq(msgbus_sub_state(sub, NULL, 0), MSGBUS_STATE_UP);

    /* The broker cancels the consumer; the subscription says why, declares
     * the queue again and consumes from it (the same happens when the node
     * holding a queue dies and the queue comes back elsewhere). */
    int64_t t0 = tu_now_ms();
    ck_assert(tu_amqp_delete(base, q, NULL));
    int a = -1, b = -1, c = -1;
    while (tu_now_ms() - t0 < 10000) {
        msgbus_poll(bus, 50, NULL);
        a = find_event(&evs, 0, false, "gone", MSGBUS_STATE_UP, "subscribed");
        b = find_event(&evs, a + 1, false, "gone", MSGBUS_STATE_RECONNECTING, "cancelled");
        c = b < 0 ? -1 : find_event(&evs, b + 1, false, "gone", MSGBUS_STATE_UP, "resubscribed");
        if (c >= 0)
            break;
    }
    printf("queue deleted: consuming again after %lld ms\n", (long long)(tu_now_ms() - t0));
    ck_assert_msg(a >= 0 && b > a && c > b, "events: UP at %d, RECONNECTING at %d, UP at %d", a,
                  b, c);
    char reason[256];
    ck_assert_int_eq(msgbus_sub_state(sub, reason, sizeof reason), MSGBUS_STATE_UP);
    ck_assert_int_eq(find_event(&evs, 0, false, "gone", MSGBUS_STATE_DOWN, NULL), -1);
    ck_assert_int_eq(msgbus_state(bus, NULL, 0), MSGBUS_STATE_UP);
    /* ...and a message published now reaches it. */
    struct tu_reports r = {0};
    publish_i(bus, topic, 7, &r);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    ck_assert_int_eq(r.ok, 1);
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    /* Its lag is the re-declared queue's. */
    json_t *s = snapshot(bus);
    json_t *so = sub_of(s, topic, "gone");
    ck_assert_str_eq(jstr(so, "state"), "UP");
    json_decref(s);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    ck_assert(tu_amqp_delete(base, q, topic));
}
END_TEST

/* ---- a private node stopped and started ---------------------------------------------------- */

static int node(const char *args)
{
    return tu_node_run("%s", args);
}

struct node_job {
    char args[2000];
    int rc;
    _Atomic int done;
};

static void *node_thread(void *arg)
{
    struct node_job *j = arg;
    j->rc = node(j->args);
    atomic_store(&j->done, 1);
    return NULL;
}

START_TEST(resource_alarm_is_said_in_the_state_reason)
{
    char url[512], topic[128];
    snprintf(url, sizeof url, "amqp://guest:guest@127.0.0.1:%d/", tu_node.port);
    tu_unique(topic, sizeof topic, "observe-alarm");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    struct tu_reports r = {0};
    publish_i(bus, topic, 1, &r);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));

    /* A resource alarm: still UP, the reason and the detail say blocked. */
    char ctl[1600];
    snprintf(ctl, sizeof ctl, "ctl '%s' set_vm_memory_high_watermark 0.0000001", tu_node.dir);
    ck_assert_int_eq(node(ctl), 0);
    publish_i(bus, topic, 2, &r); /* a publisher is what the broker blocks */
    char reason[512] = "";
    int64_t t0 = tu_now_ms();
    while (!strstr(reason, "publishing blocked") && tu_now_ms() - t0 < 15000) {
        msgbus_poll(bus, 50, NULL);
        ck_assert_int_eq(msgbus_state(bus, reason, sizeof reason), MSGBUS_STATE_UP);
    }
    printf("alarm: %s after %lld ms\n", reason, (long long)(tu_now_ms() - t0));
    ck_assert_msg(strstr(reason, "publishing blocked by the broker"), "reason: %s", reason);
    json_t *s = snapshot(bus);
    ck_assert(json_is_true(json_object_get(json_object_get(s, "detail"), "blocked")));
    json_decref(s);
    snprintf(ctl, sizeof ctl, "ctl '%s' set_vm_memory_high_watermark 0.4", tu_node.dir);
    ck_assert_int_eq(node(ctl), 0);
    tu_ck_ok(msgbus_flush(bus, 30000, NULL));
    t0 = tu_now_ms();
    while (!strstr(reason, "unblocked") && tu_now_ms() - t0 < 15000) {
        msgbus_poll(bus, 50, NULL);
        msgbus_state(bus, reason, sizeof reason);
    }
    ck_assert_msg(strstr(reason, "publishing unblocked"), "reason: %s", reason);
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);

    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(stopped_broker_goes_down_and_comes_back_up)
{
    char url[512], topic[128];
    /* heartbeat=2: a broker that vanishes without a word is noticed in
     * about two heartbeats; reconnect attempts at most 1 s apart. */
    snprintf(url, sizeof url,
             "amqp://guest:guest@127.0.0.1:%d/?heartbeat=2&reconnect_backoff_max_ms=1000", tu_node.port);
    tu_unique(topic, sizeof topic, "observe-down");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    struct events evs = {0};
    tu_ck_ok(msgbus_set_state_cb(bus, on_state, &evs));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    struct tu_reports r = {0};
    publish_i(bus, topic, 1, &r);
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));

    /* Stop the node while this thread serves the state callback. */
    struct node_job stop = {.rc = -1};
    snprintf(stop.args, sizeof stop.args, "stop '%s'", tu_node.dir);
    pthread_t th;
    char reason[512] = "";
    int64_t t0 = tu_now_ms();
    ck_assert_int_eq(pthread_create(&th, NULL, node_thread, &stop), 0);
    int64_t took = 0;
    bool down = wait_state(bus, NULL, MSGBUS_STATE_DOWN, 30000, &took);
    msgbus_state(bus, reason, sizeof reason);
    printf("node stopping: bus %s after %lld ms (%s)\n", down ? "DOWN" : "not DOWN",
           (long long)took, reason);
    pthread_join(th, NULL);
    ck_assert_int_eq(stop.rc, 0);
    printf("node stopped in %lld ms\n", (long long)(tu_now_ms() - t0));
    ck_assert_msg(down, "the bus did not go DOWN within 30 s of stopping the broker");
    ck_assert_msg(strstr(reason, "unreachable"), "DOWN reason: %s", reason);
    /* The node closes its connections first thing in its ~4 s stop; even
     * a silent end would be noticed in two heartbeats (4 s). */
    ck_assert_msg(took <= 15000, "DOWN took %lld ms", (long long)took);
    ck_assert_int_eq(msgbus_sub_state(sub, NULL, 0), MSGBUS_STATE_RECONNECTING);
    json_t *s = snapshot(bus);
    ck_assert_str_eq(jstr(s, "state"), "DOWN");
    ck_assert(json_is_false(json_object_get(json_object_get(s, "detail"), "connected")));
    ck_assert_int_eq(tu_json_int(s, "detail.connections_lost"), 1);
    ck_assert_int_ge(tu_json_int(s, "detail.reconnect_attempts"), 1);
    ck_assert_int_ge(tu_json_int(s, "detail.disconnected_ms"), 0);
    ck_assert_int_eq(tu_json_int(s, "detail.channels_open"), 0);
    json_t *so = sub_of(s, topic, "g");
    ck_assert_ptr_null(json_object_get(so, "lag")); /* cannot ask a broker that is gone */
    json_decref(s);
    sleep(2); /* a few failed attempts more: still one DOWN event */

    char args[2000];
    snprintf(args, sizeof args, "start '%s' %d plain", tu_node.dir, tu_node.port);
    t0 = tu_now_ms();
    ck_assert_int_eq(node(args), 0);
    printf("node started again in %lld ms\n", (long long)(tu_now_ms() - t0));
    bool up = wait_state(bus, NULL, MSGBUS_STATE_UP, 20000, &took);
    msgbus_state(bus, reason, sizeof reason);
    printf("node back: bus %s %lld ms after the start returned (%s)\n", up ? "UP" : "not UP",
           (long long)took, reason);
    ck_assert_msg(up, "the bus did not come back UP within 20 s of the broker's restart");
    ck_assert_msg(strstr(reason, "reconnected"), "UP reason: %s", reason);
    ck_assert_msg(wait_state(bus, sub, MSGBUS_STATE_UP, 10000, NULL),
                  "the subscription did not come back UP");

    /* The events, in order: bus RECONNECTING → DOWN (once) → UP; the
     * subscription RECONNECTING → UP "resubscribed". */
    msgbus_poll(bus, 0, NULL);
    int a = find_event(&evs, 0, true, NULL, MSGBUS_STATE_RECONNECTING, "lost");
    int b = find_event(&evs, a + 1, true, NULL, MSGBUS_STATE_DOWN, "unreachable");
    int c = find_event(&evs, b + 1, true, NULL, MSGBUS_STATE_UP, "reconnected");
    ck_assert_msg(a >= 0 && b > a && c > b, "bus events: RECONNECTING %d, DOWN %d, UP %d", a,
                  b, c);
    ck_assert_int_eq(find_event(&evs, b + 1, true, NULL, MSGBUS_STATE_DOWN, NULL), -1);
    int sa = find_event(&evs, 0, false, "g", MSGBUS_STATE_RECONNECTING, "connection lost");
    int sb = find_event(&evs, sa + 1, false, "g", MSGBUS_STATE_UP, "resubscribed");
    ck_assert_msg(sa >= 0 && sb > sa, "sub events: RECONNECTING %d, UP %d", sa, sb);

    s = snapshot(bus);
    ck_assert_str_eq(jstr(s, "state"), "UP");
    ck_assert_int_eq(tu_json_int(s, "reconnects"), 1);
    ck_assert_int_eq(tu_json_int(s, "detail.connections_lost"), 1);
    ck_assert_int_ge(tu_json_int(s, "detail.reconnect_attempts"), 2);
    ck_assert(json_is_null(json_object_get(json_object_get(s, "detail"), "disconnected_ms")));
    json_decref(s);

    /* And it works: a message through the re-made queue. */
    publish_i(bus, topic, 2, &r);
    tu_ck_ok(msgbus_flush(bus, 20000, NULL));
    msgbus_msg_t *m = tu_receive(sub, 20000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tu_broker_url("amqp"); /* missing: fail now, not after starting a node */
    if (!tu_node_start("amqp-observe", 2, "plain"))
        return 1;

    Suite *s = suite_create("observe_amqp");
    TCase *tc = tcase_create("observe");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, counters_lag_and_detail_are_exact);
    tcase_add_test(tc, deleted_queue_is_declared_again_and_consumed);
    tcase_add_test(tc, resource_alarm_is_said_in_the_state_reason);
    tcase_add_test(tc, stopped_broker_goes_down_and_comes_back_up);
    suite_add_tcase(s, tc);
    int rc = tu_run_suite(s);
    tu_node_stop();
    return rc;
}
