/*
 * testutil.h — small helpers shared by the test programs.
 */
#ifndef MSGBUS_TESTUTIL_H
#define MSGBUS_TESTUTIL_H

#include <check.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "msgbus/msgbus.h"
#include "msgbus/outbox.h"

/* The URL of a real test broker: kind is "kafka", "amqp" or "pg"; read from
 * MSGBUS_TEST_<KIND>_URL. Missing is a hard failure (exit 1 with a message
 * that says to run scripts/brokers up) — never a skip. */
const char *tu_broker_url(const char *kind);

/* A name unique to this process and call: "<prefix>-<pid>-<n>-<random>". */
void tu_unique(char *buf, size_t n, const char *prefix);

/* ck_assert that a msgbus call returned `want`, printing last_error. */
#define tu_ck_ok(expr) tu_ck_err((expr), MSGBUS_OK)
#define tu_ck_err(expr, want)                                                          \
    do {                                                                               \
        msgbus_err_t tu_e_ = (expr);                                                   \
        ck_assert_msg(tu_e_ == (want), "%s: got %s, want %s (%s)", #expr,              \
                      msgbus_err_name(tu_e_), msgbus_err_name(want), msgbus_last_error()); \
    } while (0)

/* Monotonic milliseconds. */
int64_t tu_now_ms(void);

/* Publishes `payload` (string) with optional key (NULL) to topic; ck_asserts. */
void tu_publish_str(msgbus_t *bus, const char *topic, const char *key, const char *payload);

/* Receives one message within timeout_ms; NULL on timeout. */
msgbus_msg_t *tu_receive(msgbus_sub_t *sub, int timeout_ms);

/* Puts n messages of `size` bytes each (all 'b') to `topic` through `ob`,
 * in the caller's transaction if one is open; ck_asserts. */
void tu_outbox_put_sized(msgbus_outbox_t *ob, const char *topic, int n, size_t size);

/* A log callback (opaque: struct tu_capped_log) counting the relay's
 * debug lines "slice of R rows stopped at B bytes of payload". */
struct tu_capped_log {
    int slices;
    size_t most_rows, most_bytes;
};
void tu_capped_log_cb(void *opaque, msgbus_log_level_t level, const char *line);

/* Delivery outcomes counted by tu_on_report (opaque: struct tu_reports),
 * the last failure's code and text kept and printed. Zero-initialise. */
struct tu_reports {
    _Atomic int ok, failed;
    msgbus_err_t status; /* the last failure's code (MSGBUS_OK: none yet) */
    char error[512];     /* and its text */
};
void tu_on_report(void *opaque, const msgbus_report_t *r);

/* msgbus_stats_json of `bus`, parsed (ck_asserts that it parses); the
 * caller json_decref()s it. */
json_t *tu_stats(msgbus_t *bus);
/* The member at "a.b.0.c" (objects by key, arrays by index), or NULL. */
json_t *tu_json_at(json_t *o, const char *path);
/* The integer at that path; ck_asserts there is one. */
json_int_t tu_json_int(json_t *o, const char *path);

/* Runs a Check suite and returns the process exit code (0 when all passed).
 * Then deletes what its tests made on the shared brokers they used
 * (tu_cleanup): every topic, group, queue and exchange whose name carries
 * this run's tu_unique marker. */
int tu_run_suite(Suite *s);

/* Deletes on the `kind` ("kafka", "amqp") broker of msgbus URL `url` every
 * topic and consumer group (Kafka) or queue and exchange (RabbitMQ) whose
 * name contains `marker`; prints what it deleted. Never fails a test: a
 * broker it cannot reach gets a warning line. Built with that backend
 * only (else a no-op). */
void tu_cleanup(const char *kind, const char *url, const char *marker);

#endif
