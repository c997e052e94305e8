/*
 * test_hooks.c — the tracer hooks of msgbus_set_hooks on mem://
 * (docs/tracing.md): on_publish injects into msgbus's copy only,
 * on_confirm gets on_publish's value and the report once per message,
 * on_receive/on_settle pair up whatever ends the message (ack, nack, dead
 * letter, freed unsettled), an older caller's shorter struct, and the
 * argument checks. The stats counters the same traffic moves are checked
 * on the side.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TRACESTATE "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE, tenant1@vendor=opaque value 1"

#define MAX_EVENTS 64

/* What the hooks saw, in order. Spans are small integers disguised as
 * pointers so a test can say which call returned which. */
struct trace_log {
    int published, confirmed, received, settled;
    int events;
    char order[MAX_EVENTS]; /* 'p' publish, 'c' confirm, 'd' delivery cb, 'r', 's' */
    char confirm_ids[MAX_EVENTS][40];
    char confirm_topics[MAX_EVENTS][64];
    msgbus_err_t confirm_status[MAX_EVENTS];
    uintptr_t confirm_spans[MAX_EVENTS];
    char publish_ids[MAX_EVENTS][40];
    char received_tp[MAX_EVENTS][80];
    char received_ts[MAX_EVENTS][100];
    int received_attempt[MAX_EVENTS];
    uintptr_t settle_spans[MAX_EVENTS];
    msgbus_settled_t settle_how[MAX_EVENTS];
    char settle_ids[MAX_EVENTS][40];
};

static void note(struct trace_log *t, char what)
{
    if (t->events < MAX_EVENTS)
        t->order[t->events++] = what;
}

static void *on_publish(void *opaque, const char *topic, msgbus_msg_t *m)
{
    struct trace_log *t = opaque;
    (void)topic;
    note(t, 'p');
    int i = t->published++;
    snprintf(t->publish_ids[i], sizeof t->publish_ids[i], "%s", msgbus_msg_id(m));
    /* A tracer injects its context into the copy msgbus sends. */
    ck_assert_int_eq(msgbus_msg_set_header(m, "traceparent", TRACEPARENT), MSGBUS_OK);
    ck_assert_int_eq(msgbus_msg_set_header(m, "tracestate", TRACESTATE), MSGBUS_OK);
    return (void *)(uintptr_t)(1000 + i);
}

static void on_confirm(void *opaque, const msgbus_report_t *r, void *span)
{
    struct trace_log *t = opaque;
    note(t, 'c');
    int i = t->confirmed++;
    snprintf(t->confirm_ids[i], sizeof t->confirm_ids[i], "%s", r->msg_id);
    snprintf(t->confirm_topics[i], sizeof t->confirm_topics[i], "%s", r->topic);
    t->confirm_status[i] = r->status;
    t->confirm_spans[i] = (uintptr_t)span;
}

static void *on_receive(void *opaque, msgbus_msg_t *m)
{
    struct trace_log *t = opaque;
    note(t, 'r');
    int i = t->received++;
    /* A tracer extracts the producer's context here. */
    const char *tp = msgbus_msg_header(m, "traceparent");
    const char *ts = msgbus_msg_header(m, "tracestate");
    snprintf(t->received_tp[i], sizeof t->received_tp[i], "%s", tp ? tp : "(none)");
    snprintf(t->received_ts[i], sizeof t->received_ts[i], "%s", ts ? ts : "(none)");
    t->received_attempt[i] = msgbus_msg_attempt(m);
    return (void *)(uintptr_t)(2000 + i);
}

static void on_settle(void *opaque, const msgbus_msg_t *m, msgbus_settled_t how, void *span)
{
    struct trace_log *t = opaque;
    note(t, 's');
    int i = t->settled++;
    t->settle_spans[i] = (uintptr_t)span;
    t->settle_how[i] = how;
    snprintf(t->settle_ids[i], sizeof t->settle_ids[i], "%s", msgbus_msg_id(m));
}

static void on_delivery(void *opaque, const msgbus_report_t *r)
{
    (void)r;
    note(opaque, 'd');
}

static msgbus_t *open_mem(const char *extra)
{
    char url[160], name[64];
    tu_unique(name, sizeof name, "hooks");
    snprintf(url, sizeof url, "mem://%s%s", name, extra ? extra : "");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static void install_all(msgbus_t *bus, struct trace_log *t)
{
    msgbus_hooks_t h = {.opaque = t,
                        .on_publish = on_publish,
                        .on_confirm = on_confirm,
                        .on_receive = on_receive,
                        .on_settle = on_settle};
    tu_ck_ok(msgbus_set_hooks(bus, &h, sizeof h));
}

static msgbus_msg_t *new_msg(const char *payload)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
    return m;
}

/* One figure of the bus's stats snapshot: a top-level field, or with
 * `sub_index` >= 0 one of that subscription's. */
static json_int_t stat(msgbus_t *bus, int sub_index, const char *field)
{
    json_t *root = tu_stats(bus);
    json_t *o = root;
    if (sub_index >= 0)
        o = json_array_get(json_object_get(root, "subscriptions"), (size_t)sub_index);
    json_int_t n = tu_json_int(o, field);
    json_decref(root);
    return n;
}

START_TEST(on_publish_injects_into_msgbus_copy_only)
{
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "orders", "billing", &sub));

    msgbus_msg_t *m = new_msg("order 1");
    char id[40];
    snprintf(id, sizeof id, "%s", msgbus_msg_id(m));
    tu_ck_ok(msgbus_publish(bus, "orders", m, NULL, NULL));
    ck_assert_int_eq(t.published, 1);
    ck_assert_str_eq(t.publish_ids[0], id); /* the hook sees the caller's id */
    /* The caller's message is not changed by the hook. */
    ck_assert_ptr_null(msgbus_msg_header(m, "traceparent"));
    ck_assert_ptr_null(msgbus_msg_header(m, "tracestate"));
    ck_assert_uint_eq(msgbus_msg_header_count(m), 1);
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));

    msgbus_msg_t *in = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(in);
    ck_assert_str_eq(msgbus_msg_id(in), id);
    ck_assert_str_eq(msgbus_msg_header(in, "traceparent"), TRACEPARENT);
    ck_assert_str_eq(msgbus_msg_header(in, "tracestate"), TRACESTATE);
    ck_assert_str_eq(msgbus_msg_header(in, "content-type"), "text/plain");
    /* on_receive saw the injected context before msgbus_receive returned. */
    ck_assert_int_eq(t.received, 1);
    ck_assert_str_eq(t.received_tp[0], TRACEPARENT);
    ck_assert_str_eq(t.received_ts[0], TRACESTATE);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(on_publish_replaces_a_traceparent_the_caller_set)
{
    /* set_header replaces: the copy carries the hook's value once, the
     * caller's message keeps its own. */
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "orders", NULL, &sub));
    msgbus_msg_t *m = new_msg("x");
    const char *mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    tu_ck_ok(msgbus_msg_set_header(m, "traceparent", mine));
    tu_ck_ok(msgbus_publish(bus, "orders", m, NULL, NULL));
    ck_assert_str_eq(msgbus_msg_header(m, "traceparent"), mine);
    msgbus_msg_free(m);
    msgbus_msg_t *in = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(in);
    int seen = 0;
    for (size_t i = 0; i < msgbus_msg_header_count(in); i++) {
        const char *n, *v;
        tu_ck_ok(msgbus_msg_header_at(in, i, &n, &v));
        if (strcmp(n, "traceparent") == 0) {
            seen++;
            ck_assert_str_eq(v, TRACEPARENT);
        }
    }
    ck_assert_int_eq(seen, 1);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    msgbus_close(bus);
}
END_TEST

START_TEST(on_confirm_gets_span_and_report_once_per_message_without_callback)
{
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    char ids[5][40];
    for (int i = 0; i < 5; i++) {
        msgbus_msg_t *m = new_msg("no callback");
        snprintf(ids[i], sizeof ids[i], "%s", msgbus_msg_id(m));
        tu_ck_ok(msgbus_publish(bus, "payments", m, NULL, NULL)); /* no delivery callback */
        msgbus_msg_free(m);
    }
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    /* Served again: nothing is reported twice. */
    tu_ck_ok(msgbus_flush(bus, 100, NULL));
    int served = -1;
    msgbus_poll(bus, 0, &served);
    msgbus_close(bus);

    ck_assert_int_eq(t.published, 5);
    ck_assert_int_eq(t.confirmed, 5);
    for (int i = 0; i < 5; i++) {
        int found = -1;
        for (int k = 0; k < t.confirmed; k++)
            if (strcmp(t.confirm_ids[k], ids[i]) == 0) {
                ck_assert_msg(found < 0, "message %s confirmed twice", ids[i]);
                found = k;
            }
        ck_assert_msg(found >= 0, "no on_confirm for %s", ids[i]);
        /* The value on_publish returned for this very message. */
        ck_assert_uint_eq(t.confirm_spans[found], 1000 + (uintptr_t)i);
        ck_assert_str_eq(t.confirm_topics[found], "payments");
        ck_assert_int_eq(t.confirm_status[found], MSGBUS_OK);
    }
    printf("on_confirm: 5 publishes without callback, 5 confirms with their spans\n");
}
END_TEST

START_TEST(on_confirm_runs_just_before_the_delivery_callback)
{
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    for (int i = 0; i < 3; i++) {
        msgbus_msg_t *m = new_msg("with callback");
        tu_ck_ok(msgbus_publish(bus, "payments", m, on_delivery, &t));
        msgbus_msg_free(m);
    }
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    msgbus_close(bus);
    t.order[t.events < MAX_EVENTS ? t.events : MAX_EVENTS - 1] = 0;
    ck_assert_int_eq(t.confirmed, 3);
    ck_assert_str_eq(t.order, "pppcdcdcd");
    ck_assert_uint_eq(t.confirm_spans[0], 1000);
    ck_assert_uint_eq(t.confirm_spans[2], 1002);
}
END_TEST

START_TEST(on_confirm_ends_the_span_of_a_publish_that_fails_at_once)
{
    /* on_publish ran (a tracer started a span), then msgbus_publish
     * failed before the message was queued (here mem's max_message_bytes:
     * MSGBUS_ERR_TOO_LARGE). The span must still come back once, with
     * the failure, or a tracer leaks it: the hook cannot see the return
     * code of msgbus_publish. */
    struct trace_log t = {0};
    msgbus_t *bus = open_mem("?max_message_bytes=16");
    install_all(bus, &t);
    msgbus_msg_t *m = new_msg("a payload longer than sixteen bytes");
    char id[40];
    snprintf(id, sizeof id, "%s", msgbus_msg_id(m));
    msgbus_err_t e = msgbus_publish(bus, "payments", m, NULL, NULL);
    msgbus_msg_free(m);
    ck_assert_int_eq(e, MSGBUS_ERR_TOO_LARGE);
    msgbus_flush(bus, 1000, NULL);
    int served = 0;
    msgbus_poll(bus, 0, &served);
    msgbus_close(bus);
    ck_assert_int_eq(t.published, 1);
    ck_assert_msg(t.confirmed == 1,
                  "on_publish returned a span for a message msgbus_publish refused "
                  "(MSGBUS_ERR_TOO_LARGE), and on_confirm was called %d times with it",
                  t.confirmed);
    ck_assert_uint_eq(t.confirm_spans[0], 1000);
    ck_assert_str_eq(t.confirm_ids[0], id);
    ck_assert_int_eq(t.confirm_status[0], MSGBUS_ERR_TOO_LARGE);
}
END_TEST

START_TEST(on_receive_on_settle_pair_for_ack_nack_dead_letter_and_none)
{
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, "jobs", "workers",
                                 "retry_max_attempts=5&retry_initial_ms=10&retry_jitter=0", &sub));
    const char *payloads[] = {"ack me", "nack me", "poison", "drop me"};
    for (int i = 0; i < 4; i++) {
        msgbus_msg_t *m = new_msg(payloads[i]);
        tu_ck_ok(msgbus_msg_set_key(m, payloads[i], strlen(payloads[i]))); /* own key each */
        tu_ck_ok(msgbus_publish(bus, "jobs", m, NULL, NULL));
        msgbus_msg_free(m);
    }
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));

    /* ack */
    msgbus_msg_t *m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(t.received, 1);
    ck_assert_int_eq(t.settled, 0);
    tu_ck_ok(msgbus_ack(m));
    ck_assert_int_eq(t.settled, 1);
    ck_assert_int_eq(t.settle_how[0], MSGBUS_SETTLED_ACK);
    ck_assert_uint_eq(t.settle_spans[0], 2000);
    /* A second settle is refused and calls nothing. */
    tu_ck_err(msgbus_ack(m), MSGBUS_ERR_STATE);
    msgbus_msg_free(m); /* settled already: no NONE */
    ck_assert_int_eq(t.settled, 1);

    /* nack: settled as NACK, then delivered again (attempt 2): a new pair. */
    m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    char nack_id[40];
    snprintf(nack_id, sizeof nack_id, "%s", msgbus_msg_id(m));
    tu_ck_ok(msgbus_nack_reason(m, "try again"));
    ck_assert_int_eq(t.settled, 2);
    ck_assert_int_eq(t.settle_how[1], MSGBUS_SETTLED_NACK);
    ck_assert_uint_eq(t.settle_spans[1], 2001);
    ck_assert_str_eq(t.settle_ids[1], nack_id);
    msgbus_msg_free(m);
    ck_assert_int_eq(t.settled, 2);

    /* dead letter */
    m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    ck_assert_int_eq((int)len, 6);
    ck_assert_int_eq(memcmp(p, "poison", 6), 0);
    tu_ck_ok(msgbus_dead_letter(m, "poison message"));
    ck_assert_int_eq(t.settled, 3);
    ck_assert_int_eq(t.settle_how[2], MSGBUS_SETTLED_DEAD_LETTER);
    ck_assert_uint_eq(t.settle_spans[2], 2002);
    msgbus_msg_free(m);

    /* freed unsettled */
    m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    msgbus_msg_free(m);
    ck_assert_int_eq(t.settled, 4);
    ck_assert_int_eq(t.settle_how[3], MSGBUS_SETTLED_NONE);
    ck_assert_uint_eq(t.settle_spans[3], 2003);

    /* The nacked one comes back after its backoff: a new pair, the
     * context still in its headers, the attempt raised. */
    m = tu_receive(sub, 3000);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(msgbus_msg_id(m), nack_id);
    ck_assert_int_eq(t.received, 5);
    ck_assert_str_eq(t.received_tp[4], TRACEPARENT);
    ck_assert_str_eq(t.received_ts[4], TRACESTATE);
    ck_assert_int_eq(t.received_attempt[4], 2);
    tu_ck_ok(msgbus_ack(m));
    ck_assert_int_eq(t.settle_how[4], MSGBUS_SETTLED_ACK);
    ck_assert_uint_eq(t.settle_spans[4], 2004);
    msgbus_msg_free(m);
    ck_assert_int_eq(t.settled, 5);

    /* The stats of this traffic: 5 handed out, 2 acks, 1 nack, 1 dead
     * letter, the dropped one still unsettled. */
    ck_assert_int_eq(stat(bus, 0, "received"), 5);
    ck_assert_int_eq(stat(bus, 0, "acked"), 2);
    ck_assert_int_eq(stat(bus, 0, "nacked"), 1);
    ck_assert_int_eq(stat(bus, 0, "dead_lettered"), 1);
    ck_assert_int_eq(stat(bus, 0, "unsettled"), 1);
    ck_assert_int_eq(stat(bus, -1, "published"), 4);
    ck_assert_int_eq(stat(bus, -1, "confirmed"), 4);

    /* The dropped one comes back when its subscription closes: a new pair
     * on the next member. */
    msgbus_sub_close(sub);
    tu_ck_ok(msgbus_subscribe(bus, "jobs", "workers", &sub));
    m = tu_receive(sub, 3000);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(t.received, 6);
    ck_assert_str_eq(t.received_tp[5], TRACEPARENT);
    ck_assert_int_eq(t.received_attempt[5], 2);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_int_eq(t.settled, 6);
    ck_assert_int_eq(t.settle_how[5], MSGBUS_SETTLED_ACK);
    ck_assert_uint_eq(t.settle_spans[5], 2005);
    ck_assert_ptr_null(tu_receive(sub, 200));
    msgbus_sub_close(sub);
    msgbus_close(bus);
    /* Every pair closed as soon as it was settled: r s r s ... */
    t.order[t.events < MAX_EVENTS ? t.events : MAX_EVENTS - 1] = 0;
    ck_assert_str_eq(t.order, "ppppcccc" "rsrsrsrsrsrs");
}
END_TEST

START_TEST(on_settle_none_when_the_subscription_closes_first)
{
    /* A message still held when its subscription closes ends as NONE when
     * it is freed (the broker delivers it again). */
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "jobs", "workers", &sub));
    msgbus_msg_t *m = new_msg("held");
    tu_ck_ok(msgbus_publish(bus, "jobs", m, NULL, NULL));
    msgbus_msg_free(m);
    m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    msgbus_sub_close(sub);
    tu_ck_err(msgbus_ack(m), MSGBUS_ERR_CLOSED);
    msgbus_msg_free(m);
    ck_assert_int_eq(t.received, 1);
    ck_assert_int_eq(t.settled, 1);
    ck_assert_int_eq(t.settle_how[0], MSGBUS_SETTLED_NONE);
    ck_assert_uint_eq(t.settle_spans[0], 2000);
    msgbus_close(bus);
}
END_TEST

START_TEST(on_settle_without_on_receive_gets_null_span)
{
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    msgbus_hooks_t h = {.opaque = &t, .on_settle = on_settle};
    tu_ck_ok(msgbus_set_hooks(bus, &h, sizeof h));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "jobs", NULL, &sub));
    tu_publish_str(bus, "jobs", NULL, "one");
    msgbus_msg_t *m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_int_eq(t.settled, 1);
    ck_assert_int_eq(t.settle_how[0], MSGBUS_SETTLED_ACK);
    ck_assert_uint_eq(t.settle_spans[0], 0);
    msgbus_close(bus);
}
END_TEST

START_TEST(dead_letters_are_not_publishes_but_dlq_replay_is)
{
    /* Retry copies and dead letters are msgbus's own sends: no on_publish
     * or on_confirm. msgbus_dlq_replay receives, republishes and acks
     * through the public calls, so a tracer sees each letter as a
     * receive/settle pair and its republish as publish/confirm. */
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    tu_ck_ok(msgbus_declare(bus, "jobs", "workers"));
    msgbus_msg_t *m = new_msg("poison");
    tu_ck_ok(msgbus_publish(bus, "jobs", m, NULL, NULL));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "jobs", "workers", &sub));
    m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_dead_letter(m, "poison"));
    msgbus_msg_free(m);
    msgbus_sub_close(sub); /* waits for the letter's confirm */
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    ck_assert_int_eq(t.published, 1);
    ck_assert_int_eq(t.confirmed, 1);
    ck_assert_int_eq(t.received, 1);
    ck_assert_int_eq(t.settled, 1);

    size_t moved = 0;
    tu_ck_ok(msgbus_dlq_replay(bus, "jobs.dlq", NULL, 0, 200, &moved));
    ck_assert_uint_eq(moved, 1);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    ck_assert_int_eq(t.received, 2);
    ck_assert_str_eq(t.received_tp[1], TRACEPARENT); /* the letter carries it */
    ck_assert_int_eq(t.settled, 2);
    ck_assert_int_eq(t.settle_how[1], MSGBUS_SETTLED_ACK);
    ck_assert_uint_eq(t.settle_spans[1], 2001);
    ck_assert_int_eq(t.published, 2);
    ck_assert_int_eq(t.confirmed, 2);
    ck_assert_uint_eq(t.confirm_spans[1], 1001);
    ck_assert_str_eq(t.confirm_topics[1], "jobs");
    msgbus_close(bus);
}
END_TEST

START_TEST(freeing_a_nacked_message_after_its_redelivery_ends_nothing_twice)
{
    /* The application may keep a nacked message until after its retry was
     * received: freeing the old handle then must not end the new
     * delivery's span (no NONE), and the new delivery settles once. */
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, "jobs", "workers", "retry_initial_ms=0", &sub));
    tu_publish_str(bus, "jobs", NULL, "again");
    msgbus_msg_t *first = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(first);
    tu_ck_ok(msgbus_nack(first));
    msgbus_msg_t *second = tu_receive(sub, 3000);
    ck_assert_ptr_nonnull(second);
    ck_assert_int_eq(msgbus_msg_attempt(second), 2);
    ck_assert_int_eq(msgbus_msg_attempt(first), 1);
    msgbus_msg_free(first);
    ck_assert_int_eq(t.received, 2);
    ck_assert_int_eq(t.settled, 1); /* only the nack so far */
    tu_ck_ok(msgbus_ack(second));
    ck_assert_int_eq(t.settled, 2);
    ck_assert_int_eq(t.settle_how[1], MSGBUS_SETTLED_ACK);
    ck_assert_uint_eq(t.settle_spans[1], 2001);
    msgbus_msg_free(second);
    ck_assert_int_eq(t.settled, 2);
    msgbus_close(bus);
}
END_TEST

START_TEST(a_message_freed_after_its_bus_closed_ends_its_span_then)
{
    /* msgbus_close with a received message still held: the message stays
     * valid, and its span ends (NONE) when the application frees it —
     * after the close, so the tracer must outlive the bus until then
     * (docs/tracing.md). */
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "jobs", "workers", &sub));
    tu_publish_str(bus, "jobs", NULL, "held past close");
    msgbus_msg_t *m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    msgbus_close(bus);
    ck_assert_int_eq(t.settled, 0);
    size_t len;
    ck_assert_ptr_nonnull(msgbus_msg_payload(m, &len));
    ck_assert_str_eq(msgbus_msg_header(m, "traceparent"), TRACEPARENT);
    msgbus_msg_free(m);
    ck_assert_int_eq(t.settled, 1);
    ck_assert_int_eq(t.settle_how[0], MSGBUS_SETTLED_NONE);
    ck_assert_uint_eq(t.settle_spans[0], 2000);
}
END_TEST

/* Must never run: stands behind the `size` an older caller passed. */
static void *must_not_run_receive(void *opaque, msgbus_msg_t *m)
{
    (void)opaque;
    (void)m;
    ck_abort_msg("a hook beyond the caller's struct size was called (on_receive)");
    return NULL;
}
static void must_not_run_confirm(void *opaque, const msgbus_report_t *r, void *span)
{
    (void)opaque;
    (void)r;
    (void)span;
    ck_abort_msg("a hook beyond the caller's struct size was called (on_confirm)");
}
static void must_not_run_settle(void *opaque, const msgbus_msg_t *m, msgbus_settled_t how,
                                void *span)
{
    (void)opaque;
    (void)m;
    (void)how;
    (void)span;
    ck_abort_msg("a hook beyond the caller's struct size was called (on_settle)");
}

START_TEST(older_callers_shorter_struct_works)
{
    /* An older caller compiled a struct with opaque and on_publish only:
     * whatever lies past its size is not read. */
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    msgbus_hooks_t h = {.opaque = &t,
                        .on_publish = on_publish,
                        .on_confirm = must_not_run_confirm,
                        .on_receive = must_not_run_receive,
                        .on_settle = must_not_run_settle};
    tu_ck_ok(msgbus_set_hooks(bus, &h, offsetof(msgbus_hooks_t, on_confirm)));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "orders", NULL, &sub));
    msgbus_msg_t *m = new_msg("old caller");
    tu_ck_ok(msgbus_publish(bus, "orders", m, NULL, NULL));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    ck_assert_int_eq(t.published, 1);
    m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(msgbus_msg_header(m, "traceparent"), TRACEPARENT);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_close(bus);

    /* The next older one: up to on_receive (no on_settle yet). */
    struct trace_log t2 = {0};
    bus = open_mem(NULL);
    h = (msgbus_hooks_t){.opaque = &t2,
                         .on_publish = on_publish,
                         .on_confirm = on_confirm,
                         .on_receive = on_receive,
                         .on_settle = must_not_run_settle};
    tu_ck_ok(msgbus_set_hooks(bus, &h, offsetof(msgbus_hooks_t, on_settle)));
    tu_ck_ok(msgbus_subscribe(bus, "orders", NULL, &sub));
    m = new_msg("old caller 2");
    tu_ck_ok(msgbus_publish(bus, "orders", m, NULL, NULL));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_nack(m));
    msgbus_msg_free(m);
    m = tu_receive(sub, 3000);
    ck_assert_ptr_nonnull(m);
    msgbus_msg_free(m); /* unsettled: would be NONE */
    ck_assert_int_eq(t2.published, 1);
    ck_assert_int_eq(t2.confirmed, 1);
    ck_assert_int_eq(t2.received, 2);
    msgbus_close(bus);
}
END_TEST

START_TEST(invalid_arguments)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_hooks_t h = {.on_publish = on_publish};
    tu_ck_err(msgbus_set_hooks(NULL, &h, sizeof h), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_set_hooks(NULL, NULL, 0), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_set_hooks(bus, &h, 0), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "size"));
    tu_ck_err(msgbus_set_hooks(bus, &h, sizeof h + 1), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_set_hooks(bus, &h, sizeof h + sizeof(void *)), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_set_hooks(bus, &h, 3), MSGBUS_ERR_INVALID);
    /* A refused call installs nothing. */
    struct trace_log t = {0};
    h.opaque = &t;
    tu_ck_err(msgbus_set_hooks(bus, &h, 1), MSGBUS_ERR_INVALID);
    tu_publish_str(bus, "orders", NULL, "x");
    ck_assert_int_eq(t.published, 0);
    msgbus_close(bus);
}
END_TEST

START_TEST(null_hooks_remove_them)
{
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    install_all(bus, &t);
    tu_publish_str(bus, "orders", NULL, "hooked");
    ck_assert_int_eq(t.published, 1);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    ck_assert_int_eq(t.confirmed, 1);
    tu_ck_ok(msgbus_set_hooks(bus, NULL, 0));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "orders", NULL, &sub));
    tu_publish_str(bus, "orders", NULL, "not hooked");
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
    msgbus_msg_t *m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_null(msgbus_msg_header(m, "traceparent"));
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    ck_assert_int_eq(t.published, 1);
    ck_assert_int_eq(t.confirmed, 1);
    ck_assert_int_eq(t.received, 0);
    ck_assert_int_eq(t.settled, 0);
    msgbus_close(bus);
}
END_TEST

START_TEST(subscriptions_keep_the_hooks_they_were_made_with)
{
    struct trace_log t = {0};
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *before = NULL, *after = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "orders", NULL, &before));
    install_all(bus, &t);
    tu_ck_ok(msgbus_subscribe(bus, "orders", NULL, &after));
    tu_publish_str(bus, "orders", NULL, "x");
    msgbus_msg_t *a = tu_receive(before, 2000), *b = tu_receive(after, 2000);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(t.received, 1); /* only the later subscription */
    tu_ck_ok(msgbus_ack(a));
    tu_ck_ok(msgbus_ack(b));
    msgbus_msg_free(a);
    msgbus_msg_free(b);
    ck_assert_int_eq(t.settled, 1);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hooks");
    TCase *tc = tcase_create("hooks");
    tcase_add_test(tc, on_publish_injects_into_msgbus_copy_only);
    tcase_add_test(tc, on_publish_replaces_a_traceparent_the_caller_set);
    tcase_add_test(tc, on_confirm_gets_span_and_report_once_per_message_without_callback);
    tcase_add_test(tc, on_confirm_runs_just_before_the_delivery_callback);
    tcase_add_test(tc, on_confirm_ends_the_span_of_a_publish_that_fails_at_once);
    tcase_add_test(tc, on_receive_on_settle_pair_for_ack_nack_dead_letter_and_none);
    tcase_add_test(tc, on_settle_none_when_the_subscription_closes_first);
    tcase_add_test(tc, on_settle_without_on_receive_gets_null_span);
    tcase_add_test(tc, dead_letters_are_not_publishes_but_dlq_replay_is);
    tcase_add_test(tc, freeing_a_nacked_message_after_its_redelivery_ends_nothing_twice);
    tcase_add_test(tc, a_message_freed_after_its_bus_closed_ends_its_span_then);
    tcase_add_test(tc, older_callers_shorter_struct_works);
    tcase_add_test(tc, invalid_arguments);
    tcase_add_test(tc, null_hooks_remove_them);
    tcase_add_test(tc, subscriptions_keep_the_hooks_they_were_made_with);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
