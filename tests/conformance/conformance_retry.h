/*
 * conformance_retry.h — retry with backoff, dead letters and replay, as an
 * application sees them on every backend (docs/semantics.md, "Retry and
 * dead letters"). Included by conformance.c only.
 */
#ifndef MSGBUS_CONFORMANCE_RETRY_H
#define MSGBUS_CONFORMANCE_RETRY_H

#include "conformance_util.h"

static const char cf_poison[] = "poison\0payload\xff\x01";
#define CF_POISON_LEN (sizeof cf_poison - 1)

/* The dead-letter topic of `topic` with the default name. */
static void cf_dlq_name(char *buf, size_t n, const char *topic)
{
    snprintf(buf, n, "%s.dlq", topic);
}

static msgbus_msg_t *cf_receive_within(msgbus_sub_t *sub, int ms, const char *what)
{
    msgbus_msg_t *m = tu_receive(sub, ms);
    ck_assert_msg(m != NULL, "no message within %d ms: %s", ms, what);
    return m;
}

START_TEST(retry_counts_attempts_backs_off_then_dead_letters)
{
    enum { INITIAL = 400 };
    char topic[128], group[128], dlq[160];
    cf_name(topic, sizeof topic, "retry");
    cf_name(group, sizeof group, "g");
    cf_dlq_name(dlq, sizeof dlq, topic);
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group,
                                 "retry_max_attempts=3&retry_initial_ms=400&retry_multiplier=2&"
                                 "retry_jitter=0",
                                 &sub));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, cf_poison, CF_POISON_LEN));
    tu_ck_ok(msgbus_msg_set_key(m, "pk", 2));
    tu_ck_ok(msgbus_msg_set_header(m, "trace", "t-1"));
    char *id = strdup(msgbus_msg_id(m));
    int64_t ts = msgbus_msg_timestamp(m);
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    cf_flush_ok(bus);

    int64_t t[4] = {0};
    int64_t start = tu_now_ms();
    for (int a = 1; a <= 3; a++) {
        msgbus_msg_t *r = cf_receive_within(sub, CF_FIRST_MS, "the retried message");
        t[a] = tu_now_ms();
        ck_assert_pstr_eq(msgbus_msg_id(r), id);
        ck_assert_int_eq(msgbus_msg_attempt(r), a);
        char why[32];
        snprintf(why, sizeof why, "boom %d", a);
        tu_ck_ok(msgbus_nack_reason(r, why));
        msgbus_msg_free(r);
    }
    /* Backoff: 400 ms before attempt 2, 800 ms before attempt 3 (no
     * jitter). Lower bound strict (a timer never fires early; 20 ms for
     * clock granularity), upper bound generous for a loaded machine. */
    int64_t d2 = t[2] - t[1], d3 = t[3] - t[2];
    printf("retry[%s]: delays %lld ms and %lld ms (policy 400, 800)\n", cf_backend,
           (long long)d2, (long long)d3);
    ck_assert_msg(d2 >= INITIAL - 20 && d2 <= INITIAL + 2000, "delay before attempt 2: %lld ms",
                  (long long)d2);
    ck_assert_msg(d3 >= 2 * INITIAL - 20 && d3 <= 2 * INITIAL + 2000,
                  "delay before attempt 3: %lld ms", (long long)d3);

    /* The third nack was the last attempt: it goes to <topic>.dlq, not back. */
    msgbus_msg_t *again = tu_receive(sub, 2500);
    ck_assert_msg(again == NULL, "message came back after its last attempt (attempt %d)",
                  msgbus_msg_attempt(again));

    /* msgbus declared the dead-letter topic's group "dlq" before publishing
     * to it, so a consumer that comes later still finds the letter. */
    msgbus_sub_t *ds = NULL;
    tu_ck_ok(msgbus_subscribe(bus, dlq, "dlq", &ds));
    msgbus_msg_t *d = cf_receive_within(ds, CF_FIRST_MS, "the dead letter");
    size_t len = 0, klen = 0;
    const void *p = msgbus_msg_payload(d, &len);
    const void *k = msgbus_msg_key(d, &klen);
    ck_assert_msg(len == CF_POISON_LEN && memcmp(p, cf_poison, len) == 0,
                  "dead letter payload differs (%zu bytes)", len);
    ck_assert_msg(k && klen == 2 && memcmp(k, "pk", 2) == 0, "dead letter key differs");
    ck_assert_pstr_eq(msgbus_msg_id(d), id);
    ck_assert_pstr_eq(msgbus_msg_header(d, "trace"), "t-1");
    ck_assert_pstr_eq(msgbus_msg_header(d, "msgbus-dlq-topic"), topic);
    ck_assert_pstr_eq(msgbus_msg_header(d, "msgbus-dlq-group"), group);
    ck_assert_pstr_eq(msgbus_msg_header(d, "msgbus-dlq-attempts"), "3");
    ck_assert_pstr_eq(msgbus_msg_header(d, "msgbus-dlq-error"), "boom 3");
    const char *when = msgbus_msg_header(d, "msgbus-dlq-time");
    ck_assert_msg(when && strlen(when) == 24 && when[10] == 'T' && when[23] == 'Z',
                  "msgbus-dlq-time is not an RFC 3339 UTC time: %s", when ? when : "(none)");
    ck_assert_int_eq(msgbus_msg_timestamp(d), ts);
    printf("retry[%s]: dead letter %s after %lld ms, headers topic=%s attempts=%s error=%s "
           "time=%s\n",
           cf_backend, id, (long long)(tu_now_ms() - start),
           msgbus_msg_header(d, "msgbus-dlq-topic"), msgbus_msg_header(d, "msgbus-dlq-attempts"),
           msgbus_msg_header(d, "msgbus-dlq-error"), when);
    tu_ck_ok(msgbus_ack(d));
    msgbus_msg_free(d);
    msgbus_msg_t *extra = tu_receive(ds, 1500);
    ck_assert_msg(extra == NULL, "a second dead letter arrived");
    free(id);
    msgbus_sub_close(ds);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* A poison message with key "p" waits for its retry; 20 messages with other
 * keys published after it arrive without waiting for that backoff, and a
 * later message with key "p" waits behind the retry. */
START_TEST(poison_message_delays_only_its_own_key)
{
    enum { N = 20, BACKOFF = 3000 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "poison");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group,
                                 "retry_max_attempts=2&retry_initial_ms=3000&retry_jitter=0", &sub));
    cf_publish_str(bus, topic, "p", "p-1");
    for (int i = 0; i < N; i++) {
        char key[16], payload[16];
        snprintf(key, sizeof key, "o%d", i);
        snprintf(payload, sizeof payload, "o-%d", i);
        cf_publish_str(bus, topic, key, payload);
    }
    cf_publish_str(bus, topic, "p", "p-2");
    cf_flush_ok(bus);

    int64_t nacked_at = 0, last_other = 0, p1_again = 0, p2_at = 0;
    int others = 0, p1_attempts = 0;
    while (others < N || p2_at == 0) {
        msgbus_msg_t *m = tu_receive(sub, CF_FIRST_MS);
        ck_assert_msg(m != NULL, "stalled: others=%d/%d p1_attempts=%d p2=%s", others, N,
                      p1_attempts, p2_at ? "yes" : "no");
        int64_t now = tu_now_ms();
        if (cf_payload_is(m, "p-1")) {
            p1_attempts++;
            ck_assert_int_eq(msgbus_msg_attempt(m), p1_attempts);
            ck_assert_msg(p2_at == 0, "p-2 overtook the retry of p-1 (same key)");
            if (p1_attempts == 1) {
                nacked_at = now;
                tu_ck_ok(msgbus_nack_reason(m, "poison"));
            } else {
                p1_again = now;
                tu_ck_ok(msgbus_dead_letter(m, "still poison"));
            }
        } else if (cf_payload_is(m, "p-2")) {
            ck_assert_msg(p1_again != 0, "p-2 arrived before the retry of p-1 (same key)");
            p2_at = now;
            tu_ck_ok(msgbus_ack(m));
        } else {
            others++;
            last_other = now;
            tu_ck_ok(msgbus_ack(m));
        }
        msgbus_msg_free(m);
    }
    ck_assert_msg(nacked_at != 0, "p-1 never arrived");
    printf("poison[%s]: %d other keys done %lld ms after the nack; retry after %lld ms; "
           "same-key p-2 after %lld ms\n",
           cf_backend, others, (long long)(last_other - nacked_at),
           (long long)(p1_again - nacked_at), (long long)(p2_at - nacked_at));
    ck_assert_msg(last_other - nacked_at < BACKOFF - 1000,
                  "messages with other keys waited for the poison message's backoff (%lld ms)",
                  (long long)(last_other - nacked_at));
    ck_assert_msg(p1_again - nacked_at >= BACKOFF - 20, "retry came early: %lld ms",
                  (long long)(p1_again - nacked_at));
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(dead_letter_at_once_then_replay_moves_it_back)
{
    char topic[128], group[128], dlq[160];
    cf_name(topic, sizeof topic, "replay");
    cf_name(group, sizeof group, "g");
    cf_dlq_name(dlq, sizeof dlq, topic);
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, cf_poison, CF_POISON_LEN));
    tu_ck_ok(msgbus_msg_set_key(m, "rk", 2));
    tu_ck_ok(msgbus_msg_set_header(m, "trace", "t-2"));
    char *id = strdup(msgbus_msg_id(m));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    cf_flush_ok(bus);

    msgbus_msg_t *r = cf_receive_one(sub);
    ck_assert_int_eq(msgbus_msg_attempt(r), 1);
    tu_ck_ok(msgbus_dead_letter(r, "cannot parse"));
    tu_ck_err(msgbus_dead_letter(r, "again"), MSGBUS_ERR_STATE);
    tu_ck_err(msgbus_ack(r), MSGBUS_ERR_STATE);
    msgbus_msg_free(r);
    msgbus_msg_t *none = tu_receive(sub, 1500);
    ck_assert_msg(none == NULL, "a dead-lettered message was delivered again");

    size_t moved = 99;
    tu_ck_ok(msgbus_dlq_replay(bus, dlq, NULL, 0, 5000, &moved));
    ck_assert_uint_eq(moved, 1);

    msgbus_msg_t *back = cf_receive_one(sub);
    size_t len = 0, klen = 0;
    const void *p = msgbus_msg_payload(back, &len);
    const void *k = msgbus_msg_key(back, &klen);
    ck_assert_pstr_eq(msgbus_msg_id(back), id);
    ck_assert_msg(len == CF_POISON_LEN && memcmp(p, cf_poison, len) == 0, "replayed payload differs");
    ck_assert_msg(k && klen == 2 && memcmp(k, "rk", 2) == 0, "replayed key differs");
    ck_assert_pstr_eq(msgbus_msg_header(back, "trace"), "t-2");
    ck_assert_ptr_null(msgbus_msg_header(back, "msgbus-dlq-topic"));
    ck_assert_ptr_null(msgbus_msg_header(back, "msgbus-dlq-error"));
    ck_assert_int_eq(msgbus_msg_attempt(back), 1);
    tu_ck_ok(msgbus_ack(back));
    msgbus_msg_free(back);

    /* The dead-letter topic is empty now. */
    tu_ck_ok(msgbus_dlq_replay(bus, dlq, NULL, 0, 1500, &moved));
    ck_assert_uint_eq(moved, 0);
    printf("replay[%s]: message %s dead-lettered, replayed, received again with attempt 1\n",
           cf_backend, id);
    free(id);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(retry_options_are_checked_and_change_nothing_when_wrong)
{
    char topic[128];
    cf_name(topic, sizeof topic, "ropt");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = (msgbus_sub_t *)0x1;
    tu_ck_err(msgbus_subscribe_ex(bus, topic, "g", "retry_max_atempts=3", &sub),
              MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "retry_max_atempts") &&
                      strstr(msgbus_last_error(), "did you mean 'retry_max_attempts'"),
                  "%s", msgbus_last_error());
    tu_ck_err(msgbus_subscribe_ex(bus, topic, "g", "dlq=off", &sub), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "retry_max_attempts=0"), "%s", msgbus_last_error());
    tu_ck_err(msgbus_subscribe_ex(bus, topic, "g", "retry_multiplier=0.5", &sub),
              MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "retry_multiplier"), "%s", msgbus_last_error());
    tu_ck_err(msgbus_subscribe_ex(bus, topic, "g", "retry_initial_ms=500&retry_max_ms=100", &sub),
              MSGBUS_ERR_CONFIG);
    tu_ck_err(msgbus_subscribe_ex(bus, topic, "g", "dlq_topic=bad topic", &sub), MSGBUS_ERR_CONFIG);
    tu_ck_err(msgbus_subscribe_ex(bus, topic, "g", "retry_jitter", &sub), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_eq(sub, (msgbus_sub_t *)0x1);

    /* dlq=off with unlimited retries is allowed; dead_letter then refuses. */
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, "g", "dlq=off&retry_max_attempts=0", &sub));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    cf_flush_ok(bus);
    msgbus_msg_t *r = cf_receive_one(sub);
    ck_assert_ptr_null(msgbus_msg_key(r, NULL));
    tu_ck_ok(msgbus_nack(r)); /* a keyless message comes back keyless */
    msgbus_msg_free(r);
    r = cf_receive_one(sub);
    ck_assert_int_eq(msgbus_msg_attempt(r), 2);
    ck_assert_msg(msgbus_msg_key(r, NULL) == NULL, "a keyless message got a key on redelivery");
    tu_ck_err(msgbus_dead_letter(r, "no"), MSGBUS_ERR_STATE);
    ck_assert_msg(strstr(msgbus_last_error(), "dlq=off"), "%s", msgbus_last_error());
    tu_ck_ok(msgbus_ack(r)); /* dead_letter changed nothing: ack still works */
    msgbus_msg_free(r);
    msgbus_sub_close(sub);
    msgbus_close(bus);

    /* The same options in the URL are the bus's defaults, checked at open. */
    char url[1200];
    msgbus_t *b2 = (msgbus_t *)0x1;
    cf_url_with(url, sizeof url, cf_url, "retry_max_attempts=lots");
    tu_ck_err(msgbus_open(&b2, url, NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "retry_max_attempts"), "%s", msgbus_last_error());
    ck_assert_ptr_eq(b2, (msgbus_t *)0x1);
    cf_url_with(url, sizeof url, cf_url, "dlq_topic=x");
    tu_ck_err(msgbus_open(&b2, url, NULL), MSGBUS_ERR_CONFIG);
}
END_TEST

#endif
