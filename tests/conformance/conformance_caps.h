/*
 * conformance_caps.h — each capability a backend claims holds, and each it
 * does not claim is refused (issue 20). Part of conformance.c (included
 * once, after conformance_positions.h, whose helpers it uses).
 *
 * One test per claim that can be shown inside a conformance run; REPLAY is
 * conformance_positions.h's start and reset tests. DURABLE and
 * NO_DUPLICATE_PUBLISH need a broker restart or a lost confirm: here only
 * the claim is pinned to what docs/conformance.md says per backend, and the
 * doc names the integration test that proves it.
 */
#ifndef MSGBUS_CONFORMANCE_CAPS_H
#define MSGBUS_CONFORMANCE_CAPS_H

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "conformance_positions.h"
#include "conformance_util.h"

#define CF_NCAPS 10 /* bits in MSGBUS_CAP_ALL */

/* ------------------------------------------------- report and require= */

/* The claims docs/conformance.md lists for what no run can show. */
static uint64_t cf_expected_guarantees(void)
{
    if (cf_is("kafka"))
        return MSGBUS_CAP_DURABLE | MSGBUS_CAP_NO_DUPLICATE_PUBLISH;
    if (cf_is("amqp"))
        return MSGBUS_CAP_DURABLE;
    if (cf_is("sqlite")) /* synchronous=full; a publish is one transaction */
        return MSGBUS_CAP_DURABLE | MSGBUS_CAP_NO_DUPLICATE_PUBLISH;
    return MSGBUS_CAP_NO_DUPLICATE_PUBLISH; /* mem: publish is a function call */
}

START_TEST(caps_are_reported_alike_and_enforced_by_require)
{
    ck_assert_uint_eq(MSGBUS_CAP_ALL, (1u << CF_NCAPS) - 1);
    for (int i = 0; i < CF_NCAPS; i++)
        ck_assert_ptr_nonnull(msgbus_cap_name(1ull << i));
    ck_assert_ptr_null(msgbus_cap_name(1ull << CF_NCAPS));
    ck_assert_ptr_null(msgbus_cap_name(MSGBUS_CAP_KEY_ORDER | MSGBUS_CAP_REPLAY));
    ck_assert_ptr_null(msgbus_cap_name(0));
    ck_assert_uint_eq(msgbus_caps(NULL), 0);

    msgbus_t *bus = cf_open_replay();
    uint64_t caps = msgbus_caps(bus);
    ck_assert_uint_eq(caps & ~(uint64_t)MSGBUS_CAP_ALL, 0);
    char *text = NULL;
    tu_ck_ok(msgbus_caps_json(bus, &text));
    printf("  caps[%s]: %s\n", cf_backend, text);
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    msgbus_free(text);
    ck_assert_msg(o != NULL, "msgbus_caps_json is not JSON: %s", jerr.text);
    ck_assert_str_eq(json_string_value(json_object_get(o, "backend")), msgbus_backend(bus));
    ck_assert_int_eq(json_integer_value(json_object_get(o, "max_message_size")),
                     (json_int_t)msgbus_max_message_size(bus));
    json_t *arr = json_object_get(o, "capabilities");
    ck_assert_uint_eq(json_array_size(arr), CF_NCAPS);
    for (int i = 0; i < CF_NCAPS; i++) {
        json_t *c = json_array_get(arr, (size_t)i);
        const char *name = json_string_value(json_object_get(c, "name"));
        bool yes = json_is_true(json_object_get(c, "supported"));
        json_t *why = json_object_get(c, "why_not");
        ck_assert_pstr_eq(name, msgbus_cap_name(1ull << i));
        ck_assert_msg(yes == ((caps >> i) & 1), "'%s': JSON says %d, msgbus_caps %d", name,
                      yes, (int)((caps >> i) & 1));
        ck_assert_msg(json_is_string(json_object_get(c, "description")), "'%s' undescribed",
                      name);
        ck_assert_msg(yes ? why == NULL : json_string_length(why) > 0,
                      "'%s': why_not must be given exactly when not supported", name);
    }
    json_decref(o);
    uint64_t pinned = MSGBUS_CAP_DURABLE | MSGBUS_CAP_NO_DUPLICATE_PUBLISH;
    ck_assert_msg((caps & pinned) == cf_expected_guarantees(),
                  "%s claims durable=%d no_duplicate_publish=%d; docs/conformance.md says "
                  "otherwise",
                  cf_backend, (int)!!(caps & MSGBUS_CAP_DURABLE),
                  (int)!!(caps & MSGBUS_CAP_NO_DUPLICATE_PUBLISH));

    /* require=<each>: opens when claimed, CONFIG naming it when not. */
    for (int i = 0; i < CF_NCAPS; i++) {
        const char *name = msgbus_cap_name(1ull << i);
        char opt[64], url[sizeof cf_url + 128];
        snprintf(opt, sizeof opt, "require=%s", name);
        cf_replay_url(url, sizeof url, opt);
        msgbus_t *other = NULL;
        msgbus_err_t e = msgbus_open(&other, url, NULL);
        if ((caps >> i) & 1) {
            ck_assert_msg(e == MSGBUS_OK, "require=%s refused though claimed: %s (%s)", name,
                          msgbus_err_name(e), msgbus_last_error());
            ck_assert_uint_eq(msgbus_caps(other), caps);
            msgbus_close(other);
        } else {
            ck_assert_msg(e == MSGBUS_ERR_CONFIG, "require=%s: %s, want MSGBUS_ERR_CONFIG", name,
                          msgbus_err_name(e));
            ck_assert_msg(strstr(msgbus_last_error(), name), "require=%s: '%s' does not name it",
                          name, msgbus_last_error());
            ck_assert_ptr_null(other);
        }
    }
    /* Every claimed one at once. */
    char all[256] = "require=", url[sizeof cf_url + 300];
    for (int i = 0, k = 0; i < CF_NCAPS; i++)
        if ((caps >> i) & 1)
            snprintf(all + strlen(all), sizeof all - strlen(all), "%s%s", k++ ? "," : "",
                     msgbus_cap_name(1ull << i));
    if (caps) {
        cf_replay_url(url, sizeof url, all);
        msgbus_t *other = NULL;
        tu_ck_ok(msgbus_open(&other, url, NULL));
        msgbus_close(other);
    }
    cf_replay_url(url, sizeof url, "require=key_order,bogus");
    msgbus_t *other = NULL;
    tu_ck_err(msgbus_open(&other, url, NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "bogus"), "%s", msgbus_last_error());
    ck_assert_ptr_null(other);
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------------------------ key_order */

/* KEY_ORDER: two members on their own buses, 5 keys × 48 messages. A
 * processes slowly (acks each message 30 ms after receiving it), B at
 * once; A closes mid-stream with a message unsettled. Processing order is
 * ack order: per key, the first successful ack of each message must come
 * in publish order, and every message must be acked. Later acks of a
 * message already acked (a redelivery after the close or a rebalance) are
 * ignored. Not claimed: nothing is promised, nothing checked. */
START_TEST(key_order_claimed_holds_across_members)
{
    enum { KEYS = 5, PER_KEY = 48, TOTAL = KEYS * PER_KEY };
    msgbus_t *a_bus = cf_open();
    if (!cf_has(a_bus, MSGBUS_CAP_KEY_ORDER)) {
        printf("  key_order: not claimed by %s, nothing promised\n", cf_backend);
        msgbus_close(a_bus);
        return;
    }
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "order");
    cf_name(group, sizeof group, "g");
    msgbus_t *b_bus = cf_open();
    tu_ck_ok(msgbus_declare(a_bus, topic, group));
    msgbus_sub_t *a = NULL, *b = NULL;
    tu_ck_ok(msgbus_subscribe(a_bus, topic, group, &a));
    tu_ck_ok(msgbus_subscribe(b_bus, topic, group, &b));

    static bool acked[TOTAL];
    memset(acked, 0, sizeof acked);
    int next[KEYS] = {0}, done = 0, by_a = 0, by_b = 0, dups = 0, published = 0;
    msgbus_msg_t *a_held = NULL;
    int64_t a_since = 0;
    bool a_open = true;
    int64_t deadline = tu_now_ms() + 120000;
    while (done < TOTAL && tu_now_ms() < deadline) {
        /* Publish in two halves: the second after A is gone. */
        if (published == 0 || (published < TOTAL && !a_open)) {
            int upto = published == 0 ? TOTAL / 2 : TOTAL;
            for (int i = published; i < upto; i++) {
                char p[32], k[8];
                snprintf(p, sizeof p, "n=%d", i);
                snprintf(k, sizeof k, "k%d", i % KEYS);
                cf_publish_str(a_open ? a_bus : b_bus, topic, k, p);
            }
            published = upto;
            cf_flush_ok(a_open ? a_bus : b_bus);
        }
        for (int who = 0; who < 2; who++) {
            msgbus_sub_t *s = who == 0 ? a : b;
            msgbus_msg_t *m = NULL;
            if (who == 0) {
                if (!a_open)
                    continue;
                if (a_held) { /* A is still "processing" */
                    if (tu_now_ms() - a_since < 30)
                        continue;
                    m = a_held;
                    a_held = NULL;
                } else {
                    m = tu_receive(s, 5);
                    if (m) {
                        a_held = m;
                        a_since = tu_now_ms();
                    }
                    continue;
                }
            } else if (!(m = tu_receive(s, 5))) {
                continue;
            }
            int n = cf_payload_number(m);
            ck_assert_msg(n >= 0 && n < TOTAL, "a message of another test");
            if (msgbus_ack(m) == MSGBUS_OK) {
                if (acked[n]) {
                    dups++;
                } else {
                    ck_assert_msg(n / KEYS == next[n % KEYS],
                                  "key k%d: n=%d processed (by %s) when n=%d was next",
                                  n % KEYS, n, who ? "B" : "A",
                                  next[n % KEYS] * KEYS + n % KEYS);
                    acked[n] = true;
                    next[n % KEYS]++;
                    done++;
                    if (who)
                        by_b++;
                    else
                        by_a++;
                }
            }
            msgbus_msg_free(m);
        }
        if (a_open && done >= TOTAL / 4 && by_a >= 5 && a_held) {
            msgbus_msg_free(a_held); /* unsettled: delivered again to B */
            a_held = NULL;
            msgbus_sub_close(a);
            a_open = false;
            printf("  key_order: A closed mid-stream after %d processed (A %d, B %d)\n", done,
                   by_a, by_b);
        }
    }
    printf("  key_order: %d of %d processed in key order (A %d, B %d), %d acked again\n", done,
           TOTAL, by_a, by_b, dups);
    ck_assert_int_eq(done, TOTAL);
    ck_assert_msg(!a_open, "A never got a message to hold: the test did not run as meant");
    ck_assert_msg(by_a > 0 && by_b > 0, "both members must have worked (A %d, B %d)", by_a,
                  by_b);
    msgbus_sub_close(b);
    msgbus_close(a_bus);
    msgbus_close(b_bus);
}
END_TEST

/* ---------------------------------------------- positions, redelivered */

/* POSITIONS: a partition >= 0 and offsets rising within it; not claimed:
 * -1 / -1. REDELIVERED: a message received, not acked, its subscription
 * closed, comes to the next member with the flag 1 (0 the first time);
 * not claimed: always 0. */
START_TEST(positions_and_redelivered_flag_as_claimed)
{
    enum { N = 12 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "where");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    bool positions = cf_has(bus, MSGBUS_CAP_POSITIONS);
    bool redelivered = cf_has(bus, MSGBUS_CAP_REDELIVERED);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    for (int i = 0; i < N; i++) {
        char p[16], k[8];
        snprintf(p, sizeof p, "n=%d", i);
        snprintf(k, sizeof k, "k%d", i % 3);
        cf_publish_str(bus, topic, k, p);
    }
    cf_flush_ok(bus);
    int64_t last_offset[64];
    for (int i = 0; i < 64; i++)
        last_offset[i] = -1;
    char kept_id[128] = "";
    for (int i = 0; i < N; i++) {
        msgbus_msg_t *m = cf_receive_one(sub);
        int32_t p = msgbus_msg_partition(m);
        int64_t o = msgbus_msg_offset(m);
        if (positions) {
            ck_assert_msg(p >= 0 && p < 64, "partition %d", (int)p);
            ck_assert_msg(o > last_offset[p], "partition %d: offset %lld after %lld", (int)p,
                          (long long)o, (long long)last_offset[p]);
            last_offset[p] = o;
        } else {
            ck_assert_msg(p == -1 && o == -1, "positions not claimed, yet %d/%lld", (int)p,
                          (long long)o);
        }
        ck_assert_int_eq(msgbus_msg_redelivered(m), 0); /* a first delivery */
        if (i == N - 1) {
            snprintf(kept_id, sizeof kept_id, "%s", msgbus_msg_id(m));
            msgbus_msg_free(m); /* unsettled */
        } else {
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
    }
    msgbus_sub_close(sub);
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *again = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(again), kept_id);
    printf("  where[%s]: positions %s, redelivered %s: again with flag %d, attempt %d\n",
           cf_backend, positions ? "claimed" : "not claimed",
           redelivered ? "claimed" : "not claimed", msgbus_msg_redelivered(again),
           msgbus_msg_attempt(again));
    ck_assert_int_eq(msgbus_msg_redelivered(again), redelivered ? 1 : 0);
    tu_ck_ok(msgbus_ack(again));
    msgbus_msg_free(again);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------------------------ list, lag */

static bool cf_json_name_is(json_t *o, const char *name)
{
    const char *v = json_string_value(json_object_get(o, "name"));
    return v && strcmp(v, name) == 0;
}

/* The group object of `group` on `topic` in an inspect answer, or NULL. */
static json_t *cf_inspect_group(json_t *o, const char *topic, const char *group)
{
    json_t *topics = json_object_get(o, "topics");
    for (size_t i = 0; i < json_array_size(topics); i++) {
        json_t *t = json_array_get(topics, i);
        if (!cf_json_name_is(t, topic))
            continue;
        json_t *gs = json_object_get(t, "groups");
        for (size_t j = 0; j < json_array_size(gs); j++) {
            json_t *g = json_array_get(gs, j);
            if (cf_json_name_is(g, group))
                return g;
        }
    }
    return NULL;
}

/* The group's lag per msgbus_inspect_json (-1: not reported), waiting up
 * to `wait_ms` for it to become `want` (Kafka commits and its admin API's
 * view catch up a little later). */
static json_int_t cf_wait_lag(msgbus_t *bus, const char *topic, const char *group,
                              json_int_t want, int wait_ms)
{
    json_int_t lag = -1;
    int64_t deadline = tu_now_ms() + wait_ms;
    do {
        char *text = NULL;
        tu_ck_ok(msgbus_inspect_json(bus, topic, group, 10000, &text));
        json_t *o = json_loads(text, 0, NULL);
        msgbus_free(text);
        json_t *g = cf_inspect_group(o, topic, group);
        ck_assert_msg(g != NULL, "inspect of '%s' shows no group '%s'", topic, group);
        json_t *l = json_object_get(g, "lag");
        lag = json_is_integer(l) ? json_integer_value(l) : -1;
        json_decref(o);
        if (lag == want)
            break;
        usleep(200 * 1000);
    } while (tu_now_ms() < deadline);
    return lag;
}

START_TEST(list_and_lag_as_claimed)
{
    enum { N = 8 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "list");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    tu_ck_ok(msgbus_declare(bus, topic, group));

    char *text = NULL;
    msgbus_err_t e = msgbus_inspect_json(bus, NULL, NULL, 10000, &text);
    if (cf_has(bus, MSGBUS_CAP_LIST)) {
        tu_ck_ok(e);
        json_t *o = json_loads(text, 0, NULL);
        ck_assert_ptr_nonnull(o);
        msgbus_free(text);
        ck_assert_msg(cf_inspect_group(o, topic, group) != NULL,
                      "the listing of every topic misses '%s' / '%s'", topic, group);
        json_decref(o);
    } else {
        ck_assert_msg(e == MSGBUS_ERR_UNSUPPORTED, "list not claimed: %s, want UNSUPPORTED",
                      msgbus_err_name(e));
        ck_assert_msg(strstr(msgbus_last_error(), "list"), "%s", msgbus_last_error());
    }

    for (int i = 0; i < N; i++)
        cf_publish_str(bus, topic, "k", "n=1");
    cf_flush_ok(bus);
    bool lag = cf_has(bus, MSGBUS_CAP_LAG);
    json_int_t before = cf_wait_lag(bus, topic, group, N, lag ? 30000 : 0);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    for (int i = 0; i < N; i++) {
        msgbus_msg_t *m = cf_receive_one(sub);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub); /* Kafka: its acks are committed */
    json_int_t after = cf_wait_lag(bus, topic, group, 0, lag ? 30000 : 0);
    printf("  lag[%s] (%s): %lld after %d publishes, %lld after consuming\n", cf_backend,
           lag ? "claimed" : "not claimed", (long long)before, N, (long long)after);
    if (lag) {
        ck_assert_int_eq(before, N);
        ck_assert_int_eq(after, 0);
    } else {
        ck_assert_msg(before == -1 && after == -1, "lag not claimed, yet reported");
    }
    msgbus_close(bus);
}
END_TEST

/* --------------------------------------------------------------- shared */

/* SHARED: a child process with a bus of its own on the same URL receives
 * what this process publishes. Not claimed (mem://): it receives nothing.
 * The child is forked before this process opens anything, and reports by
 * its exit code: 0 as claimed, 1 not, 2 could not subscribe. */
static int cf_shared_child(const char *topic, const char *group, bool claimed, int ready_fd)
{
    msgbus_t *bus = NULL;
    msgbus_sub_t *sub = NULL;
    if (msgbus_open(&bus, cf_url, NULL) || msgbus_subscribe(bus, topic, group, &sub))
        return 2;
    if (write(ready_fd, "r", 1) != 1)
        return 2;
    msgbus_msg_t *m = NULL;
    msgbus_err_t e = msgbus_receive(sub, claimed ? CF_FIRST_MS : 1500, &m);
    int verdict;
    if (claimed)
        verdict = e == MSGBUS_OK && cf_payload_is(m, "from the parent") ? 0 : 1;
    else
        verdict = e == MSGBUS_ERR_TIMEOUT ? 0 : 1;
    if (m) {
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return verdict;
}

START_TEST(shared_claimed_reaches_another_process)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "shared");
    cf_name(group, sizeof group, "g");
    /* Ask for the claim on a bus closed again before the fork, so the
     * child inherits no open bus (mem: no broker either). */
    msgbus_t *probe = cf_open();
    bool claimed = cf_has(probe, MSGBUS_CAP_SHARED);
    msgbus_close(probe);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        _exit(cf_shared_child(topic, group, claimed, fds[1]));
    }
    close(fds[1]);
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    char c = 0;
    bool ready = poll(&pfd, 1, 60000) == 1 && read(fds[0], &c, 1) == 1;
    close(fds[0]);
    if (!ready) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        ck_abort_msg("the child process could not subscribe");
    }
    msgbus_t *bus = cf_open();
    cf_publish_str(bus, topic, NULL, "from the parent");
    cf_flush_ok(bus);
    int status = 0;
    int64_t deadline = tu_now_ms() + CF_FIRST_MS + 15000;
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && tu_now_ms() < deadline)
        usleep(50 * 1000);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        ck_abort_msg("the child process did not finish in time");
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    printf("  shared[%s] (%s): the child process %s\n", cf_backend,
           claimed ? "claimed" : "not claimed",
           code == 0 ? (claimed ? "received the message" : "received nothing, as it should")
                     : "disagreed with the claim");
    ck_assert_msg(code == 0, "shared %s, but the child's verdict is %d", claimed ? "claimed" :
                  "not claimed", code);
    msgbus_close(bus);
}
END_TEST

/* ----------------------------------------------------- max message size */

START_TEST(max_message_size_is_enforced)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "max");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    size_t max = msgbus_max_message_size(bus);
    ck_assert_uint_eq(msgbus_max_message_size(NULL), 0);
    printf("  max_message_size[%s]: %zu\n", cf_backend, max);
    /* A limit above 16 MiB (mem's 64 MiB, RabbitMQ's 128 MiB) is not worth
     * allocating and pushing through a broker in a conformance run: the
     * limit itself is what the unit tests check there. */
    if (max == 0 || max > (16u << 20)) {
        msgbus_close(bus);
        return;
    }
    tu_ck_ok(msgbus_declare(bus, topic, group));
    unsigned char *big = malloc(max + 1);
    ck_assert_ptr_nonnull(big);
    for (size_t i = 0; i <= max; i++)
        big[i] = (unsigned char)(i * 7919u >> 3); /* does not compress much */
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, big, max + 1));
    free(big);
    struct cf_reports rep;
    cf_reports_init(&rep, topic, 1);
    msgbus_err_t e = msgbus_publish(bus, topic, m, cf_on_report, &rep);
    msgbus_msg_free(m);
    if (e == MSGBUS_OK) {
        size_t failed = 0;
        msgbus_err_t f = msgbus_flush(bus, 30000, &failed);
        ck_assert_msg(f == MSGBUS_ERR_DELIVERY && failed == 1, "flush: %s, %zu failed",
                      msgbus_err_name(f), failed);
        ck_assert_int_eq(rep.calls, 1);
        e = rep.last_status;
        printf("  %zu + 1 bytes: reported %s (%s)\n", max, msgbus_err_name(e), rep.last_error);
    } else {
        printf("  %zu + 1 bytes: publish gave %s (%s)\n", max, msgbus_err_name(e),
               msgbus_last_error());
    }
    ck_assert_msg(e == MSGBUS_ERR_TOO_LARGE, "max+1 bytes: %s, want MSGBUS_ERR_TOO_LARGE",
                  msgbus_err_name(e));
    cf_ids_free(&rep.ids);
    msgbus_close(bus);
}
END_TEST

#endif
