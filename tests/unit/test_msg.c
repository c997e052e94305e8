/*
 * test_msg.c — messages and headers: binary payloads, keys, header rules,
 * ids and timestamps, and the rule that bad input changes nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/msg.h"
#include "testutil.h"

START_TEST(payload_is_copied_and_may_hold_nul_bytes)
{
    unsigned char buf[5] = {'a', 0, 'b', 0, 'c'};
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, buf, sizeof buf));
    buf[0] = 'X';
    size_t len;
    const unsigned char *p = msgbus_msg_payload(m, &len);
    ck_assert_uint_eq(len, 5);
    ck_assert_int_eq(memcmp(p, "a\0b\0c", 5), 0);
    tu_ck_ok(msgbus_msg_set_payload(m, "xy", 2));
    p = msgbus_msg_payload(m, &len);
    ck_assert_uint_eq(len, 2);
    ck_assert_int_eq(memcmp(p, "xy", 2), 0);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(empty_payload)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, NULL, 0));
    size_t len = 99;
    ck_assert_ptr_nonnull(msgbus_msg_payload(m, &len));
    ck_assert_uint_eq(len, 0);
    tu_ck_err(msgbus_msg_set_payload(m, NULL, 3), MSGBUS_ERR_INVALID);
    msgbus_msg_free(m);
    tu_ck_err(msgbus_msg_new(&m, NULL, 1), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_msg_new(NULL, "a", 1), MSGBUS_ERR_INVALID);
}
END_TEST

START_TEST(binary_key_set_replace_remove)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    size_t len = 7;
    ck_assert_ptr_null(msgbus_msg_key(m, &len));
    ck_assert_uint_eq(len, 0);
    tu_ck_ok(msgbus_msg_set_key(m, "k\0y", 3));
    const char *k = msgbus_msg_key(m, &len);
    ck_assert_uint_eq(len, 3);
    ck_assert_int_eq(memcmp(k, "k\0y", 3), 0);
    tu_ck_ok(msgbus_msg_set_key(m, "", 0)); /* an empty key is a key */
    ck_assert_ptr_nonnull(msgbus_msg_key(m, &len));
    ck_assert_uint_eq(len, 0);
    tu_ck_ok(msgbus_msg_set_key(m, NULL, 0));
    ck_assert_ptr_null(msgbus_msg_key(m, NULL));
    msgbus_msg_free(m);
}
END_TEST

START_TEST(headers_get_set_iterate_delete)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "ce_traceparent", "order.created")); /* an extension */
    tu_ck_ok(msgbus_msg_set_header(m, "trace:id", ""));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain")); /* replaces */
    ck_assert_uint_eq(msgbus_msg_header_count(m), 3);
    ck_assert_str_eq(msgbus_msg_header(m, "content-type"), "text/plain");
    ck_assert_str_eq(msgbus_msg_header(m, "trace:id"), "");
    ck_assert_ptr_null(msgbus_msg_header(m, "Content-Type")); /* case-sensitive */
    const char *n, *v;
    tu_ck_ok(msgbus_msg_header_at(m, 1, &n, &v));
    ck_assert_str_eq(n, "ce_traceparent");
    ck_assert_str_eq(v, "order.created");
    tu_ck_err(msgbus_msg_header_at(m, 3, &n, &v), MSGBUS_ERR_NOT_FOUND);
    tu_ck_ok(msgbus_msg_del_header(m, "ce_traceparent"));
    tu_ck_err(msgbus_msg_del_header(m, "ce_traceparent"), MSGBUS_ERR_NOT_FOUND);
    ck_assert_uint_eq(msgbus_msg_header_count(m), 2);
    tu_ck_ok(msgbus_msg_header_at(m, 1, &n, &v));
    ck_assert_str_eq(n, "trace:id");
    msgbus_msg_free(m);
}
END_TEST

START_TEST(invalid_header_names_refused_and_change_nothing)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    const char *bad[] = {"", "has space", "new\nline", "semi;colon", "ümlaut", longname};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_ck_err(msgbus_msg_set_header(m, bad[i], "v"), MSGBUS_ERR_INVALID);
        ck_assert(strstr(msgbus_last_error(), "invalid header name"));
    }
    /* msgbus's own headers, and the CloudEvents context attributes under
     * every binding's prefix (msgbus writes them from the message). */
    const char *reserved[] = {"ce_id",          "cloudEvents:id",  "msgbus-attempt",
                              "ce_type",        "ce-source",       "cloudEvents_time",
                              "CE_SPECVERSION", "ce_subject",      "cloudEvents:datacontenttype"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
        tu_ck_err(msgbus_msg_set_header(m, reserved[i], "v"), MSGBUS_ERR_INVALID);
        ck_assert_msg(strstr(msgbus_last_error(), "reserved") ||
                          strstr(msgbus_last_error(), "CloudEvents attribute"),
                      "%s", msgbus_last_error());
    }
    tu_ck_err(msgbus_msg_set_header(m, NULL, "v"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_msg_set_header(m, "n", NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_msg_set_header(NULL, "n", "v"), MSGBUS_ERR_INVALID);
    ck_assert_uint_eq(msgbus_msg_header_count(m), 0);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(ids_are_uuid7_unique_and_settable)
{
    msgbus_msg_t *a, *b;
    tu_ck_ok(msgbus_msg_new(&a, "x", 1));
    tu_ck_ok(msgbus_msg_new(&b, "x", 1));
    const char *ia = msgbus_msg_id(a), *ib = msgbus_msg_id(b);
    ck_assert_uint_eq(strlen(ia), 36);
    ck_assert_int_eq(ia[14], '7'); /* version */
    ck_assert(strchr("89ab", ia[19]));  /* variant */
    ck_assert_str_ne(ia, ib);
    ck_assert_int_lt(strcmp(ia, ib), 0); /* time-ordered within a thread */
    tu_ck_ok(msgbus_msg_set_id(a, "order-42"));
    ck_assert_str_eq(msgbus_msg_id(a), "order-42");
    tu_ck_err(msgbus_msg_set_id(a, "has space"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_msg_set_id(a, ""), MSGBUS_ERR_INVALID);
    ck_assert_str_eq(msgbus_msg_id(a), "order-42");
    msgbus_msg_free(a);
    msgbus_msg_free(b);
}
END_TEST

START_TEST(many_ids_unique)
{
    enum { N = 20000 };
    static char ids[N][37];
    for (int i = 0; i < N; i++)
        mb_uuid7(ids[i]);
    for (int i = 1; i < N; i++)
        ck_assert_msg(strcmp(ids[i - 1], ids[i]) < 0, "ids %d and %d not increasing", i - 1, i);
}
END_TEST

/* Every character of many ids, and the time in them: the 48-bit
 * millisecond field is the message's timestamp (or, when one millisecond
 * ran out of sequence numbers, a little later — never earlier). */
START_TEST(id_format_and_time)
{
    enum { N = 5000 };
    for (int i = 0; i < N; i++) {
        msgbus_msg_t *m;
        tu_ck_ok(msgbus_msg_new(&m, "x", 1));
        const char *id = msgbus_msg_id(m);
        ck_assert_uint_eq(strlen(id), 36);
        for (int j = 0; j < 36; j++) {
            if (j == 8 || j == 13 || j == 18 || j == 23)
                ck_assert_msg(id[j] == '-', "id %s: no dash at %d", id, j);
            else
                ck_assert_msg(strchr("0123456789abcdef", id[j]) && id[j],
                              "id %s: '%c' at %d is not lowercase hex", id, id[j], j);
        }
        ck_assert_int_eq(id[14], '7');
        ck_assert(strchr("89ab", id[19]));
        char hex[13];
        memcpy(hex, id, 8);
        memcpy(hex + 8, id + 9, 4);
        hex[12] = '\0';
        int64_t ms = (int64_t)strtoll(hex, NULL, 16);
        ck_assert_int_ge(ms, msgbus_msg_timestamp(m));
        ck_assert_int_le(ms, msgbus_msg_timestamp(m) + 1 + N / 3072);
        msgbus_msg_free(m);
    }
}
END_TEST

START_TEST(timestamp_defaults_to_now)
{
    msgbus_msg_t *m;
    int64_t before = mb_now_ms();
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    ck_assert_int_ge(msgbus_msg_timestamp(m), before);
    ck_assert_int_le(msgbus_msg_timestamp(m), mb_now_ms());
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1234));
    ck_assert_int_eq(msgbus_msg_timestamp(m), 1234);
    tu_ck_err(msgbus_msg_set_timestamp(m, -1), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_msg_timestamp(m), 1234);
    ck_assert_ptr_null(msgbus_msg_topic(m));
    ck_assert_ptr_null(msgbus_msg_group(m));
    ck_assert_int_eq(msgbus_msg_attempt(m), 0);
    msgbus_msg_free(m);
    msgbus_msg_free(NULL);
}
END_TEST

START_TEST(ack_of_application_message_is_state_error)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_err(msgbus_ack(m), MSGBUS_ERR_STATE);
    ck_assert(strstr(msgbus_last_error(), "not a received message"));
    tu_ck_err(msgbus_nack(NULL), MSGBUS_ERR_INVALID);
    msgbus_msg_free(m);
}
END_TEST


START_TEST(empty_key_reads_nothing_at_the_pointer)
{
    /* A 0-byte allocation: ASan reports any read at it. */
    void *p = malloc(0);
    ck_assert_ptr_nonnull(p);
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_msg_set_key(m, p, 0));
    size_t len = 99;
    ck_assert_ptr_nonnull(msgbus_msg_key(m, &len)); /* an empty key is a key */
    ck_assert_uint_eq(len, 0);
    free(p);
    msgbus_msg_free(m);
}
END_TEST

/* A received-like message (no id) fed one raw id value. */
static msgbus_msg_t *received_with_id(const void *raw, size_t len)
{
    msgbus_msg_t *m = mb_msg_alloc();
    ck_assert_ptr_nonnull(m);
    tu_ck_ok(mb_msg_received_id(m, raw, len));
    return m;
}

START_TEST(received_ids_that_break_the_rule_are_not_ids)
{
    static const struct {
        const char *raw;
        size_t len;
        const char *shown; /* msgbus-invalid-id */
    } bad[] = {
        {"", 0, ""},
        {NULL, 0, ""},
        {"a b", 3, "a%20b"},
        {"a\tb", 3, "a%09b"},
        {"caf\xc3\xa9", 5, "caf%C3%A9"},
        {"abc\0def", 7, "abc%00def"},
        {"x,y %z", 6, "x%2Cy%20%25z"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msgbus_msg_t *m = received_with_id(bad[i].raw, bad[i].len);
        ck_assert_msg(msgbus_msg_id(m) == NULL, "case %zu became an id", i);
        ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-id"), bad[i].shown);
        msgbus_msg_free(m);
    }
    char big[400];
    memset(big, 'a', sizeof big);
    msgbus_msg_t *m = received_with_id(big, sizeof big);
    ck_assert_ptr_null(msgbus_msg_id(m));
    ck_assert_uint_eq(strlen(msgbus_msg_header(m, "msgbus-invalid-id")), 400);
    msgbus_msg_free(m);
    m = received_with_id(big, 255); /* the longest id there is */
    ck_assert_uint_eq(strlen(msgbus_msg_id(m)), 255);
    ck_assert_ptr_null(msgbus_msg_header(m, "msgbus-invalid-id"));
    msgbus_msg_free(m);
}
END_TEST

START_TEST(received_ids_must_agree)
{
    msgbus_msg_t *m = received_with_id("abc", 3);
    ck_assert_str_eq(msgbus_msg_id(m), "abc");
    tu_ck_ok(mb_msg_received_id(m, "abc", 3)); /* AMQP carries the id twice */
    ck_assert_str_eq(msgbus_msg_id(m), "abc");
    ck_assert_ptr_null(msgbus_msg_header(m, "msgbus-invalid-id"));
    tu_ck_ok(mb_msg_received_id(m, "abd", 3)); /* a second, different id */
    ck_assert_ptr_null(msgbus_msg_id(m));
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-id"), "abc,abd");
    tu_ck_ok(mb_msg_received_id(m, "abc", 3)); /* stays demoted */
    ck_assert_ptr_null(msgbus_msg_id(m));
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-id"), "abc,abd,abc");
    msgbus_msg_free(m);
}
END_TEST

START_TEST(received_headers_that_cannot_be_strings_are_counted)
{
    msgbus_msg_t *m = mb_msg_alloc();
    tu_ck_ok(mb_msg_received_header(m, "ok", 2, "v", 1));
    tu_ck_ok(mb_msg_received_header(m, "nul-value", 9, "a\0b", 3));
    tu_ck_ok(mb_msg_received_header(m, "", 0, "v", 1));
    tu_ck_ok(mb_msg_received_header(m, "n\0m", 3, "v", 1));
    char name[256];
    memset(name, 'n', sizeof name);
    tu_ck_ok(mb_msg_received_header(m, name, 256, "v", 1));
    tu_ck_ok(mb_msg_received_header(m, name, 255, NULL, 0)); /* kept: "" */
    tu_ck_ok(mb_msg_received_header(m, "with space", 10, "v", 1)); /* wire-valid */
    ck_assert_str_eq(msgbus_msg_header(m, "ok"), "v");
    ck_assert_str_eq(msgbus_msg_header(m, "with space"), "v");
    ck_assert_ptr_null(msgbus_msg_header(m, "nul-value"));
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-headers"), "4");
    ck_assert_uint_eq(msgbus_msg_header_count(m), 4);
    msgbus_msg_free(m);
}
END_TEST

START_TEST(records_from_the_wire_never_replace_the_messages_own)
{
    /* The wire's msgbus-invalid-id first, then a refused id: ours wins,
     * the wire's is counted. */
    msgbus_msg_t *m = mb_msg_alloc();
    tu_ck_ok(mb_msg_received_header(m, "msgbus-invalid-id", 17, "forged", 6));
    tu_ck_ok(mb_msg_received_id(m, "a b", 3));
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-id"), "a%20b");
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-headers"), "1");
    msgbus_msg_free(m);
    /* The other order gives the same. */
    m = mb_msg_alloc();
    tu_ck_ok(mb_msg_received_id(m, "a b", 3));
    tu_ck_ok(mb_msg_received_header(m, "msgbus-invalid-id", 17, "forged", 6));
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-id"), "a%20b");
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-headers"), "1");
    msgbus_msg_free(m);
    /* A valid id: an earlier hop's record is plain data and stays. */
    m = mb_msg_alloc();
    tu_ck_ok(mb_msg_received_header(m, "msgbus-invalid-id", 17, "x%20y", 5));
    tu_ck_ok(mb_msg_received_id(m, "id-1", 4));
    ck_assert_str_eq(msgbus_msg_id(m), "id-1");
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-id"), "x%20y");
    /* Counts add up in any order; a count that is not one is counted. */
    tu_ck_ok(mb_msg_received_header(m, "", 0, "v", 1));
    tu_ck_ok(mb_msg_received_header(m, "msgbus-invalid-headers", 22, "5", 1));
    tu_ck_ok(mb_msg_received_header(m, "msgbus-invalid-headers", 22, "five", 4));
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-headers"), "7");
    msgbus_msg_free(m);
}
END_TEST

START_TEST(many_received_headers_decode_in_linear_time)
{
    /* A foreign record may carry hundreds of thousands of tiny headers: a
     * duplicate check per header over all earlier ones took minutes. */
    enum { N = 200000 };
    msgbus_msg_t *m = mb_msg_alloc();
    int64_t t0 = mb_mono_ms(), quarter[4];
    char name[16];
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof name, "h%d", i);
        tu_ck_ok(mb_msg_received_header(m, name, (size_t)n, "v", 1));
        if ((i + 1) % (N / 4) == 0)
            quarter[i / (N / 4)] = mb_mono_ms();
    }
    /* Linear: each quarter costs the same. Quadratic: the last costs 7×
     * the first. A ratio, so it holds natively, under ASan and valgrind. */
    int64_t first = quarter[0] - t0, last = quarter[3] - quarter[2];
    printf("quarters of %d headers: first %lld ms, last %lld ms\n", N / 4, (long long)first,
           (long long)last);
    ck_assert_msg(last <= 3 * first + 50, "the last quarter took %lld ms, the first %lld ms",
                  (long long)last, (long long)first);
    tu_ck_ok(mb_msg_received_header(m, "h7", 2, "again", 5)); /* replaces */
    for (int i = 0; i < 1000; i++) /* counts stay O(1) too */
        tu_ck_ok(mb_msg_received_header(m, "", 0, "x", 1));
    ck_assert_uint_eq(msgbus_msg_header_count(m), N + 1);
    ck_assert_str_eq(msgbus_msg_header(m, "h7"), "again");
    ck_assert_str_eq(msgbus_msg_header(m, "h199999"), "v");
    ck_assert_str_eq(msgbus_msg_header(m, "msgbus-invalid-headers"), "1000");
    tu_ck_ok(msgbus_msg_del_header(m, "h0")); /* the index follows a removal */
    ck_assert_ptr_null(msgbus_msg_header(m, "h0"));
    ck_assert_str_eq(msgbus_msg_header(m, "h1"), "v");
    tu_ck_ok(mb_msg_received_header(m, "h1", 2, "w", 1));
    ck_assert_str_eq(msgbus_msg_header(m, "h1"), "w");
    ck_assert_uint_eq(msgbus_msg_header_count(m), N);
    msgbus_msg_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("msg");
    TCase *tc = tcase_create("msg");
    tcase_add_test(tc, payload_is_copied_and_may_hold_nul_bytes);
    tcase_add_test(tc, empty_payload);
    tcase_add_test(tc, binary_key_set_replace_remove);
    tcase_add_test(tc, headers_get_set_iterate_delete);
    tcase_add_test(tc, invalid_header_names_refused_and_change_nothing);
    tcase_add_test(tc, ids_are_uuid7_unique_and_settable);
    tcase_add_test(tc, id_format_and_time);
    tcase_add_test(tc, many_ids_unique);
    tcase_add_test(tc, timestamp_defaults_to_now);
    tcase_add_test(tc, ack_of_application_message_is_state_error);
    tcase_add_test(tc, empty_key_reads_nothing_at_the_pointer);
    tcase_add_test(tc, received_ids_that_break_the_rule_are_not_ids);
    tcase_add_test(tc, received_ids_must_agree);
    tcase_add_test(tc, received_headers_that_cannot_be_strings_are_counted);
    tcase_add_test(tc, records_from_the_wire_never_replace_the_messages_own);
    tcase_add_test(tc, many_received_headers_decode_in_linear_time);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
