/*
 * test_caps.c — the core half of issue 20 on mem://: start positions as
 * text (every form accepted and refused), the refusals a missing capability
 * implies, require=, msgbus_caps_json against msgbus_caps, batch receive,
 * and pause/resume with msgbus_fd's readiness. The backends' halves (what
 * each claims and that it holds) are in the conformance suite.
 */
#include <jansson.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

#include "backends/backend.h"
#include "core/internal.h"

static msgbus_t *open_mem(const char *extra)
{
    char url[300], name[64];
    tu_unique(name, sizeof name, "caps");
    snprintf(url, sizeof url, "mem://%s%s", name, extra ? extra : "");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static bool fd_readable(msgbus_t *bus)
{
    struct pollfd p = {.fd = msgbus_fd(bus), .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

START_TEST(start_positions_parse)
{
    struct mb_start s;
    tu_ck_ok(mb_start_parse("t", "latest", &s));
    ck_assert_int_eq(s.kind, MB_START_LATEST);
    tu_ck_ok(mb_start_parse("t", "earliest", &s));
    ck_assert_int_eq(s.kind, MB_START_EARLIEST);
    tu_ck_ok(mb_start_parse("t", "1970-01-01T00:00:01Z", &s));
    ck_assert_int_eq(s.kind, MB_START_TIME);
    ck_assert_int_eq(s.time_ms, 1000);
    tu_ck_ok(mb_start_parse("t", "2026-12-07T09:00:00.5+01:00", &s));
    ck_assert_int_eq(s.time_ms, 1796630400500LL); /* 08:00:00.5Z */
    tu_ck_ok(mb_start_parse("t", "2024-02-29t08:00:00.123456-00:30", &s));
    ck_assert_int_eq(s.time_ms, 1709195400123LL);
    int64_t now = mb_now_ms();
    tu_ck_ok(mb_start_parse("t", "-15m", &s));
    ck_assert_int_eq(s.kind, MB_START_TIME);
    ck_assert(llabs(s.time_ms - (now - 900000)) < 2000);
    tu_ck_ok(mb_start_parse("t", "-1.5h", &s));
    ck_assert(llabs(s.time_ms - (now - 5400000)) < 2000);
    tu_ck_ok(mb_start_parse("t", "-500ms", &s));
    ck_assert(llabs(s.time_ms - (now - 500)) < 2000);

    static const char *const bad[] = {"", "first", "-15", "-15y", "--1m", "-m",
                                      "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
                                      "2023-02-29T00:00:00Z", "2026-12-07T08:00:00",
                                      "2026-12-07T08:00:00Zjunk", "2026-12-07", "-1e20d", NULL};
    for (int i = 0; bad[i]; i++) {
        ck_assert_msg(mb_start_parse("option 'start'", bad[i], &s) == MSGBUS_ERR_CONFIG,
                      "'%s' accepted", bad[i]);
        ck_assert_msg(strstr(msgbus_last_error(), "option 'start'"), "%s", msgbus_last_error());
    }
}
END_TEST

START_TEST(rfc3339_format_round_trips)
{
    /* The per-thread cache of the last second gives what the general path
     * gives, across second, day and year boundaries. */
    char out[32];
    int64_t ms[] = {0, 999, 1000, 86399999, 86400000, 1796630400500LL, 1796630400999LL,
                    1796630401000LL, 1796630400000LL, 253402300799999LL};
    const char *want[] = {"1970-01-01T00:00:00.000Z", "1970-01-01T00:00:00.999Z",
                          "1970-01-01T00:00:01.000Z", "1970-01-01T23:59:59.999Z",
                          "1970-01-02T00:00:00.000Z", "2026-12-07T08:00:00.500Z",
                          "2026-12-07T08:00:00.999Z", "2026-12-07T08:00:01.000Z",
                          "2026-12-07T08:00:00.000Z", "9999-12-31T23:59:59.999Z"};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        mb_rfc3339_format(ms[i], out);
        ck_assert_str_eq(out, want[i]);
        int64_t back;
        ck_assert(mb_rfc3339_parse(out, &back));
        ck_assert_int_eq(back, ms[i]);
    }
}
END_TEST

/* The parser's own date arithmetic agrees with timegm over years
 * 0000..9999, every month end, leap days, a leap second and offsets. */
START_TEST(rfc3339_parse_agrees_with_timegm)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    uint64_t seed = 0x9e3779b97f4a7c15u;
    long checked = 0;
    for (int i = 0; i < 20000; i++) {
        seed = seed * 6364136223846793005u + 1442695040888963407u;
        uint64_t r = seed >> 11;
        int Y = i < 12 ? (int[]){0, 1, 4, 99, 100, 400, 1899, 1900, 1969, 1970, 2000, 9999}[i]
                       : (int)(r % 10000);
        int M = (int)((r >> 14) % 12) + 1;
        bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
        int last = mdays[M - 1] + (M == 2 && leap);
        int D = (i % 3 == 0) ? last : (int)((r >> 18) % (unsigned)last) + 1;
        int h = (int)((r >> 23) % 24), mi = (int)((r >> 28) % 60), se = (int)((r >> 34) % 61);
        int oh = (int)((r >> 40) % 24), om = (int)((r >> 45) % 60), ms = (int)((r >> 51) % 1000);
        char text[64], off[8];
        if (i % 4 == 0)
            snprintf(off, sizeof off, "Z");
        else
            snprintf(off, sizeof off, "%c%02d:%02d", i % 4 == 1 ? '+' : '-', oh, om);
        snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03d%s", Y, M, D, h, mi, se,
                 ms, off);
        struct tm tm = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h,
                        .tm_min = mi, .tm_sec = se};
        int64_t sign = i % 4 == 0 ? 0 : i % 4 == 1 ? 1 : -1;
        int64_t want = ((int64_t)timegm(&tm) - sign * (oh * 60 + om) * 60) * 1000 + ms;
        int64_t got = 0;
        ck_assert_msg(mb_rfc3339_parse(text, &got), "'%s' refused", text);
        ck_assert_msg(got == want, "'%s': %lld, timegm says %lld", text, (long long)got,
                      (long long)want);
        checked++;
    }
    ck_assert_int_eq(checked, 20000);
}
END_TEST

/* The word-at-a-time printable-ASCII scan finds what a byte loop finds:
 * every length, every position of one bad byte, both lower bounds. */
START_TEST(ascii_span_agrees_with_a_byte_loop)
{
    static const unsigned char probes[] = {0x00, 0x1f, 0x20, 0x21, 0x41, 0x7e, 0x7f, 0x80, 0xa0, 0xff};
    unsigned char buf[40];
    for (int lo = 0x20; lo <= 0x21; lo++)
        for (size_t n = 0; n <= sizeof buf; n++)
            for (size_t at = 0; at <= n; at++)
                for (size_t k = 0; k < sizeof probes; k++) {
                    for (size_t j = 0; j < n; j++)
                        buf[j] = (unsigned char)(0x21 + (j * 7) % 0x5d); /* all good */
                    if (at < n)
                        buf[at] = probes[k];
                    size_t want = 0;
                    while (want < n && buf[want] >= lo && buf[want] < 0x7f)
                        want++;
                    size_t got = mb_ascii_span(buf, n, (unsigned char)lo);
                    ck_assert_msg(got == want, "lo %#x n %zu byte %#x at %zu: %zu, want %zu", lo,
                                  n, probes[k], at, got, want);
                }
}
END_TEST

START_TEST(a_bad_start_option_fails_and_subscribes_nothing)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *sub = NULL;
    ck_assert_int_eq(msgbus_subscribe_ex(bus, "t", "g", "start=yesterday", &sub),
                     MSGBUS_ERR_CONFIG);
    ck_assert_ptr_null(sub);
    ck_assert_msg(strstr(msgbus_last_error(), "yesterday"), "%s", msgbus_last_error());
    msgbus_close(bus);
    msgbus_t *b2 = NULL;
    ck_assert_int_eq(msgbus_open(&b2, "mem://x?start=soon", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_null(b2);
}
END_TEST

START_TEST(replay_is_refused_where_not_claimed)
{
    msgbus_t *bus = open_mem(NULL); /* mem:// without retain= keeps nothing */
    ck_assert(!(msgbus_caps(bus) & MSGBUS_CAP_REPLAY));
    msgbus_sub_t *sub = NULL;
    ck_assert_int_eq(msgbus_subscribe_ex(bus, "t", "g", "start=earliest", &sub),
                     MSGBUS_ERR_UNSUPPORTED);
    ck_assert_ptr_null(sub);
    ck_assert_msg(strstr(msgbus_last_error(), "'replay'"), "%s", msgbus_last_error());
    ck_assert_int_eq(msgbus_subscribe_ex(bus, "t", NULL, "start=-1h", &sub),
                     MSGBUS_ERR_UNSUPPORTED);
    tu_ck_ok(msgbus_subscribe_ex(bus, "t", "g", "start=latest", &sub));
    msgbus_sub_close(sub);
    ck_assert_int_eq(msgbus_group_reset(bus, "t", "g", "earliest"), MSGBUS_ERR_UNSUPPORTED);
    ck_assert_int_eq(msgbus_group_reset(bus, "t", "g", "nope"), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_group_reset(bus, "t", NULL, "latest"), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_group_reset(bus, "t", "bad name", "latest"), MSGBUS_ERR_INVALID);
    msgbus_close(bus);

    /* The bus URL's start= is the default of every subscription: refused
     * at open when the backend cannot do it. */
    msgbus_t *b2 = NULL;
    ck_assert_int_eq(msgbus_open(&b2, "mem://caps-replay?start=earliest", NULL),
                     MSGBUS_ERR_UNSUPPORTED);
    ck_assert_ptr_null(b2);
}
END_TEST

START_TEST(require_names_what_is_missing)
{
    msgbus_t *bus = NULL;
    ck_assert_int_eq(msgbus_open(&bus, "mem://caps-req?require=delayed", NULL),
                     MSGBUS_ERR_CONFIG);
    ck_assert_ptr_null(bus);
    ck_assert_msg(strstr(msgbus_last_error(), "'delayed'"), "%s", msgbus_last_error());
    ck_assert_int_eq(msgbus_open(&bus, "mem://caps-req?require=delayed,durable", NULL),
                     MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "'delayed'") &&
                      strstr(msgbus_last_error(), "'durable'"),
                  "%s", msgbus_last_error());
    ck_assert_int_eq(msgbus_open(&bus, "mem://caps-req?require=speed", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "unknown capability 'speed'") &&
                      strstr(msgbus_last_error(), "key_order"),
                  "%s", msgbus_last_error());
    /* What mem:// claims opens, and an empty list asks nothing. */
    bus = open_mem(NULL);
    uint64_t caps = msgbus_caps(bus);
    msgbus_close(bus);
    char url[600] = "mem://caps-req2?require=";
    for (uint64_t b = 1; b & MSGBUS_CAP_ALL; b <<= 1)
        if (caps & b) {
            strcat(url, msgbus_cap_name(b));
            strcat(url, ",");
        }
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_close(bus);
}
END_TEST

START_TEST(caps_json_matches_the_bits)
{
    msgbus_t *bus = open_mem(NULL);
    char *text = NULL;
    tu_ck_ok(msgbus_caps_json(bus, &text));
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    ck_assert_msg(o, "caps json: %s", je.text);
    ck_assert_str_eq(json_string_value(json_object_get(o, "backend")), "mem");
    ck_assert_int_eq(tu_json_int(o, "max_message_size"), (json_int_t)msgbus_max_message_size(bus));
    json_t *arr = json_object_get(o, "capabilities");
    int n = 0;
    for (uint64_t b = 1; b & MSGBUS_CAP_ALL; b <<= 1, n++) {
        json_t *c = json_array_get(arr, (size_t)n);
        ck_assert_str_eq(json_string_value(json_object_get(c, "name")), msgbus_cap_name(b));
        bool yes = json_is_true(json_object_get(c, "supported"));
        ck_assert_int_eq(yes, (msgbus_caps(bus) & b) != 0);
        ck_assert_int_eq(json_object_get(c, "why_not") != NULL, !yes);
        ck_assert(json_is_string(json_object_get(c, "description")));
    }
    ck_assert_int_eq(json_array_size(arr), (size_t)n);
    json_decref(o);
    msgbus_free(text);
    ck_assert_ptr_null(msgbus_cap_name(0));
    ck_assert_ptr_null(msgbus_cap_name(3));
    ck_assert_ptr_null(msgbus_cap_name((uint64_t)MSGBUS_CAP_ALL + 1));
    ck_assert_int_eq(msgbus_caps(NULL), 0);
    ck_assert_int_eq(msgbus_caps_json(NULL, &text), MSGBUS_ERR_INVALID);
    msgbus_close(bus);
}
END_TEST

START_TEST(receive_batch_takes_what_is_queued)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &sub));
    msgbus_msg_t *out[8];
    size_t n = 99;
    ck_assert_int_eq(msgbus_receive_batch(sub, 8, 0, out, &n), MSGBUS_ERR_TIMEOUT);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(msgbus_receive_batch(sub, 0, 0, out, &n), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_receive_batch(sub, 8, 0, NULL, &n), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_receive_batch(NULL, 8, 0, out, &n), MSGBUS_ERR_INVALID);
    char p[16];
    for (int i = 0; i < 11; i++) {
        snprintf(p, sizeof p, "m%d", i);
        tu_publish_str(bus, "t", "k", p);
    }
    int next = 0;
    for (int round = 0; round < 2; round++) {
        tu_ck_ok(msgbus_receive_batch(sub, 8, 5000, out, &n));
        ck_assert_uint_eq(n, round == 0 ? 8 : 3);
        for (size_t i = 0; i < n; i++) {
            snprintf(p, sizeof p, "m%d", next++);
            size_t len;
            const char *pl = msgbus_msg_payload(out[i], &len);
            ck_assert_msg(len == strlen(p) && memcmp(pl, p, len) == 0, "out of order");
            tu_ck_ok(msgbus_ack(out[i]));
            msgbus_msg_free(out[i]);
        }
    }
    ck_assert(!fd_readable(bus) || (msgbus_poll(bus, 0, NULL), !fd_readable(bus)));
    msgbus_sub_close(sub);
    ck_assert_int_eq(msgbus_receive_batch(sub = NULL, 1, 0, out, &n), MSGBUS_ERR_INVALID);
    msgbus_close(bus);
}
END_TEST

START_TEST(pause_holds_back_and_resume_gives_everything)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "t", "g", &sub));
    tu_publish_str(bus, "t", NULL, "before");
    msgbus_msg_t *held = tu_receive(sub, 5000);
    tu_ck_ok(msgbus_sub_pause(sub));
    tu_ck_ok(msgbus_sub_pause(sub)); /* a no-op */
    for (int i = 0; i < 5; i++)
        tu_publish_str(bus, "t", NULL, "during");
    while (msgbus_poll(bus, 0, NULL) == MSGBUS_OK && fd_readable(bus))
        ;
    msgbus_msg_t *m = NULL;
    ck_assert_int_eq(msgbus_receive(sub, 300, &m), MSGBUS_ERR_TIMEOUT);
    ck_assert_msg(!fd_readable(bus), "the fd is readable for a paused subscription");
    /* What was received before the pause can still be settled. */
    tu_ck_ok(msgbus_ack(held));
    msgbus_msg_free(held);
    tu_ck_ok(msgbus_sub_resume(sub));
    tu_ck_ok(msgbus_sub_resume(sub));
    ck_assert_msg(fd_readable(bus), "the fd is not readable after resume");
    for (int i = 0; i < 5; i++) {
        m = tu_receive(sub, 5000);
        size_t len;
        const char *pl = msgbus_msg_payload(m, &len);
        ck_assert(len == 6 && memcmp(pl, "during", 6) == 0);
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    ck_assert_int_eq(msgbus_receive(sub, 100, &m), MSGBUS_ERR_TIMEOUT);
    ck_assert(!fd_readable(bus));
    /* Closing a paused subscription with messages queued leaves the fd
     * count right. */
    tu_ck_ok(msgbus_sub_pause(sub));
    tu_publish_str(bus, "t", NULL, "left");
    msgbus_poll(bus, 100, NULL);
    msgbus_sub_close(sub);
    ck_assert(!fd_readable(bus));
    ck_assert_int_eq(msgbus_sub_pause(NULL), MSGBUS_ERR_INVALID);
    msgbus_close(bus);
}
END_TEST

START_TEST(inspect_checks_its_arguments)
{
    msgbus_t *bus = open_mem(NULL);
    char *out = NULL;
    ck_assert_int_eq(msgbus_inspect_json(bus, NULL, "g", 1000, &out), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_inspect_json(bus, "bad name", NULL, 1000, &out), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_inspect_json(bus, "t", NULL, 1000, NULL), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_inspect_json(NULL, "t", NULL, 1000, &out), MSGBUS_ERR_INVALID);
    ck_assert_ptr_null(out);
    msgbus_free(NULL);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("caps");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, start_positions_parse);
    tcase_add_test(tc, rfc3339_format_round_trips);
    tcase_add_test(tc, rfc3339_parse_agrees_with_timegm);
    tcase_add_test(tc, ascii_span_agrees_with_a_byte_loop);
    tcase_add_test(tc, a_bad_start_option_fails_and_subscribes_nothing);
    tcase_add_test(tc, replay_is_refused_where_not_claimed);
    tcase_add_test(tc, require_names_what_is_missing);
    tcase_add_test(tc, caps_json_matches_the_bits);
    tcase_add_test(tc, receive_batch_takes_what_is_queued);
    tcase_add_test(tc, pause_holds_back_and_resume_gives_everything);
    tcase_add_test(tc, inspect_checks_its_arguments);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
