/*
 * test_stats.c — the core's observability on mem://: msgbus_stats_json's
 * counters against known traffic, lag, latency percentiles, the periodic
 * stats callback, connection and subscription state with their callback,
 * and bad arguments.
 */
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static msgbus_t *open_mem(const char *extra)
{
    char url[160], name[64];
    tu_unique(name, sizeof name, "st");
    snprintf(url, sizeof url, "mem://%s%s", name, extra ? extra : "");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static const char *str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_string(v), "stats: %s is not a string", key);
    return json_string_value(v);
}

static void count_report(void *opaque, const msgbus_report_t *r)
{
    (void)r;
    (*(int *)opaque)++;
}

START_TEST(publish_counters_are_exact)
{
    msgbus_t *bus = open_mem("?queue_max=500");
    json_t *o = tu_stats(bus);
    ck_assert_str_eq(str(o, "backend"), "mem");
    ck_assert_str_eq(str(o, "state"), "UP");
    ck_assert_str_eq(str(o, "msgbus_version"), msgbus_version());
    ck_assert_int_eq(tu_json_int(o, "published"), 0);
    ck_assert_int_eq(tu_json_int(o, "queue_max"), 500);
    ck_assert_int_eq(tu_json_int(o, "reconnects"), 0);
    ck_assert(tu_json_int(o, "uptime_ms") >= 0);
    ck_assert(json_is_null(json_object_get(json_object_get(o, "confirm_latency_us"), "p50")));
    json_decref(o);

    int reports = 0;
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    for (int i = 0; i < 100; i++)
        tu_ck_ok(msgbus_publish(bus, "st.topic", m, count_report, &reports));
    for (int i = 0; i < 50; i++)
        tu_ck_ok(msgbus_publish(bus, "st.topic", m, NULL, NULL));
    /* Refused before it was accepted: not published. */
    tu_ck_err(msgbus_publish(bus, "bad topic", m, NULL, NULL), MSGBUS_ERR_INVALID);
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    ck_assert_int_eq(reports, 100);

    o = tu_stats(bus);
    ck_assert_int_eq(tu_json_int(o, "published"), 150);
    ck_assert_int_eq(tu_json_int(o, "confirmed"), 150);
    ck_assert_int_eq(tu_json_int(o, "failed"), 0);
    ck_assert_int_eq(tu_json_int(o, "outstanding"), 0);
    ck_assert_int_eq(json_object_size(json_object_get(o, "failed_by_error")), 0);
    ck_assert_int_eq(tu_json_int(o, "confirm_latency_us.count"), 150);
    ck_assert_int_eq(tu_json_int(o, "confirm_latency_us.p99"), 0); /* mem confirms in the call */
    ck_assert_int_eq(json_array_size(json_object_get(o, "subscriptions")), 0);
    json_decref(o);
    /* The latency figures cover the interval since the previous snapshot. */
    o = tu_stats(bus);
    ck_assert_int_eq(tu_json_int(o, "confirm_latency_us.count"), 0);
    ck_assert_int_eq(tu_json_int(o, "published"), 150);
    json_decref(o);
    msgbus_close(bus);
}
END_TEST

START_TEST(subscription_counters_and_lag)
{
    /* prefetch 5: of 20 declared messages 5 go to the member, 15 stay ready. */
    msgbus_t *bus = open_mem("?prefetch=5&retry_initial_ms=1&retry_jitter=0");
    tu_ck_ok(msgbus_declare(bus, "st.orders", "billing"));
    for (int i = 0; i < 20; i++)
        tu_publish_str(bus, "st.orders", NULL, "p");
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, "st.orders", "billing", &sub));
    json_t *o = tu_stats(bus);
    json_t *s = json_array_get(json_object_get(o, "subscriptions"), 0);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(str(s, "topic"), "st.orders");
    ck_assert_str_eq(str(s, "group"), "billing");
    ck_assert_str_eq(str(s, "state"), "UP");
    ck_assert_int_eq(tu_json_int(s, "lag"), 15);
    ck_assert_int_eq(tu_json_int(s, "lag_detail.ready"), 15);
    ck_assert_int_eq(tu_json_int(s, "lag_detail.unacked"), 5);
    ck_assert_int_eq(tu_json_int(s, "queued"), 5);
    ck_assert_int_eq(tu_json_int(s, "received"), 0);
    json_decref(o);

    msgbus_msg_t *a = tu_receive(sub, 1000), *n = tu_receive(sub, 1000),
                 *d = tu_receive(sub, 1000), *u = tu_receive(sub, 1000);
    ck_assert(a && n && d && u);
    tu_ck_ok(msgbus_ack(a));
    tu_ck_ok(msgbus_nack(n));
    tu_ck_ok(msgbus_dead_letter(d, "poison"));
    o = tu_stats(bus);
    s = json_array_get(json_object_get(o, "subscriptions"), 0);
    ck_assert_int_eq(tu_json_int(s, "received"), 4);
    ck_assert_int_eq(tu_json_int(s, "acked"), 1);
    ck_assert_int_eq(tu_json_int(s, "nacked"), 1);
    ck_assert_int_eq(tu_json_int(s, "retried"), 1);
    ck_assert_int_eq(tu_json_int(s, "unsettled"), 1); /* u */
    json_decref(o);
    msgbus_msg_free(a);
    msgbus_msg_free(n);
    msgbus_msg_free(d);

    /* The dead letter is confirmed by the retry worker: wait for it. */
    int64_t until = tu_now_ms() + 5000;
    json_int_t dl = 0;
    while (dl == 0 && tu_now_ms() < until) {
        o = tu_stats(bus);
        dl = tu_json_int(json_array_get(json_object_get(o, "subscriptions"), 0), "dead_lettered");
        json_decref(o);
        if (!dl)
            usleep(10000);
    }
    ck_assert_int_eq(dl, 1);

    /* Drain: 20 messages, + the retried one once more, minus the dead letter. */
    tu_ck_ok(msgbus_ack(u));
    msgbus_msg_free(u);
    int acked = 2; /* a, u */
    msgbus_msg_t *m;
    while ((m = tu_receive(sub, 300))) {
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
        acked++;
    }
    /* 21 deliveries (20 + the retried copy), one nacked, one dead-lettered */
    ck_assert_int_eq(acked, 19);
    o = tu_stats(bus);
    s = json_array_get(json_object_get(o, "subscriptions"), 0);
    ck_assert_int_eq(tu_json_int(s, "lag"), 0);
    ck_assert_int_eq(tu_json_int(s, "lag_detail.unacked"), 0);
    ck_assert_int_eq(tu_json_int(s, "received"), 21);
    ck_assert_int_eq(tu_json_int(s, "acked"), 19);
    ck_assert_int_eq(tu_json_int(s, "nacked"), 1);
    ck_assert_int_eq(tu_json_int(s, "unsettled"), 0);
    ck_assert_int_eq(tu_json_int(s, "queued"), 0);
    /* The dead letter is not an application publish. */
    ck_assert_int_eq(tu_json_int(o, "published"), 20);
    json_decref(o);
    msgbus_sub_close(sub);
    o = tu_stats(bus);
    ck_assert_int_eq(json_array_size(json_object_get(o, "subscriptions")), 0);
    json_decref(o);
    msgbus_close(bus);
}
END_TEST

START_TEST(settle_latency_percentiles)
{
    /* Every 8th received message is timed: of 16, the 1st and the 9th. Both
     * are held ~30 ms, the rest acked at once. */
    msgbus_t *bus = open_mem("?prefetch=100");
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, "st.lat", "g", &sub));
    for (int i = 0; i < 16; i++)
        tu_publish_str(bus, "st.lat", NULL, "p");
    for (int i = 0; i < 16; i++) {
        msgbus_msg_t *m = tu_receive(sub, 1000);
        ck_assert_ptr_nonnull(m);
        if (i == 0 || i == 8)
            usleep(30000);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    json_t *o = tu_stats(bus);
    json_t *s = json_array_get(json_object_get(o, "subscriptions"), 0);
    ck_assert_int_eq(tu_json_int(s, "settle_latency_us.count"), 2);
    json_int_t p50 = tu_json_int(s, "settle_latency_us.p50"), mx = tu_json_int(s, "settle_latency_us.max");
    ck_assert_msg(p50 >= 30000 && p50 <= 200000, "p50 %lld us", (long long)p50);
    ck_assert_msg(mx >= p50 && mx <= 200000, "max %lld us", (long long)mx);
    ck_assert_int_le(tu_json_int(s, "settle_latency_us.p99"), mx);
    json_decref(o);
    msgbus_close(bus);
}
END_TEST

struct stats_seen {
    int calls;
    pthread_t thread;
    bool other_thread;
    bool bad_json;
};

static void on_stats(void *opaque, const char *text)
{
    struct stats_seen *s = opaque;
    s->calls++;
    if (!pthread_equal(pthread_self(), s->thread))
        s->other_thread = true;
    json_t *o = json_loads(text, 0, NULL);
    if (!o || !json_is_integer(json_object_get(o, "published")))
        s->bad_json = true;
    json_decref(o);
}

START_TEST(stats_callback_runs_on_the_polling_thread)
{
    msgbus_t *bus = open_mem("?stats_interval_ms=50");
    struct stats_seen seen = {.thread = pthread_self()};
    tu_ck_ok(msgbus_set_stats_cb(bus, on_stats, &seen));
    /* Nothing is called outside msgbus_poll. */
    usleep(200000);
    ck_assert_int_eq(seen.calls, 0);
    /* Due: the descriptor says so. */
    struct pollfd p = {.fd = msgbus_fd(bus), .events = POLLIN};
    ck_assert_int_eq(poll(&p, 1, 1000), 1);
    int64_t until = tu_now_ms() + 400;
    while (tu_now_ms() < until)
        tu_ck_ok(msgbus_poll(bus, 100, NULL));
    ck_assert_msg(seen.calls >= 3 && seen.calls <= 12, "%d calls in 400 ms at 50 ms",
                  seen.calls);
    ck_assert(!seen.other_thread);
    ck_assert(!seen.bad_json);
    /* Removed: no more calls. */
    tu_ck_ok(msgbus_set_stats_cb(bus, NULL, NULL));
    int before = seen.calls;
    until = tu_now_ms() + 200;
    while (tu_now_ms() < until)
        tu_ck_ok(msgbus_poll(bus, 50, NULL));
    ck_assert_int_le(seen.calls, before + 1); /* one may have been due already */
    msgbus_close(bus);
}
END_TEST

START_TEST(no_stats_interval_no_thread_no_calls)
{
    msgbus_t *bus = open_mem(NULL);
    struct stats_seen seen = {.thread = pthread_self()};
    tu_ck_ok(msgbus_set_stats_cb(bus, on_stats, &seen));
    tu_ck_ok(msgbus_poll(bus, 200, NULL));
    ck_assert_int_eq(seen.calls, 0);
    msgbus_close(bus);
}
END_TEST

struct state_seen {
    int n;
    msgbus_state_t state[8], previous[8];
    char topic[8][64], group[8][64], reason[8][128];
    bool sub_set[8];
};

static void on_state(void *opaque, const msgbus_state_event_t *ev)
{
    struct state_seen *s = opaque;
    if (s->n >= 8)
        return;
    int i = s->n++;
    s->state[i] = ev->state;
    s->previous[i] = ev->previous;
    snprintf(s->topic[i], sizeof s->topic[i], "%s", ev->topic ? ev->topic : "(bus)");
    snprintf(s->group[i], sizeof s->group[i], "%s", ev->group ? ev->group : "(none)");
    snprintf(s->reason[i], sizeof s->reason[i], "%s", ev->reason);
    s->sub_set[i] = ev->sub != NULL;
    ck_assert(ev->time_ms > 0);
}

START_TEST(state_and_state_events)
{
    msgbus_t *bus = open_mem(NULL);
    char reason[64];
    ck_assert_int_eq(msgbus_state(bus, reason, sizeof reason), MSGBUS_STATE_UP);
    ck_assert_str_eq(reason, "connected");
    ck_assert_str_eq(msgbus_state_name(MSGBUS_STATE_RECONNECTING), "RECONNECTING");
    ck_assert_str_eq(msgbus_state_name((msgbus_state_t)42), "?");
    /* A small buffer truncates. */
    char tiny[4];
    msgbus_state(bus, tiny, sizeof tiny);
    ck_assert_str_eq(tiny, "con");

    struct state_seen seen = {0};
    tu_ck_ok(msgbus_set_state_cb(bus, on_state, &seen));
    msgbus_sub_t *sub, *bc;
    tu_ck_ok(msgbus_subscribe(bus, "st.state", "g1", &sub));
    tu_ck_ok(msgbus_subscribe(bus, "st.state", NULL, &bc));
    ck_assert_int_eq(msgbus_sub_state(sub, reason, sizeof reason), MSGBUS_STATE_UP);
    ck_assert_str_eq(reason, "subscribed");
    ck_assert_int_eq(seen.n, 0); /* queued, not yet served */
    struct pollfd p = {.fd = msgbus_fd(bus), .events = POLLIN};
    ck_assert_int_eq(poll(&p, 1, 0), 1);
    int served = 0;
    tu_ck_ok(msgbus_poll(bus, 0, &served));
    ck_assert_int_eq(served, 2);
    ck_assert_int_eq(seen.n, 2);
    ck_assert_int_eq(seen.state[0], MSGBUS_STATE_UP);
    ck_assert_int_eq(seen.previous[0], MSGBUS_STATE_CONNECTING);
    ck_assert_str_eq(seen.topic[0], "st.state");
    ck_assert_str_eq(seen.group[0], "g1");
    ck_assert(seen.sub_set[0]);
    ck_assert_str_eq(seen.group[1], "(none)");
    /* All served: the descriptor is quiet again. */
    ck_assert_int_eq(poll(&p, 1, 0), 0);

    /* An event for a subscription closed before it was served names its
     * topic but not the (now invalid) handle. */
    msgbus_sub_t *gone;
    tu_ck_ok(msgbus_subscribe(bus, "st.state", "g2", &gone));
    msgbus_sub_close(gone);
    tu_ck_ok(msgbus_poll(bus, 0, &served));
    ck_assert_int_eq(seen.n, 3);
    ck_assert_str_eq(seen.group[2], "g2");
    ck_assert(!seen.sub_set[2]);
    msgbus_sub_close(sub);
    msgbus_sub_close(bc);
    msgbus_close(bus);
}
END_TEST

START_TEST(bad_arguments)
{
    char *text = (char *)"untouched";
    tu_ck_err(msgbus_stats_json(NULL, &text), MSGBUS_ERR_INVALID);
    ck_assert_str_eq(text, "untouched");
    msgbus_t *bus = open_mem(NULL);
    tu_ck_err(msgbus_stats_json(bus, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_set_stats_cb(NULL, on_stats, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_set_state_cb(NULL, on_state, NULL), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_state(NULL, NULL, 0), MSGBUS_STATE_DOWN);
    ck_assert_int_eq(msgbus_sub_state(NULL, NULL, 0), MSGBUS_STATE_DOWN);
    msgbus_stats_free(NULL);
    msgbus_close(bus);

    msgbus_t *b2 = NULL;
    tu_ck_err(msgbus_open(&b2, "mem://x?stats_interval_ms=-1", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "stats_interval_ms"));
    tu_ck_err(msgbus_open(&b2, "mem://x?stats_interval_ms=soon", NULL), MSGBUS_ERR_CONFIG);
    tu_ck_err(msgbus_open(&b2, "mem://x?stats_intervall_ms=5", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "did you mean 'stats_interval_ms'"));
    ck_assert_ptr_null(b2);
}
END_TEST

/* Four threads publish and confirm on one bus while another takes
 * snapshots: the totals come out exact. */
struct pub_arg {
    msgbus_t *bus;
    int n;
};

static void *publisher(void *arg)
{
    struct pub_arg *a = arg;
    msgbus_msg_t *m;
    msgbus_msg_new(&m, "y", 1);
    for (int i = 0; i < a->n; i++)
        while (msgbus_publish(a->bus, "st.many", m, NULL, NULL) == MSGBUS_ERR_QUEUE_FULL)
            msgbus_poll(a->bus, 1, NULL);
    msgbus_msg_free(m);
    return NULL;
}

START_TEST(concurrent_counts_are_exact)
{
    msgbus_t *bus = open_mem(NULL);
    pthread_t t[4];
    struct pub_arg a = {bus, 5000};
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, publisher, &a);
    for (int i = 0; i < 20; i++) {
        json_t *o = tu_stats(bus);
        ck_assert_int_le(tu_json_int(o, "published"), 20000);
        json_decref(o);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    json_t *o = tu_stats(bus);
    ck_assert_int_eq(tu_json_int(o, "published"), 20000);
    ck_assert_int_eq(tu_json_int(o, "confirmed"), 20000);
    json_decref(o);
    msgbus_close(bus);
}
END_TEST

/* A snapshot that falls due while the bus closes is taken, at the latest,
 * by close's flush: never after the backend closed (it would read the
 * closed backend: ASan and valgrind catch that on mem). The 1 ms interval
 * makes one fall due inside close again and again. */
static void count_stats(void *opaque, const char *json)
{
    (void)json;
    (*(int *)opaque)++;
}

START_TEST(close_with_a_snapshot_due_does_not_ask_the_closed_backend)
{
    for (int i = 0; i < 200; i++) {
        msgbus_t *bus = open_mem("?stats_interval_ms=1");
        int calls = 0;
        tu_ck_ok(msgbus_set_stats_cb(bus, count_stats, &calls));
        usleep(1500);
        msgbus_close(bus);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, publish_counters_are_exact);
    tcase_add_test(tc, subscription_counters_and_lag);
    tcase_add_test(tc, settle_latency_percentiles);
    tcase_add_test(tc, stats_callback_runs_on_the_polling_thread);
    tcase_add_test(tc, no_stats_interval_no_thread_no_calls);
    tcase_add_test(tc, state_and_state_events);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, concurrent_counts_are_exact);
    tcase_add_test(tc, close_with_a_snapshot_due_does_not_ask_the_closed_backend);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run_suite(suite());
}
