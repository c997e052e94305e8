/*
 * test_retry.c — the core's retry worker, holds and dead letters on mem://,
 * fast enough to run under ASan and valgrind: the exact backoff sequence,
 * keyless and keyed retries, retry forever, the URL defaults, and shutdown
 * with retries and dead letters still in flight (nothing leaks, nothing
 * crashes, the messages go back to the broker).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static msgbus_t *open_mem(const char *extra)
{
    char url[256], name[64];
    tu_unique(name, sizeof name, "r");
    snprintf(url, sizeof url, "mem://%s%s", name, extra ? extra : "");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static bool payload_is(msgbus_msg_t *m, const char *s)
{
    size_t n;
    const char *p = msgbus_msg_payload(m, &n);
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

START_TEST(backoff_grows_by_the_multiplier_up_to_the_ceiling)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g",
                                 "retry_max_attempts=6&retry_initial_ms=40&retry_multiplier=3&"
                                 "retry_max_ms=400&retry_jitter=0",
                                 &sub));
    tu_publish_str(bus, "t", NULL, "x");
    /* Delays before attempts 2..6: 40, 120, 360, 400 (ceiling), 400. */
    const int64_t want[] = {0, 0, 40, 120, 360, 400, 400};
    int64_t last = 0;
    for (int a = 1; a <= 6; a++) {
        msgbus_msg_t *m = tu_receive(sub, 5000);
        ck_assert_msg(m != NULL, "attempt %d did not come", a);
        int64_t now = tu_now_ms();
        ck_assert_int_eq(msgbus_msg_attempt(m), a);
        if (a > 1) {
            int64_t d = now - last;
            ck_assert_msg(d >= want[a] - 5 && d <= want[a] + 300, "delay before attempt %d: %lld ms, "
                          "want %lld", a, (long long)d, (long long)want[a]);
        }
        last = now;
        if (a < 6)
            tu_ck_ok(msgbus_nack(m));
        else
            tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(url_defaults_apply_and_subscription_options_win)
{
    /* The URL says: no delay, 2 attempts. */
    msgbus_t *bus = open_mem("?retry_initial_ms=0&retry_max_ms=0&retry_max_attempts=2");
    msgbus_sub_t *sub, *dlq;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &sub));
    tu_publish_str(bus, "t", NULL, "a");
    for (int a = 1; a <= 2; a++) {
        msgbus_msg_t *m = tu_receive(sub, 2000);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_eq(msgbus_msg_attempt(m), a);
        tu_ck_ok(msgbus_nack(m));
        msgbus_msg_free(m);
    }
    ck_assert_ptr_null(tu_receive(sub, 300));
    tu_ck_ok(msgbus_subscribe(bus, "t.dlq", "dlq", &dlq));
    msgbus_msg_t *d = tu_receive(dlq, 2000);
    ck_assert_ptr_nonnull(d);
    ck_assert_str_eq(msgbus_msg_header(d, "msgbus-dlq-attempts"), "2");
    ck_assert_str_eq(msgbus_msg_header(d, "msgbus-dlq-error"), "nacked");
    tu_ck_ok(msgbus_ack(d));
    msgbus_msg_free(d);
    msgbus_sub_close(sub);

    /* A subscription's own options win: a custom dead-letter topic and group. */
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "retry_max_attempts=1&dlq_topic=graveyard&dlq_group=ops",
                                 &sub));
    tu_publish_str(bus, "t", NULL, "b");
    msgbus_msg_t *m = tu_receive(sub, 2000);
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(msgbus_nack_reason(m, "bad"));
    msgbus_msg_free(m);
    msgbus_sub_t *gy;
    tu_ck_ok(msgbus_subscribe(bus, "graveyard", "ops", &gy));
    d = tu_receive(gy, 2000);
    ck_assert_ptr_nonnull(d);
    ck_assert(payload_is(d, "b"));
    ck_assert_str_eq(msgbus_msg_header(d, "msgbus-dlq-error"), "bad");
    tu_ck_ok(msgbus_ack(d));
    msgbus_msg_free(d);
    ck_assert_ptr_null(tu_receive(dlq, 200)); /* not on t.dlq */
    msgbus_sub_close(gy);
    msgbus_sub_close(dlq);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(retry_forever_without_dead_letters)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "dlq=off&retry_max_attempts=0&retry_initial_ms=1&retry_max_ms=5",
                                 &sub));
    tu_publish_str(bus, "t", "k", "x");
    for (int a = 1; a <= 30; a++) {
        msgbus_msg_t *m = tu_receive(sub, 2000);
        ck_assert_msg(m != NULL, "attempt %d did not come", a);
        ck_assert_int_eq(msgbus_msg_attempt(m), a);
        tu_ck_ok(a < 30 ? msgbus_nack(m) : msgbus_ack(m));
        msgbus_msg_free(m);
    }
    ck_assert_ptr_null(tu_receive(sub, 100));
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* Keys held behind a retry come after it, in their order; a key that
 * waits does not hold a keyless message. */
START_TEST(held_key_follows_its_retry_in_order)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "retry_initial_ms=300&retry_jitter=0", &sub));
    tu_publish_str(bus, "t", "k", "k1");
    tu_publish_str(bus, "t", "k", "k2");
    tu_publish_str(bus, "t", NULL, "free");
    tu_publish_str(bus, "t", "k", "k3");
    tu_ck_ok(msgbus_flush(bus, 1000, NULL));
    msgbus_msg_t *m = tu_receive(sub, 1000);
    ck_assert(payload_is(m, "k1"));
    tu_ck_ok(msgbus_nack(m)); /* k2, k3 are already queued: they move behind */
    msgbus_msg_free(m);
    const char *order[] = {"free", "k1", "k2", "k3"};
    for (int i = 0; i < 4; i++) {
        m = tu_receive(sub, 2000);
        ck_assert_msg(m != NULL, "message %d (%s) missing", i, order[i]);
        ck_assert_msg(payload_is(m, order[i]), "position %d: want %s", i, order[i]);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* Closing with a retry timer running, a held message parked and a dead
 * letter on its way: no leak, no crash, and the held and waiting messages
 * go back to the broker for the next member. */
START_TEST(close_with_work_in_flight_gives_messages_back)
{
    char url[128], name[64];
    tu_unique(name, sizeof name, "close");
    snprintf(url, sizeof url, "mem://%s", name);
    msgbus_t *keep, *bus;
    tu_ck_ok(msgbus_open(&keep, url, NULL)); /* keeps the named broker alive */
    tu_ck_ok(msgbus_declare(keep, "t", "g"));
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "retry_initial_ms=60000&retry_max_ms=60000", &sub));
    tu_publish_str(keep, "t", "k", "wait");
    tu_publish_str(keep, "t", "k", "held");
    tu_publish_str(keep, "t", "d", "dead");
    tu_ck_ok(msgbus_flush(keep, 1000, NULL));
    for (int i = 0; i < 3; i++) {
        msgbus_msg_t *m = tu_receive(sub, 1000);
        ck_assert_ptr_nonnull(m);
        if (payload_is(m, "wait"))
            tu_ck_ok(msgbus_nack(m));
        else if (payload_is(m, "dead"))
            tu_ck_ok(msgbus_dead_letter(m, "test"));
        else
            ck_abort_msg("the held message was delivered while its key waits");
        msgbus_msg_free(m);
        if (i == 1)
            break;
    }
    msgbus_close(bus); /* closes the sub too */

    msgbus_sub_t *next;
    tu_ck_ok(msgbus_subscribe(keep, "t", "g", &next));
    int got = 0;
    msgbus_msg_t *m;
    while ((m = tu_receive(next, 500)) != NULL) {
        ck_assert_msg(payload_is(m, "wait") || payload_is(m, "held"), "unexpected message back");
        got++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    ck_assert_int_eq(got, 2);
    msgbus_sub_close(next);
    msgbus_close(keep);
}
END_TEST

START_TEST(settling_errors)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *sub;
    tu_ck_err(msgbus_nack_reason(NULL, "x"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_dead_letter(NULL, "x"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_dlq_replay(NULL, "t.dlq", NULL, 0, 0, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_dlq_replay(bus, NULL, NULL, 0, 0, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_dlq_replay(bus, "bad topic", NULL, 0, 0, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_subscribe_ex(bus, "t", "g", "retry_max_attempts", &sub), MSGBUS_ERR_CONFIG);
    msgbus_msg_t *mine;
    tu_ck_ok(msgbus_msg_new(&mine, "x", 1));
    tu_ck_err(msgbus_dead_letter(mine, "x"), MSGBUS_ERR_STATE);
    tu_ck_err(msgbus_nack_reason(mine, "x"), MSGBUS_ERR_STATE);
    msgbus_msg_free(mine);

    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &sub));
    tu_publish_str(bus, "t", NULL, "x");
    msgbus_msg_t *m = tu_receive(sub, 1000);
    ck_assert_ptr_nonnull(m);
    msgbus_sub_close(sub);
    tu_ck_err(msgbus_nack_reason(m, "late"), MSGBUS_ERR_CLOSED);
    tu_ck_err(msgbus_dead_letter(m, "late"), MSGBUS_ERR_CLOSED);
    msgbus_msg_free(m);

    /* A letter without its origin header is left where it is. */
    tu_publish_str(bus, "orphans.dlq", NULL, "no origin");
    tu_ck_ok(msgbus_declare(bus, "orphans.dlq", "dlq"));
    tu_publish_str(bus, "orphans.dlq", NULL, "no origin");
    size_t moved = 9;
    tu_ck_err(msgbus_dlq_replay(bus, "orphans.dlq", NULL, 0, 200, &moved), MSGBUS_ERR_NOT_FOUND);
    ck_assert_uint_eq(moved, 0);
    ck_assert_msg(strstr(msgbus_last_error(), "no msgbus-dlq-topic header"), "%s",
                  msgbus_last_error());
    tu_ck_err(msgbus_dlq_replay(bus, "orphans.dlq", NULL, 0, 200, &moved), MSGBUS_ERR_NOT_FOUND);
    msgbus_close(bus);
}
END_TEST


START_TEST(settling_after_the_bus_closed_is_closed_not_a_crash)
{
    /* msgbus_nack after msgbus_close(bus) touched the freed bus (its retry
     * worker): ASan saw a heap use-after-free. Every settle verb must say
     * MSGBUS_ERR_CLOSED and leave the message to be delivered again. */
    char url[128], name[64];
    tu_unique(name, sizeof name, "afterclose");
    snprintf(url, sizeof url, "mem://%s", name);
    msgbus_t *keep, *bus;
    tu_ck_ok(msgbus_open(&keep, url, NULL));
    tu_ck_ok(msgbus_declare(keep, "t", "g"));
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "retry_initial_ms=1000", &sub));
    for (int i = 0; i < 4; i++)
        tu_publish_str(keep, "t", "k", "m");
    tu_ck_ok(msgbus_flush(keep, 1000, NULL));
    msgbus_msg_t *m[4];
    for (int i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(m[i] = tu_receive(sub, 1000));
    msgbus_close(bus);
    tu_ck_err(msgbus_nack(m[0]), MSGBUS_ERR_CLOSED);
    tu_ck_err(msgbus_nack_reason(m[1], "why"), MSGBUS_ERR_CLOSED);
    tu_ck_err(msgbus_ack(m[2]), MSGBUS_ERR_CLOSED);
    tu_ck_err(msgbus_dead_letter(m[3], "poison"), MSGBUS_ERR_CLOSED);
    tu_ck_err(msgbus_nack(m[0]), MSGBUS_ERR_CLOSED); /* still unsettled, still closed */
    for (int i = 0; i < 4; i++)
        msgbus_msg_free(m[i]);
    msgbus_sub_t *next;
    tu_ck_ok(msgbus_subscribe(keep, "t", "g", &next));
    int got = 0;
    msgbus_msg_t *x;
    while ((x = tu_receive(next, 300)) != NULL) {
        got++;
        tu_ck_ok(msgbus_ack(x));
        msgbus_msg_free(x);
    }
    ck_assert_int_eq(got, 4);
    msgbus_close(keep);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("retry");
    TCase *tc = tcase_create("retry");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, backoff_grows_by_the_multiplier_up_to_the_ceiling);
    tcase_add_test(tc, url_defaults_apply_and_subscription_options_win);
    tcase_add_test(tc, retry_forever_without_dead_letters);
    tcase_add_test(tc, held_key_follows_its_retry_in_order);
    tcase_add_test(tc, close_with_work_in_flight_gives_messages_back);
    tcase_add_test(tc, settling_errors);
    tcase_add_test(tc, settling_after_the_bus_closed_is_closed_not_a_crash);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
