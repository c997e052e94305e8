/*
 * conformance_order.h — per-key order across several members of a group,
 * with a member killed mid-stream (docs/semantics.md "Order"). Included by
 * conformance.c only.
 *
 * The buses are opened the way a service that needs key_order would: on
 * RabbitMQ with a partitioned group (partitions=4: without it RabbitMQ does
 * not claim key_order, docs/amqp.md "Partitioned groups"), on Kafka with 4
 * partitions and a short session timeout (so the group notices the killed
 * member within seconds), on mem as it is.
 */
#ifndef MSGBUS_CONFORMANCE_ORDER_H
#define MSGBUS_CONFORMANCE_ORDER_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conformance_util.h"

/* cf_url plus what a key-ordered group needs on this backend. */
static void cf_order_url(char *buf, size_t n)
{
    if (strstr(cf_url, "partitions=")) /* the whole suite run partitioned */
        snprintf(buf, n, "%s", cf_url);
    else if (cf_is("amqp"))
        cf_url_with(buf, n, cf_url, "partitions=4&rebalance_ms=200");
    else if (cf_is("kafka"))
        cf_url_with(buf, n, cf_url,
                    "partitions=4&session.timeout.ms=6000&heartbeat.interval.ms=500");
    else
        snprintf(buf, n, "%s", cf_url);
}

enum { CFO_KEYS = 12, CFO_PER_KEY = 100, CFO_TOTAL = CFO_KEYS * CFO_PER_KEY };

struct cfo_state {
    bool done[CFO_TOTAL];
    int next[CFO_KEYS];
    int processed, again, by[3];
};

/* Member `who` starts processing n ("n=<n>", key k<n % KEYS>): the first
 * time each message is processed must be in publish order per key; a
 * message processed again (a redelivery) is counted, not checked. */
static void cfo_process(struct cfo_state *st, int who, int n)
{
    ck_assert_msg(n >= 0 && n < CFO_TOTAL, "a message of another test (n=%d)", n);
    if (st->done[n]) {
        st->again++;
        return;
    }
    int key = n % CFO_KEYS;
    ck_assert_msg(n / CFO_KEYS == st->next[key],
                  "key k%d: n=%d processed by member %c when n=%d was next", key, n, 'A' + who,
                  st->next[key] * CFO_KEYS + key);
    st->done[n] = true;
    st->next[key]++;
    st->processed++;
    st->by[who]++;
}

static void cfo_publish(msgbus_t *bus, const char *topic, int from, int to)
{
    for (int i = from; i < to; i++) {
        char p[32], k[16];
        snprintf(p, sizeof p, "n=%d", i);
        snprintf(k, sizeof k, "k%d", i % CFO_KEYS);
        cf_publish_str(bus, topic, k, p);
    }
    cf_flush_ok(bus);
}

/* Member A in a child process (a bus of its own): signals "ready" with one
 * byte, then for each message writes its number to `out` before acking it
 * (so what it processed is known even if it dies before the ack), slowly:
 * 3 ms per message. Killed by the parent. */
static void cfo_child(const char *url, const char *topic, const char *group, int out)
{
    msgbus_t *bus = NULL;
    msgbus_sub_t *sub = NULL;
    if (msgbus_open(&bus, url, NULL) != MSGBUS_OK ||
        msgbus_subscribe(bus, topic, group, &sub) != MSGBUS_OK) {
        fprintf(stderr, "member A: %s\n", msgbus_last_error());
        _exit(3);
    }
    char ready = 'r';
    if (write(out, &ready, 1) != 1)
        _exit(4);
    for (;;) {
        msgbus_msg_t *m = NULL;
        if (msgbus_receive(sub, 100, &m) != MSGBUS_OK || !m)
            continue;
        int32_t n = cf_payload_number(m);
        if (write(out, &n, sizeof n) != (ssize_t)sizeof n)
            _exit(5);
        usleep(3000);
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
}

/* KEY_ORDER with three members, one killed: A (a child process on kafka
 * and amqp, SIGKILLed mid-stream; on mem, whose broker lives in this
 * process, a bus closed mid-stream with a message unsettled), B and C on
 * buses of their own here. 12 keys × 100 messages, the second half
 * published after A is gone. Every message must be processed, and per key
 * the first processing of each message comes in publish order, whichever
 * member does it. Backends that do not claim key_order are not checked. */
START_TEST(key_order_holds_with_three_members_and_one_killed)
{
    char url[1200], topic[128], group[128];
    cf_order_url(url, sizeof url);
    msgbus_t *pub = NULL;
    tu_ck_ok(msgbus_open(&pub, url, NULL));
    bool claimed = msgbus_caps(pub) & MSGBUS_CAP_KEY_ORDER;
    /* Closed before the fork below: the child must not inherit a bus's
     * threads' locks. */
    msgbus_close(pub);
    pub = NULL;
    if (!claimed) {
        printf("  key_order_killed: not claimed by %s, nothing promised\n", cf_backend);
        return;
    }
    cf_name(topic, sizeof topic, "korder");
    cf_name(group, sizeof group, "g");

    static struct cfo_state st;
    memset(&st, 0, sizeof st);
    bool in_process = cf_is("mem");
    pid_t child = -1;
    int fds[2] = {-1, -1};
    msgbus_t *a_bus = NULL;
    msgbus_sub_t *a = NULL;
    if (in_process) {
        tu_ck_ok(msgbus_open(&a_bus, url, NULL));
        tu_ck_ok(msgbus_subscribe(a_bus, topic, group, &a));
    } else {
        ck_assert_int_eq(pipe(fds), 0);
        fflush(NULL);
        child = fork();
        ck_assert_int_ge(child, 0);
        if (child == 0) {
            close(fds[0]);
            cfo_child(url, topic, group, fds[1]);
            _exit(0);
        }
        close(fds[1]);
        char ready = 0;
        ck_assert_msg(read(fds[0], &ready, 1) == 1 && ready == 'r',
                      "member A (pid %d) did not start", (int)child);
        fcntl(fds[0], F_SETFL, O_NONBLOCK);
    }
    tu_ck_ok(msgbus_open(&pub, url, NULL));
    tu_ck_ok(msgbus_declare(pub, topic, group));
    msgbus_t *b_bus = NULL, *c_bus = NULL;
    msgbus_sub_t *b = NULL, *c = NULL;
    tu_ck_ok(msgbus_open(&b_bus, url, NULL));
    tu_ck_ok(msgbus_open(&c_bus, url, NULL));
    tu_ck_ok(msgbus_subscribe(b_bus, topic, group, &b));
    tu_ck_ok(msgbus_subscribe(c_bus, topic, group, &c));

    cfo_publish(pub, topic, 0, CFO_TOTAL / 2);
    bool a_alive = true;
    int a_at_kill = 0;
    msgbus_msg_t *a_held = NULL;
    int64_t deadline = tu_now_ms() + 150000;
    while (st.processed < CFO_TOTAL && tu_now_ms() < deadline) {
        /* A's records first: what it started before B or C could get the
         * same keys. */
        if (!in_process && fds[0] >= 0) {
            int32_t n;
            ssize_t r;
            while ((r = read(fds[0], &n, sizeof n)) == (ssize_t)sizeof n)
                cfo_process(&st, 0, n);
            if (r == 0) {
                close(fds[0]);
                fds[0] = -1;
            }
        } else if (in_process && a_alive) {
            /* A processes one message at a time and keeps the last one
             * unsettled until the next arrives. */
            msgbus_msg_t *m = tu_receive(a, 2);
            if (m) {
                cfo_process(&st, 0, cf_payload_number(m));
                if (a_held) {
                    msgbus_ack(a_held);
                    msgbus_msg_free(a_held);
                }
                a_held = m;
            }
        }
        for (int who = 1; who <= 2; who++) {
            msgbus_msg_t *m = tu_receive(who == 1 ? b : c, 2);
            if (!m)
                continue;
            cfo_process(&st, who, cf_payload_number(m));
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
        if (a_alive && st.by[0] >= 60) {
            a_at_kill = st.processed;
            if (in_process) {
                msgbus_msg_free(a_held); /* unsettled: delivered again */
                a_held = NULL;
                msgbus_sub_close(a);
                msgbus_close(a_bus);
            } else {
                kill(child, SIGKILL);
                waitpid(child, NULL, 0);
            }
            a_alive = false;
            printf("  key_order_killed[%s]: A %s after %d processed (A %d, B %d, C %d)\n",
                   cf_backend, in_process ? "closed" : "killed", a_at_kill, st.by[0], st.by[1],
                   st.by[2]);
            cfo_publish(pub, topic, CFO_TOTAL / 2, CFO_TOTAL);
        }
    }
    if (!in_process && fds[0] >= 0) {
        int32_t n;
        while (read(fds[0], &n, sizeof n) == (ssize_t)sizeof n)
            cfo_process(&st, 0, n);
        close(fds[0]);
    }
    if (a_alive) {
        if (in_process) {
            msgbus_msg_free(a_held);
            msgbus_sub_close(a);
            msgbus_close(a_bus);
        } else {
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
        }
    }
    printf("  key_order_killed[%s]: %d of %d processed in key order (A %d, B %d, C %d), %d "
           "processed again\n",
           cf_backend, st.processed, CFO_TOTAL, st.by[0], st.by[1], st.by[2], st.again);
    ck_assert_msg(!a_alive, "A never processed 60 messages: the test did not run as meant");
    ck_assert_int_eq(st.processed, CFO_TOTAL);
    ck_assert_msg(st.by[1] + st.by[2] > 0, "B and C never worked");
    msgbus_sub_close(b);
    msgbus_sub_close(c);
    msgbus_close(b_bus);
    msgbus_close(c_bus);
    msgbus_close(pub);
}
END_TEST

#endif
