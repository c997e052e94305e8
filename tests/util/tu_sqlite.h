/*
 * tu_sqlite.h — SQLite chores for tests: run a statement that must work,
 * read a count.
 */
#ifndef TU_SQLITE_H
#define TU_SQLITE_H

#include <sqlite3.h>

/* Runs `sql` (one or more statements) on `db`; a failure fails the test
 * with SQLite's message. */
void tu_sql_exec(sqlite3 *db, const char *sql);

/* The first column of the first row of the query `fmt`… (printf-style),
 * as an integer; no row fails the test. */
long long tu_sql_count(sqlite3 *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
