/*
 * tu_sqlite.c — SQLite chores for tests (tu_sqlite.h).
 */
#include "tu_sqlite.h"

#include <stdarg.h>
#include <stdio.h>

#include "testutil.h"

void tu_sql_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
}

long long tu_sql_count(sqlite3 *db, const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    sqlite3_stmt *st = NULL;
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg(db));
    ck_assert_msg(sqlite3_step(st) == SQLITE_ROW, "%s: no row", sql);
    long long n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}
