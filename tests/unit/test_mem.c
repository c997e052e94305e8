/*
 * test_mem.c — the mem:// backend and the core around it: groups,
 * broadcast, per-key order under concurrency, ack/nack/redelivery,
 * declare, confirms and callbacks, the wake-up descriptor, and what the
 * broker keeps in memory (bounded by what is live, lookups by hash).
 */
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

static msgbus_t *open_mem(const char *extra)
{
    char url[128], name[64];
    tu_unique(name, sizeof name, "t");
    snprintf(url, sizeof url, "mem://%s%s", name, extra ? extra : "");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static char *payload_str(msgbus_msg_t *m)
{
    size_t n;
    const char *p = msgbus_msg_payload(m, &n);
    static _Thread_local char buf[256];
    snprintf(buf, sizeof buf, "%.*s", (int)n, p);
    return buf;
}

START_TEST(every_group_gets_every_message)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *a, *b;
    tu_ck_ok(msgbus_subscribe(bus, "orders", "billing", &a));
    tu_ck_ok(msgbus_subscribe(bus, "orders", "shipping", &b));
    for (int i = 0; i < 10; i++) {
        char p[16];
        snprintf(p, sizeof p, "%d", i);
        tu_publish_str(bus, "orders", NULL, p);
    }
    msgbus_sub_t *subs[2] = {a, b};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 10; i++) {
            msgbus_msg_t *m = tu_receive(subs[s], 1000);
            ck_assert_ptr_nonnull(m);
            ck_assert_int_eq(atoi(payload_str(m)), i);
            ck_assert_str_eq(msgbus_msg_topic(m), "orders");
            ck_assert_str_eq(msgbus_msg_group(m), s == 0 ? "billing" : "shipping");
            ck_assert_int_eq(msgbus_msg_attempt(m), 1);
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
    ck_assert_ptr_null(tu_receive(a, 0));
    msgbus_sub_close(a);
    msgbus_sub_close(b);
    msgbus_close(bus);
}
END_TEST

START_TEST(members_share_and_no_message_reaches_both)
{
    msgbus_t *bus = open_mem("?prefetch=10");
    msgbus_sub_t *a, *b;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &a));
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &b));
    enum { N = 200 };
    int seen[N] = {0}, got_a = 0, got_b = 0;
    for (int i = 0; i < N; i++) {
        char p[16];
        snprintf(p, sizeof p, "%d", i);
        tu_publish_str(bus, "t", NULL, p);
    }
    for (int done = 0; done < N;) {
        msgbus_msg_t *m;
        int got = 0;
        while ((m = tu_receive(a, 0))) {
            seen[atoi(payload_str(m))]++, got_a++, got++, done++;
            msgbus_ack(m);
            msgbus_msg_free(m);
        }
        while ((m = tu_receive(b, 0))) {
            seen[atoi(payload_str(m))]++, got_b++, got++, done++;
            msgbus_ack(m);
            msgbus_msg_free(m);
        }
        ck_assert_msg(got > 0 || done == N, "stalled at %d", done);
    }
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(seen[i], 1);
    ck_assert_int_gt(got_a, 0);
    ck_assert_int_gt(got_b, 0);
    msgbus_sub_close(a);
    msgbus_sub_close(b);
    msgbus_close(bus);
}
END_TEST

START_TEST(broadcast_sees_only_what_follows_it)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *g;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &g)); /* so the topic keeps data */
    tu_publish_str(bus, "t", NULL, "before");
    msgbus_sub_t *b1, *b2;
    tu_ck_ok(msgbus_subscribe(bus, "t", NULL, &b1));
    tu_ck_ok(msgbus_subscribe(bus, "t", NULL, &b2));
    tu_publish_str(bus, "t", NULL, "after");
    msgbus_sub_t *bs[2] = {b1, b2};
    for (int i = 0; i < 2; i++) {
        msgbus_msg_t *m = tu_receive(bs[i], 1000);
        ck_assert_ptr_nonnull(m);
        ck_assert_str_eq(payload_str(m), "after");
        ck_assert_ptr_null(msgbus_msg_group(m));
        msgbus_ack(m);
        msgbus_msg_free(m);
        ck_assert_ptr_null(tu_receive(bs[i], 0));
    }
    msgbus_sub_close(b1);
    msgbus_sub_close(b2);
    msgbus_sub_close(g);
    msgbus_close(bus);
}
END_TEST

START_TEST(nack_redelivers_with_attempt_raised)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    msgbus_msg_t *out;
    tu_ck_ok(msgbus_msg_new(&out, "p\0q", 3));
    tu_ck_ok(msgbus_msg_set_header(out, "h", "v"));
    tu_ck_ok(msgbus_publish(bus, "t", out, NULL, NULL));
    msgbus_msg_t *m = tu_receive(s, 1000);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(msgbus_msg_id(m), msgbus_msg_id(out));
    tu_ck_ok(msgbus_nack(m));
    tu_ck_err(msgbus_ack(m), MSGBUS_ERR_STATE); /* settled already */
    msgbus_msg_free(m);
    m = tu_receive(s, 1000);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(msgbus_msg_attempt(m), 2);
    ck_assert_str_eq(msgbus_msg_id(m), msgbus_msg_id(out));
    size_t n;
    ck_assert_int_eq(memcmp(msgbus_msg_payload(m, &n), "p\0q", 3), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(msgbus_msg_header(m, "h"), "v");
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_ptr_null(tu_receive(s, 50));
    msgbus_msg_free(out);
    msgbus_sub_close(s);
    msgbus_close(bus);
}
END_TEST

START_TEST(unacked_go_to_remaining_member_on_close)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *a, *b;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &a));
    for (int i = 0; i < 5; i++)
        tu_publish_str(bus, "t", NULL, "x");
    msgbus_msg_t *held = tu_receive(a, 1000); /* received, never settled */
    ck_assert_ptr_nonnull(held);
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &b));
    ck_assert_ptr_null(tu_receive(b, 50)); /* a holds all five */
    msgbus_sub_close(a);
    tu_ck_err(msgbus_ack(held), MSGBUS_ERR_CLOSED);
    ck_assert(strstr(msgbus_last_error(), "closed"));
    msgbus_msg_free(held);
    for (int i = 0; i < 5; i++) {
        msgbus_msg_t *m = tu_receive(b, 1000);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_eq(msgbus_msg_attempt(m), i == 0 ? 2 : 2); /* all were delivered to a */
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    ck_assert_ptr_null(tu_receive(b, 50));
    msgbus_sub_close(b);
    msgbus_close(bus);
}
END_TEST

START_TEST(acked_not_delivered_again_after_reconnect)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    for (int i = 0; i < 3; i++)
        tu_publish_str(bus, "t", NULL, "acked");
    for (int i = 0; i < 3; i++) {
        msgbus_msg_t *m = tu_receive(s, 1000);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_sub_close(s);
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    tu_publish_str(bus, "t", NULL, "marker");
    msgbus_msg_t *m = tu_receive(s, 1000);
    ck_assert_str_eq(payload_str(m), "marker");
    msgbus_ack(m);
    msgbus_msg_free(m);
    msgbus_sub_close(s);
    msgbus_close(bus);
}
END_TEST

START_TEST(declare_keeps_messages_for_a_later_consumer)
{
    msgbus_t *bus = open_mem(NULL);
    tu_ck_ok(msgbus_declare(bus, "t", "late"));
    tu_publish_str(bus, "t", NULL, "kept");
    tu_publish_str(bus, "other", NULL, "no group: not kept");
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "late", &s));
    msgbus_msg_t *m = tu_receive(s, 1000);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(payload_str(m), "kept");
    msgbus_ack(m);
    msgbus_msg_free(m);
    msgbus_sub_close(s);
    tu_ck_err(msgbus_declare(bus, "bad topic", "g"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_declare(bus, "t", "bad/group"), MSGBUS_ERR_INVALID);
    msgbus_close(bus);
}
END_TEST

START_TEST(buses_on_one_name_share_a_broker_and_names_isolate)
{
    msgbus_t *p, *c, *other;
    tu_ck_ok(msgbus_open(&p, "mem://shared-x", NULL));
    tu_ck_ok(msgbus_open(&c, "mem://shared-x", NULL));
    tu_ck_ok(msgbus_open(&other, "mem://shared-y", NULL));
    msgbus_sub_t *s, *so;
    tu_ck_ok(msgbus_subscribe(c, "t", "g", &s));
    tu_ck_ok(msgbus_subscribe(other, "t", "g", &so));
    tu_publish_str(p, "t", NULL, "hello");
    msgbus_msg_t *m = tu_receive(s, 1000);
    ck_assert_ptr_nonnull(m);
    msgbus_ack(m);
    msgbus_msg_free(m);
    ck_assert_ptr_null(tu_receive(so, 50));
    msgbus_sub_close(s);
    msgbus_sub_close(so);
    msgbus_close(p);
    msgbus_close(c);
    msgbus_close(other);
}
END_TEST

struct cbstate {
    int calls;
    msgbus_err_t status;
    char topic[64];
    char id[64];
};

static void on_delivery(void *opaque, const msgbus_report_t *r)
{
    struct cbstate *st = opaque;
    st->calls++;
    st->status = r->status;
    snprintf(st->topic, sizeof st->topic, "%s", r->topic);
    snprintf(st->id, sizeof st->id, "%s", r->msg_id);
}

START_TEST(callbacks_served_by_poll_and_flush)
{
    msgbus_t *bus = open_mem(NULL);
    struct cbstate st = {0};
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_publish(bus, "t", m, on_delivery, &st));
    ck_assert_int_eq(st.calls, 0); /* only on the polling thread */
    int served = -1;
    tu_ck_ok(msgbus_poll(bus, 100, &served));
    ck_assert_int_eq(served, 1);
    ck_assert_int_eq(st.calls, 1);
    ck_assert_int_eq(st.status, MSGBUS_OK);
    ck_assert_str_eq(st.topic, "t");
    ck_assert_str_eq(st.id, msgbus_msg_id(m));
    tu_ck_ok(msgbus_publish(bus, "t", m, on_delivery, &st));
    size_t failed = 99;
    tu_ck_ok(msgbus_flush(bus, 1000, &failed));
    ck_assert_uint_eq(failed, 0);
    ck_assert_int_eq(st.calls, 2);
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    tu_ck_ok(msgbus_poll(bus, 0, &served));
    ck_assert_int_eq(served, 0);
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

/* Confirm tokens are cut from per-thread slabs (bus.c), sized to their
 * strings: every report must still name its own topic and id, whatever
 * their lengths (a token overrunning its room shows as a wrong report
 * here), and a thread that publishes and polls then exits leaves nothing
 * behind (ASan's leak check runs on this test). */
struct token_check {
    int calls, wrong;
    char topic[MSGBUS_MAX_ID + 300], id[MSGBUS_MAX_ID + 1];
};

static void on_token_report(void *opaque, const msgbus_report_t *r)
{
    struct token_check *tc = opaque;
    tc->calls++;
    if (r->status != MSGBUS_OK || strcmp(r->topic, tc->topic) != 0 || strcmp(r->msg_id, tc->id))
        tc->wrong++;
}

static void *publish_mixed_sizes(void *arg)
{
    msgbus_t *bus = arg;
    enum { N = 3000 };
    struct token_check *checks = calloc(N, sizeof *checks);
    ck_assert_ptr_nonnull(checks);
    for (int i = 0; i < N; i++) {
        struct token_check *tc = &checks[i];
        /* Short, then a topic of 240 characters, then a long id. */
        size_t tlen = i % 3 == 1 ? 240 : 1 + (size_t)i % 20;
        memset(tc->topic, 'a' + i % 26, tlen);
        tc->topic[tlen] = '\0';
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, "x", 1));
        if (i % 3 == 2) {
            size_t ilen = 150 + (size_t)i % 50;
            memset(tc->id, 'A' + i % 26, ilen);
            snprintf(tc->id + ilen, sizeof tc->id - ilen, "-%d", i);
            tu_ck_ok(msgbus_msg_set_id(m, tc->id));
        } else {
            snprintf(tc->id, sizeof tc->id, "%s", msgbus_msg_id(m));
        }
        tu_ck_ok(msgbus_publish(bus, tc->topic, m, on_token_report, tc));
        msgbus_msg_free(m);
        if (i % 100 == 99)
            tu_ck_ok(msgbus_poll(bus, 0, NULL));
    }
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    int calls = 0, wrong = 0;
    for (int i = 0; i < N; i++) {
        calls += checks[i].calls;
        wrong += checks[i].wrong;
        ck_assert_int_eq(checks[i].calls, 1);
    }
    printf("tokens: %d reports, %d naming the wrong topic or id\n", calls, wrong);
    ck_assert_int_eq(wrong, 0);
    free(checks);
    return NULL;
}

START_TEST(reports_name_their_topic_and_id_whatever_their_lengths)
{
    msgbus_t *bus = open_mem(NULL);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, publish_mixed_sizes, bus), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    publish_mixed_sizes(bus); /* and on this thread, which outlives the bus */
    msgbus_close(bus);
}
END_TEST

/* A slab outlives the thread that cut its tokens: it is freed by the last
 * report served, on another thread, not before (ASan: use after free) and
 * not never (ASan's leak check). The publishing thread exits with its
 * reports unserved, the main thread serves them. */
struct cut_and_exit {
    msgbus_t *bus;
    struct token_check *checks;
    int n;
};

static void *publish_then_exit(void *arg)
{
    struct cut_and_exit *job = arg;
    for (int i = 0; i < job->n; i++) {
        struct token_check *tc = &job->checks[i];
        snprintf(tc->topic, sizeof tc->topic, "slab.t%d", i % 7);
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, "x", 1));
        snprintf(tc->id, sizeof tc->id, "%s", msgbus_msg_id(m));
        tu_ck_ok(msgbus_publish(job->bus, tc->topic, m, on_token_report, tc));
        msgbus_msg_free(m);
    }
    return NULL; /* no poll: the reports wait for the main thread */
}

START_TEST(tokens_outlive_the_thread_that_cut_them)
{
    msgbus_t *bus = open_mem(NULL);
    enum { N = 1500 }; /* more than ten slabs' worth */
    struct cut_and_exit job = {bus, calloc(N, sizeof(struct token_check)), N};
    ck_assert_ptr_nonnull(job.checks);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, publish_then_exit, &job), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    int served = 0;
    tu_ck_ok(msgbus_poll(bus, 1000, &served));
    ck_assert_int_eq(served, N);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(job.checks[i].calls, 1);
        wrong += job.checks[i].wrong;
    }
    ck_assert_int_eq(wrong, 0);
    free(job.checks);
    msgbus_close(bus);
}
END_TEST

START_TEST(bad_publish_input_changes_nothing)
{
    msgbus_t *bus = open_mem("?max_message_bytes=1024");
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    msgbus_msg_t *m;
    static char big[2048];
    tu_ck_ok(msgbus_msg_new(&m, big, sizeof big));
    tu_ck_err(msgbus_publish(bus, "t", m, NULL, NULL), MSGBUS_ERR_TOO_LARGE);
    ck_assert(strstr(msgbus_last_error(), "max_message_bytes"));
    tu_ck_err(msgbus_publish(bus, "", m, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_publish(bus, "a b", m, NULL, NULL), MSGBUS_ERR_INVALID);
    char longtopic[300];
    memset(longtopic, 't', sizeof longtopic - 1);
    longtopic[sizeof longtopic - 1] = 0;
    tu_ck_err(msgbus_publish(bus, longtopic, m, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_publish(bus, NULL, m, NULL, NULL), MSGBUS_ERR_INVALID);
    /* A valid topic is remembered per thread; names that differ from it
     * by one character, or by a character more, are still checked. */
    msgbus_msg_t *small;
    tu_ck_ok(msgbus_msg_new(&small, "s", 1));
    tu_ck_ok(msgbus_publish(bus, "t.valid-1", small, NULL, NULL));
    tu_ck_err(msgbus_publish(bus, "t.valid-!", small, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_publish(bus, "t.valid-1 ", small, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_publish(bus, "t valid-1", small, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_ok(msgbus_flush(bus, 1000, NULL));
    msgbus_msg_free(small);
    tu_ck_err(msgbus_publish(bus, "t", NULL, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_publish(NULL, "t", m, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_subscribe(bus, "t", "", &s), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_flush(NULL, 0, NULL), MSGBUS_ERR_INVALID);
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    ck_assert_ptr_null(tu_receive(s, 50));
    msgbus_msg_free(m);
    msgbus_sub_close(s);
    msgbus_close(bus);
    msgbus_close(NULL);
    msgbus_sub_close(NULL);
}
END_TEST

static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

START_TEST(fd_readable_exactly_while_work_waits)
{
    msgbus_t *bus = open_mem(NULL);
    int fd = msgbus_fd(bus);
    ck_assert_int_ge(fd, 0);
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    ck_assert(!readable(fd));
    tu_publish_str(bus, "t", NULL, "a");
    tu_publish_str(bus, "t", NULL, "b");
    ck_assert(readable(fd));
    msgbus_msg_t *m = tu_receive(s, 0);
    msgbus_ack(m);
    msgbus_msg_free(m);
    ck_assert(readable(fd)); /* one still waiting */
    m = tu_receive(s, 0);
    msgbus_ack(m);
    msgbus_msg_free(m);
    ck_assert(!readable(fd));
    struct cbstate st = {0};
    msgbus_msg_t *out;
    tu_ck_ok(msgbus_msg_new(&out, "x", 1));
    tu_ck_ok(msgbus_publish(bus, "t", out, on_delivery, &st));
    ck_assert(readable(fd)); /* a callback and a message */
    tu_ck_ok(msgbus_poll(bus, 0, NULL));
    ck_assert(readable(fd));
    m = tu_receive(s, 0);
    msgbus_ack(m);
    msgbus_msg_free(m);
    ck_assert(!readable(fd));
    msgbus_msg_free(out);
    msgbus_sub_close(s);
    msgbus_close(bus);
}
END_TEST

/* 4 publisher threads × 2 members of one group: every message exactly once
 * per group, and per key in publish order. */
enum { PUBLISHERS = 4, PER_PUBLISHER = 5000, KEYS_PER_PUBLISHER = 8 };

struct pubarg {
    msgbus_t *bus;
    int id;
};

static void *publisher(void *arg)
{
    struct pubarg *a = arg;
    for (int i = 0; i < PER_PUBLISHER; i++) {
        char key[32], payload[64];
        int k = i % KEYS_PER_PUBLISHER;
        snprintf(key, sizeof key, "p%d-k%d", a->id, k);
        snprintf(payload, sizeof payload, "%d %d %d", a->id, k, i / KEYS_PER_PUBLISHER);
        msgbus_msg_t *m;
        if (msgbus_msg_new(&m, payload, strlen(payload)) || msgbus_msg_set_key(m, key, strlen(key)))
            return (void *)1;
        msgbus_err_t e;
        while ((e = msgbus_publish(a->bus, "load", m, NULL, NULL)) == MSGBUS_ERR_QUEUE_FULL)
            msgbus_poll(a->bus, 1, NULL);
        msgbus_msg_free(m);
        if (e)
            return (void *)1;
    }
    return NULL;
}

struct consarg {
    msgbus_sub_t *sub;
    int count;
    int *seen;                 /* [PUBLISHERS * PER_PUBLISHER], shared */
    int (*next)[KEYS_PER_PUBLISHER]; /* next expected seq per key, shared */
    pthread_mutex_t *mu;
    int order_errors;
    int total_target;
    int *total;
};

static void *consumer(void *arg)
{
    struct consarg *c = arg;
    for (;;) {
        pthread_mutex_lock(c->mu);
        int done = *c->total >= c->total_target;
        pthread_mutex_unlock(c->mu);
        if (done)
            break;
        msgbus_msg_t *m = NULL;
        if (msgbus_receive(c->sub, 50, &m) != MSGBUS_OK)
            continue;
        size_t n;
        const char *p = msgbus_msg_payload(m, &n);
        char buf[64];
        snprintf(buf, sizeof buf, "%.*s", (int)n, p);
        int pub, k, seq;
        sscanf(buf, "%d %d %d", &pub, &k, &seq);
        pthread_mutex_lock(c->mu);
        /* Key order across both members: each key's messages arrive in
         * sequence, whichever member gets them. */
        if (c->next[pub][k] != seq)
            c->order_errors++;
        c->next[pub][k] = seq + 1;
        c->seen[pub * PER_PUBLISHER + seq * KEYS_PER_PUBLISHER + k]++;
        (*c->total)++;
        pthread_mutex_unlock(c->mu);
        c->count++;
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    return NULL;
}

START_TEST(concurrent_publishers_two_members_exactly_once_in_key_order)
{
    msgbus_t *bus = open_mem("?prefetch=64");
    msgbus_sub_t *s1, *s2;
    tu_ck_ok(msgbus_subscribe(bus, "load", "g", &s1));
    tu_ck_ok(msgbus_subscribe(bus, "load", "g", &s2));
    static int seen[PUBLISHERS * PER_PUBLISHER];
    static int next[PUBLISHERS][KEYS_PER_PUBLISHER];
    memset(seen, 0, sizeof seen);
    memset(next, 0, sizeof next);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    int total = 0;
    struct consarg ca[2];
    msgbus_sub_t *subs[2] = {s1, s2};
    pthread_t ct[2], pt[PUBLISHERS];
    for (int i = 0; i < 2; i++) {
        ca[i] = (struct consarg){.sub = subs[i], .seen = seen, .next = next, .mu = &mu,
                                 .total_target = PUBLISHERS * PER_PUBLISHER, .total = &total};
        pthread_create(&ct[i], NULL, consumer, &ca[i]);
    }
    struct pubarg pa[PUBLISHERS];
    for (int i = 0; i < PUBLISHERS; i++) {
        pa[i] = (struct pubarg){bus, i};
        pthread_create(&pt[i], NULL, publisher, &pa[i]);
    }
    for (int i = 0; i < PUBLISHERS; i++) {
        void *r;
        pthread_join(pt[i], &r);
        ck_assert_ptr_null(r);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(ct[i], NULL);
    int dups = 0, missing = 0;
    for (int i = 0; i < PUBLISHERS * PER_PUBLISHER; i++) {
        if (seen[i] == 0)
            missing++;
        if (seen[i] > 1)
            dups++;
    }
    printf("concurrent: consumed %d (member 1: %d, member 2: %d), missing %d, duplicates %d, "
           "order errors %d\n",
           total, ca[0].count, ca[1].count, missing, dups, ca[0].order_errors + ca[1].order_errors);
    ck_assert_int_eq(missing, 0);
    ck_assert_int_eq(dups, 0);
    ck_assert_int_eq(ca[0].order_errors + ca[1].order_errors, 0);
    ck_assert_int_gt(ca[0].count, 0);
    ck_assert_int_gt(ca[1].count, 0);
    msgbus_sub_close(s1);
    msgbus_sub_close(s2);
    msgbus_close(bus);
}
END_TEST

START_TEST(key_held_by_one_member_while_it_has_unsettled)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *a, *b;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &a));
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &b));
    for (int i = 0; i < 6; i++)
        tu_publish_str(bus, "t", "same-key", "x");
    /* All six go to one member; the other gets none of that key. */
    int na = 0, nb = 0;
    msgbus_msg_t *m;
    while ((m = tu_receive(a, 0))) {
        na++;
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    while ((m = tu_receive(b, 0))) {
        nb++;
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    ck_assert_int_eq(na + nb, 6);
    ck_assert_msg(na == 0 || nb == 0, "key split across members: %d / %d", na, nb);
    msgbus_sub_close(a);
    msgbus_sub_close(b);
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------------ memory and lookups */

#if defined(__SANITIZE_ADDRESS__)
#define TU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TU_ASAN 1
#endif
#endif
#ifdef TU_ASAN
/* From <sanitizer/allocator_interface.h>, which gcc does not install. */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define TU_MEMCHECK 1
#endif

/* Bytes of heap in use: ASan's own count under ASan (glibc's mallinfo2 sees
 * nothing there); under valgrind, what memcheck's leak search finds
 * allocated (its malloc answers no mallinfo2, and its mallinfo counts freed
 * blocks it holds back); glibc's count otherwise. */
static size_t heap_in_use(void)
{
#ifdef TU_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
#ifdef TU_MEMCHECK
    if (RUNNING_ON_VALGRIND) {
        unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;
        VALGRIND_DO_QUICK_LEAK_CHECK;
        VALGRIND_COUNT_LEAKS(leaked, dubious, reachable, suppressed);
        return leaked + dubious + reachable + suppressed;
    }
#endif
    return mallinfo2().uordblks;
#endif
}

static long heap_growth(size_t from)
{
    return (long)heap_in_use() - (long)from;
}

enum { MANY = 25000 };

/* A named group lives as long as its broker (it is a durable queue: it keeps
 * what is published while nobody is subscribed), so 25k of them cost their
 * bookkeeping, not kilobytes each, and all of it returns when the broker goes. */
START_TEST(many_idle_groups_cost_little_and_return_with_the_broker)
{
    msgbus_t *warm = open_mem(NULL); /* the core's one-time allocations */
    msgbus_close(warm);
    size_t start = heap_in_use();
    msgbus_t *bus = open_mem(NULL);
    int64_t t0 = tu_now_ms();
    for (int i = 0; i < MANY; i++) {
        char g[32];
        snprintf(g, sizeof g, "g%d", i);
        msgbus_sub_t *s;
        tu_ck_ok(msgbus_subscribe(bus, "t", g, &s));
        msgbus_sub_close(s);
    }
    int64_t ms = tu_now_ms() - t0;
    long grown = heap_growth(start);
    printf("  %d named groups subscribed and closed in %lld ms: heap +%ld bytes "
           "(%ld per idle group)\n",
           MANY, (long long)ms, grown, grown / MANY);
    ck_assert_msg(grown < 8L << 20, "25k idle groups hold %ld bytes", grown);
    msgbus_close(bus);
    grown = heap_growth(start);
    printf("  after the last bus on the broker closed: heap %+ld bytes\n", grown);
    ck_assert_msg(grown < 64L << 10, "the closed broker still holds %ld bytes", grown);
}
END_TEST

/* What nobody can ever receive is not kept: a broadcast subscriber's queue
 * goes with it, a topic without groups holds nothing. */
START_TEST(broadcast_queues_and_empty_topics_are_freed)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *keep;
    tu_ck_ok(msgbus_subscribe(bus, "warm", NULL, &keep));
    tu_publish_str(bus, "warm", "k", "x"); /* first-use allocations */
    msgbus_msg_t *m = tu_receive(keep, 1000);
    msgbus_ack(m);
    msgbus_msg_free(m);
    msgbus_sub_close(keep);
    size_t start = heap_in_use();
    for (int i = 0; i < MANY; i++) {
        char t[32];
        snprintf(t, sizeof t, "t%d", i);
        msgbus_sub_t *s;
        tu_ck_ok(msgbus_subscribe(bus, t, NULL, &s));
        tu_publish_str(bus, t, "k", "x");
        m = tu_receive(s, 1000);
        ck_assert_ptr_nonnull(m);
        msgbus_ack(m);
        msgbus_msg_free(m);
        msgbus_sub_close(s);
        snprintf(t, sizeof t, "nobody%d", i);
        tu_publish_str(bus, t, NULL, "dropped: no group");
    }
    long grown = heap_growth(start);
    printf("  %d broadcast subscribers and %d topics without groups: heap %+ld bytes\n", MANY,
           2 * MANY, grown);
    ck_assert_msg(grown < 64L << 10, "closed broadcast queues and empty topics hold %ld bytes",
                  grown);
    msgbus_close(bus);
}
END_TEST

/* Best time in microseconds of 5 runs of `n` declares of existing groups
 * g0..g(have-1), spread over all of them. */
static double declare_existing_us(msgbus_t *bus, int have, int n)
{
    double best = 1e18;
    for (int rep = 0; rep < 5; rep++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < n; i++) {
            char g[32];
            snprintf(g, sizeof g, "g%d", (int)((long)i * have / n));
            tu_ck_ok(msgbus_declare(bus, "t", g));
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double us = (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3;
        if (us < best)
            best = us;
    }
    return best;
}

START_TEST(group_lookup_does_not_slow_with_the_number_of_groups)
{
    enum { FEW = 100 };
    msgbus_t *bus = open_mem(NULL);
    int have = 0;
    for (; have < FEW; have++) {
        char g[32];
        snprintf(g, sizeof g, "g%d", have);
        tu_ck_ok(msgbus_declare(bus, "t", g));
    }
    double few = declare_existing_us(bus, have, 2000);
    for (; have < MANY; have++) {
        char g[32];
        snprintf(g, sizeof g, "g%d", have);
        tu_ck_ok(msgbus_declare(bus, "t", g));
    }
    double many = declare_existing_us(bus, have, 2000);
    printf("  2000 lookups: %.0f us among %d groups, %.0f us among %d (x%.1f)\n", few, FEW,
           many, MANY, many / few);
    /* A linear search made this ~100x (~40x under ASan, whose overhead is
     * per call); a hash table keeps it near 1, a bigger table's cache
     * misses aside. */
    ck_assert_msg(many < 5 * few, "lookup among %d groups is %.1fx slower than among %d", MANY,
                  many / few, FEW);
    msgbus_close(bus);
}
END_TEST

/* The rule behind what is kept: a named group, once declared or subscribed,
 * keeps what is published while it has no member, even after it was drained. */
START_TEST(drained_group_without_members_keeps_later_messages)
{
    msgbus_t *bus = open_mem(NULL);
    tu_ck_ok(msgbus_declare(bus, "t", "declared"));
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "subscribed", &s));
    msgbus_sub_close(s);
    tu_publish_str(bus, "t", NULL, "one");
    const char *groups[2] = {"declared", "subscribed"};
    for (int i = 0; i < 2; i++) {
        tu_ck_ok(msgbus_subscribe(bus, "t", groups[i], &s));
        msgbus_msg_t *m = tu_receive(s, 1000);
        ck_assert_msg(m != NULL, "group %s lost the message published while idle", groups[i]);
        ck_assert_str_eq(payload_str(m), "one");
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
        msgbus_sub_close(s); /* drained, no member */
    }
    tu_publish_str(bus, "t", NULL, "two");
    for (int i = 0; i < 2; i++) {
        tu_ck_ok(msgbus_subscribe(bus, "t", groups[i], &s));
        msgbus_msg_t *m = tu_receive(s, 1000);
        ck_assert_msg(m != NULL, "drained group %s lost the next message", groups[i]);
        ck_assert_str_eq(payload_str(m), "two");
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
        ck_assert_ptr_null(tu_receive(s, 0));
        msgbus_sub_close(s);
    }
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------ retention, positions (issue 20) */

/* Opens mem://<name><extra> exactly (buses that must share one broker). */
static msgbus_err_t open_named(msgbus_t **bus, const char *name, const char *extra)
{
    char url[160];
    snprintf(url, sizeof url, "mem://%s%s", name, extra ? extra : "");
    return msgbus_open(bus, url, NULL);
}

static void publish_ts(msgbus_t *bus, const char *topic, const char *key, const char *payload,
                       int64_t ts)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
    if (key)
        tu_ck_ok(msgbus_msg_set_key(m, key, strlen(key)));
    if (ts)
        tu_ck_ok(msgbus_msg_set_timestamp(m, ts));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
}

/* Receives the payloads "<prefix><from>" .. "<prefix><to-1>", in order,
 * acking each. */
static void expect_range(msgbus_sub_t *s, const char *prefix, int from, int to)
{
    for (int i = from; i < to; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s%d", prefix, i);
        msgbus_msg_t *m = tu_receive(s, 1000);
        ck_assert_msg(m != NULL, "missing %s", want);
        ck_assert_str_eq(payload_str(m), want);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
}

/* Nothing more comes within 50 ms. */
static void expect_none(msgbus_sub_t *s)
{
    msgbus_msg_t *extra = tu_receive(s, 50);
    ck_assert_msg(extra == NULL, "unexpected '%s'", extra ? payload_str(extra) : "");
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void publish_range(msgbus_t *bus, const char *topic, const char *prefix, int from, int to,
                          int64_t ts)
{
    for (int i = from; i < to; i++) {
        char p[64];
        snprintf(p, sizeof p, "%s%d", prefix, i);
        publish_ts(bus, topic, NULL, p, ts);
    }
}

/* msgbus_inspect_json parsed; ck_asserts it succeeds. */
static json_t *inspect(msgbus_t *bus, const char *topic, const char *group)
{
    char *text = NULL;
    tu_ck_ok(msgbus_inspect_json(bus, topic, group, 1000, &text));
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    ck_assert_msg(o != NULL, "inspect gave bad JSON: %s", text);
    msgbus_free(text);
    return o;
}

START_TEST(retain_option_is_bounded_and_belongs_to_the_broker)
{
    char name[64];
    tu_unique(name, sizeof name, "ret");
    msgbus_t *bus = NULL, *other = NULL;
    const char *bad[] = {"?retain=-1", "?retain=1000001", "?retain=ten", "?retain="};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_ck_err(open_named(&bus, name, bad[i]), MSGBUS_ERR_CONFIG);
        ck_assert_ptr_null(bus);
        ck_assert_msg(strstr(msgbus_last_error(), "retain"), "%s: '%s' does not name retain",
                      bad[i], msgbus_last_error());
    }
    tu_ck_ok(open_named(&bus, name, "?retain=5"));
    ck_assert(msgbus_caps(bus) & MSGBUS_CAP_REPLAY);
    /* Another value on the same broker: refused, naming both. */
    tu_ck_err(open_named(&other, name, "?retain=6"), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_null(other);
    ck_assert_msg(strstr(msgbus_last_error(), "retain=6") &&
                      strstr(msgbus_last_error(), "retain=5"),
                  "%s", msgbus_last_error());
    tu_ck_ok(open_named(&other, name, "?retain=5")); /* the same: fine */
    msgbus_close(other);
    tu_ck_ok(open_named(&other, name, NULL)); /* none: the broker's */
    ck_assert(msgbus_caps(other) & MSGBUS_CAP_REPLAY);
    msgbus_close(other);
    msgbus_close(bus);
    /* The broker went with its last bus: the name is free for another value. */
    tu_ck_ok(open_named(&bus, name, "?retain=0"));
    ck_assert(!(msgbus_caps(bus) & MSGBUS_CAP_REPLAY));
    msgbus_close(bus);
}
END_TEST

/* retain=3: a topic without groups keeps its last 3 messages, and a group
 * starting at earliest gets exactly those; what falls out is freed. */
START_TEST(retained_ring_keeps_the_last_n_and_frees_the_rest)
{
    msgbus_t *bus = open_mem("?retain=3");
    publish_range(bus, "t", "m", 0, 10, 0);
    json_t *o = inspect(bus, "t", NULL);
    ck_assert_int_eq(tu_json_int(o, "topics.0.retained"), 3);
    ck_assert_int_eq(tu_json_int(o, "topics.0.retention_messages"), 3);
    json_decref(o);
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "start=earliest", &s));
    expect_range(s, "m", 7, 10);
    expect_none(s);
    msgbus_sub_close(s);
    msgbus_close(bus);

    /* Memory: 2000 messages of 4 KiB through retain=50 keep ~50 of them. */
    msgbus_t *warm = open_mem("?retain=50");
    publish_range(warm, "t", "w", 0, 60, 0);
    msgbus_close(warm);
    size_t before = heap_in_use();
    bus = open_mem("?retain=50");
    static char big[4096];
    memset(big, 'x', sizeof big - 1);
    for (int i = 0; i < 2000; i++)
        publish_ts(bus, "t", NULL, big, 0);
    long grown = heap_growth(before);
    printf("  retain=50, 2000 x 4 KiB published: heap +%ld bytes\n", grown);
    ck_assert_msg(grown < 60 * 5000, "the ring keeps more than its 50 messages (%ld bytes)",
                  grown);
    ck_assert_msg(grown > 50 * 4096, "the ring does not hold its 50 messages (%ld bytes)", grown);
    msgbus_close(bus);
    long after = heap_growth(before);
    printf("  after the broker closed: heap %+ld bytes\n", after);
    ck_assert_msg(after < 16384, "retained messages outlive their broker (%ld bytes)", after);
}
END_TEST

/* A retained message a group still holds stays alive after it falls out of
 * the ring, and is freed once the group acks it. */
START_TEST(message_out_of_the_ring_lives_while_a_group_holds_it)
{
    msgbus_t *bus = open_mem("?retain=1");
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    publish_ts(bus, "t", NULL, "old", 0);
    publish_ts(bus, "t", NULL, "new", 0); /* "old" leaves the ring */
    msgbus_msg_t *a = tu_receive(s, 1000), *b = tu_receive(s, 1000);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_str_eq(payload_str(a), "old"); /* payload borrowed from the shared copy */
    ck_assert_str_eq(payload_str(b), "new");
    tu_ck_ok(msgbus_ack(a));
    tu_ck_ok(msgbus_ack(b));
    msgbus_msg_free(a);
    msgbus_msg_free(b);
    msgbus_sub_close(s);
    /* Reset to earliest: only what is retained comes back. */
    tu_ck_ok(msgbus_group_reset(bus, "t", "g", "earliest"));
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    msgbus_msg_t *m = tu_receive(s, 1000);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(payload_str(m), "new");
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_ptr_null(tu_receive(s, 50));
    msgbus_sub_close(s);
    msgbus_close(bus);
}
END_TEST

START_TEST(start_earliest_and_times_for_new_groups_and_broadcast)
{
    msgbus_t *bus = open_mem("?retain=100");
    tu_ck_ok(msgbus_declare(bus, "t", "declared")); /* has a position: ignores start */
    publish_range(bus, "t", "a", 0, 5, 1000);
    publish_range(bus, "t", "b", 0, 5, 2000);
    msgbus_sub_t *early, *late, *bc, *decl, *latest, *dflt;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "early", "start=earliest", &early));
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "late", "start=1970-01-01T00:00:01.500Z", &late));
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", NULL, "start=earliest", &bc));
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "latest", "start=latest", &latest));
    tu_ck_ok(msgbus_subscribe(bus, "t", "default", &dflt));
    /* The time is a filter on the timestamp, boundary included. */
    msgbus_sub_t *exact;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "exact", "start=1970-01-01T00:00:02Z", &exact));
    /* The declared group began when declared: all 10, whatever start says. */
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "declared", "start=1970-01-01T00:00:01.500Z", &decl));
    publish_range(bus, "t", "c", 0, 1, 0);
    msgbus_msg_t *m;
    for (int i = 0; i < 5; i++) {
        char want[8];
        snprintf(want, sizeof want, "a%d", i);
        ck_assert_ptr_nonnull(m = tu_receive(early, 1000));
        ck_assert_str_eq(payload_str(m), want);
        msgbus_ack(m);
        msgbus_msg_free(m);
        ck_assert_ptr_nonnull(m = tu_receive(bc, 1000));
        ck_assert_str_eq(payload_str(m), want);
        ck_assert_ptr_null(msgbus_msg_group(m));
        msgbus_ack(m);
        msgbus_msg_free(m);
        ck_assert_ptr_nonnull(m = tu_receive(decl, 1000));
        ck_assert_str_eq(payload_str(m), want);
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    msgbus_sub_t *with_b[] = {early, bc, decl, late, exact};
    for (size_t k = 0; k < 5; k++) {
        for (int i = 0; i < 5; i++) {
            char want[8];
            snprintf(want, sizeof want, "b%d", i);
            ck_assert_ptr_nonnull(m = tu_receive(with_b[k], 1000));
            ck_assert_str_eq(payload_str(m), want);
            msgbus_ack(m);
            msgbus_msg_free(m);
        }
        expect_range(with_b[k], "c", 0, 1);
        expect_none(with_b[k]);
    }
    expect_range(latest, "c", 0, 1);
    expect_range(dflt, "c", 0, 1);
    expect_none(latest);
    expect_none(dflt);
    msgbus_sub_t *all[] = {early, late, bc, decl, latest, dflt, exact};
    for (size_t k = 0; k < 7; k++)
        msgbus_sub_close(all[k]);
    /* A group that consumed keeps its position: start=earliest is ignored. */
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "early", "start=earliest", &early));
    ck_assert_ptr_null(tu_receive(early, 50));
    msgbus_sub_close(early);

    /* -<duration>: from now back. */
    int64_t now = wall_ms();
    publish_range(bus, "t", "hour-ago", 0, 2, now - 3600 * 1000);
    publish_range(bus, "t", "recent", 0, 2, now);
    msgbus_sub_t *recent;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "recent", "start=-30m", &recent));
    expect_range(recent, "c", 0, 1); /* published just now, too */
    expect_range(recent, "recent", 0, 2);
    expect_none(recent);
    msgbus_sub_close(recent);
    msgbus_close(bus);
}
END_TEST

START_TEST(start_earliest_without_retain_is_unsupported)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *s = (msgbus_sub_t *)&s;
    const char *refused[] = {"start=earliest", "start=2026-01-01T00:00:00Z", "start=-15m"};
    for (int i = 0; i < 3; i++) {
        tu_ck_err(msgbus_subscribe_ex(bus, "t", "g", refused[i], &s), MSGBUS_ERR_UNSUPPORTED);
        ck_assert_ptr_eq(s, (msgbus_sub_t *)&s);
        ck_assert_msg(strstr(msgbus_last_error(), "retain="), "%s", msgbus_last_error());
    }
    /* Nothing was subscribed: the group does not exist. */
    char *text = NULL;
    tu_ck_err(msgbus_inspect_json(bus, "t", NULL, 1000, &text), MSGBUS_ERR_NOT_FOUND);
    tu_ck_err(msgbus_group_reset(bus, "t", "g", "earliest"), MSGBUS_ERR_UNSUPPORTED);
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "start=latest", &s));
    msgbus_sub_close(s);
    msgbus_close(bus);
}
END_TEST

START_TEST(paused_member_gets_nothing_and_settles_what_it_has)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    publish_ts(bus, "t", NULL, "before", 0);
    msgbus_msg_t *held = tu_receive(s, 1000);
    ck_assert_ptr_nonnull(held);
    tu_ck_ok(msgbus_sub_pause(s));
    tu_ck_ok(msgbus_sub_pause(s)); /* twice: a no-op */
    publish_range(bus, "t", "p", 0, 5, 0);
    ck_assert_ptr_null(tu_receive(s, 200));
    /* Not just held back by the core: mem handed nothing out. */
    json_t *o = inspect(bus, "t", "g");
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.ready"), 5);
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.unacked"), 1);
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.members"), 1);
    json_decref(o);
    tu_ck_ok(msgbus_ack(held)); /* settling while paused works */
    msgbus_msg_free(held);
    ck_assert_ptr_null(tu_receive(s, 50));
    tu_ck_ok(msgbus_sub_resume(s));
    tu_ck_ok(msgbus_sub_resume(s));
    expect_range(s, "p", 0, 5);
    expect_none(s);
    msgbus_sub_close(s);
    msgbus_close(bus);
}
END_TEST

/* A paused member keeps its keys: their later messages wait for it rather
 * than go to another member out of order; other keys flow to the others. */
START_TEST(paused_member_keeps_its_keys)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *a, *b;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &a));
    publish_ts(bus, "t", "k", "k0", 0);
    msgbus_msg_t *k0 = tu_receive(a, 1000);
    ck_assert_ptr_nonnull(k0);
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &b));
    tu_ck_ok(msgbus_sub_pause(a));
    publish_ts(bus, "t", "k", "k1", 0);
    publish_ts(bus, "t", "other", "o0", 0);
    msgbus_msg_t *m = tu_receive(b, 1000);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(payload_str(m), "o0");
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_ptr_null(tu_receive(b, 100)); /* k1 waits for a */
    tu_ck_ok(msgbus_ack(k0)); /* a no longer holds k: k1 may go to b */
    msgbus_msg_free(k0);
    m = tu_receive(b, 1000);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(payload_str(m), "k1");
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_ptr_null(tu_receive(a, 50));
    msgbus_sub_close(a);
    msgbus_sub_close(b);
    msgbus_close(bus);
}
END_TEST

START_TEST(group_reset_moves_a_group_without_members)
{
    msgbus_t *bus = open_mem("?retain=100");
    tu_ck_err(msgbus_group_reset(bus, "nope", "g", "latest"), MSGBUS_ERR_NOT_FOUND);
    ck_assert_msg(strstr(msgbus_last_error(), "'nope'"), "%s", msgbus_last_error());
    msgbus_sub_t *s, *s2;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s2));
    tu_ck_err(msgbus_group_reset(bus, "t", "g", "earliest"), MSGBUS_ERR_STATE);
    ck_assert_msg(strstr(msgbus_last_error(), "group 'g'") &&
                      strstr(msgbus_last_error(), "2 active members"),
                  "%s", msgbus_last_error());
    msgbus_sub_close(s2);
    publish_range(bus, "t", "a", 0, 3, 1000);
    publish_range(bus, "t", "b", 0, 3, 2000);
    msgbus_sub_close(s); /* its 6 unsettled go back: pending */
    /* Latest drops them. */
    tu_ck_ok(msgbus_group_reset(bus, "t", "g", "latest"));
    json_t *o = inspect(bus, "t", "g");
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.ready"), 0);
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.members"), 0);
    json_decref(o);
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    ck_assert_ptr_null(tu_receive(s, 50));
    msgbus_sub_close(s);
    /* Earliest: every retained message again, acked or not. */
    tu_ck_ok(msgbus_group_reset(bus, "t", "g", "earliest"));
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    expect_range(s, "a", 0, 3);
    expect_range(s, "b", 0, 3);
    expect_none(s);
    msgbus_sub_close(s);
    /* A time: those at or after it. */
    tu_ck_ok(msgbus_group_reset(bus, "t", "g", "1970-01-01T00:00:01.999Z"));
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    expect_range(s, "b", 0, 3);
    expect_none(s);
    msgbus_sub_close(s);
    /* A group that does not exist is declared at the position. */
    tu_ck_ok(msgbus_group_reset(bus, "t", "new", "earliest"));
    publish_range(bus, "t", "c", 0, 1, 0);
    tu_ck_ok(msgbus_subscribe(bus, "t", "new", &s));
    expect_range(s, "a", 0, 3);
    expect_range(s, "b", 0, 3);
    expect_range(s, "c", 0, 1);
    expect_none(s);
    msgbus_sub_close(s);
    tu_ck_err(msgbus_group_reset(bus, "t", "g", "yesterday"), MSGBUS_ERR_INVALID);
    msgbus_close(bus);
}
END_TEST

START_TEST(group_reset_to_latest_without_retain_drops_what_waits)
{
    msgbus_t *bus = open_mem(NULL);
    tu_ck_ok(msgbus_declare(bus, "t", "g"));
    publish_range(bus, "t", "x", 0, 4, 0);
    tu_ck_ok(msgbus_group_reset(bus, "t", "g", "latest"));
    publish_range(bus, "t", "y", 0, 1, 0);
    msgbus_sub_t *s;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &s));
    expect_range(s, "y", 0, 1);
    expect_none(s);
    msgbus_sub_close(s);
    msgbus_close(bus);
}
END_TEST

START_TEST(inspect_lists_topics_and_named_groups)
{
    msgbus_t *bus = open_mem("?retain=2");
    tu_ck_ok(msgbus_declare(bus, "orders", "shipping"));
    tu_ck_ok(msgbus_declare(bus, "orders", "billing"));
    msgbus_sub_t *m1, *bc;
    tu_ck_ok(msgbus_subscribe(bus, "orders", "billing", &m1));
    tu_ck_ok(msgbus_subscribe(bus, "orders", NULL, &bc));
    publish_range(bus, "orders", "o", 0, 3, 0);
    publish_range(bus, "audit", "a", 0, 1, 0); /* retained: the topic exists */
    msgbus_msg_t *held = tu_receive(m1, 1000);
    ck_assert_ptr_nonnull(held);
    json_t *o = inspect(bus, NULL, NULL);
    char *text = json_dumps(o, JSON_COMPACT);
    printf("  inspect: %s\n", text);
    free(text);
    ck_assert_uint_eq(json_array_size(json_object_get(o, "topics")), 2);
    ck_assert_str_eq(json_string_value(tu_json_at(o, "topics.0.name")), "audit");
    ck_assert_int_eq(tu_json_int(o, "topics.0.retained"), 1);
    ck_assert_uint_eq(json_array_size(tu_json_at(o, "topics.0.groups")), 0);
    ck_assert_str_eq(json_string_value(tu_json_at(o, "topics.1.name")), "orders");
    ck_assert_int_eq(tu_json_int(o, "topics.1.partitions"), 1);
    ck_assert_int_eq(tu_json_int(o, "topics.1.retained"), 2);
    ck_assert_int_eq(tu_json_int(o, "topics.1.broadcast_subscribers"), 1);
    ck_assert_uint_eq(json_array_size(tu_json_at(o, "topics.1.groups")), 2);
    ck_assert_str_eq(json_string_value(tu_json_at(o, "topics.1.groups.0.name")), "billing");
    ck_assert_int_eq(tu_json_int(o, "topics.1.groups.0.members"), 1);
    ck_assert_int_eq(tu_json_int(o, "topics.1.groups.0.unacked"), 3);
    ck_assert_int_eq(tu_json_int(o, "topics.1.groups.0.ready"), 0);
    ck_assert_int_eq(tu_json_int(o, "topics.1.groups.0.lag"), 0);
    ck_assert_str_eq(json_string_value(tu_json_at(o, "topics.1.groups.1.name")), "shipping");
    ck_assert_int_eq(tu_json_int(o, "topics.1.groups.1.members"), 0);
    ck_assert_int_eq(tu_json_int(o, "topics.1.groups.1.ready"), 3);
    ck_assert_int_eq(tu_json_int(o, "topics.1.groups.1.lag"), 3);
    json_decref(o);
    o = inspect(bus, "orders", "shipping");
    ck_assert_uint_eq(json_array_size(json_object_get(o, "topics")), 1);
    ck_assert_uint_eq(json_array_size(tu_json_at(o, "topics.0.groups")), 1);
    ck_assert_str_eq(json_string_value(tu_json_at(o, "topics.0.groups.0.name")), "shipping");
    json_decref(o);
    text = (char *)&text;
    tu_ck_err(msgbus_inspect_json(bus, "nope", NULL, 1000, &text), MSGBUS_ERR_NOT_FOUND);
    ck_assert_msg(strstr(msgbus_last_error(), "'nope'"), "%s", msgbus_last_error());
    tu_ck_err(msgbus_inspect_json(bus, "orders", "nope", 1000, &text), MSGBUS_ERR_NOT_FOUND);
    ck_assert_msg(strstr(msgbus_last_error(), "'nope'"), "%s", msgbus_last_error());
    ck_assert_ptr_eq(text, (char *)&text);
    tu_ck_ok(msgbus_ack(held));
    msgbus_msg_free(held);
    msgbus_sub_close(m1);
    msgbus_sub_close(bc);
    msgbus_close(bus);
}
END_TEST

START_TEST(capabilities_follow_the_configuration)
{
    const uint64_t always = MSGBUS_CAP_KEY_ORDER | MSGBUS_CAP_NO_DUPLICATE_PUBLISH |
                            MSGBUS_CAP_LIST | MSGBUS_CAP_LAG;
    msgbus_t *bus = open_mem("?max_message_bytes=4096");
    ck_assert_uint_eq(msgbus_caps(bus), always);
    ck_assert_uint_eq(msgbus_max_message_size(bus), 4096);
    char *text = NULL;
    tu_ck_ok(msgbus_caps_json(bus, &text));
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    msgbus_free(text);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(json_string_value(json_object_get(o, "backend")), "mem");
    json_t *caps = json_object_get(o, "capabilities");
    for (size_t i = 0; i < json_array_size(caps); i++) {
        json_t *c = json_array_get(caps, i);
        bool yes = json_is_true(json_object_get(c, "supported"));
        ck_assert_int_eq(yes, (msgbus_caps(bus) & (1ull << i)) != 0);
        const char *why = json_string_value(json_object_get(c, "why_not"));
        ck_assert_msg(yes || (why && strncmp(why, "mem://", 6) == 0),
                      "'%s' is refused without mem's own reason (%s)",
                      json_string_value(json_object_get(c, "name")), why ? why : "none");
    }
    json_decref(o);
    msgbus_close(bus);
    bus = open_mem("?retain=10");
    ck_assert_uint_eq(msgbus_caps(bus), always | MSGBUS_CAP_REPLAY);
    ck_assert_uint_eq(msgbus_max_message_size(bus), 64u << 20);
    msgbus_close(bus);
    bus = NULL;
    char name[64];
    tu_unique(name, sizeof name, "req");
    tu_ck_err(open_named(&bus, name, "?require=replay"), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "replay") && strstr(msgbus_last_error(), "retain="),
                  "%s", msgbus_last_error());
    tu_ck_err(open_named(&bus, name, "?require=key_order,shared"), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "shared"), "%s", msgbus_last_error());
    ck_assert_ptr_null(bus);
    tu_ck_ok(open_named(&bus, name, "?retain=5&require=replay,key_order,list,lag"));
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mem");
    TCase *tc = tcase_create("model");
    tcase_add_test(tc, every_group_gets_every_message);
    tcase_add_test(tc, members_share_and_no_message_reaches_both);
    tcase_add_test(tc, broadcast_sees_only_what_follows_it);
    tcase_add_test(tc, nack_redelivers_with_attempt_raised);
    tcase_add_test(tc, unacked_go_to_remaining_member_on_close);
    tcase_add_test(tc, acked_not_delivered_again_after_reconnect);
    tcase_add_test(tc, declare_keeps_messages_for_a_later_consumer);
    tcase_add_test(tc, buses_on_one_name_share_a_broker_and_names_isolate);
    tcase_add_test(tc, callbacks_served_by_poll_and_flush);
    tcase_add_test(tc, reports_name_their_topic_and_id_whatever_their_lengths);
    tcase_add_test(tc, tokens_outlive_the_thread_that_cut_them);
    tcase_add_test(tc, bad_publish_input_changes_nothing);
    tcase_add_test(tc, fd_readable_exactly_while_work_waits);
    tcase_add_test(tc, key_held_by_one_member_while_it_has_unsettled);
    tcase_add_test(tc, concurrent_publishers_two_members_exactly_once_in_key_order);
    TCase *mem = tcase_create("memory");
    tcase_set_timeout(mem, 600); /* 25k cycles under valgrind */
    tcase_add_test(mem, many_idle_groups_cost_little_and_return_with_the_broker);
    tcase_add_test(mem, broadcast_queues_and_empty_topics_are_freed);
    tcase_add_test(mem, group_lookup_does_not_slow_with_the_number_of_groups);
    tcase_add_test(mem, drained_group_without_members_keeps_later_messages);
    TCase *pos = tcase_create("positions");
    tcase_add_test(pos, retain_option_is_bounded_and_belongs_to_the_broker);
    tcase_add_test(pos, retained_ring_keeps_the_last_n_and_frees_the_rest);
    tcase_add_test(pos, message_out_of_the_ring_lives_while_a_group_holds_it);
    tcase_add_test(pos, start_earliest_and_times_for_new_groups_and_broadcast);
    tcase_add_test(pos, start_earliest_without_retain_is_unsupported);
    tcase_add_test(pos, paused_member_gets_nothing_and_settles_what_it_has);
    tcase_add_test(pos, paused_member_keeps_its_keys);
    tcase_add_test(pos, group_reset_moves_a_group_without_members);
    tcase_add_test(pos, group_reset_to_latest_without_retain_drops_what_waits);
    tcase_add_test(pos, inspect_lists_topics_and_named_groups);
    tcase_add_test(pos, capabilities_follow_the_configuration);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, mem);
    suite_add_tcase(s, pos);
    return tu_run_suite(s);
}
