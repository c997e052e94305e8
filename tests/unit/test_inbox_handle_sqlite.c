/*
 * test_inbox_handle_sqlite.c — promises of msgbus_inbox_handle on the
 * SQLite store over a mem:// bus: a message is applied and acked once; a
 * failing handler's effects roll back and the message comes again; a
 * duplicate is acked without calling the handler; a message without an id
 * is refused and left unsettled; a failing COMMIT nacks; the helper will
 * not run inside, or let the handler end, a transaction.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/msg.h"
#include "msgbus/inbox.h"
#include "testutil.h"
#include "tu_sqlite.h"

static sqlite3 *db;
static msgbus_t *bus;
static msgbus_sub_t *sub;
static msgbus_inbox_t *ib;
static char topic[64];

struct app {
    int calls;
    int fail_calls;  /* fail the first N calls (after writing the ledger row) */
    int end_tx;      /* the handler (wrongly) commits */
    int orphan;      /* write a row that breaks a deferred foreign key */
};

/* The billing effect: one ledger row per order, in the inbox's transaction. */
static int apply(void *opaque, msgbus_msg_t *msg)
{
    struct app *a = opaque;
    a->calls++;
    size_t len = 0;
    const char *p = msgbus_msg_payload(msg, &len);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO ledger (order_id) VALUES (?1)", -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, p, (int)len, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return -1;
    if (a->orphan)
        sqlite3_exec(db, "INSERT INTO child (parent_id) VALUES (42)", NULL, NULL, NULL);
    if (a->end_tx)
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    return a->calls <= a->fail_calls ? -1 : 0;
}

static void setup(void)
{
    ck_assert_int_eq(sqlite3_open(":memory:", &db), SQLITE_OK);
    tu_sql_exec(db, "PRAGMA foreign_keys = ON");
    tu_sql_exec(db, "CREATE TABLE ledger (order_id TEXT NOT NULL)");
    tu_sql_exec(db, "CREATE TABLE parent (id INTEGER PRIMARY KEY)");
    tu_sql_exec(db, "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)");
    char url[96];
    tu_unique(url, sizeof url, "mem://inbox-handle");
    tu_unique(topic, sizeof topic, "orders");
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_subscribe(bus, topic, "billing", &sub));
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
}

static void teardown(void)
{
    msgbus_inbox_close(ib);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    ib = NULL;
    sub = NULL;
    bus = NULL;
    db = NULL;
}

/* Publishes `payload` with id `id` (NULL: a fresh one) `times` times. */
static void publish(const char *payload, const char *id, int times)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
    if (id)
        tu_ck_ok(msgbus_msg_set_id(m, id));
    for (int i = 0; i < times; i++)
        tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));
}

static msgbus_msg_t *receive(void)
{
    msgbus_msg_t *m = tu_receive(sub, 5000);
    ck_assert_msg(m != NULL, "no message within 5 s");
    return m;
}

START_TEST(applied_once_then_acked)
{
    struct app a = {0};
    publish("order-1", NULL, 1);
    msgbus_msg_t *m = receive();
    msgbus_inbox_outcome_t oc = MSGBUS_INBOX_REJECTED;
    tu_ck_ok(msgbus_inbox_handle(ib, m, apply, &a, &oc));
    ck_assert_int_eq(oc, MSGBUS_INBOX_APPLIED);
    tu_ck_err(msgbus_ack(m), MSGBUS_ERR_STATE); /* the helper acked it */
    msgbus_msg_free(m);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 1);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 1);
    ck_assert(sqlite3_get_autocommit(db)); /* committed, nothing left open */
    ck_assert_ptr_null(tu_receive(sub, 200));
}
END_TEST

START_TEST(handler_failure_rolls_back_and_redelivers)
{
    struct app a = {.fail_calls = 1};
    publish("order-1", NULL, 1);
    msgbus_msg_t *m = receive();
    ck_assert_int_eq(msgbus_msg_attempt(m), 1);
    msgbus_inbox_outcome_t oc;
    tu_ck_ok(msgbus_inbox_handle(ib, m, apply, &a, &oc));
    ck_assert_int_eq(oc, MSGBUS_INBOX_REJECTED);
    msgbus_msg_free(m);
    /* The failed attempt's ledger row and claim are both gone. */
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 0);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 0);
    m = receive(); /* nacked: delivered again */
    ck_assert_int_eq(msgbus_msg_attempt(m), 2);
    tu_ck_ok(msgbus_inbox_handle(ib, m, apply, &a, &oc));
    ck_assert_int_eq(oc, MSGBUS_INBOX_APPLIED);
    msgbus_msg_free(m);
    printf("handler_failure_rolls_back_and_redelivers: calls=%d ledger=%lld\n", a.calls,
           tu_sql_count(db, "SELECT count(*) FROM ledger"));
    ck_assert_int_eq(a.calls, 2);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 1);
    ck_assert_ptr_null(tu_receive(sub, 200));
}
END_TEST

START_TEST(duplicate_is_acked_without_handler)
{
    struct app a = {0};
    publish("order-1", "order-1-id", 3); /* the broker delivers it three times */
    int applied = 0, duplicates = 0;
    for (int i = 0; i < 3; i++) {
        msgbus_msg_t *m = receive();
        msgbus_inbox_outcome_t oc;
        tu_ck_ok(msgbus_inbox_handle(ib, m, apply, &a, &oc));
        applied += oc == MSGBUS_INBOX_APPLIED;
        duplicates += oc == MSGBUS_INBOX_DUPLICATE;
        tu_ck_err(msgbus_ack(m), MSGBUS_ERR_STATE); /* settled (acked) by the helper */
        msgbus_msg_free(m);
    }
    printf("duplicate_is_acked_without_handler: delivered=3 applied=%d suppressed=%d calls=%d\n", applied,
           duplicates, a.calls);
    ck_assert_int_eq(applied, 1);
    ck_assert_int_eq(duplicates, 2);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 1);
    ck_assert(sqlite3_get_autocommit(db));
    ck_assert_ptr_null(tu_receive(sub, 200)); /* all acked: nothing comes back */
}
END_TEST

START_TEST(message_without_id_is_refused_unsettled)
{
    struct app a = {0};
    publish("order-1", NULL, 1);
    msgbus_msg_t *m = receive();
    /* As if its producer were not msgbus: strip the id. */
    free(m->id);
    m->id = NULL;
    ck_assert_ptr_null(msgbus_msg_id(m));
    msgbus_inbox_outcome_t oc;
    tu_ck_err(msgbus_inbox_handle(ib, m, apply, &a, &oc), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "no id"));
    ck_assert_int_eq(a.calls, 0);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 0);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 0);
    ck_assert(sqlite3_get_autocommit(db));
    tu_ck_ok(msgbus_ack(m)); /* left for the application to settle */
    msgbus_msg_free(m);
}
END_TEST

START_TEST(commit_failure_nacks)
{
    struct app a = {.orphan = 1};
    publish("order-1", NULL, 1);
    msgbus_msg_t *m = receive();
    msgbus_inbox_outcome_t oc;
    tu_ck_err(msgbus_inbox_handle(ib, m, apply, &a, &oc), MSGBUS_ERR_STORE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "COMMIT"));
    ck_assert_int_eq(oc, MSGBUS_INBOX_REJECTED);
    msgbus_msg_free(m);
    ck_assert(sqlite3_get_autocommit(db)); /* rolled back */
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 0);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 0);
    a.orphan = 0;
    m = receive(); /* nacked: comes again, and now applies */
    tu_ck_ok(msgbus_inbox_handle(ib, m, apply, &a, &oc));
    ck_assert_int_eq(oc, MSGBUS_INBOX_APPLIED);
    msgbus_msg_free(m);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 1);
}
END_TEST

START_TEST(open_transaction_is_refused)
{
    struct app a = {0};
    publish("order-1", NULL, 1);
    msgbus_msg_t *m = receive();
    tu_sql_exec(db, "BEGIN");
    tu_ck_err(msgbus_inbox_handle(ib, m, apply, &a, NULL), MSGBUS_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "already open"));
    ck_assert_int_eq(a.calls, 0);
    ck_assert(!sqlite3_get_autocommit(db)); /* the application's transaction is untouched */
    tu_sql_exec(db, "ROLLBACK");
    tu_ck_ok(msgbus_inbox_handle(ib, m, apply, &a, NULL)); /* still unsettled: can be handled */
    msgbus_msg_free(m);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 1);
}
END_TEST

START_TEST(handler_ending_the_transaction_is_an_error)
{
    struct app a = {.end_tx = 1};
    publish("order-1", NULL, 1);
    msgbus_msg_t *m = receive();
    msgbus_inbox_outcome_t oc;
    tu_ck_err(msgbus_inbox_handle(ib, m, apply, &a, &oc), MSGBUS_ERR_STATE);
    ck_assert_int_eq(oc, MSGBUS_INBOX_REJECTED);
    msgbus_msg_free(m);
    /* The handler's COMMIT made claim and effect durable; the redelivery
     * the nack caused is then recognised. */
    a.end_tx = 0;
    m = receive();
    tu_ck_ok(msgbus_inbox_handle(ib, m, apply, &a, &oc));
    ck_assert_int_eq(oc, MSGBUS_INBOX_DUPLICATE);
    msgbus_msg_free(m);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM ledger"), 1);
}
END_TEST

START_TEST(null_arguments)
{
    struct app a = {0};
    publish("order-1", NULL, 1);
    msgbus_msg_t *m = receive();
    tu_ck_err(msgbus_inbox_handle(NULL, m, apply, &a, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_handle(ib, NULL, apply, &a, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_handle(ib, m, NULL, &a, NULL), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(a.calls, 0);
    tu_ck_ok(msgbus_ack(m)); /* untouched by the refusals */
    msgbus_msg_free(m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("inbox_handle_sqlite");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, applied_once_then_acked);
    tcase_add_test(tc, handler_failure_rolls_back_and_redelivers);
    tcase_add_test(tc, duplicate_is_acked_without_handler);
    tcase_add_test(tc, message_without_id_is_refused_unsettled);
    tcase_add_test(tc, commit_failure_nacks);
    tcase_add_test(tc, open_transaction_is_refused);
    tcase_add_test(tc, handler_ending_the_transaction_is_an_error);
    tcase_add_test(tc, null_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run_suite(suite());
}
