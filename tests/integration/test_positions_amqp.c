/*
 * test_positions_amqp.c — issue 20 on the real RabbitMQ
 * (MSGBUS_TEST_AMQP_URL), through the public API:
 *
 *  - start=earliest and start=<time> are refused (MSGBUS_ERR_UNSUPPORTED,
 *    saying why: no "replay"); start=latest works;
 *  - msgbus_sub_pause cancels the consumer: what is published meanwhile
 *    waits at the broker (the queue's ready count says so) and nothing is
 *    received for ~1 s; a message received before the pause is acked while
 *    paused; resume delivers every waiting message, once;
 *  - a connection lost while paused: the subscription comes back without a
 *    consumer, and consumes again only on resume (a TCP proxy in the test
 *    cuts the link; the shared broker is never touched);
 *  - msgbus_group_reset "latest" purges the group's queue, refuses while a
 *    member is active (MSGBUS_ERR_STATE naming how many), NOT_FOUND for a
 *    group or topic that does not exist, UNSUPPORTED for other positions;
 *  - msgbus_inspect_json of a topic and group gives ready/lag/members; a
 *    topic alone gives partitions 1 and no groups; without a topic it is
 *    UNSUPPORTED;
 *  - the capability bits are exactly durable, shared, redelivered and lag,
 *    the claimed ones hold (redelivered, lag) and the rest are refused or
 *    absent (positions -1, replay, list); require=key_order fails
 *    msgbus_open with MSGBUS_ERR_CONFIG naming key_order.
 * Prints the counts it asserts.
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
#include "tu_proxy.h"

/* ---- helpers ------------------------------------------------------------------ */

static void url_with(char *buf, size_t n, const char *base, const char *query)
{
    snprintf(buf, n, "%s%s%s", base, strchr(base, '?') ? "&" : "?", query);
}

static msgbus_t *open_bus(const char *query)
{
    char url[1024];
    if (query)
        url_with(url, sizeof url, tu_broker_url("amqp"), query);
    else
        snprintf(url, sizeof url, "%s", tu_broker_url("amqp"));
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static void publish_n(msgbus_t *bus, const char *topic, const char *prefix, int from, int n)
{
    char payload[64];
    for (int i = from; i < from + n; i++) {
        snprintf(payload, sizeof payload, "%s-%d", prefix, i);
        tu_publish_str(bus, topic, NULL, payload);
    }
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
}

/* Index i of "<prefix>-i", or -1. */
static int payload_index(const msgbus_msg_t *m, const char *prefix)
{
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    size_t pl = strlen(prefix);
    if (len <= pl + 1 || memcmp(p, prefix, pl) != 0 || p[pl] != '-')
        return -1;
    return atoi(p + pl + 1);
}

/* The group's entry of msgbus_inspect_json(topic, group), parsed. */
static json_t *inspect(msgbus_t *bus, const char *topic, const char *group)
{
    char *text = NULL;
    tu_ck_ok(msgbus_inspect_json(bus, topic, group, 5000, &text));
    printf("inspect %s/%s: %s\n", topic, group ? group : "-", text);
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    msgbus_free(text);
    ck_assert_msg(o, "inspect output does not parse: %s", err.text);
    return o;
}

/* Waits until the group's queue holds `ready` messages (publishes are
 * confirmed before this, so the count is only settling on the broker). */
static json_int_t wait_ready(msgbus_t *bus, const char *topic, const char *group,
                             json_int_t want)
{
    json_int_t ready = -1;
    for (int i = 0; i < 50; i++) {
        json_t *o = inspect(bus, topic, group);
        ready = tu_json_int(o, "topics.0.groups.0.ready");
        json_decref(o);
        if (ready == want)
            break;
        usleep(100000);
    }
    return ready;
}

/* Receives until `n` distinct indexes arrived or `idle_ms` pass with
 * nothing; acks each. Counts duplicates. Returns how many distinct. */
static int receive_all(msgbus_sub_t *sub, const char *prefix, int n, bool *seen, int idle_ms,
                       int *dups)
{
    int got = 0;
    while (got < n) {
        msgbus_msg_t *m = tu_receive(sub, idle_ms);
        if (!m)
            break;
        int i = payload_index(m, prefix);
        ck_assert_msg(i >= 0 && i < n, "unexpected message index %d", i);
        if (seen[i])
            (*dups)++;
        else
            got++;
        seen[i] = true;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    return got;
}

/* ---- start positions ------------------------------------------------------------ */

START_TEST(start_earliest_and_times_are_refused_latest_works)
{
    char topic[128];
    tu_unique(topic, sizeof topic, "amqp-pos-start");
    msgbus_t *bus = open_bus(NULL);
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    const char *refused[] = {"start=earliest", "start=-15m", "start=2026-12-07T08:00:00Z"};
    for (size_t i = 0; i < 3; i++) {
        msgbus_sub_t *sub = NULL;
        tu_ck_err(msgbus_subscribe_ex(bus, topic, "g", refused[i], &sub), MSGBUS_ERR_UNSUPPORTED);
        printf("%s: %s\n", refused[i], msgbus_last_error());
        ck_assert(strstr(msgbus_last_error(), "replay"));
        ck_assert(strstr(msgbus_last_error(), "routed to it"));
        ck_assert_ptr_null(sub);
        /* A broadcast subscriber cannot go back either. */
        tu_ck_err(msgbus_subscribe_ex(bus, topic, NULL, refused[i], &sub),
                  MSGBUS_ERR_UNSUPPORTED);
    }
    /* The refusal is also made for the bus URL's start=. */
    char url[1024];
    url_with(url, sizeof url, tu_broker_url("amqp"), "start=earliest");
    msgbus_t *b2 = NULL;
    msgbus_err_t e = msgbus_open(&b2, url, NULL);
    if (e == MSGBUS_OK) {
        msgbus_sub_t *sub = NULL;
        tu_ck_err(msgbus_subscribe(b2, topic, "g", &sub), MSGBUS_ERR_UNSUPPORTED);
        msgbus_close(b2);
    } else {
        ck_assert_msg(e == MSGBUS_ERR_UNSUPPORTED || e == MSGBUS_ERR_CONFIG, "open: %s (%s)",
                      msgbus_err_name(e), msgbus_last_error());
    }
    printf("URL start=earliest: %s\n", msgbus_last_error());

    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, "g", "start=latest", &sub));
    msgbus_sub_t *bc = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, NULL, "start=latest", &bc));
    tu_publish_str(bus, topic, NULL, "after");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    msgbus_msg_t *m = tu_receive(sub, 10000), *m2 = tu_receive(bc, 10000);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(m2);
    tu_ck_ok(msgbus_ack(m));
    tu_ck_ok(msgbus_ack(m2));
    msgbus_msg_free(m);
    msgbus_msg_free(m2);
    msgbus_sub_close(bc);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    tu_amqp_drop(topic, "g");
}
END_TEST

/* ---- pause / resume --------------------------------------------------------------- */

START_TEST(pause_keeps_messages_at_the_broker_and_resume_delivers_all)
{
    enum { BEFORE = 5, DURING = 40 };
    char topic[128];
    tu_unique(topic, sizeof topic, "amqp-pos-pause");
    msgbus_t *bus = open_bus(NULL);
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));

    /* Before: one message held unsettled, the rest acked. */
    publish_n(bus, topic, "before", 0, BEFORE);
    msgbus_msg_t *held = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(held);
    for (int i = 1; i < BEFORE; i++) {
        msgbus_msg_t *m = tu_receive(sub, 10000);
        ck_assert_ptr_nonnull(m);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }

    int64_t t0 = tu_now_ms();
    tu_ck_ok(msgbus_sub_pause(sub));
    int64_t pause_ms = tu_now_ms() - t0;
    tu_ck_ok(msgbus_sub_pause(sub)); /* again: a no-op */
    publish_n(bus, topic, "during", 0, DURING);
    /* Nothing arrives while paused... */
    msgbus_msg_t *m = NULL;
    tu_ck_err(msgbus_receive(sub, 1000, &m), MSGBUS_ERR_TIMEOUT);
    /* ...because the broker has no consumer for the queue: it keeps them
     * (with the consumer still there, prefetch 200 would have taken all). */
    json_int_t ready = wait_ready(bus, topic, "g", DURING);
    json_t *o = inspect(bus, topic, "g");
    json_int_t members = tu_json_int(o, "topics.0.groups.0.members");
    json_decref(o);
    printf("paused: pause took %lld ms, ready %lld, members %lld\n", (long long)pause_ms,
           (long long)ready, (long long)members);
    ck_assert_int_eq(ready, DURING);
    ck_assert_int_eq(members, 1); /* the paused member still counts */
    ck_assert_int_lt(pause_ms, 100); /* never waits for the network */
    /* A message received before the pause is settled while paused. */
    tu_ck_ok(msgbus_ack(held));
    msgbus_msg_free(held);

    tu_ck_ok(msgbus_sub_resume(sub));
    tu_ck_ok(msgbus_sub_resume(sub)); /* again: a no-op */
    bool seen[DURING] = {0};
    int dups = 0;
    int got = receive_all(sub, "during", DURING, seen, 10000, &dups);
    /* Then nothing more: no duplicate, and the held one was really acked. */
    msgbus_msg_t *extra = tu_receive(sub, 1000);
    printf("resumed: received %d of %d, %d duplicate(s), extra %s\n", got, DURING, dups,
           extra ? "yes" : "no");
    ck_assert_int_eq(got, DURING);
    ck_assert_int_eq(dups, 0);
    ck_assert_ptr_null(extra);
    ck_assert_int_eq(wait_ready(bus, topic, "g", 0), 0);
    msgbus_sub_close(sub);

    /* The acked-while-paused message does not come back to a new member. */
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    extra = tu_receive(sub, 1000);
    ck_assert_ptr_null(extra);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    tu_amqp_drop(topic, "g");
}
END_TEST

struct states {
    _Atomic int sub_up; /* UP events of a subscription */
};

static void on_state(void *opaque, const msgbus_state_event_t *ev)
{
    struct states *s = opaque;
    printf("state: %s %s (%s)\n", ev->sub ? "sub" : "bus", msgbus_state_name(ev->state),
           ev->reason);
    if (ev->sub && ev->state == MSGBUS_STATE_UP)
        atomic_fetch_add(&s->sub_up, 1);
}

START_TEST(a_reconnect_while_paused_does_not_start_consuming)
{
    enum { N = 30 };
    char topic[128], url[1024];
    tu_unique(topic, sizeof topic, "amqp-pos-reconn");
    tu_proxy_start_amqp(NULL, NULL, "reconnect_backoff_ms=50", url, sizeof url);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    struct states st = {0};
    tu_ck_ok(msgbus_set_state_cb(bus, on_state, &st));
    /* The checks go through a bus of their own, which the cut leaves alone. */
    msgbus_t *obs = open_bus(NULL);
    tu_ck_ok(msgbus_declare(obs, topic, "g"));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    tu_ck_ok(msgbus_sub_pause(sub));
    usleep(200000);
    tu_proxy_cut_all();
    /* Wait for the subscription to be re-established (UP "resubscribed"). */
    int64_t until = tu_now_ms() + 15000;
    while (atomic_load(&st.sub_up) == 0 && tu_now_ms() < until)
        msgbus_poll(bus, 100, NULL);
    ck_assert_msg(atomic_load(&st.sub_up) > 0, "the subscription did not come back");
    publish_n(obs, topic, "x", 0, N);
    msgbus_msg_t *m = NULL;
    tu_ck_err(msgbus_receive(sub, 1000, &m), MSGBUS_ERR_TIMEOUT);
    json_int_t ready = wait_ready(obs, topic, "g", N);
    printf("after the reconnect, paused: ready %lld of %d\n", (long long)ready, N);
    ck_assert_int_eq(ready, N);

    tu_ck_ok(msgbus_sub_resume(sub));
    bool seen[N] = {0};
    int dups = 0;
    int got = receive_all(sub, "x", N, seen, 10000, &dups);
    printf("resumed after the reconnect: received %d of %d, %d duplicate(s)\n", got, N, dups);
    ck_assert_int_eq(got, N);
    ck_assert_int_eq(dups, 0);
    ck_assert_int_eq(wait_ready(obs, topic, "g", 0), 0);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    msgbus_close(obs);
    tu_proxy_stop();
    tu_amqp_drop(topic, "g");
}
END_TEST

/* ---- group reset ------------------------------------------------------------------- */

START_TEST(group_reset_latest_purges_an_idle_group)
{
    char topic[128], missing[160];
    tu_unique(topic, sizeof topic, "amqp-pos-reset");
    msgbus_t *bus = open_bus(NULL);
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    publish_n(bus, topic, "old", 0, 25);
    ck_assert_int_eq(wait_ready(bus, topic, "g", 25), 25);

    /* An active member: refused, nothing purged. */
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    tu_ck_err(msgbus_group_reset(bus, topic, "g", "latest"), MSGBUS_ERR_STATE);
    printf("reset with a member: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "group 'g' has 1 active member"));
    /* A paused member is still a member. */
    tu_ck_ok(msgbus_sub_pause(sub));
    tu_ck_err(msgbus_group_reset(bus, topic, "g", "latest"), MSGBUS_ERR_STATE);
    msgbus_sub_close(sub); /* its unacked messages go back to the queue */
    ck_assert_int_eq(wait_ready(bus, topic, "g", 25), 25);

    /* Other positions: no replay on RabbitMQ. */
    tu_ck_err(msgbus_group_reset(bus, topic, "g", "earliest"), MSGBUS_ERR_UNSUPPORTED);
    printf("reset to earliest: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "replay"));
    tu_ck_err(msgbus_group_reset(bus, topic, "g", "-1h"), MSGBUS_ERR_UNSUPPORTED);

    /* Missing group, missing topic. */
    tu_ck_err(msgbus_group_reset(bus, topic, "nogroup", "latest"), MSGBUS_ERR_NOT_FOUND);
    printf("reset of a missing group: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "nogroup"));
    snprintf(missing, sizeof missing, "%s-missing", topic);
    tu_ck_err(msgbus_group_reset(bus, missing, "g", "latest"), MSGBUS_ERR_NOT_FOUND);
    printf("reset on a missing topic: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), missing));

    /* Idle: latest drops every waiting message. */
    tu_ck_ok(msgbus_group_reset(bus, topic, "g", "latest"));
    json_int_t ready = wait_ready(bus, topic, "g", 0);
    printf("after reset: ready %lld\n", (long long)ready);
    ck_assert_int_eq(ready, 0);
    /* The bus still works after the 404s closed its control channel. */
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    publish_n(bus, topic, "new", 0, 3);
    bool seen[3] = {0};
    int dups = 0;
    ck_assert_int_eq(receive_all(sub, "new", 3, seen, 10000, &dups), 3);
    msgbus_msg_t *extra = tu_receive(sub, 500);
    ck_assert_ptr_null(extra); /* nothing "old" survived */
    msgbus_sub_close(sub);
    msgbus_close(bus);
    tu_amqp_drop(topic, "g");
}
END_TEST

/* ---- inspect ------------------------------------------------------------------------ */

START_TEST(inspect_shows_ready_lag_and_members)
{
    char topic[128], missing[160];
    tu_unique(topic, sizeof topic, "amqp-pos-inspect");
    msgbus_t *bus = open_bus(NULL);
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    publish_n(bus, topic, "m", 0, 7);
    ck_assert_int_eq(wait_ready(bus, topic, "g", 7), 7);

    json_t *o = inspect(bus, topic, "g");
    ck_assert_str_eq(json_string_value(tu_json_at(o, "backend")), "amqp");
    ck_assert_str_eq(json_string_value(tu_json_at(o, "topics.0.name")), topic);
    ck_assert_int_eq(tu_json_int(o, "topics.0.partitions"), 1);
    ck_assert_str_eq(json_string_value(tu_json_at(o, "topics.0.groups.0.name")), "g");
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.members"), 0);
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.ready"), 7);
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.lag"), 7);
    ck_assert_ptr_null(tu_json_at(o, "topics.0.groups.0.unacked")); /* not visible */
    json_decref(o);

    /* Two members of two buses, then the topic alone. */
    msgbus_t *b2 = open_bus(NULL);
    msgbus_sub_t *s1 = NULL, *s2 = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &s1));
    tu_ck_ok(msgbus_subscribe(b2, topic, "g", &s2));
    o = inspect(bus, topic, "g");
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.members"), 2);
    json_decref(o);
    o = inspect(bus, topic, NULL);
    ck_assert_int_eq(tu_json_int(o, "topics.0.partitions"), 1);
    ck_assert(json_is_array(tu_json_at(o, "topics.0.groups")));
    ck_assert_uint_eq(json_array_size(tu_json_at(o, "topics.0.groups")), 0);
    json_decref(o);
    msgbus_sub_close(s2);
    msgbus_sub_close(s1);
    msgbus_close(b2);

    char *text = NULL;
    tu_ck_err(msgbus_inspect_json(bus, NULL, NULL, 5000, &text), MSGBUS_ERR_UNSUPPORTED);
    printf("inspect without a topic: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "list"));
    ck_assert(strstr(msgbus_last_error(), "management plugin"));
    snprintf(missing, sizeof missing, "%s-missing", topic);
    tu_ck_err(msgbus_inspect_json(bus, missing, NULL, 5000, &text), MSGBUS_ERR_NOT_FOUND);
    printf("inspect of a missing topic: %s\n", msgbus_last_error());
    tu_ck_err(msgbus_inspect_json(bus, topic, "nogroup", 5000, &text), MSGBUS_ERR_NOT_FOUND);
    printf("inspect of a missing group: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "nogroup"));
    ck_assert_ptr_null(text);
    /* Still fine after those 404s. */
    o = inspect(bus, topic, "g");
    ck_assert_int_eq(tu_json_int(o, "topics.0.groups.0.ready"), 7);
    json_decref(o);
    msgbus_close(bus);
    tu_amqp_drop(topic, "g");
}
END_TEST

/* ---- capabilities -------------------------------------------------------------------- */

START_TEST(capabilities_are_exactly_those_claimed)
{
    char topic[128];
    tu_unique(topic, sizeof topic, "amqp-pos-caps");
    msgbus_t *bus = open_bus(NULL);
    uint64_t caps = msgbus_caps(bus);
    printf("caps: 0x%llx, max message %zu\n", (unsigned long long)caps,
           msgbus_max_message_size(bus));
    ck_assert_uint_eq(caps, MSGBUS_CAP_DURABLE | MSGBUS_CAP_SHARED | MSGBUS_CAP_REDELIVERED |
                                MSGBUS_CAP_LAG);
    ck_assert_uint_eq(msgbus_max_message_size(bus), 128u * 1024 * 1024);
    char *text = NULL;
    tu_ck_ok(msgbus_caps_json(bus, &text));
    printf("caps json: %s\n", text);
    json_t *o = json_loads(text, 0, NULL);
    msgbus_free(text);
    ck_assert_ptr_nonnull(o);
    json_t *arr = json_object_get(o, "capabilities");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *c = json_array_get(arr, i);
        bool yes = json_is_true(json_object_get(c, "supported"));
        ck_assert(yes == ((caps >> i) & 1));
        if (!yes) /* every refusal says why, in the backend's words */
            ck_assert(strlen(json_string_value(json_object_get(c, "why_not"))) > 30);
    }
    json_decref(o);

    /* Claimed: redelivered. A message returned unsettled comes back
     * flagged; partition and offset stay -1 (no positions). */
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    tu_publish_str(bus, topic, NULL, "once");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(msgbus_msg_redelivered(m), 0);
    ck_assert_int_eq(msgbus_msg_partition(m), -1);
    ck_assert_int_eq(msgbus_msg_offset(m), -1);
    msgbus_msg_free(m); /* unsettled */
    msgbus_sub_close(sub);
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(msgbus_msg_redelivered(m), 1);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
    /* Claimed: lag (the queue's ready count, through inspect). */
    publish_n(bus, topic, "lag", 0, 4);
    ck_assert_int_eq(wait_ready(bus, topic, "g", 4), 4);
    msgbus_close(bus);

    /* x-expires makes group queues deletable: no "durable" then. */
    bus = open_bus("x-expires=3600000");
    ck_assert(!(msgbus_caps(bus) & MSGBUS_CAP_DURABLE));
    msgbus_close(bus);
    tu_amqp_drop(topic, "g");
}
END_TEST

START_TEST(require_names_what_rabbitmq_lacks)
{
    char url[1024];
    msgbus_t *bus = NULL;
    url_with(url, sizeof url, tu_broker_url("amqp"), "require=key_order");
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONFIG);
    printf("require=key_order: %s\n", msgbus_last_error());
    ck_assert_ptr_null(bus);
    ck_assert(strstr(msgbus_last_error(), "key_order"));
    ck_assert(strstr(msgbus_last_error(), "round-robin"));
    url_with(url, sizeof url, tu_broker_url("amqp"), "require=durable,replay,list");
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONFIG);
    printf("require=durable,replay,list: %s\n", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "replay"));
    ck_assert(strstr(msgbus_last_error(), "list"));
    ck_assert(!strstr(msgbus_last_error(), "'durable'"));
    url_with(url, sizeof url, tu_broker_url("amqp"), "require=durable,shared,redelivered,lag");
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("positions_amqp");
    TCase *tc = tcase_create("positions");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, start_earliest_and_times_are_refused_latest_works);
    tcase_add_test(tc, pause_keeps_messages_at_the_broker_and_resume_delivers_all);
    tcase_add_test(tc, a_reconnect_while_paused_does_not_start_consuming);
    tcase_add_test(tc, group_reset_latest_purges_an_idle_group);
    tcase_add_test(tc, inspect_shows_ready_lag_and_members);
    tcase_add_test(tc, capabilities_are_exactly_those_claimed);
    tcase_add_test(tc, require_names_what_rabbitmq_lacks);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
