/*
 * test_rules.c — the rules and the table SQL the bindings ask for
 * (msgbus_check, msgbus_outbox_schema, msgbus_inbox_schema) are the ones
 * the API and the stores apply: msgbus_check gives the API's own verdict
 * and message for every kind; the schema text, run on an empty database,
 * makes exactly the tables and indexes the C store makes when it opens;
 * bad arguments are refused by name and change nothing.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msgbus/inbox.h"
#include "msgbus/msgbus.h"
#include "msgbus/outbox.h"
#include "testutil.h"
#include "tu_sqlite.h"

/* msgbus_check(kind, text) and the API call `api_rc` agree: both OK, or
 * both MSGBUS_ERR_INVALID with messages that contain one another (the API
 * may put its function name in front). */
static void agree(msgbus_check_t kind, const char *text, msgbus_err_t api_rc, const char *api_msg)
{
    msgbus_err_t rc = msgbus_check(kind, text);
    ck_assert_msg(rc == api_rc, "check %d '%s': %s, the API said %s", (int)kind, text,
                  msgbus_err_name(rc), msgbus_err_name(api_rc));
    if (rc != MSGBUS_OK) {
        ck_assert_int_eq(rc, MSGBUS_ERR_INVALID);
        ck_assert_msg(strstr(api_msg, msgbus_last_error()) != NULL,
                      "check said '%s', the API '%s'", msgbus_last_error(), api_msg);
    }
}

static char api_msg[1024];

static msgbus_err_t api(msgbus_err_t rc)
{
    snprintf(api_msg, sizeof api_msg, "%s", rc ? msgbus_last_error() : "");
    return rc;
}

START_TEST(check_gives_the_api_verdict_and_message)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    static const char *const headers[] = {"trace-id", "a:b", "", "bad name", "msgbus-attempt",
                                          "ce_type", "CE-Source", "cloudEvents:id", "x-é"};
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        msgbus_err_t rc = api(msgbus_msg_set_header(m, headers[i], "v"));
        agree(MSGBUS_CHECK_HEADER_NAME, headers[i], rc, api_msg);
    }
    static const char *const ids[] = {"order-1", "", "has space", "é", "0123456789"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        msgbus_err_t rc = api(msgbus_msg_set_id(m, ids[i]));
        agree(MSGBUS_CHECK_ID, ids[i], rc, api_msg);
    }
    static const char *const ce[] = {"com.example.order", "", "tab\there", "\xc2\x85", "ok é"};
    for (size_t i = 0; i < sizeof ce / sizeof ce[0]; i++) {
        msgbus_err_t rc = api(msgbus_msg_set_type(m, ce[i]));
        agree(MSGBUS_CHECK_CE_TYPE, ce[i], rc, api_msg);
        rc = api(msgbus_msg_set_source(m, ce[i]));
        agree(MSGBUS_CHECK_CE_SOURCE, ce[i], rc, api_msg);
        rc = api(msgbus_msg_set_subject(m, ce[i]));
        agree(MSGBUS_CHECK_CE_SUBJECT, ce[i], rc, api_msg);
    }
    msgbus_msg_free(m);

    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, "mem://rules", NULL));
    static const char *const names[] = {"orders", "a.b-c_d", "", ".", "..", "amq.x", "sp ace",
                                        "é"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        msgbus_err_t rc = api(msgbus_declare(bus, names[i], NULL));
        agree(MSGBUS_CHECK_TOPIC, names[i], rc, api_msg);
        rc = api(msgbus_declare(bus, "rules-topic", names[i]));
        agree(MSGBUS_CHECK_GROUP, names[i], rc, api_msg);
    }
    msgbus_close(bus);

    static const char *const consumers[] = {"billing", "", "a/b", "amq.billing"};
    for (size_t i = 0; i < sizeof consumers / sizeof consumers[0]; i++) {
        msgbus_inbox_t *ib = NULL;
        msgbus_err_t rc = api(msgbus_inbox_open_memory(&ib, consumers[i], 100, 0));
        agree(MSGBUS_CHECK_CONSUMER, consumers[i], rc, api_msg);
        msgbus_inbox_close(ib);
    }
}
END_TEST

START_TEST(check_refuses_null_and_unknown_kinds)
{
    ck_assert_int_eq(msgbus_check(MSGBUS_CHECK_TOPIC, NULL), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "NULL"));
    ck_assert_int_eq(msgbus_check((msgbus_check_t)0, "x"), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "unknown check 0"));
    ck_assert_int_eq(msgbus_check((msgbus_check_t)99, "x"), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "unknown check 99"));
}
END_TEST

/* Every table and index of `db` with its SQL, one per line, by name. */
static char *master(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "SELECT type || ' ' || name || ': ' || coalesce(sql, '') "
                                        "FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                                        "ORDER BY name",
                                        -1, &st, NULL),
                     SQLITE_OK);
    size_t cap = 8192, len = 0;
    char *out = calloc(1, cap);
    ck_assert_ptr_nonnull(out);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *row = (const char *)sqlite3_column_text(st, 0);
        size_t n = strlen(row);
        ck_assert_uint_lt(len + n + 2, cap);
        memcpy(out + len, row, n);
        len += n;
        out[len++] = '\n';
    }
    sqlite3_finalize(st);
    return out;
}

static sqlite3 *open_db(void)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(":memory:", &db), SQLITE_OK);
    return db;
}

START_TEST(outbox_schema_is_what_the_store_creates)
{
    static const char *const tables[] = {NULL, "orders_outbox", "T2"};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        sqlite3 *a = open_db(), *b = open_db();
        msgbus_outbox_t *ob = NULL;
        tu_ck_ok(msgbus_outbox_open_sqlite(&ob, a, tables[i]));
        msgbus_outbox_close(ob);
        char *sql = NULL;
        tu_ck_ok(msgbus_outbox_schema("sqlite", tables[i], &sql));
        ck_assert_ptr_nonnull(strstr(sql, ";\n"));
        tu_sql_exec(b, sql);
        char *ma = master(a), *mb = master(b);
        ck_assert_ptr_nonnull(strstr(ma, tables[i] ? tables[i] : MSGBUS_OUTBOX_TABLE));
        ck_assert_str_eq(ma, mb);
        /* The store opens on the table the text made. */
        tu_ck_ok(msgbus_outbox_open_sqlite(&ob, b, tables[i]));
        msgbus_outbox_close(ob);
        free(ma);
        free(mb);
        msgbus_free(sql);
        sqlite3_close(a);
        sqlite3_close(b);
    }
    /* PostgreSQL: the same columns and index names, its own types. */
    char *pg = NULL;
    tu_ck_ok(msgbus_outbox_schema("pg", "ob", &pg));
    ck_assert_ptr_nonnull(strstr(pg, "CREATE TABLE IF NOT EXISTS \"ob\" ( id bigserial"));
    ck_assert_ptr_nonnull(strstr(pg, "\"ob_failed_key\""));
    msgbus_free(pg);
}
END_TEST

START_TEST(inbox_schema_is_what_the_store_creates)
{
    static const char *const tables[] = {NULL, "billing_inbox"};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        sqlite3 *a = open_db(), *b = open_db();
        msgbus_inbox_t *ib = NULL;
        tu_ck_ok(msgbus_inbox_open_sqlite(&ib, a, "billing", tables[i]));
        msgbus_inbox_close(ib);
        char *sql = NULL;
        tu_ck_ok(msgbus_inbox_schema("sqlite", tables[i], &sql));
        tu_sql_exec(b, sql);
        char *ma = master(a), *mb = master(b);
        ck_assert_ptr_nonnull(strstr(ma, "_claimed_idx"));
        ck_assert_str_eq(ma, mb);
        free(ma);
        free(mb);
        msgbus_free(sql);
        sqlite3_close(a);
        sqlite3_close(b);
    }
    /* Only an inbox on PostgreSQL may name a schema; its index is named
     * after the table alone. */
    char *pg = NULL;
    tu_ck_ok(msgbus_inbox_schema("pg", "app.inbox", &pg));
    ck_assert_ptr_nonnull(strstr(pg, "CREATE TABLE IF NOT EXISTS app.inbox ("));
    ck_assert_ptr_nonnull(strstr(pg, "CREATE INDEX IF NOT EXISTS inbox_claimed_idx ON app.inbox"));
    msgbus_free(pg);
}
END_TEST

START_TEST(schema_refuses_what_the_open_refuses)
{
    char *sql = (char *)"untouched";
    ck_assert_int_eq(msgbus_outbox_schema("mysql", NULL, &sql), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "unknown store 'mysql'"));
    ck_assert_ptr_null(sql);
    ck_assert_int_eq(msgbus_outbox_schema(NULL, NULL, &sql), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "store is NULL"));
    ck_assert_int_eq(msgbus_inbox_schema("pg", NULL, NULL), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "sql is NULL"));

    static const char *const bad[] = {"", "1abc", "a-b", "a\"b", "a;DROP TABLE x",
                                      "t23456789012345678901234567890123456789012345678901"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(msgbus_outbox_schema("sqlite", bad[i], &sql), MSGBUS_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "invalid outbox table name"));
        ck_assert_ptr_null(sql);
        ck_assert_int_eq(msgbus_inbox_schema("pg", bad[i], &sql), MSGBUS_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "invalid inbox table name"));
        /* and the store refuses the same name the same way */
        sqlite3 *db = open_db();
        msgbus_outbox_t *ob = NULL;
        ck_assert_int_eq(msgbus_outbox_open_sqlite(&ob, db, bad[i]), MSGBUS_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "invalid outbox table name"));
        char *m = master(db);
        ck_assert_str_eq(m, "");
        free(m);
        sqlite3_close(db);
    }
    /* 50 bytes is the longest. */
    tu_ck_ok(msgbus_outbox_schema("sqlite", "t2345678901234567890123456789012345678901234567890",
                                  &sql));
    msgbus_free(sql);
    /* schema.table: the PostgreSQL inbox only. */
    ck_assert_int_eq(msgbus_outbox_schema("pg", "app.ob", &sql), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_inbox_schema("sqlite", "app.inbox", &sql), MSGBUS_ERR_INVALID);
    ck_assert_int_eq(msgbus_inbox_schema("pg", "a.b.c", &sql), MSGBUS_ERR_INVALID);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rules");
    TCase *tc = tcase_create("rules");
    tcase_add_test(tc, check_gives_the_api_verdict_and_message);
    tcase_add_test(tc, check_refuses_null_and_unknown_kinds);
    tcase_add_test(tc, outbox_schema_is_what_the_store_creates);
    tcase_add_test(tc, inbox_schema_is_what_the_store_creates);
    tcase_add_test(tc, schema_refuses_what_the_open_refuses);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
