/*
 * conformance_stats.h — conformance test of msgbus_stats_json and the
 * state API: the same counters, exact against known traffic, and lag
 * going to 0 once the group caught up, on every backend. Part of
 * conformance.c (included once, after its helpers).
 */
#ifndef MSGBUS_CONFORMANCE_STATS_H
#define MSGBUS_CONFORMANCE_STATS_H

#include <jansson.h>

#include "conformance_util.h"

/* The one subscription's object of a snapshot. */
static json_t *cf_stats_sub(json_t *o)
{
    json_t *subs = json_object_get(o, "subscriptions");
    ck_assert_msg(json_array_size(subs) == 1, "stats: %zu subscriptions, want 1",
                  json_array_size(subs));
    return json_array_get(subs, 0);
}

START_TEST(stats_count_known_traffic_and_lag_drains_to_zero)
{
    enum { N = 40 };
    char topic[96], group[96];
    cf_name(topic, sizeof topic, "stats");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    char reason[256];
    ck_assert_int_eq(msgbus_state(bus, reason, sizeof reason), MSGBUS_STATE_UP);
    tu_ck_ok(msgbus_declare(bus, topic, group));
    json_decref(tu_stats(bus)); /* starts the latency interval */

    struct cf_reports rep;
    cf_reports_init(&rep, topic, N);
    for (int i = 0; i < N; i++) {
        char p[32];
        snprintf(p, sizeof p, "n=%d", i);
        free(cf_publish(bus, topic, NULL, p, strlen(p), i % 2 ? &rep : NULL));
    }
    tu_ck_ok(msgbus_flush(bus, 30000, NULL));
    json_t *o = tu_stats(bus);
    ck_assert_str_eq(json_string_value(json_object_get(o, "backend")), msgbus_backend(bus));
    ck_assert_str_eq(json_string_value(json_object_get(o, "state")), "UP");
    ck_assert_int_eq(tu_json_int(o, "published"), N);
    ck_assert_int_eq(tu_json_int(o, "confirmed"), N);
    ck_assert_int_eq(tu_json_int(o, "failed"), 0);
    ck_assert_int_eq(tu_json_int(o, "outstanding"), 0);
    ck_assert_int_eq(tu_json_int(json_object_get(o, "confirm_latency_us"), "count"), N);
    ck_assert(json_is_object(json_object_get(o, "detail")));
    json_decref(o);

    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group, "retry_initial_ms=10&retry_jitter=0", &sub));
    ck_assert_int_eq(msgbus_sub_state(sub, reason, sizeof reason), MSGBUS_STATE_UP);
    /* One nack (retried), then everything acked, the retried copy too. */
    int acked = 0, nacked = 0;
    int64_t deadline = tu_now_ms() + CF_FIRST_MS + 30000;
    while (acked < N && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(sub, acked ? CF_NEXT_MS : CF_FIRST_MS);
        if (!m)
            break;
        if (nacked == 0) {
            tu_ck_ok(msgbus_nack(m));
            nacked++;
        } else {
            tu_ck_ok(msgbus_ack(m));
            acked++;
        }
        msgbus_msg_free(m);
    }
    ck_assert_int_eq(acked, N);
    o = tu_stats(bus);
    json_t *s = cf_stats_sub(o);
    ck_assert_str_eq(json_string_value(json_object_get(s, "group")), group);
    ck_assert_str_eq(json_string_value(json_object_get(s, "state")), "UP");
    ck_assert_int_eq(tu_json_int(s, "received"), N + 1);
    ck_assert_int_eq(tu_json_int(s, "acked"), N);
    ck_assert_int_eq(tu_json_int(s, "nacked"), 1);
    ck_assert_int_eq(tu_json_int(s, "retried"), 1);
    ck_assert_int_eq(tu_json_int(s, "dead_lettered"), 0);
    ck_assert_int_eq(tu_json_int(s, "unsettled"), 0);
    ck_assert_int_eq(tu_json_int(s, "queued"), 0);
    json_decref(o);

    /* Lag reaches 0 once the acks reached the broker (Kafka commits and
     * RabbitMQ acks travel asynchronously: allow them some seconds). */
    json_int_t lag = -1;
    deadline = tu_now_ms() + 20000;
    while (tu_now_ms() < deadline) {
        o = tu_stats(bus);
        json_t *l = json_object_get(cf_stats_sub(o), "lag");
        lag = json_is_integer(l) ? json_integer_value(l) : -1;
        json_decref(o);
        if (lag == 0)
            break;
        usleep(200 * 1000);
    }
    printf("  stats: lag %lld after the group caught up\n", (long long)lag);
    ck_assert_msg(lag == 0, "lag %lld after every message was acked (-1: not reported)",
                  (long long)lag);
    msgbus_sub_close(sub);
    cf_ids_free(&rep.ids);
    msgbus_close(bus);
}
END_TEST

#endif
