/*
 * test_inbox_pg.c — promises of the PostgreSQL inbox store, against the
 * real server of scripts/brokers (MSGBUS_TEST_PG_URL): claim, duplicate,
 * a rolled-back transaction forgets its claim, a concurrent claim of the
 * same id waits and then sees the duplicate, purge, the table check, bad
 * arguments, and msgbus_inbox_handle's paths over a mem:// bus.
 * Every test works in a table of its own, dropped at the end.
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/msg.h"
#include "msgbus/inbox.h"
#include "testutil.h"

static PGconn *conn;
static char table[64];

static void quiet_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static PGconn *connect_pg(void)
{
    PGconn *c = PQconnectdb(tu_broker_url("pg"));
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect to %s: %s", tu_broker_url("pg"), PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet_notice, NULL); /* the tests' own DROP … IF EXISTS */
    return c;
}

static void exec_on(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

static void exec(const char *sql)
{
    exec_on(conn, sql);
}

static long long count(const char *fmt)
{
    char sql[512];
    snprintf(sql, sizeof sql, fmt, table);
    PGresult *r = PQexec(conn, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(conn));
    long long n = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static void setup(void)
{
    conn = connect_pg();
    static int n;
    snprintf(table, sizeof table, "inbox_t_%d_%d_%04x", (int)getpid(), ++n, (unsigned)(random() & 0xffff));
}

static void teardown(void)
{
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", table);
    exec(sql);
    PQfinish(conn);
    conn = NULL;
}

START_TEST(first_claim_ok_then_duplicate)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    ck_assert_str_eq(msgbus_inbox_store(ib), "pg");
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim(ib, m));
    tu_ck_err(msgbus_inbox_claim(ib, m), MSGBUS_ERR_DUPLICATE); /* same transaction */
    exec("COMMIT");
    exec("BEGIN");
    tu_ck_err(msgbus_inbox_claim(ib, m), MSGBUS_ERR_DUPLICATE);
    exec("ROLLBACK");
    long long rows = count("SELECT count(*) FROM %s");
    printf("pg first_claim_ok_then_duplicate: rows=%lld\n", rows);
    ck_assert_int_eq(rows, 1);
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(rolled_back_transaction_forgets_the_claim)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "order-1"));
    exec("ROLLBACK");
    ck_assert_int_eq(count("SELECT count(*) FROM %s"), 0);
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "order-1"));
    exec("COMMIT");
    ck_assert_int_eq(count("SELECT count(*) FROM %s"), 1);
    msgbus_inbox_close(ib);
}
END_TEST

/* A connection that dies mid-transaction (a crashed consumer) loses its
 * claim with its effects. */
START_TEST(uncommitted_claim_is_gone_after_disconnect)
{
    PGconn *c2 = connect_pg();
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, c2, "billing", table));
    exec_on(c2, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "order-1"));
    msgbus_inbox_close(ib);
    PQfinish(c2);
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table)); /* existing table passes */
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "order-1"));
    exec("COMMIT");
    msgbus_inbox_close(ib);
}
END_TEST

struct waiter {
    msgbus_inbox_t *ib;
    PGconn *c;
    msgbus_err_t result;
    int64_t waited_ms;
};

static void *claim_thread(void *arg)
{
    struct waiter *w = arg;
    int64_t t0 = tu_now_ms();
    PQclear(PQexec(w->c, "BEGIN"));
    w->result = msgbus_inbox_claim_id(w->ib, "order-1");
    w->waited_ms = tu_now_ms() - t0;
    PQclear(PQexec(w->c, "ROLLBACK"));
    return NULL;
}

/* Two consumers racing on one id: the second waits for the first
 * transaction, then sees the duplicate (or wins if the first rolls back). */
static void race(int first_commits, msgbus_err_t want)
{
    msgbus_inbox_t *a = NULL, *b = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&a, conn, "billing", table));
    struct waiter w = {.c = connect_pg()};
    tu_ck_ok(msgbus_inbox_open_pg(&w.ib, w.c, "billing", table));
    b = w.ib;
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(a, "order-1"));
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, claim_thread, &w), 0);
    usleep(300 * 1000);
    exec(first_commits ? "COMMIT" : "ROLLBACK");
    pthread_join(t, NULL);
    printf("pg race(first_commits=%d): second claim waited %lld ms, got %s\n", first_commits,
           (long long)w.waited_ms, msgbus_err_name(w.result));
    ck_assert_int_eq(w.result, want);
    ck_assert_int_ge(w.waited_ms, 200);
    msgbus_inbox_close(a);
    msgbus_inbox_close(b);
    PQfinish(w.c);
}

START_TEST(concurrent_claim_waits_then_sees_duplicate)
{
    race(1, MSGBUS_ERR_DUPLICATE);
}
END_TEST

START_TEST(concurrent_claim_wins_after_rollback)
{
    race(0, MSGBUS_OK);
}
END_TEST

START_TEST(claim_outside_or_in_failed_transaction_is_refused)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    tu_ck_err(msgbus_inbox_claim_id(ib, "a"), MSGBUS_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "no transaction"));
    exec("BEGIN");
    PQclear(PQexec(conn, "SELECT 1/0"));
    tu_ck_err(msgbus_inbox_claim_id(ib, "a"), MSGBUS_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "failed"));
    exec("ROLLBACK");
    ck_assert_int_eq(count("SELECT count(*) FROM %s"), 0);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(purge_removes_old_claims_only)
{
    msgbus_inbox_t *ib = NULL, *other = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    tu_ck_ok(msgbus_inbox_open_pg(&other, conn, "shipping", table));
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-1"));
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-2"));
    tu_ck_ok(msgbus_inbox_claim_id(other, "old-1"));
    exec("COMMIT");
    usleep(600 * 1000);
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "new-1"));
    exec("COMMIT");
    size_t n = 99;
    tu_ck_ok(msgbus_inbox_purge(ib, 300, &n));
    printf("pg purge_removes_old_claims_only: purged=%zu\n", n);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(count("SELECT count(*) FROM %s WHERE consumer = 'shipping'"), 1);
    exec("BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-1"));
    tu_ck_err(msgbus_inbox_claim_id(ib, "new-1"), MSGBUS_ERR_DUPLICATE);
    exec("ROLLBACK");
    tu_ck_ok(msgbus_inbox_purge(ib, 0, &n));
    ck_assert_uint_eq(n, 1);
    msgbus_inbox_close(ib);
    msgbus_inbox_close(other);
}
END_TEST

START_TEST(table_contract_is_created_and_checked)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    msgbus_inbox_close(ib);
    ib = NULL;
    char q[256];
    snprintf(q, sizeof q, "SELECT count(*) FROM pg_indexes WHERE tablename = '%s' AND indexname = '%s_claimed_idx'",
             table, table);
    PGresult *r = PQexec(conn, q);
    ck_assert_int_eq(atoi(PQgetvalue(r, 0, 0)), 1);
    PQclear(r);
    /* Another language claims with its own connection, per docs/inbox.md. */
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (consumer, message_id) VALUES ('billing', 'x') ON CONFLICT DO NOTHING", table);
    exec(sql);
    ck_assert_int_eq(count("SELECT count(*) FROM %s WHERE claimed_at > 1700000000000"), 1);

    char foreign[80];
    snprintf(foreign, sizeof foreign, "%s_f", table);
    snprintf(sql, sizeof sql, "CREATE TABLE %s (consumer TEXT, message_id TEXT, claimed_at BIGINT)", foreign);
    exec(sql);
    tu_ck_err(msgbus_inbox_open_pg(&ib, conn, "billing", foreign), MSGBUS_ERR_STORE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "primary key"));
    ck_assert_ptr_null(ib);
    snprintf(sql, sizeof sql, "DROP TABLE %s", foreign);
    exec(sql);
    snprintf(sql, sizeof sql, "CREATE TABLE %s (consumer TEXT, message_id TEXT PRIMARY KEY)", foreign);
    exec(sql);
    tu_ck_err(msgbus_inbox_open_pg(&ib, conn, "billing", foreign), MSGBUS_ERR_STORE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "claimed_at"));
    snprintf(sql, sizeof sql, "DROP TABLE %s", foreign);
    exec(sql);

    /* Schema-qualified names work. */
    snprintf(sql, sizeof sql, "public.%s", table);
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", sql));
    exec("BEGIN");
    tu_ck_err(msgbus_inbox_claim_id(ib, "x"), MSGBUS_ERR_DUPLICATE);
    exec("ROLLBACK");
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(bad_arguments_get_clear_errors)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_err(msgbus_inbox_open_pg(NULL, conn, "billing", table), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_pg(&ib, NULL, "billing", table), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_pg(&ib, conn, NULL, table), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_pg(&ib, conn, "billing", "a.b.c"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_pg(&ib, conn, "billing", "x;drop"), MSGBUS_ERR_INVALID);
    exec("BEGIN");
    tu_ck_err(msgbus_inbox_open_pg(&ib, conn, "billing", table), MSGBUS_ERR_STATE);
    exec("ROLLBACK");
    ck_assert_ptr_null(ib);
    ck_assert_int_eq(count("SELECT count(*) FROM pg_tables WHERE tablename = '%s'"), 0);
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    msgbus_msg_t *noid = mb_msg_alloc();
    exec("BEGIN");
    tu_ck_err(msgbus_inbox_claim(ib, noid), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "no id"));
    exec("COMMIT");
    msgbus_msg_free(noid);
    msgbus_inbox_close(ib);
}
END_TEST

/* ---- msgbus_inbox_handle on PostgreSQL over a mem:// bus ---- */

struct app {
    int calls;
    int fail_calls;
};

static int apply(void *opaque, msgbus_msg_t *msg)
{
    struct app *a = opaque;
    a->calls++;
    size_t len = 0;
    const char *p = msgbus_msg_payload(msg, &len);
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s_ledger (order_id) VALUES ($1)", table);
    char val[64];
    snprintf(val, sizeof val, "%.*s", (int)len, p);
    const char *params[1] = {val};
    PGresult *r = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok)
        return -1;
    return a->calls <= a->fail_calls ? -1 : 0;
}

START_TEST(handle_paths)
{
    char sql[160], url[96], topic[64];
    snprintf(sql, sizeof sql, "CREATE TABLE %s_ledger (order_id TEXT NOT NULL)", table);
    exec(sql);
    tu_unique(url, sizeof url, "mem://inbox-pg");
    tu_unique(topic, sizeof topic, "orders");
    msgbus_t *bus = NULL;
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_subscribe(bus, topic, "billing", &sub));
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));

    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "order-1", 7));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL)); /* delivered twice */
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));

    struct app a = {.fail_calls = 1};
    int applied = 0, duplicate = 0, rejected = 0;
    for (int i = 0; i < 3; i++) { /* fail, then apply, then the duplicate (any order after the first) */
        msgbus_msg_t *in = tu_receive(sub, 5000);
        ck_assert_ptr_nonnull(in);
        msgbus_inbox_outcome_t oc;
        tu_ck_ok(msgbus_inbox_handle(ib, in, apply, &a, &oc));
        applied += oc == MSGBUS_INBOX_APPLIED;
        duplicate += oc == MSGBUS_INBOX_DUPLICATE;
        rejected += oc == MSGBUS_INBOX_REJECTED;
        ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
        msgbus_msg_free(in);
    }
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s_ledger", table);
    PGresult *r = PQexec(conn, sql);
    long long ledger = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    printf("pg handle_paths: rejected=%d applied=%d duplicate=%d calls=%d ledger=%lld\n", rejected, applied,
           duplicate, a.calls, ledger);
    ck_assert_int_eq(rejected, 1);
    ck_assert_int_eq(applied, 1);
    ck_assert_int_eq(duplicate, 1);
    ck_assert_int_eq(a.calls, 2);
    ck_assert_int_eq(ledger, 1);
    ck_assert_ptr_null(tu_receive(sub, 200));

    /* No id: refused, left unsettled. */
    tu_ck_ok(msgbus_msg_new(&m, "order-2", 7));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    msgbus_msg_t *in = tu_receive(sub, 5000);
    ck_assert_ptr_nonnull(in);
    free(in->id);
    in->id = NULL;
    tu_ck_err(msgbus_inbox_handle(ib, in, apply, &a, NULL), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(a.calls, 2);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);

    msgbus_inbox_close(ib);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    snprintf(sql, sizeof sql, "DROP TABLE %s_ledger", table);
    exec(sql);
}
END_TEST

static void count_notice(void *arg, const PGresult *r)
{
    int *n = arg;
    (*n)++;
    printf("  notice: %s", PQresultErrorMessage(r));
}

static char *show_min_messages(void)
{
    PGresult *r = PQexec(conn, "SHOW client_min_messages");
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    char *v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Opening an inbox whose table exists sends the application's connection
 * no NOTICE ("relation … already exists, skipping"), and leaves its
 * settings as they were: the application's own notice receiver sees
 * nothing from msgbus, and still gets its own notices. */
START_TEST(open_sends_the_application_no_notice)
{
    int notices = 0;
    PQsetNoticeReceiver(conn, count_notice, &notices);
    char *before = show_min_messages();
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    msgbus_inbox_close(ib);
    int first = notices;
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "billing", table));
    msgbus_inbox_close(ib);
    char qualified[96];
    snprintf(qualified, sizeof qualified, "public.%s", table);
    tu_ck_ok(msgbus_inbox_open_pg(&ib, conn, "shipping", qualified));
    msgbus_inbox_close(ib);
    char *after = show_min_messages();
    printf("inbox open: %d notices on the first open, %d on the next two; client_min_messages "
           "%s before, %s after\n",
           first, notices - first, before, after);
    ck_assert_int_eq(notices, 0);
    ck_assert_str_eq(before, after);
    exec("DO $$ BEGIN RAISE NOTICE 'mine'; END $$");
    ck_assert_int_eq(notices, 1);
    free(before);
    free(after);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("inbox_pg");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, first_claim_ok_then_duplicate);
    tcase_add_test(tc, rolled_back_transaction_forgets_the_claim);
    tcase_add_test(tc, uncommitted_claim_is_gone_after_disconnect);
    tcase_add_test(tc, concurrent_claim_waits_then_sees_duplicate);
    tcase_add_test(tc, concurrent_claim_wins_after_rollback);
    tcase_add_test(tc, claim_outside_or_in_failed_transaction_is_refused);
    tcase_add_test(tc, purge_removes_old_claims_only);
    tcase_add_test(tc, table_contract_is_created_and_checked);
    tcase_add_test(tc, bad_arguments_get_clear_errors);
    tcase_add_test(tc, handle_paths);
    tcase_add_test(tc, open_sends_the_application_no_notice);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    srandom((unsigned)getpid());
    tu_broker_url("pg"); /* fail at once, clearly, when the server is not configured */
    return tu_run_suite(suite());
}
