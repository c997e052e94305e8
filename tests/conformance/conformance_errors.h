/*
 * conformance_errors.h — conformance tests of failure paths: an unreachable
 * broker (kafka, amqp) or an oversized message (mem), and bad input through
 * the public API. Part of conformance.c (included once, after its helpers).
 */
#ifndef MSGBUS_CONFORMANCE_ERRORS_H
#define MSGBUS_CONFORMANCE_ERRORS_H

#include <unistd.h>

#include "conformance_util.h"
/* ------------------------------------------- unreachable / too large */

/* kafka and amqp: a broker that is not there. Either open says so
 * (MSGBUS_ERR_CONNECT within connect_timeout_ms), or, if a backend opens
 * lazily, the publish's delivery callback does within the message
 * timeout. */
static void cf_unreachable_broker(void)
{
    const char *url = cf_is("kafka")
                          ? "kafka://127.0.0.1:1?connect_timeout_ms=3000&message.timeout.ms=3000"
                          : "amqp://guest:guest@127.0.0.1:1/?connect_timeout_ms=3000"
                            "&message_timeout_ms=3000";
    const int64_t limit_ms = 3000 + 4000; /* the configured timeout + slack */
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    int64_t open_ms = tu_now_ms() - t0;
    if (e != MSGBUS_OK) {
        printf("  unreachable %s: open gave %s after %lld ms: %s\n", cf_backend,
               msgbus_err_name(e), (long long)open_ms, msgbus_last_error());
        ck_assert_msg(e == MSGBUS_ERR_CONNECT, "open: %s, want MSGBUS_ERR_CONNECT (%s)",
                      msgbus_err_name(e), msgbus_last_error());
        ck_assert_ptr_null(bus);
        ck_assert_msg(strstr(msgbus_last_error(), "127.0.0.1") != NULL,
                      "the error names the broker: '%s'", msgbus_last_error());
        ck_assert_msg(open_ms <= limit_ms, "open took %lld ms", (long long)open_ms);
        return;
    }
    char topic[128];
    cf_name(topic, sizeof topic, "unreach");
    struct cf_reports rep;
    cf_reports_init(&rep, topic, 4);
    t0 = tu_now_ms();
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    e = msgbus_publish(bus, topic, m, cf_on_report, &rep);
    msgbus_msg_free(m);
    ck_assert_msg(e == MSGBUS_OK, "publish queues locally even without a broker: %s",
                  msgbus_err_name(e));
    size_t failed = 0;
    e = msgbus_flush(bus, (int)limit_ms + 10000, &failed);
    int64_t ms = tu_now_ms() - t0;
    printf("  unreachable %s: open succeeded; flush %s after %lld ms, callback %s: %s\n",
           cf_backend, msgbus_err_name(e), (long long)ms, msgbus_err_name(rep.last_status),
           rep.last_error);
    ck_assert_msg(e == MSGBUS_ERR_DELIVERY, "flush: %s, want MSGBUS_ERR_DELIVERY",
                  msgbus_err_name(e));
    ck_assert_uint_eq(failed, 1);
    ck_assert_int_eq(rep.calls, 1);
    ck_assert_int_eq(rep.failed, 1);
    ck_assert_int_eq(rep.bad_error_text, 0);
    ck_assert_msg(ms <= limit_ms, "the failure took %lld ms", (long long)ms);
    cf_ids_free(&rep.ids);
    msgbus_close(bus);
}

/* mem has no network: its "the broker refuses" case is a message over
 * max_message_bytes, refused at publish, changing nothing. */
static void cf_mem_too_large(void)
{
    char url[256], topic[128], group[128];
    snprintf(url, sizeof url, "mem://conformance-%d-small?max_message_bytes=1024", (int)getpid());
    cf_name(topic, sizeof topic, "big");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    struct cf_reports rep;
    cf_reports_init(&rep, topic, 4);
    char big[2048];
    memset(big, 'b', sizeof big);
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, big, sizeof big));
    tu_ck_err(msgbus_publish(bus, topic, m, cf_on_report, &rep), MSGBUS_ERR_TOO_LARGE);
    ck_assert_msg(strstr(msgbus_last_error(), "max_message_bytes") != NULL,
                  "the error names the limit: '%s'", msgbus_last_error());
    msgbus_msg_free(m);
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    size_t failed = 99;
    tu_ck_ok(msgbus_flush(bus, 1000, &failed));
    ck_assert_uint_eq(failed, 0);
    ck_assert_int_eq(rep.calls, 0); /* refused synchronously: no callback */
    ck_assert_ptr_null(tu_receive(sub, 300));
    /* The bus still works. */
    char *id = cf_publish(bus, topic, NULL, "small", 5, &rep);
    cf_flush_ok(bus);
    ck_assert_int_eq(rep.ok, 1);
    msgbus_msg_t *in = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(in), id);
    msgbus_msg_free(in);
    free(id);
    cf_ids_free(&rep.ids);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}

/* sqlite: a file that cannot be opened (its directory does not exist):
 * open fails with MSGBUS_ERR_CONNECT naming the path, changing nothing. */
static void cf_sqlite_unopenable(void)
{
    char url[256];
    snprintf(url, sizeof url, "sqlite:///nonexistent-msgbus-%d/bus.db", (int)getpid());
    msgbus_t *bus = (msgbus_t *)&url; /* sentinel: must stay untouched */
    int64_t t0 = tu_now_ms();
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    printf("  unreachable sqlite: open gave %s after %lld ms: %s\n", msgbus_err_name(e),
           (long long)(tu_now_ms() - t0), msgbus_last_error());
    ck_assert_msg(e == MSGBUS_ERR_CONNECT, "open: %s, want MSGBUS_ERR_CONNECT",
                  msgbus_err_name(e));
    ck_assert_ptr_eq(bus, (msgbus_t *)&url);
    ck_assert_msg(strstr(msgbus_last_error(), "/nonexistent-msgbus-") != NULL,
                  "the error names the file: '%s'", msgbus_last_error());
    ck_assert_msg(tu_now_ms() - t0 < 5000, "open took too long");
}

START_TEST(unreachable_broker_fails_clearly_within_the_timeout)
{
    if (cf_is("sqlite"))
        cf_sqlite_unopenable();
    else if (cf_is("mem"))
        cf_mem_too_large();
    else
        cf_unreachable_broker();
}
END_TEST

/* --------------------------------------------------------- bad input */

START_TEST(bad_input_gives_clear_errors_and_changes_nothing)
{
    char topic[128], group[128], url[1200];
    cf_name(topic, sizeof topic, "bad");
    cf_name(group, sizeof group, "g");

    /* Unknown URL option: MSGBUS_ERR_CONFIG naming it. */
    msgbus_t *bus = (msgbus_t *)&url; /* sentinel: must stay untouched */
    cf_url_with(url, sizeof url, cf_url, "bogus_option_xyz=1");
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "bogus_option_xyz") != NULL,
                  "the error names the option: '%s'", msgbus_last_error());
    ck_assert_ptr_eq(bus, (msgbus_t *)&url);
    tu_ck_err(msgbus_open(NULL, cf_url, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_open(&bus, "nosuchscheme://x", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_eq(bus, (msgbus_t *)&url);

    bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "p", 1));
    struct cf_reports rep;
    cf_reports_init(&rep, topic, 4);

    /* NULL arguments. */
    tu_ck_err(msgbus_publish(NULL, topic, m, cf_on_report, &rep), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_publish(bus, NULL, m, cf_on_report, &rep), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_publish(bus, topic, NULL, cf_on_report, &rep), MSGBUS_ERR_INVALID);
    ck_assert_msg(msgbus_last_error()[0], "NULL message: detail given");
    tu_ck_err(msgbus_msg_new(NULL, "p", 1), MSGBUS_ERR_INVALID);
    msgbus_msg_t *m2 = (msgbus_msg_t *)&url;
    tu_ck_err(msgbus_msg_new(&m2, NULL, 5), MSGBUS_ERR_INVALID);
    ck_assert_ptr_eq(m2, (msgbus_msg_t *)&url);
    tu_ck_err(msgbus_subscribe(bus, topic, group, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_receive(NULL, 0, &m2), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_receive(sub, 0, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_ack(NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_nack(NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_declare(bus, NULL, group), MSGBUS_ERR_INVALID);
    /* A message the application made was not received: nothing to settle. */
    tu_ck_err(msgbus_ack(m), MSGBUS_ERR_STATE);

    /* Invalid topic and group names. */
    char longname[301];
    memset(longname, 'a', 300);
    longname[300] = '\0';
    const char *bad_names[] = {"", "has space", longname, "t/slash", "caf\xc3\xa9", NULL};
    for (const char **n = bad_names; *n; n++) {
        tu_ck_err(msgbus_publish(bus, *n, m, cf_on_report, &rep), MSGBUS_ERR_INVALID);
        ck_assert_msg(strstr(msgbus_last_error(), "topic") != NULL,
                      "the error says the topic is wrong: '%s'", msgbus_last_error());
        msgbus_sub_t *s2 = (msgbus_sub_t *)&url;
        tu_ck_err(msgbus_subscribe(bus, *n, group, &s2), MSGBUS_ERR_INVALID);
        tu_ck_err(msgbus_subscribe(bus, topic, *n, &s2), MSGBUS_ERR_INVALID);
        ck_assert_ptr_eq(s2, (msgbus_sub_t *)&url);
        tu_ck_err(msgbus_declare(bus, *n, group), MSGBUS_ERR_INVALID);
        tu_ck_err(msgbus_declare(bus, topic, *n), MSGBUS_ERR_INVALID);
    }

    /* Invalid and reserved header names; invalid ids. */
    tu_ck_ok(msgbus_msg_set_header(m, "ok", "v1"));
    const char *bad_headers[] = {"", "has space", longname, "caf\xc3\xa9", "a\nb",
                                 "msgbus-attempt", "ce_id", "cloudEvents:id", NULL};
    for (const char **n = bad_headers; *n; n++) {
        tu_ck_err(msgbus_msg_set_header(m, *n, "x"), MSGBUS_ERR_INVALID);
        ck_assert_msg(msgbus_last_error()[0], "header '%s': detail given", *n);
    }
    tu_ck_err(msgbus_msg_set_header(m, NULL, "x"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_msg_set_header(m, "ok", NULL), MSGBUS_ERR_INVALID);
    ck_assert_uint_eq(msgbus_msg_header_count(m), 1);
    ck_assert_pstr_eq(msgbus_msg_header(m, "ok"), "v1");
    char *id = strdup(msgbus_msg_id(m));
    const char *bad_ids[] = {"", "has space", longname, "tab\there", NULL};
    for (const char **n = bad_ids; *n; n++)
        tu_ck_err(msgbus_msg_set_id(m, *n), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_msg_set_id(m, NULL), MSGBUS_ERR_INVALID);
    ck_assert_pstr_eq(msgbus_msg_id(m), id);
    tu_ck_err(msgbus_msg_set_timestamp(m, -1), MSGBUS_ERR_INVALID);

    /* Nothing of the above reached the broker or the callbacks. */
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    size_t failed = 99;
    tu_ck_ok(msgbus_flush(bus, 5000, &failed));
    ck_assert_uint_eq(failed, 0);
    ck_assert_int_eq(rep.calls, 0);
    /* And the message, after the refused changes, still goes through whole. */
    tu_ck_ok(msgbus_publish(bus, topic, m, cf_on_report, &rep));
    cf_flush_ok(bus);
    ck_assert_int_eq(rep.ok, 1);
    msgbus_msg_t *in = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(in), id);
    ck_assert_uint_eq(msgbus_msg_header_count(in), 1);
    ck_assert_pstr_eq(msgbus_msg_header(in, "ok"), "v1");
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    ck_assert_ptr_null(tu_receive(sub, 1000)); /* exactly one arrived */
    free(id);
    msgbus_msg_free(m);
    cf_ids_free(&rep.ids);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

#endif
