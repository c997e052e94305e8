/*
 * conformance_positions.h — conformance tests of issue 20's positions and
 * flow control: start= (earliest, an RFC 3339 time, -<duration>) for new
 * groups and broadcast subscribers, msgbus_group_reset, msgbus_sub_pause /
 * _resume and msgbus_receive_batch. Part of conformance.c (included once,
 * after its helpers).
 *
 * What a backend can replay is its MSGBUS_CAP_REPLAY claim: with it the
 * positions must hold; without it every start other than latest, and every
 * reset other than to latest, must be refused with MSGBUS_ERR_UNSUPPORTED
 * and change nothing. mem:// replays only what it retains, so on mem these
 * tests open their buses with retain=1000 (cf_open_replay); Kafka keeps
 * everything; RabbitMQ queues cannot go back.
 */
#ifndef MSGBUS_CONFORMANCE_POSITIONS_H
#define MSGBUS_CONFORMANCE_POSITIONS_H

#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "conformance_util.h"

/* The suite's URL as the positions tests open it, plus `opts` (may be
 * NULL): on mem with retain=1000, so it has a past to replay. Every bus of
 * one such test on mem must be opened this way (retain= belongs to the
 * broker: docs/semantics.md). */
static void cf_replay_url(char *buf, size_t n, const char *opts)
{
    char base[sizeof cf_url + 32];
    cf_url_with(base, sizeof base, cf_url, cf_is("mem") ? "retain=1000" : NULL);
    cf_url_with(buf, n, base, opts);
}

static msgbus_t *cf_open_replay(void)
{
    char url[sizeof cf_url + 64];
    cf_replay_url(url, sizeof url, NULL);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static bool cf_has(msgbus_t *bus, uint64_t cap)
{
    return (msgbus_caps(bus) & cap) == cap;
}

/* Wall-clock ms (message timestamps are wall-clock; tu_now_ms is not). */
static int64_t cf_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* `ms` since the epoch as RFC 3339 with milliseconds, UTC. */
static void cf_rfc3339(char *buf, size_t n, int64_t ms)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char day[32];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03dZ", day, (int)(ms % 1000));
}

/* Publishes "<prefix><i>" for i in [0, n) with key `key`, flushed. */
static void cf_publish_batch(msgbus_t *bus, const char *topic, const char *key,
                             const char *prefix, int n)
{
    for (int i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof p, "%s%d", prefix, i);
        cf_publish_str(bus, topic, key, p);
    }
    cf_flush_ok(bus);
}

/* Receives "<prefix><i>" for i in [0, n), in order (one key: one
 * partition), acking each. `who` names the subscriber in failures. */
static void cf_expect_batch(msgbus_sub_t *sub, const char *prefix, int n, const char *who,
                            bool first)
{
    for (int i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s%d", prefix, i);
        msgbus_msg_t *m = tu_receive(sub, first && i == 0 ? CF_FIRST_MS : CF_NEXT_MS);
        ck_assert_msg(m != NULL, "%s: %s did not come", who, want);
        size_t len;
        const char *p = msgbus_msg_payload(m, &len);
        ck_assert_msg(cf_payload_is(m, want), "%s: got '%.*s', want '%s'", who, (int)len, p,
                      want);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
}

/* Nothing more within `ms`. */
static void cf_expect_quiet(msgbus_sub_t *sub, int ms, const char *who)
{
    msgbus_msg_t *m = tu_receive(sub, ms);
    size_t len = 0;
    const char *p = m ? msgbus_msg_payload(m, &len) : "";
    ck_assert_msg(m == NULL, "%s: unexpected '%.*s'", who, (int)len, p);
}

/* A start the backend cannot give: UNSUPPORTED naming 'replay', the
 * out-parameter untouched. */
static void cf_start_refused(msgbus_t *bus, const char *topic, const char *group,
                             const char *opts)
{
    msgbus_sub_t *sub = (msgbus_sub_t *)&sub;
    msgbus_err_t e = msgbus_subscribe_ex(bus, topic, group, opts, &sub);
    printf("  %s without replay: %s (%s)\n", opts, msgbus_err_name(e), msgbus_last_error());
    ck_assert_msg(e == MSGBUS_ERR_UNSUPPORTED, "%s: %s, want MSGBUS_ERR_UNSUPPORTED", opts,
                  msgbus_err_name(e));
    ck_assert_msg(strstr(msgbus_last_error(), "replay"), "the refusal names 'replay': %s",
                  msgbus_last_error());
    ck_assert_ptr_eq(sub, (msgbus_sub_t *)&sub);
}

/* ------------------------------------------------------ start positions */

/* REPLAY: two batches a and b published before any group exists, a
 * moment between them; a new group at earliest gets both, one at the
 * moment (RFC 3339, and as -<duration>) only b, a broadcast subscriber at
 * earliest both; a group that has a position (it consumed, or was
 * declared) ignores start=. Without REPLAY: refused, nothing subscribed. */
START_TEST(start_positions_replay_what_the_backend_keeps)
{
    enum { N = 5 };
    char topic[128], early[128], late[128], dur[128], decl[128];
    cf_name(topic, sizeof topic, "start");
    cf_name(early, sizeof early, "early");
    cf_name(late, sizeof late, "late");
    cf_name(dur, sizeof dur, "dur");
    cf_name(decl, sizeof decl, "decl");
    msgbus_t *bus = cf_open_replay();
    if (!cf_has(bus, MSGBUS_CAP_REPLAY)) {
        cf_start_refused(bus, topic, early, "start=earliest");
        cf_start_refused(bus, topic, early, "start=2026-01-01T00:00:00Z");
        cf_start_refused(bus, topic, NULL, "start=-15m");
        /* Nothing was made: the topic is unknown (RabbitMQ: no exchange). */
        char *text = NULL;
        msgbus_err_t e = msgbus_inspect_json(bus, topic, early, 10000, &text);
        ck_assert_msg(e == MSGBUS_ERR_NOT_FOUND, "after refused subscribes, inspect: %s (%s)",
                      msgbus_err_name(e), e ? msgbus_last_error() : text);
        msgbus_sub_t *sub = NULL;
        tu_ck_ok(msgbus_subscribe_ex(bus, topic, early, "start=latest", &sub));
        msgbus_sub_close(sub);
        msgbus_close(bus);
        return;
    }
    tu_ck_ok(msgbus_declare(bus, topic, NULL)); /* the topic only (Kafka: created) */
    cf_publish_batch(bus, topic, "k", "a", N);
    tu_ck_ok(msgbus_declare(bus, topic, decl)); /* a position: after a */
    usleep(300 * 1000);
    int64_t mid = cf_wall_ms();
    usleep(300 * 1000);
    cf_publish_batch(bus, topic, "k", "b", N);

    char at[64], opts[128];
    cf_rfc3339(at, sizeof at, mid);
    msgbus_sub_t *s_early = NULL, *s_late = NULL, *s_dur = NULL, *s_bc = NULL, *s_decl = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, early, "start=earliest", &s_early));
    snprintf(opts, sizeof opts, "start=%s", at);
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, late, opts, &s_late));
    /* The same moment as a duration back from now (parsed at subscribe:
     * it can only land later than `mid`, by the time between these lines,
     * far less than the 300 ms before b). */
    snprintf(opts, sizeof opts, "start=-%lldms", (long long)(cf_wall_ms() - mid));
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, dur, opts, &s_dur));
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, NULL, "start=earliest", &s_bc));
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, decl, "start=earliest", &s_decl));
    printf("  start: a, then %s (%s), then b\n", at, opts);

    cf_expect_batch(s_early, "a", N, "start=earliest", true);
    cf_expect_batch(s_early, "b", N, "start=earliest", false);
    cf_expect_batch(s_late, "b", N, "start=<RFC 3339>", true);
    cf_expect_batch(s_dur, "b", N, "start=-<duration>", true);
    cf_expect_batch(s_bc, "a", N, "broadcast start=earliest", true);
    cf_expect_batch(s_bc, "b", N, "broadcast start=earliest", false);
    cf_expect_batch(s_decl, "b", N, "declared group (start=earliest ignored)", true);
    cf_expect_quiet(s_early, 1000, "start=earliest");
    cf_expect_quiet(s_late, 200, "start=<RFC 3339>");
    cf_expect_quiet(s_dur, 200, "start=-<duration>");
    cf_expect_quiet(s_bc, 200, "broadcast");
    cf_expect_quiet(s_decl, 200, "declared group");
    msgbus_sub_close(s_late);
    msgbus_sub_close(s_dur);
    msgbus_sub_close(s_bc);
    msgbus_sub_close(s_decl);
    msgbus_sub_close(s_early);

    /* The group consumed: it has a position, and start=earliest is ignored. */
    cf_publish_batch(bus, topic, "k", "c", 1);
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, early, "start=earliest", &s_early));
    cf_expect_batch(s_early, "c", 1, "a group with a position", true);
    cf_expect_quiet(s_early, 1000, "a group with a position");
    msgbus_sub_close(s_early);
    msgbus_close(bus);
}
END_TEST

/* ----------------------------------------------------------- group reset */

START_TEST(group_reset_moves_a_group_without_members)
{
    enum { N = 5 };
    char topic[128], group[128], nowhere[128];
    cf_name(topic, sizeof topic, "reset");
    cf_name(group, sizeof group, "g");
    cf_name(nowhere, sizeof nowhere, "nowhere");
    msgbus_t *bus = cf_open_replay();
    bool replay = cf_has(bus, MSGBUS_CAP_REPLAY);

    msgbus_err_t e = msgbus_group_reset(bus, nowhere, group, "latest");
    printf("  reset on a topic that does not exist: %s (%s)\n", msgbus_err_name(e),
           msgbus_last_error());
    ck_assert_msg(e == MSGBUS_ERR_NOT_FOUND, "reset of topic '%s' that does not exist: %s",
                  nowhere, msgbus_err_name(e));

    tu_ck_ok(msgbus_declare(bus, topic, group));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    cf_publish_batch(bus, topic, "k", "a", N);
    cf_expect_batch(sub, "a", N, "first pass", true);
    e = msgbus_group_reset(bus, topic, group, "latest");
    printf("  reset with a member: %s (%s)\n", msgbus_err_name(e), msgbus_last_error());
    ck_assert_msg(e == MSGBUS_ERR_STATE, "reset while a member is active: %s, want STATE",
                  msgbus_err_name(e));
    ck_assert_msg(strstr(msgbus_last_error(), "member"), "the refusal says why: %s",
                  msgbus_last_error());
    msgbus_sub_close(sub);

    if (replay) {
        /* Back to earliest: the acked messages come again. */
        tu_ck_ok(msgbus_group_reset(bus, topic, group, "earliest"));
        tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
        cf_expect_batch(sub, "a", N, "after reset to earliest", true);
        cf_expect_quiet(sub, 1000, "after reset to earliest");
        msgbus_sub_close(sub);
    } else {
        const char *refused[] = {"earliest", "2026-01-01T00:00:00Z", "-1h"};
        for (int i = 0; i < 3; i++) {
            e = msgbus_group_reset(bus, topic, group, refused[i]);
            ck_assert_msg(e == MSGBUS_ERR_UNSUPPORTED, "reset to %s without replay: %s",
                          refused[i], msgbus_err_name(e));
            ck_assert_msg(strstr(msgbus_last_error(), "replay"), "%s", msgbus_last_error());
        }
    }
    /* Latest skips what waits (RabbitMQ: the queue is purged). */
    cf_publish_batch(bus, topic, "k", "skipped", 3);
    tu_ck_ok(msgbus_group_reset(bus, topic, group, "latest"));
    cf_publish_batch(bus, topic, "k", "after", 1);
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    cf_expect_batch(sub, "after", 1, "after reset to latest", true);
    cf_expect_quiet(sub, 1000, "after reset to latest");
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------------------------ pause */

/* Payload "n=<i>" with key "k<i % 3>": receives until `want` distinct ids,
 * checking order within each key (numbers rise per key) and no duplicate. */
static void cf_receive_ordered(msgbus_sub_t *sub, struct cf_ids *ids, int last[3], int want,
                               const char *who)
{
    int64_t deadline = tu_now_ms() + CF_FIRST_MS;
    while ((int)ids->n < want && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(sub, 500);
        if (!m)
            continue;
        int n = cf_payload_number(m);
        ck_assert_msg(n >= 0, "%s: a message of another test", who);
        ck_assert_msg(cf_ids_add(ids, msgbus_msg_id(m)), "%s: n=%d came twice", who, n);
        ck_assert_msg(n > last[n % 3], "%s: n=%d after n=%d of the same key", who, n,
                      last[n % 3]);
        last[n % 3] = n;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    ck_assert_msg((int)ids->n == want, "%s: %zu of %d messages", who, ids->n, want);
}

START_TEST(pause_holds_everything_back_until_resume)
{
    enum { BEFORE = 5, DURING = 20 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "pause");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    for (int i = 0; i < BEFORE; i++) {
        char p[16], k[8];
        snprintf(p, sizeof p, "n=%d", i);
        snprintf(k, sizeof k, "k%d", i % 3);
        cf_publish_str(bus, topic, k, p);
    }
    cf_flush_ok(bus);
    msgbus_msg_t *held = cf_receive_one(sub); /* received before the pause */
    struct cf_ids ids;
    cf_ids_init(&ids, BEFORE + DURING);
    int last[3] = {-1, -1, -1};
    int n0 = cf_payload_number(held);
    ck_assert_int_ge(n0, 0);
    cf_ids_add(&ids, msgbus_msg_id(held));
    last[n0 % 3] = n0;

    tu_ck_ok(msgbus_sub_pause(sub));
    tu_ck_ok(msgbus_sub_pause(sub)); /* a no-op */
    for (int i = BEFORE; i < BEFORE + DURING; i++) {
        char p[16], k[8];
        snprintf(p, sizeof p, "n=%d", i);
        snprintf(k, sizeof k, "k%d", i % 3);
        cf_publish_str(bus, topic, k, p);
    }
    cf_flush_ok(bus);
    int64_t t0 = tu_now_ms();
    msgbus_msg_t *m = NULL;
    msgbus_err_t e = msgbus_receive(sub, 1000, &m);
    printf("  paused: receive gave %s after %lld ms\n", msgbus_err_name(e),
           (long long)(tu_now_ms() - t0));
    ck_assert_msg(e == MSGBUS_ERR_TIMEOUT, "a paused subscription handed out a message (%s)",
                  msgbus_err_name(e));
    tu_ck_ok(msgbus_ack(held)); /* settling while paused works */
    msgbus_msg_free(held);
    ck_assert_msg(msgbus_receive(sub, 200, &m) == MSGBUS_ERR_TIMEOUT, "paused, after an ack");

    tu_ck_ok(msgbus_sub_resume(sub));
    tu_ck_ok(msgbus_sub_resume(sub)); /* a no-op */
    cf_receive_ordered(sub, &ids, last, BEFORE + DURING, "after resume");
    cf_expect_quiet(sub, 500, "after resume");
    printf("  pause: %zu messages after resume, none lost, none twice\n", ids.n - 1);
    cf_ids_free(&ids);
    msgbus_sub_close(sub);
    tu_ck_err(msgbus_sub_pause(NULL), MSGBUS_ERR_INVALID);
    msgbus_close(bus);
}
END_TEST

/* --------------------------------------------------------- receive batch */

START_TEST(receive_batch_takes_up_to_max_in_key_order)
{
    enum { N = 30, MAX = 7 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "batch");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *out[MAX + 1];
    size_t n = 99;
    tu_ck_err(msgbus_receive_batch(sub, 0, 0, out, &n), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_receive_batch(NULL, MAX, 0, out, &n), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_receive_batch(sub, MAX, 0, NULL, &n), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_receive_batch(sub, MAX, 0, out, NULL), MSGBUS_ERR_INVALID);
    n = 99;
    tu_ck_err(msgbus_receive_batch(sub, MAX, 100, out, &n), MSGBUS_ERR_TIMEOUT);
    ck_assert_uint_eq(n, 0);

    for (int i = 0; i < N; i++) {
        char p[16], k[8];
        snprintf(p, sizeof p, "n=%d", i);
        snprintf(k, sizeof k, "k%d", i % 3);
        cf_publish_str(bus, topic, k, p);
    }
    cf_flush_ok(bus);
    struct cf_ids ids;
    cf_ids_init(&ids, N);
    int last[3] = {-1, -1, -1}, calls = 0, biggest = 0;
    int64_t deadline = tu_now_ms() + CF_FIRST_MS;
    while ((int)ids.n < N && tu_now_ms() < deadline) {
        out[MAX] = (msgbus_msg_t *)&out; /* must stay untouched */
        msgbus_err_t e = msgbus_receive_batch(sub, MAX, 1000, out, &n);
        if (e == MSGBUS_ERR_TIMEOUT) {
            ck_assert_uint_eq(n, 0);
            continue;
        }
        tu_ck_ok(e);
        calls++;
        ck_assert_msg(n >= 1 && n <= MAX, "a batch of %zu (max %d)", n, MAX);
        ck_assert_ptr_eq(out[MAX], (msgbus_msg_t *)&out);
        if ((int)n > biggest)
            biggest = (int)n;
        for (size_t i = 0; i < n; i++) {
            int v = cf_payload_number(out[i]);
            ck_assert_int_ge(v, 0);
            ck_assert_msg(cf_ids_add(&ids, msgbus_msg_id(out[i])), "n=%d twice", v);
            ck_assert_msg(v > last[v % 3], "n=%d after n=%d of its key", v, last[v % 3]);
            last[v % 3] = v;
            tu_ck_ok(msgbus_ack(out[i]));
            msgbus_msg_free(out[i]);
        }
    }
    printf("  receive_batch: %zu messages in %d batches (largest %d, max %d)\n", ids.n, calls,
           biggest, MAX);
    ck_assert_int_eq((int)ids.n, N);
    tu_ck_err(msgbus_receive_batch(sub, MAX, 200, out, &n), MSGBUS_ERR_TIMEOUT);
    ck_assert_uint_eq(n, 0);
    cf_ids_free(&ids);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

#endif
