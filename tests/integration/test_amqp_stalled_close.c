/*
 * test_amqp_stalled_close.c — msgbus_close and msgbus_sub_close return
 * within close_timeout_ms (+1 s) on a stalled link, while the I/O thread
 * sits in a blocking rabbitmq-c RPC.
 *
 * A TCP proxy (tests/util/tu_proxy.c) stands between msgbus and the shared
 * RabbitMQ (MSGBUS_TEST_AMQP_URL). It cuts the connection, lets the
 * reconnect through (login, channels), and freezes the link — nothing
 * forwarded either way, sockets left open — the moment msgbus sends
 * exchange.declare (re-declaring its topology after the reconnect). The
 * I/O thread then waits inside that RPC for rpc_timeout_ms (30 s); with
 * heartbeat=0 nothing else would notice. Before the fix close took 18.8 s
 * (29 s with heartbeat=0) for close_timeout_ms=2000. Unconfirmed messages
 * must be reported MSGBUS_ERR_CLOSED.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_proxy.h"

/* ---- the test ---------------------------------------------------------------------- */

struct reports {
    _Atomic int calls, closed;
};

static void on_report(void *opaque, const msgbus_report_t *r)
{
    struct reports *c = opaque;
    atomic_fetch_add(&c->calls, 1);
    if (r->status == MSGBUS_ERR_CLOSED)
        atomic_fetch_add(&c->closed, 1);
}

static void on_log(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    (void)level;
    fprintf(stderr, "log: %.300s\n", line);
}

/* Opens a bus through the proxy, declares and subscribes, then stalls the
 * link inside the re-declare after a reconnect. */
static msgbus_t *stalled_bus(const char *opts, msgbus_sub_t **sub)
{
    msgbus_set_log(on_log, NULL, MSGBUS_LOG_WARN);
    static _Atomic int freeze_on_declare;
    atomic_store(&freeze_on_declare, 0);
    char url[1024], query[512], topic[128];
    snprintf(query, sizeof query, "close_timeout_ms=2000&%s", opts);
    tu_proxy_start_amqp(tu_proxy_on_exchange_declare, &freeze_on_declare, query, url, sizeof url);
    tu_unique(topic, sizeof topic, "stall");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", sub));
    atomic_store(&freeze_on_declare, 1);
    tu_proxy_cut_all();
    int64_t until = tu_now_ms() + 15000;
    while (tu_proxy_frozen() == 0 && tu_now_ms() < until)
        usleep(10000);
    ck_assert_msg(tu_proxy_frozen() > 0, "the reconnect never re-declared");
    usleep(300000); /* the I/O thread is inside the exchange.declare RPC */
    return bus;
}

static void publish_some(msgbus_t *bus, struct reports *rep, int n)
{
    for (int i = 0; i < n; i++) {
        msgbus_msg_t *m;
        tu_ck_ok(msgbus_msg_new(&m, "stalled", 7));
        tu_ck_ok(msgbus_publish(bus, "stall-out", m, on_report, rep));
        msgbus_msg_free(m);
    }
}

static void bus_close_is_bounded(const char *opts)
{
    msgbus_sub_t *sub;
    msgbus_t *bus = stalled_bus(opts, &sub);
    struct reports rep = {0};
    publish_some(bus, &rep, 3);
    int64_t t0 = tu_now_ms();
    msgbus_close(bus);
    int64_t took = tu_now_ms() - t0;
    printf("msgbus_close on a stalled link (%s, close_timeout_ms=2000): %lld ms; %d of 3 "
           "reported MSGBUS_ERR_CLOSED\n",
           opts, (long long)took, atomic_load(&rep.closed));
    tu_proxy_stop();
    ck_assert_int_lt(took, 3000);
    ck_assert_int_eq(atomic_load(&rep.calls), 3);
    ck_assert_int_eq(atomic_load(&rep.closed), 3);
}

START_TEST(close_is_bounded_with_heartbeats)
{
    bus_close_is_bounded("heartbeat=10");
}
END_TEST

START_TEST(close_is_bounded_without_heartbeats)
{
    bus_close_is_bounded("heartbeat=0");
}
END_TEST

START_TEST(sub_close_is_bounded)
{
    msgbus_sub_t *sub;
    msgbus_t *bus = stalled_bus("heartbeat=0", &sub);
    int64_t t0 = tu_now_ms();
    msgbus_sub_close(sub);
    int64_t took_sub = tu_now_ms() - t0;
    t0 = tu_now_ms();
    msgbus_close(bus);
    int64_t took_bus = tu_now_ms() - t0;
    printf("msgbus_sub_close on a stalled link (heartbeat=0, close_timeout_ms=2000): %lld ms; "
           "then msgbus_close: %lld ms\n",
           (long long)took_sub, (long long)took_bus);
    tu_proxy_stop();
    ck_assert_int_lt(took_sub, 3000);
    ck_assert_int_lt(took_bus, 3000);
}
END_TEST

int main(void)
{
    tu_broker_url("amqp");
    Suite *s = suite_create("amqp_stalled_close");
    TCase *tc = tcase_create("stalled");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, close_is_bounded_with_heartbeats);
    tcase_add_test(tc, close_is_bounded_without_heartbeats);
    tcase_add_test(tc, sub_close_is_bounded);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
