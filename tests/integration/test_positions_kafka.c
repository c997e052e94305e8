/*
 * test_positions_kafka.c — start positions, group reset, pause, inspect and
 * capabilities of the Kafka backend against a real Kafka 3.9 broker
 * (MSGBUS_TEST_KAFKA_URL; docs/kafka.md, "Start positions", "Group
 * reset", "Pause", "Inspecting", "Capabilities").
 *
 * Promises tested: start=earliest, an RFC 3339 time and -<duration> decide
 * where a new group and a broadcast subscriber begin (exact counts); a
 * group that has a position ignores start=; msgbus_group_reset moves an
 * idle group to earliest, a time or latest, creates a group that does not
 * exist yet at that position, and is refused with MSGBUS_ERR_STATE while a
 * member is active and MSGBUS_ERR_NOT_FOUND for a missing topic; a paused
 * subscription receives nothing and fetches nothing while messages are
 * published (also after a rebalance), and after resume gets every one of
 * them exactly once; inspect shows the topic's partitions and the group's
 * lag (N published, 0 after consuming); auto.offset.reset in the URL is the
 * default start (start= wins) and 'error' is refused naming it; the
 * capability bits, and enable.idempotence=false dropping
 * no_duplicate_publish.
 *
 * Each test makes its own topic and groups (unique names), so runs do not
 * see each other.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

/* ---- helpers ---------------------------------------------------------------- */

static msgbus_t *open_url(const char *extra)
{
    const char *base = tu_broker_url("kafka");
    char url[1024];
    snprintf(url, sizeof url, "%s%s%s", base, strchr(base, '?') ? "&" : "?",
             extra ? extra : "partitions=3");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

/* A new topic with `partitions` partitions (declared, so it exists). */
static void new_topic(msgbus_t *bus, char *topic, size_t n)
{
    tu_unique(topic, n, "kafka-pos");
    tu_ck_ok(msgbus_declare(bus, topic, NULL));
}

/* Publishes `n` messages "<prefix>-<i>" and waits for their confirms. */
static void publish_n(msgbus_t *bus, const char *topic, const char *prefix, int n)
{
    for (int i = 0; i < n; i++) {
        char payload[64];
        snprintf(payload, sizeof payload, "%s-%d", prefix, i);
        tu_publish_str(bus, topic, NULL, payload);
    }
    tu_ck_ok(msgbus_flush(bus, 30000, NULL));
}

/* Wall-clock milliseconds, as the broker stamps messages. */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* `ms` as RFC 3339 in UTC with milliseconds: 2026-12-07T08:00:00.250Z. */
static void rfc3339(int64_t ms, char *buf, size_t n)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03dZ", base, (int)(ms % 1000));
}

/* What a subscription received until nothing came for `idle_ms`, each
 * message acked: how many, and how many of them start with `prefix`. */
struct got {
    int total, matching;
};
static struct got drain(msgbus_sub_t *sub, const char *prefix, int idle_ms)
{
    struct got g = {0, 0};
    msgbus_msg_t *m;
    while ((m = tu_receive(sub, idle_ms)) != NULL) {
        size_t len = 0;
        const char *p = msgbus_msg_payload(m, &len);
        g.total++;
        if (len >= strlen(prefix) && memcmp(p, prefix, strlen(prefix)) == 0)
            g.matching++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    return g;
}

static msgbus_sub_t *subscribe(msgbus_t *bus, const char *topic, const char *group,
                               const char *options)
{
    msgbus_sub_t *sub = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group, options, &sub));
    printf("  subscribed to %s as %s (%s) in %lld ms\n", topic, group ? group : "(broadcast)",
           options ? options : "defaults", (long long)(tu_now_ms() - t0));
    return sub;
}

/* ---- start positions -------------------------------------------------------- */

START_TEST(earliest_starts_a_new_group_and_a_broadcast_at_the_oldest)
{
    msgbus_t *bus = open_url(NULL);
    char topic[128], g1[128], g2[128];
    new_topic(bus, topic, sizeof topic);
    tu_unique(g1, sizeof g1, "pos-earliest");
    tu_unique(g2, sizeof g2, "pos-default");
    publish_n(bus, topic, "old", 6);

    msgbus_sub_t *sub = subscribe(bus, topic, g1, "start=earliest");
    struct got g = drain(sub, "old-", 1500);
    printf("new group, start=earliest: %d received (%d old)\n", g.total, g.matching);
    ck_assert_int_eq(g.total, 6);
    ck_assert_int_eq(g.matching, 6);
    msgbus_sub_close(sub);

    sub = subscribe(bus, topic, NULL, "start=earliest");
    g = drain(sub, "old-", 1500);
    printf("broadcast, start=earliest: %d received (%d old)\n", g.total, g.matching);
    ck_assert_int_eq(g.total, 6);
    ck_assert_int_eq(g.matching, 6);
    msgbus_sub_close(sub);

    /* Not given: latest, as before. */
    sub = subscribe(bus, topic, g2, NULL);
    publish_n(bus, topic, "new", 2);
    g = drain(sub, "new-", 1500);
    printf("new group, default start: %d received (%d new)\n", g.total, g.matching);
    ck_assert_int_eq(g.total, 2);
    ck_assert_int_eq(g.matching, 2);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(a_time_or_a_duration_starts_at_the_first_message_since)
{
    msgbus_t *bus = open_url(NULL);
    char topic[128], g1[128], g2[128], opt[96], when[48];
    new_topic(bus, topic, sizeof topic);
    publish_n(bus, topic, "before", 5);
    sleep(2);
    int64_t t = wall_ms();
    usleep(300 * 1000);
    publish_n(bus, topic, "after", 7);

    /* An RFC 3339 time: the 7 published after it, for a group and a
     * broadcast subscriber. */
    rfc3339(t, when, sizeof when);
    snprintf(opt, sizeof opt, "start=%s", when);
    tu_unique(g1, sizeof g1, "pos-time");
    msgbus_sub_t *sub = subscribe(bus, topic, g1, opt);
    struct got g = drain(sub, "after-", 1500);
    printf("new group, %s: %d received (%d after)\n", opt, g.total, g.matching);
    ck_assert_int_eq(g.total, 7);
    ck_assert_int_eq(g.matching, 7);
    msgbus_sub_close(sub);

    sub = subscribe(bus, topic, NULL, opt);
    g = drain(sub, "after-", 1500);
    printf("broadcast, %s: %d received (%d after)\n", opt, g.total, g.matching);
    ck_assert_int_eq(g.total, 7);
    ck_assert_int_eq(g.matching, 7);
    msgbus_sub_close(sub);

    /* -<duration>: taken back from the subscribe call. "before" is more
     * than 2 s old, "after" a fraction of that (plus the subscriptions
     * above). */
    int64_t since = wall_ms() - t; /* ms since the time between the two */
    snprintf(opt, sizeof opt, "start=-%lldms", (long long)since);
    tu_unique(g2, sizeof g2, "pos-dur");
    sub = subscribe(bus, topic, g2, opt);
    g = drain(sub, "after-", 1500);
    printf("new group, %s: %d received (%d after)\n", opt, g.total, g.matching);
    ck_assert_int_eq(g.total, 7);
    ck_assert_int_eq(g.matching, 7);
    msgbus_sub_close(sub);

    /* A time after every message: the end (then what comes next). */
    rfc3339(wall_ms() + 3600 * 1000, when, sizeof when);
    snprintf(opt, sizeof opt, "start=%s", when);
    sub = subscribe(bus, topic, NULL, opt);
    publish_n(bus, topic, "later", 3);
    g = drain(sub, "later-", 1500);
    printf("broadcast, a time in the future: %d received (%d later)\n", g.total, g.matching);
    ck_assert_int_eq(g.total, 3);
    ck_assert_int_eq(g.matching, 3);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(a_group_with_a_position_ignores_start)
{
    msgbus_t *bus = open_url(NULL);
    char topic[128], group[128];
    new_topic(bus, topic, sizeof topic);
    tu_unique(group, sizeof group, "pos-kept");
    msgbus_sub_t *sub = subscribe(bus, topic, group, NULL);
    publish_n(bus, topic, "a", 3);
    struct got g = drain(sub, "a-", 1500);
    ck_assert_int_eq(g.total, 3);
    msgbus_sub_close(sub); /* commits */
    publish_n(bus, topic, "b", 2);

    sub = subscribe(bus, topic, group, "start=earliest");
    g = drain(sub, "b-", 1500);
    printf("group with a position, start=earliest: %d received (%d published after it "
           "closed)\n", g.total, g.matching);
    ck_assert_int_eq(g.total, 2);
    ck_assert_int_eq(g.matching, 2);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ---- group reset ------------------------------------------------------------ */

START_TEST(group_reset_moves_an_idle_group)
{
    msgbus_t *bus = open_url(NULL);
    char topic[128], group[128], fresh[128], when[48];
    new_topic(bus, topic, sizeof topic);
    tu_unique(group, sizeof group, "pos-reset");
    publish_n(bus, topic, "x", 5);
    sleep(2);
    int64_t t = wall_ms();
    usleep(300 * 1000);
    publish_n(bus, topic, "y", 4);
    rfc3339(t, when, sizeof when);

    msgbus_sub_t *sub = subscribe(bus, topic, group, "start=earliest");
    struct got g = drain(sub, "", 1500);
    ck_assert_int_eq(g.total, 9);

    /* An active member: refused, naming how many. */
    tu_ck_err(msgbus_group_reset(bus, topic, group, "earliest"), MSGBUS_ERR_STATE);
    printf("reset with a member: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "1 active member"));
    msgbus_sub_close(sub);

    int64_t t0 = tu_now_ms();
    tu_ck_ok(msgbus_group_reset(bus, topic, group, "earliest"));
    printf("reset to earliest took %lld ms\n", (long long)(tu_now_ms() - t0));
    sub = subscribe(bus, topic, group, NULL);
    g = drain(sub, "", 1500);
    printf("after reset to earliest: %d received\n", g.total);
    ck_assert_int_eq(g.total, 9);
    msgbus_sub_close(sub);

    tu_ck_ok(msgbus_group_reset(bus, topic, group, when));
    sub = subscribe(bus, topic, group, NULL);
    g = drain(sub, "y-", 1500);
    printf("after reset to %s: %d received (%d after it)\n", when, g.total, g.matching);
    ck_assert_int_eq(g.total, 4);
    ck_assert_int_eq(g.matching, 4);
    msgbus_sub_close(sub);

    tu_ck_ok(msgbus_group_reset(bus, topic, group, "earliest"));
    tu_ck_ok(msgbus_group_reset(bus, topic, group, "latest"));
    publish_n(bus, topic, "z", 2);
    sub = subscribe(bus, topic, group, "start=earliest");
    g = drain(sub, "z-", 1500);
    printf("after reset to latest: %d received (%d published after it)\n", g.total,
           g.matching);
    ck_assert_int_eq(g.total, 2);
    ck_assert_int_eq(g.matching, 2);
    msgbus_sub_close(sub);

    /* A group that does not exist yet is created at the position. */
    tu_unique(fresh, sizeof fresh, "pos-reset-new");
    tu_ck_ok(msgbus_group_reset(bus, topic, fresh, when));
    sub = subscribe(bus, topic, fresh, NULL);
    g = drain(sub, "", 1500);
    printf("new group reset to %s: %d received\n", when, g.total);
    ck_assert_int_eq(g.total, 6); /* 4 y + 2 z */
    msgbus_sub_close(sub);

    /* A topic that does not exist. */
    char missing[128];
    tu_unique(missing, sizeof missing, "kafka-pos-missing");
    tu_ck_err(msgbus_group_reset(bus, missing, group, "earliest"), MSGBUS_ERR_NOT_FOUND);
    printf("reset on a missing topic: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), missing));
    msgbus_close(bus);
}
END_TEST

/* ---- pause ------------------------------------------------------------------ */

static json_int_t sub_queued(msgbus_t *bus)
{
    json_t *o = tu_stats(bus);
    json_int_t q = tu_json_int(o, "subscriptions.0.queued");
    json_decref(o);
    return q;
}

/* Receives for `ms`, failing on any message. */
static void expect_nothing(msgbus_sub_t *sub, int ms)
{
    msgbus_msg_t *m = NULL;
    msgbus_err_t e = msgbus_receive(sub, ms, &m);
    ck_assert_msg(e == MSGBUS_ERR_TIMEOUT, "received while paused: %s", msgbus_err_name(e));
}

/* Receives until `n` distinct messages "<prefix>-<i>" came (or nothing
 * for 3 s), each once. */
static void expect_each_once(msgbus_sub_t *sub, const char *prefix, int n)
{
    int *seen = calloc((size_t)n, sizeof *seen);
    int total = 0, dups = 0, foreign = 0;
    msgbus_msg_t *m;
    while ((m = tu_receive(sub, 3000)) != NULL) {
        size_t len = 0;
        const char *p = msgbus_msg_payload(m, &len);
        char buf[64];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 63 ? len : 63), p);
        int i = -1;
        char pre[32];
        if (sscanf(buf, "%31[^-]-%d", pre, &i) == 2 && strcmp(pre, prefix) == 0 && i >= 0 &&
            i < n) {
            if (seen[i]++)
                dups++;
        } else {
            foreign++;
        }
        total++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    int missing = 0;
    for (int i = 0; i < n; i++)
        missing += seen[i] == 0;
    printf("after resume: %d received, %d missing, %d duplicates, %d foreign\n", total, missing,
           dups, foreign);
    ck_assert_int_eq(missing, 0);
    ck_assert_int_eq(dups, 0);
    ck_assert_int_eq(foreign, 0);
    free(seen);
}

START_TEST(pause_stops_fetching_and_resume_delivers_everything_once)
{
    msgbus_t *bus = open_url(NULL);
    char topic[128], group[128];
    new_topic(bus, topic, sizeof topic);
    tu_unique(group, sizeof group, "pos-pause");
    msgbus_sub_t *sub = subscribe(bus, topic, group, NULL);
    publish_n(bus, topic, "warm", 3);
    ck_assert_int_eq(drain(sub, "warm-", 1000).total, 3);

    tu_ck_ok(msgbus_sub_pause(sub));
    tu_ck_ok(msgbus_sub_pause(sub)); /* again: a no-op */
    publish_n(bus, topic, "p", 200);
    expect_nothing(sub, 1200);
    /* The backend stopped fetching: nothing reached msgbus's queue either. */
    json_int_t queued = sub_queued(bus);
    printf("paused: nothing received in 1.2 s, %lld queued\n", (long long)queued);
    ck_assert_int_eq(queued, 0);

    tu_ck_ok(msgbus_sub_resume(sub));
    expect_each_once(sub, "p", 200);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(partitions_assigned_while_paused_start_paused)
{
    msgbus_t *bus = open_url("partitions=3&session.timeout.ms=6000");
    char topic[128], group[128];
    new_topic(bus, topic, sizeof topic);
    tu_unique(group, sizeof group, "pos-pause-rb");
    msgbus_sub_t *a = subscribe(bus, topic, group, NULL);
    tu_ck_ok(msgbus_sub_pause(a));
    /* Two rebalances: b joins (a's assignment shrinks), b leaves (a gets
     * every partition again, new ones among them). */
    msgbus_sub_t *b = subscribe(bus, topic, group, NULL);
    msgbus_sub_close(b);
    /* Until a has every partition again, a message may go nowhere yet;
     * it is not lost either way (the group's committed start). */
    sleep(4);
    publish_n(bus, topic, "r", 60);
    expect_nothing(a, 1200);
    json_int_t queued = sub_queued(bus);
    printf("paused across a rebalance: nothing received in 1.2 s, %lld queued\n",
           (long long)queued);
    ck_assert_int_eq(queued, 0);
    tu_ck_ok(msgbus_sub_resume(a));
    expect_each_once(a, "r", 60);
    msgbus_sub_close(a);
    msgbus_close(bus);
}
END_TEST

/* ---- inspect ---------------------------------------------------------------- */

static json_t *inspect(msgbus_t *bus, const char *topic, const char *group)
{
    char *text = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_ok(msgbus_inspect_json(bus, topic, group, 10000, &text));
    printf("inspect %s/%s in %lld ms: %.600s\n", topic ? topic : "*", group ? group : "*",
           (long long)(tu_now_ms() - t0), text);
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    ck_assert_msg(o != NULL, "inspect answer does not parse: %s", jerr.text);
    msgbus_free(text);
    return o;
}

/* The group object `group` of topic object `t`, or NULL. */
static json_t *group_of(json_t *t, const char *group)
{
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(t, "groups"), i, g)
        if (strcmp(json_string_value(json_object_get(g, "name")), group) == 0)
            return g;
    return NULL;
}

/* The group's lag once it equals `want` (commits trail acks), within 10 s. */
static json_int_t wait_group_lag(msgbus_t *bus, const char *topic, const char *group,
                                 json_int_t want)
{
    json_int_t lag = -1;
    int64_t until = tu_now_ms() + 10000;
    do {
        json_t *o = inspect(bus, topic, group);
        json_t *g = group_of(json_array_get(json_object_get(o, "topics"), 0), group);
        lag = g && json_is_integer(json_object_get(g, "lag"))
                  ? json_integer_value(json_object_get(g, "lag"))
                  : -1;
        json_decref(o);
        if (lag == want)
            break;
        usleep(200 * 1000);
    } while (tu_now_ms() < until);
    return lag;
}

START_TEST(inspect_shows_partitions_and_the_group_lag)
{
    msgbus_t *bus = open_url(NULL);
    char topic[128], group[128];
    new_topic(bus, topic, sizeof topic);
    tu_unique(group, sizeof group, "pos-inspect");
    publish_n(bus, topic, "i", 10);

    /* The topic alone: 3 partitions, 10 messages, retention from the
     * broker, no group yet. */
    json_t *o = inspect(bus, topic, NULL);
    ck_assert_str_eq(json_string_value(tu_json_at(o, "backend")), "kafka");
    json_t *t = json_array_get(json_object_get(o, "topics"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(o, "topics")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(t, "name")), topic);
    ck_assert_int_eq(tu_json_int(t, "partitions"), 3);
    ck_assert_msg(json_is_integer(json_object_get(t, "retention_ms")), "no retention_ms");
    ck_assert_int_eq(json_array_size(json_object_get(t, "groups")), 0);
    /* Each partition's watermarks, with no group: low 0, the highs add up
     * to the 10 published. */
    json_t *wm = json_object_get(t, "watermarks");
    ck_assert_int_eq(json_array_size(wm), 3);
    json_int_t highs = 0;
    for (size_t k = 0; k < 3; k++) {
        json_t *w = json_array_get(wm, k);
        ck_assert_int_eq(tu_json_int(w, "partition"), (json_int_t)k);
        ck_assert_int_eq(tu_json_int(w, "low"), 0);
        highs += tu_json_int(w, "high");
    }
    ck_assert_int_eq(highs, 10);
    json_decref(o);

    /* A member starting at the oldest: it commits its start (0 in each
     * partition) at once, so the lag is all 10. */
    msgbus_sub_t *sub = subscribe(bus, topic, group, "start=earliest");
    o = inspect(bus, topic, group);
    t = json_array_get(json_object_get(o, "topics"), 0);
    json_t *g = group_of(t, group);
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(tu_json_int(g, "members"), 1);
    ck_assert_int_eq(tu_json_int(g, "lag"), 10);
    json_t *parts = json_object_get(g, "partitions");
    ck_assert_int_eq(json_array_size(parts), 3);
    json_int_t hw = 0, lag = 0;
    for (size_t i = 0; i < 3; i++) {
        json_t *p = json_array_get(parts, i);
        ck_assert_int_eq(tu_json_int(p, "partition"), (json_int_t)i);
        ck_assert_int_eq(tu_json_int(p, "committed"), 0);
        hw += tu_json_int(p, "high_watermark");
        lag += tu_json_int(p, "lag");
    }
    ck_assert_int_eq(hw, 10);
    ck_assert_int_eq(lag, 10);
    json_decref(o);

    struct got got = drain(sub, "i-", 1500);
    ck_assert_int_eq(got.total, 10);
    json_int_t after = wait_group_lag(bus, topic, group, 0);
    printf("lag after consuming: %lld\n", (long long)after);
    ck_assert_int_eq(after, 0);
    msgbus_sub_close(sub);

    /* Every topic: ours among them, Kafka's own left out; the closed
     * group has no member. */
    o = inspect(bus, NULL, NULL);
    size_t i;
    json_t *each;
    bool ours = false;
    json_array_foreach(json_object_get(o, "topics"), i, each) {
        const char *name = json_string_value(json_object_get(each, "name"));
        ck_assert_msg(strncmp(name, "__", 2) != 0, "internal topic %s listed", name);
        if (strcmp(name, topic) == 0) {
            ours = true;
            g = group_of(each, group);
            ck_assert_ptr_nonnull(g);
            ck_assert_int_eq(tu_json_int(g, "members"), 0);
            ck_assert_int_eq(tu_json_int(g, "lag"), 0);
        }
    }
    ck_assert(ours);
    json_decref(o);

    char missing[128];
    char *text = NULL;
    tu_unique(missing, sizeof missing, "kafka-pos-missing");
    tu_ck_err(msgbus_inspect_json(bus, missing, NULL, 10000, &text), MSGBUS_ERR_NOT_FOUND);
    printf("missing topic: %s\n", msgbus_last_error());
    tu_ck_err(msgbus_inspect_json(bus, topic, missing, 10000, &text), MSGBUS_ERR_NOT_FOUND);
    printf("missing group: %s\n", msgbus_last_error());
    msgbus_close(bus);
}
END_TEST

/* ---- auto.offset.reset and capabilities ------------------------------------ */

START_TEST(auto_offset_reset_is_the_default_start_and_start_wins)
{
    msgbus_t *bus = open_url("partitions=3&auto.offset.reset=earliest");
    char topic[128], g1[128], g2[128];
    new_topic(bus, topic, sizeof topic);
    publish_n(bus, topic, "old", 4);
    tu_unique(g1, sizeof g1, "pos-aor");
    msgbus_sub_t *sub = subscribe(bus, topic, g1, NULL);
    struct got g = drain(sub, "old-", 1500);
    printf("auto.offset.reset=earliest, no start=: %d received\n", g.total);
    ck_assert_int_eq(g.total, 4);
    msgbus_sub_close(sub);

    tu_unique(g2, sizeof g2, "pos-aor-latest");
    sub = subscribe(bus, topic, g2, "start=latest");
    publish_n(bus, topic, "new", 1);
    g = drain(sub, "new-", 1500);
    printf("auto.offset.reset=earliest, start=latest: %d received (%d new)\n", g.total,
           g.matching);
    ck_assert_int_eq(g.total, 1);
    ck_assert_int_eq(g.matching, 1);
    msgbus_sub_close(sub);
    msgbus_close(bus);

    const char *base = tu_broker_url("kafka");
    char url[1024];
    snprintf(url, sizeof url, "%s%sauto.offset.reset=error", base, strchr(base, '?') ? "&" : "?");
    bus = NULL;
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONFIG);
    printf("auto.offset.reset=error: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "'auto.offset.reset'"));
    ck_assert_ptr_null(bus);
}
END_TEST

START_TEST(capabilities_as_configured)
{
    const uint64_t always = MSGBUS_CAP_KEY_ORDER | MSGBUS_CAP_REPLAY | MSGBUS_CAP_DURABLE |
                            MSGBUS_CAP_SHARED | MSGBUS_CAP_POSITIONS | MSGBUS_CAP_LIST |
                            MSGBUS_CAP_LAG;
    msgbus_t *bus = open_url(NULL);
    printf("caps 0x%llx\n", (unsigned long long)msgbus_caps(bus));
    ck_assert_uint_eq(msgbus_caps(bus), always | MSGBUS_CAP_NO_DUPLICATE_PUBLISH);
    ck_assert_uint_eq(msgbus_max_message_size(bus), 1000000);
    msgbus_close(bus);

    bus = open_url("enable.idempotence=false");
    printf("enable.idempotence=false: caps 0x%llx\n", (unsigned long long)msgbus_caps(bus));
    ck_assert_uint_eq(msgbus_caps(bus), always);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("positions_kafka");
    TCase *tc = tcase_create("positions");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, earliest_starts_a_new_group_and_a_broadcast_at_the_oldest);
    tcase_add_test(tc, a_time_or_a_duration_starts_at_the_first_message_since);
    tcase_add_test(tc, a_group_with_a_position_ignores_start);
    tcase_add_test(tc, group_reset_moves_an_idle_group);
    tcase_add_test(tc, pause_stops_fetching_and_resume_delivers_everything_once);
    tcase_add_test(tc, partitions_assigned_while_paused_start_paused);
    tcase_add_test(tc, inspect_shows_partitions_and_the_group_lag);
    tcase_add_test(tc, auto_offset_reset_is_the_default_start_and_start_wins);
    tcase_add_test(tc, capabilities_as_configured);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
