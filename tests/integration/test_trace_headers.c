/*
 * test_trace_headers.c — W3C trace context (traceparent, tracestate) flows
 * unchanged through every path a message takes (docs/tracing.md):
 *
 *   publish → receive
 *   outbox row → relay → receive (SQLite and PostgreSQL outbox)
 *   nack → retry copy (attempt 2)
 *   nack past the last attempt → dead letter
 *   msgbus_dead_letter → dead letter
 *   dead letter → msgbus_dlq_replay → receive
 *
 * Where msgbus publishes again on the application's behalf (the relay,
 * dlq replay), a tracer's on_publish hook on that bus sees the context
 * the message carries, so its span can be a child of the writer's.
 *
 * Each path is one test, run in a loop over mem://, the real Kafka and the
 * real RabbitMQ (MSGBUS_TEST_KAFKA_URL / _AMQP_URL; the PostgreSQL outbox
 * also needs MSGBUS_TEST_PG_URL). A missing URL fails the test. The values
 * are realistic: a sampled traceparent and a tracestate of several list
 * members with optional spaces around the commas and a space inside a
 * value, which a path that trims, splits or re-joins would change.
 * Every test prints the values it saw.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef TT_WITH_SQLITE
#include <sqlite3.h>
#endif
#ifdef TT_WITH_PG
#include <libpq-fe.h>
#endif

#include "msgbus/outbox.h"
#include "testutil.h"

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TRACESTATE "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE, tenant1@vendor=opaque value 1 ,  xyz=5"

/* The loop index of every test picks the backend. */
static const char *const kinds[] = {"mem", "kafka", "amqp"};
#define N_KINDS 3

/* The consumer's wait: Kafka's first group join takes seconds. */
#define RECV_MS 30000

static void bus_url(int kind, char *url, size_t n)
{
    if (kind == 0) {
        char name[64];
        tu_unique(name, sizeof name, "trace");
        snprintf(url, n, "mem://%s", name);
    } else if (kind == 1) {
        snprintf(url, n, "%s", tu_broker_url("kafka"));
    } else {
        snprintf(url, n, "%s", tu_broker_url("amqp"));
    }
}

static msgbus_t *open_bus(int kind, char *url, size_t n)
{
    bus_url(kind, url, n);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

/* A tracer on a bus that republishes (the relay, dlq replay): its
 * on_publish sees the context the message already carries. It records
 * what it saw and changes nothing. */
static int g_hook_publishes;
static char g_hook_traceparent[128];

static void *seen_on_publish(void *opaque, const char *topic, msgbus_msg_t *m)
{
    (void)opaque;
    (void)topic;
    const char *tp = msgbus_msg_header(m, "traceparent");
    g_hook_publishes++;
    snprintf(g_hook_traceparent, sizeof g_hook_traceparent, "%s", tp ? tp : "(none)");
    return NULL;
}

static void watch_publishes(msgbus_t *bus)
{
    g_hook_publishes = 0;
    g_hook_traceparent[0] = 0;
    msgbus_hooks_t h = {.on_publish = seen_on_publish};
    tu_ck_ok(msgbus_set_hooks(bus, &h, sizeof h));
}

static void check_hook_saw_context(const char *path)
{
    ck_assert_msg(g_hook_publishes == 1, "%s: on_publish ran %d times, want 1", path,
                  g_hook_publishes);
    ck_assert_msg(strcmp(g_hook_traceparent, TRACEPARENT) == 0,
                  "%s: on_publish saw traceparent '%s'", path, g_hook_traceparent);
}

static msgbus_msg_t *traced_msg(const char *payload)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
    tu_ck_ok(msgbus_msg_set_key(m, "order-7", 7));
    tu_ck_ok(msgbus_msg_set_header(m, "traceparent", TRACEPARENT));
    tu_ck_ok(msgbus_msg_set_header(m, "tracestate", TRACESTATE));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    return m;
}

/* Both headers present exactly once, byte for byte. */
static void check_trace(const msgbus_msg_t *m, const char *kind, const char *path)
{
    int tp = 0, ts = 0;
    for (size_t i = 0; i < msgbus_msg_header_count(m); i++) {
        const char *n, *v;
        tu_ck_ok(msgbus_msg_header_at(m, i, &n, &v));
        if (strcmp(n, "traceparent") == 0) {
            tp++;
            ck_assert_msg(strcmp(v, TRACEPARENT) == 0, "%s %s: traceparent '%s', sent '%s'", kind,
                          path, v, TRACEPARENT);
        } else if (strcmp(n, "tracestate") == 0) {
            ts++;
            ck_assert_msg(strcmp(v, TRACESTATE) == 0, "%s %s: tracestate '%s', sent '%s'", kind,
                          path, v, TRACESTATE);
        }
    }
    ck_assert_msg(tp == 1 && ts == 1, "%s %s: %d traceparent and %d tracestate headers, want 1 each",
                  kind, path, tp, ts);
    const char *ct = msgbus_msg_header(m, "content-type");
    ck_assert_msg(ct && strcmp(ct, "application/json") == 0, "%s %s: content-type lost", kind, path);
    printf("%-5s %-24s traceparent=%s tracestate='%s' (attempt %d)\n", kind, path,
           msgbus_msg_header(m, "traceparent"), msgbus_msg_header(m, "tracestate"),
           msgbus_msg_attempt(m));
}

static char *publish_traced(msgbus_t *bus, const char *topic, const char *payload)
{
    msgbus_msg_t *m = traced_msg(payload);
    char *id = strdup(msgbus_msg_id(m));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 30000, NULL));
    return id;
}

static msgbus_msg_t *receive_id(msgbus_sub_t *sub, const char *id, const char *what)
{
    msgbus_msg_t *m = tu_receive(sub, RECV_MS);
    ck_assert_msg(m != NULL, "%s: nothing received within %d ms", what, RECV_MS);
    ck_assert_msg(msgbus_msg_id(m) && strcmp(msgbus_msg_id(m), id) == 0,
                  "%s: received id %s, want %s", what, msgbus_msg_id(m), id);
    return m;
}

/* ------------------------------------------------------------- publish */

START_TEST(publish_to_receive)
{
    char url[1024], topic[128], group[128];
    msgbus_t *bus = open_bus(_i, url, sizeof url);
    tu_unique(topic, sizeof topic, "trace-pub");
    tu_unique(group, sizeof group, "g");
    tu_ck_ok(msgbus_declare(bus, topic, group));
    char *id = publish_traced(bus, topic, "{\"order\":7}");
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = receive_id(sub, id, "publish");
    check_trace(m, kinds[_i], "publish→receive");
    ck_assert_int_eq(msgbus_msg_attempt(m), 1);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    free(id);
}
END_TEST

/* -------------------------------------------------------------- outbox */

/* Relays every pending row of `relay_ob` into `bus`, then receives the
 * row's message on (topic, group). */
static void relay_and_check(msgbus_outbox_t *relay_ob, msgbus_t *bus, const char *topic,
                            const char *group, const char *id, int kind, const char *path)
{
    size_t n = 0;
    watch_publishes(bus);
    tu_ck_ok(msgbus_outbox_relay(relay_ob, bus, 100, 30000, &n));
    ck_assert_uint_eq(n, 1);
    check_hook_saw_context(path);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = receive_id(sub, id, path);
    check_trace(m, kinds[kind], path);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
}

#ifdef TT_WITH_SQLITE
START_TEST(outbox_sqlite_relay_to_receive)
{
    char url[1024], topic[128], group[128], path[256];
    msgbus_t *bus = open_bus(_i, url, sizeof url);
    tu_unique(topic, sizeof topic, "trace-obs");
    tu_unique(group, sizeof group, "g");
    tu_ck_ok(msgbus_declare(bus, topic, group));
    snprintf(path, sizeof path, "%s/%s.db", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", topic);

    /* The application's connection writes the row in its transaction. */
    sqlite3 *app = NULL, *relay = NULL;
    ck_assert_int_eq(sqlite3_open(path, &app), SQLITE_OK);
    ck_assert_int_eq(sqlite3_open(path, &relay), SQLITE_OK);
    msgbus_outbox_t *app_ob = NULL, *relay_ob = NULL;
    tu_ck_ok(msgbus_outbox_open_sqlite(&app_ob, app, NULL));
    tu_ck_ok(msgbus_outbox_open_sqlite(&relay_ob, relay, NULL));
    ck_assert_int_eq(sqlite3_exec(app, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    msgbus_msg_t *m = traced_msg("{\"order\":7}");
    char *id = strdup(msgbus_msg_id(m));
    tu_ck_ok(msgbus_outbox_put(app_ob, topic, m));
    msgbus_msg_free(m);
    ck_assert_int_eq(sqlite3_exec(app, "COMMIT", NULL, NULL, NULL), SQLITE_OK);

    relay_and_check(relay_ob, bus, topic, group, id, _i, "outbox(sqlite)→relay");

    msgbus_outbox_close(relay_ob);
    msgbus_outbox_close(app_ob);
    sqlite3_close(relay);
    sqlite3_close(app);
    unlink(path);
    msgbus_close(bus);
    free(id);
}
END_TEST
#endif

#ifdef TT_WITH_PG
static PGconn *pg_connect(void)
{
    PGconn *c = PQconnectdb(tu_broker_url("pg"));
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "PostgreSQL: %s", PQerrorMessage(c));
    return c;
}

static void pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                  "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

START_TEST(outbox_pg_relay_to_receive)
{
    char url[1024], topic[128], group[128], table[64], sql[160];
    msgbus_t *bus = open_bus(_i, url, sizeof url);
    tu_unique(topic, sizeof topic, "trace-obp");
    tu_unique(group, sizeof group, "g");
    tu_ck_ok(msgbus_declare(bus, topic, group));
    snprintf(table, sizeof table, "trace_outbox_%d_%d", (int)getpid(), _i);

    PGconn *app = pg_connect(), *relay = pg_connect();
    msgbus_outbox_t *app_ob = NULL, *relay_ob = NULL;
    tu_ck_ok(msgbus_outbox_open_pg(&app_ob, app, table));
    tu_ck_ok(msgbus_outbox_open_pg(&relay_ob, relay, table));
    pg_exec(app, "BEGIN");
    msgbus_msg_t *m = traced_msg("{\"order\":7}");
    char *id = strdup(msgbus_msg_id(m));
    tu_ck_ok(msgbus_outbox_put(app_ob, topic, m));
    msgbus_msg_free(m);
    pg_exec(app, "COMMIT");

    relay_and_check(relay_ob, bus, topic, group, id, _i, "outbox(pg)→relay");

    msgbus_outbox_close(relay_ob);
    msgbus_outbox_close(app_ob);
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", table);
    pg_exec(app, sql);
    PQfinish(relay);
    PQfinish(app);
    msgbus_close(bus);
    free(id);
}
END_TEST
#endif

/* ------------------------------------------------- retry and dead letters */

START_TEST(nack_to_retry_copy)
{
    char url[1024], topic[128], group[128];
    msgbus_t *bus = open_bus(_i, url, sizeof url);
    tu_unique(topic, sizeof topic, "trace-retry");
    tu_unique(group, sizeof group, "g");
    tu_ck_ok(msgbus_declare(bus, topic, group));
    char *id = publish_traced(bus, topic, "{\"order\":7}");
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group, "retry_max_attempts=3&retry_initial_ms=100",
                                 &sub));
    msgbus_msg_t *m = receive_id(sub, id, "first delivery");
    ck_assert_int_eq(msgbus_msg_attempt(m), 1);
    tu_ck_ok(msgbus_nack_reason(m, "try again"));
    msgbus_msg_free(m);
    m = receive_id(sub, id, "retry");
    ck_assert_int_eq(msgbus_msg_attempt(m), 2);
    check_trace(m, kinds[_i], "nack→retry");
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    free(id);
}
END_TEST

/* Each test dead-letters into a group of its own (dlq_group): on Kafka a
 * group name is one consumer group across topics, so the default "dlq"
 * would join every other dead-letter consumer on the shared broker, and
 * one of them stuck elsewhere stalls the rebalance. */
static void dlq_options(char *opts, size_t n, char *dlq_group, size_t gn, const char *retry)
{
    tu_unique(dlq_group, gn, "dlq");
    snprintf(opts, n, "dlq_group=%s%s%s", dlq_group, retry ? "&" : "", retry ? retry : "");
}

/* Receives the letter of `id` from <topic>.dlq (as `dlq_group`), checks
 * it and acks it. */
static void check_letter(msgbus_t *bus, const char *topic, const char *dlq_group, const char *id,
                         int kind, const char *path)
{
    char dlq[160];
    snprintf(dlq, sizeof dlq, "%s.dlq", topic);
    msgbus_sub_t *ds = NULL;
    tu_ck_ok(msgbus_subscribe(bus, dlq, dlq_group, &ds));
    msgbus_msg_t *m = receive_id(ds, id, path);
    const char *from = msgbus_msg_header(m, "msgbus-dlq-topic");
    ck_assert_msg(from && strcmp(from, topic) == 0, "%s: msgbus-dlq-topic %s", path, from);
    check_trace(m, kinds[kind], path);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_sub_close(ds);
}

START_TEST(nack_past_last_attempt_to_dead_letter)
{
    char url[1024], topic[128], group[128], dlq_group[128], opts[256];
    msgbus_t *bus = open_bus(_i, url, sizeof url);
    tu_unique(topic, sizeof topic, "trace-dlqn");
    tu_unique(group, sizeof group, "g");
    dlq_options(opts, sizeof opts, dlq_group, sizeof dlq_group,
                "retry_max_attempts=2&retry_initial_ms=100");
    tu_ck_ok(msgbus_declare(bus, topic, group));
    char *id = publish_traced(bus, topic, "{\"order\":7}");
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group, opts, &sub));
    for (int attempt = 1; attempt <= 2; attempt++) {
        msgbus_msg_t *m = receive_id(sub, id, "delivery");
        ck_assert_int_eq(msgbus_msg_attempt(m), attempt);
        tu_ck_ok(msgbus_nack_reason(m, "handler failed"));
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub); /* waits for the dead letter in flight */
    check_letter(bus, topic, dlq_group, id, _i, "nack×2→dead letter");
    msgbus_close(bus);
    free(id);
}
END_TEST

/* Publishes a traced message and dead-letters it with msgbus_dead_letter
 * into `dlq_group` (made here); returns its id. */
static char *dead_letter_one(msgbus_t *bus, const char *topic, const char *group,
                             char *dlq_group, size_t gn)
{
    char opts[256];
    dlq_options(opts, sizeof opts, dlq_group, gn, NULL);
    tu_ck_ok(msgbus_declare(bus, topic, group));
    char *id = publish_traced(bus, topic, "{\"order\":7}");
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group, opts, &sub));
    msgbus_msg_t *m = receive_id(sub, id, "delivery");
    tu_ck_ok(msgbus_dead_letter(m, "poison"));
    msgbus_msg_free(m);
    msgbus_sub_close(sub); /* waits for the dead letter in flight */
    return id;
}

START_TEST(dead_letter_call_to_dead_letter)
{
    char url[1024], topic[128], group[128], dlq_group[128];
    msgbus_t *bus = open_bus(_i, url, sizeof url);
    tu_unique(topic, sizeof topic, "trace-dlqc");
    tu_unique(group, sizeof group, "g");
    char *id = dead_letter_one(bus, topic, group, dlq_group, sizeof dlq_group);
    check_letter(bus, topic, dlq_group, id, _i, "msgbus_dead_letter");
    msgbus_close(bus);
    free(id);
}
END_TEST

START_TEST(dlq_replay_to_receive)
{
    char url[1024], topic[128], group[128], dlq[160], dlq_group[128];
    msgbus_t *bus = open_bus(_i, url, sizeof url);
    tu_unique(topic, sizeof topic, "trace-replay");
    tu_unique(group, sizeof group, "g");
    snprintf(dlq, sizeof dlq, "%s.dlq", topic);
    char *id = dead_letter_one(bus, topic, group, dlq_group, sizeof dlq_group);
    size_t moved = 0;
    watch_publishes(bus);
    tu_ck_ok(msgbus_dlq_replay(bus, dlq, dlq_group, 0, _i == 1 ? 15000 : 3000, &moved));
    ck_assert_uint_eq(moved, 1);
    check_hook_saw_context("dlq replay");
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = receive_id(sub, id, "replayed");
    ck_assert_int_eq(msgbus_msg_attempt(m), 1);
    ck_assert_ptr_null(msgbus_msg_header(m, "msgbus-dlq-topic"));
    check_trace(m, kinds[_i], "dead letter→dlq replay");
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    free(id);
}
END_TEST

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    Suite *s = suite_create("trace_headers");
    struct {
        const char *name;
        const TTest *test;
    } paths[] = {
        {"publish", publish_to_receive},
#ifdef TT_WITH_SQLITE
        {"outbox_sqlite", outbox_sqlite_relay_to_receive},
#endif
#ifdef TT_WITH_PG
        {"outbox_pg", outbox_pg_relay_to_receive},
#endif
        {"retry", nack_to_retry_copy},
        {"dead_letter_nack", nack_past_last_attempt_to_dead_letter},
        {"dead_letter_call", dead_letter_call_to_dead_letter},
        {"dlq_replay", dlq_replay_to_receive},
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        TCase *tc = tcase_create(paths[i].name);
        tcase_set_timeout(tc, 300);
        /* mem://, Kafka, RabbitMQ: the loop index picks the backend. */
        tcase_add_loop_test(tc, paths[i].test, 0, N_KINDS);
        suite_add_tcase(s, tc);
    }
    return tu_run_suite(s);
}
