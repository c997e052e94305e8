/*
 * test_amqp_restart.c — at-least-once across a RabbitMQ restart.
 *
 * 100,000 persistent messages are published to a topic with a durable group
 * queue while `scripts/brokers restart-rabbitmq` stops and restarts the node
 * mid-stream. The backend must reconnect, re-declare, and re-send everything
 * unconfirmed. Then a consumer drains the group queue and the test checks
 * that every message whose delivery callback said "confirmed" was consumed
 * (duplicates are allowed — at-least-once — and counted).
 * Prints: published / confirmed / failed / consumed / duplicates.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define N 100000

static _Atomic int status_of[N];   /* 0 pending, 1 confirmed, 2 failed */
static int seen[N];
static char repo_root[1024];
static int restart_rc = -1;
static _Atomic int restart_done;

static void on_report(void *opaque, const msgbus_report_t *r)
{
    size_t i = (size_t)(uintptr_t)opaque;
    status_of[i] = r->status == MSGBUS_OK ? 1 : 2;
    if (r->status != MSGBUS_OK) {
        static _Atomic int printed;
        if (printed++ < 5)
            fprintf(stderr, "message %zu failed: %s: %s\n", i, msgbus_err_name(r->status),
                    r->error);
    }
}

static void *restart_thread(void *arg)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s/scripts/brokers restart-rabbitmq", repo_root);
    int64_t t0 = tu_now_ms();
    restart_rc = system(cmd);
    fprintf(stderr, "restart-rabbitmq took %lld ms (exit %d)\n", (long long)(tu_now_ms() - t0),
            restart_rc);
    restart_done = 1;
    return NULL;
}

START_TEST(confirmed_messages_survive_a_broker_restart)
{
    const char *base = tu_broker_url("amqp");
    snprintf(repo_root, sizeof repo_root, "%s", __FILE__);
    char *p = strstr(repo_root, "/tests/integration/");
    ck_assert_msg(p != NULL, "cannot find the repository from %s", __FILE__);
    *p = '\0';

    char url[1024], topic[128];
    snprintf(url, sizeof url, "%s%sheartbeat=2&reconnect_backoff_max_ms=1000", base,
             strchr(base, '?') ? "&" : "?");
    tu_unique(topic, sizeof topic, "restart");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, "g"));

    pthread_t th;
    bool restarted = false;
    size_t published = 0, queue_full = 0, published_at_restart_done = 0;
    for (size_t i = 0; i < N; i++) {
        if (i == N / 5) {
            ck_assert_int_eq(pthread_create(&th, NULL, restart_thread, NULL), 0);
            restarted = true;
        }
        char payload[32];
        snprintf(payload, sizeof payload, "%zu", i);
        msgbus_msg_t *m;
        tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
        msgbus_err_t e;
        while ((e = msgbus_publish(bus, topic, m, on_report, (void *)(uintptr_t)i)) ==
               MSGBUS_ERR_QUEUE_FULL) {
            queue_full++;
            msgbus_poll(bus, 10, NULL);
        }
        tu_ck_ok(e);
        msgbus_msg_free(m);
        published++;
        if ((i & 255) == 0)
            msgbus_poll(bus, 0, NULL);
        /* Keep publishing while the node is down: spread the rest of the
         * stream over the restart rather than finishing before it starts. */
        if (restarted && !restart_done && i % 100 == 0)
            msgbus_poll(bus, 20, NULL); /* about 5,000 messages a second */
        /* A slow restart (a busy machine, a node with much to recover) must
         * not outlast the stream: the last tenth waits for it. */
        if (restarted && i == N - N / 10) {
            int64_t t0 = tu_now_ms();
            while (!restart_done && tu_now_ms() - t0 < 120000)
                msgbus_poll(bus, 20, NULL);
        }
        if (restart_done && !published_at_restart_done)
            published_at_restart_done = published;
    }
    size_t failed_flush = 0;
    msgbus_err_t fe = msgbus_flush(bus, 300000, &failed_flush);
    ck_assert_msg(fe == MSGBUS_OK || fe == MSGBUS_ERR_DELIVERY, "flush: %s %s",
                  msgbus_err_name(fe), msgbus_last_error());
    pthread_join(th, NULL);
    ck_assert_msg(restart_rc == 0, "scripts/brokers restart-rabbitmq failed (%d)", restart_rc);

    size_t confirmed = 0, failed = 0;
    for (size_t i = 0; i < N; i++) {
        confirmed += status_of[i] == 1;
        failed += status_of[i] == 2;
    }

    /* Drain the group queue. */
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    size_t consumed = 0, duplicates = 0, distinct_confirmed = 0, bad = 0;
    int64_t last = tu_now_ms();
    while (tu_now_ms() - last < 10000 && distinct_confirmed < confirmed) {
        msgbus_msg_t *in;
        if (msgbus_receive(sub, 200, &in) != MSGBUS_OK)
            continue;
        last = tu_now_ms();
        size_t len;
        const char *pl = msgbus_msg_payload(in, &len);
        char buf[32];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 31 ? len : 31), pl);
        char *end;
        unsigned long i = strtoul(buf, &end, 10);
        if (*end || i >= N) {
            bad++;
        } else {
            consumed++;
            if (seen[i]++)
                duplicates++;
            else if (status_of[i] == 1)
                distinct_confirmed++;
        }
        tu_ck_ok(msgbus_ack(in));
        msgbus_msg_free(in);
    }
    /* A little longer: duplicates still in flight are counted too. */
    msgbus_msg_t *in;
    while (msgbus_receive(sub, 1000, &in) == MSGBUS_OK) {
        size_t len;
        const char *pl = msgbus_msg_payload(in, &len);
        char buf[32];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 31 ? len : 31), pl);
        unsigned long i = strtoul(buf, NULL, 10);
        consumed++;
        if (i < N && seen[i]++)
            duplicates++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    size_t lost = 0;
    for (size_t i = 0; i < N; i++)
        if (status_of[i] == 1 && !seen[i])
            lost++;
    printf("amqp restart: node stopped+started while messages %d..%zu were published\n", N / 5,
           published_at_restart_done);
    printf("amqp restart: published=%zu confirmed=%zu failed=%zu consumed=%zu duplicates=%zu "
           "lost=%zu queue_full_retries=%zu\n",
           published, confirmed, failed, consumed, duplicates, lost, queue_full);
    fflush(stdout);
    msgbus_sub_close(sub);
    msgbus_close(bus);

    ck_assert_uint_eq(published, N);
    ck_assert_msg(published_at_restart_done > 0 && published_at_restart_done < N,
                  "the restart did not finish while publishing (%zu)", published_at_restart_done);
    ck_assert_uint_eq(confirmed + failed, N);
    ck_assert_uint_eq(bad, 0);
    ck_assert_msg(lost == 0, "%zu confirmed messages were never consumed", lost);
    /* Nothing here should fail: the outage is far shorter than any timeout. */
    ck_assert_uint_eq(failed, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_restart");
    TCase *tc = tcase_create("restart");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, confirmed_messages_survive_a_broker_restart);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
