/*
 * test_inbox_sqlite.c — promises of the SQLite inbox store: a claim is
 * recorded once, a duplicate is recognised, a rolled-back transaction
 * forgets its claim, purge removes old claims only, the table is created
 * and checked, and bad arguments get clear errors.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/msg.h"
#include "msgbus/inbox.h"
#include "testutil.h"
#include "tu_sqlite.h"

static sqlite3 *db;

static void setup(void)
{
    ck_assert_int_eq(sqlite3_open(":memory:", &db), SQLITE_OK);
}

static void teardown(void)
{
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK); /* fails if the inbox leaked a statement */
    db = NULL;
}

static msgbus_msg_t *new_msg(void)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    return m;
}

START_TEST(first_claim_ok_then_duplicate)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
    ck_assert_str_eq(msgbus_inbox_store(ib), "sqlite");
    ck_assert_str_eq(msgbus_inbox_consumer(ib), "billing");
    msgbus_msg_t *m = new_msg();
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim(ib, m));
    /* Seen again inside the same transaction, too. */
    tu_ck_err(msgbus_inbox_claim(ib, m), MSGBUS_ERR_DUPLICATE);
    tu_sql_exec(db, "COMMIT");
    tu_sql_exec(db, "BEGIN");
    tu_ck_err(msgbus_inbox_claim(ib, m), MSGBUS_ERR_DUPLICATE);
    tu_sql_exec(db, "ROLLBACK");
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 1);
    char q[256];
    snprintf(q, sizeof q, "SELECT count(*) FROM msgbus_inbox WHERE consumer='billing' AND message_id='%s'",
             msgbus_msg_id(m));
    ck_assert_int_eq(tu_sql_count(db, "%s", q), 1);
    printf("first_claim_ok_then_duplicate: rows=%lld\n", tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"));
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(rolled_back_transaction_forgets_the_claim)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
    msgbus_msg_t *m = new_msg();
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim(ib, m));
    tu_sql_exec(db, "ROLLBACK");
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 0);
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim(ib, m)); /* processed for real this time */
    tu_sql_exec(db, "COMMIT");
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 1);
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

/* A process killed before COMMIT is a rolled-back transaction: the file
 * keeps neither the claim nor the effects. */
START_TEST(uncommitted_claim_is_gone_after_crash)
{
    char path[128];
    tu_unique(path, sizeof path, "/tmp/msgbus-inbox-test");
    strcat(path, ".db");
    sqlite3 *fdb = NULL;
    ck_assert_int_eq(sqlite3_open(path, &fdb), SQLITE_OK);
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, fdb, "billing", NULL));
    ck_assert_int_eq(sqlite3_exec(fdb, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    tu_ck_ok(msgbus_inbox_claim_id(ib, "order-1"));
    msgbus_inbox_close(ib);
    ck_assert_int_eq(sqlite3_close(fdb), SQLITE_OK); /* open transaction dies with the handle */

    ck_assert_int_eq(sqlite3_open(path, &fdb), SQLITE_OK);
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, fdb, "billing", NULL)); /* existing table passes the check */
    ck_assert_int_eq(sqlite3_exec(fdb, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    tu_ck_ok(msgbus_inbox_claim_id(ib, "order-1"));
    ck_assert_int_eq(sqlite3_exec(fdb, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    msgbus_inbox_close(ib);
    ck_assert_int_eq(sqlite3_close(fdb), SQLITE_OK);

    ck_assert_int_eq(sqlite3_open(path, &fdb), SQLITE_OK);
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, fdb, "billing", NULL));
    ck_assert_int_eq(sqlite3_exec(fdb, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    tu_ck_err(msgbus_inbox_claim_id(ib, "order-1"), MSGBUS_ERR_DUPLICATE); /* committed: kept */
    ck_assert_int_eq(sqlite3_exec(fdb, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    msgbus_inbox_close(ib);
    ck_assert_int_eq(sqlite3_close(fdb), SQLITE_OK);
    unlink(path);
}
END_TEST

START_TEST(claim_outside_a_transaction_is_refused)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
    msgbus_msg_t *m = new_msg();
    tu_ck_err(msgbus_inbox_claim(ib, m), MSGBUS_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "no transaction"));
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 0);
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(consumers_are_independent)
{
    msgbus_inbox_t *a = NULL, *b = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&a, db, "billing", NULL));
    tu_ck_ok(msgbus_inbox_open_sqlite(&b, db, "shipping", NULL));
    msgbus_msg_t *m = new_msg();
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim(a, m));
    tu_ck_ok(msgbus_inbox_claim(b, m));
    tu_ck_err(msgbus_inbox_claim(a, m), MSGBUS_ERR_DUPLICATE);
    tu_sql_exec(db, "COMMIT");
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 2);
    msgbus_msg_free(m);
    msgbus_inbox_close(a);
    msgbus_inbox_close(b);
}
END_TEST

START_TEST(custom_table_name)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", "billing_inbox"));
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "a"));
    tu_sql_exec(db, "COMMIT");
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM billing_inbox"), 1);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM sqlite_master WHERE name='billing_inbox_claimed_idx'"), 1);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM sqlite_master WHERE name='msgbus_inbox'"), 0);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(purge_removes_old_claims_only)
{
    msgbus_inbox_t *ib = NULL, *other = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
    tu_ck_ok(msgbus_inbox_open_sqlite(&other, db, "shipping", NULL));
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-1"));
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-2"));
    tu_ck_ok(msgbus_inbox_claim_id(other, "old-1"));
    tu_sql_exec(db, "COMMIT");
    usleep(600 * 1000);
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "new-1"));
    tu_sql_exec(db, "COMMIT");
    size_t n = 99;
    tu_ck_ok(msgbus_inbox_purge(ib, 300, &n));
    printf("purge_removes_old_claims_only: purged=%zu\n", n);
    ck_assert_uint_eq(n, 2);
    /* Another consumer's claims are its own business. */
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox WHERE consumer='shipping'"), 1);
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-1")); /* forgotten: would be processed again */
    tu_ck_err(msgbus_inbox_claim_id(ib, "new-1"), MSGBUS_ERR_DUPLICATE);
    tu_sql_exec(db, "ROLLBACK");
    tu_ck_ok(msgbus_inbox_purge(ib, 0, &n)); /* 0: everything claimed so far */
    ck_assert_uint_eq(n, 1);
    tu_ck_ok(msgbus_inbox_purge(ib, 0, NULL));
    tu_ck_err(msgbus_inbox_purge(ib, -1, &n), MSGBUS_ERR_INVALID);
    msgbus_inbox_close(ib);
    msgbus_inbox_close(other);
}
END_TEST

START_TEST(forget_removes_a_claim)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
    msgbus_msg_t *m = new_msg();
    tu_sql_exec(db, "BEGIN");
    tu_ck_ok(msgbus_inbox_claim(ib, m));
    tu_ck_ok(msgbus_inbox_forget(ib, m));
    tu_ck_err(msgbus_inbox_forget(ib, m), MSGBUS_ERR_NOT_FOUND);
    tu_ck_ok(msgbus_inbox_claim(ib, m));
    tu_sql_exec(db, "COMMIT");
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(existing_foreign_table_is_refused)
{
    msgbus_inbox_t *ib = NULL;
    tu_sql_exec(db, "CREATE TABLE not_inbox (consumer TEXT, message_id TEXT)");
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", "not_inbox"), MSGBUS_ERR_STORE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "claimed_at"));
    ck_assert_ptr_null(ib);
    tu_sql_exec(db, "CREATE TABLE no_key (consumer TEXT, message_id TEXT, claimed_at INTEGER)");
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", "no_key"), MSGBUS_ERR_STORE);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "primary key"));
    tu_sql_exec(db, "CREATE TABLE wrong_key (consumer TEXT, message_id TEXT, claimed_at INTEGER,"
         " PRIMARY KEY (message_id, consumer))");
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", "wrong_key"), MSGBUS_ERR_STORE);
    ck_assert_ptr_null(ib);
}
END_TEST

START_TEST(bad_arguments_get_clear_errors)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_err(msgbus_inbox_open_sqlite(NULL, db, "billing", NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, NULL, "billing", NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "", NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "bad name", NULL), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "consumer"));
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", "x; DROP TABLE y"), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "table"));
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", "main.inbox"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", "1inbox"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", ""), MSGBUS_ERR_INVALID);
    tu_sql_exec(db, "BEGIN");
    tu_ck_err(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL), MSGBUS_ERR_STATE);
    tu_sql_exec(db, "ROLLBACK");
    ck_assert_ptr_null(ib);
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM sqlite_master"), 0); /* nothing created */

    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
    tu_sql_exec(db, "BEGIN");
    tu_ck_err(msgbus_inbox_claim(NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_claim(ib, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_claim_id(ib, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_claim_id(ib, ""), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_claim_id(ib, "has space"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_forget(ib, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_purge(NULL, 0, NULL), MSGBUS_ERR_INVALID);
    tu_sql_exec(db, "COMMIT");
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 0);
    ck_assert_ptr_null(msgbus_inbox_store(NULL));
    ck_assert_ptr_null(msgbus_inbox_consumer(NULL));
    msgbus_inbox_close(ib);
    msgbus_inbox_close(NULL);
}
END_TEST

/* The documented rule: a message without an id is refused, never
 * recorded under some made-up key. */
START_TEST(message_without_id_is_refused)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_sqlite(&ib, db, "billing", NULL));
    msgbus_msg_t *m = mb_msg_alloc();
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_null(msgbus_msg_id(m));
    tu_sql_exec(db, "BEGIN");
    tu_ck_err(msgbus_inbox_claim(ib, m), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "no id"));
    tu_sql_exec(db, "COMMIT");
    ck_assert_int_eq(tu_sql_count(db, "SELECT count(*) FROM msgbus_inbox"), 0);
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("inbox_sqlite");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, first_claim_ok_then_duplicate);
    tcase_add_test(tc, rolled_back_transaction_forgets_the_claim);
    tcase_add_test(tc, uncommitted_claim_is_gone_after_crash);
    tcase_add_test(tc, claim_outside_a_transaction_is_refused);
    tcase_add_test(tc, consumers_are_independent);
    tcase_add_test(tc, custom_table_name);
    tcase_add_test(tc, purge_removes_old_claims_only);
    tcase_add_test(tc, forget_removes_a_claim);
    tcase_add_test(tc, existing_foreign_table_is_refused);
    tcase_add_test(tc, bad_arguments_get_clear_errors);
    tcase_add_test(tc, message_without_id_is_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run_suite(suite());
}
