/*
 * bench_inbox.c — claims per second of each inbox store, in two shapes:
 * many claims in one transaction ("batch", 1000 per COMMIT — a consumer
 * that batches its database work) and one claim per transaction
 * ("single" — msgbus_inbox_handle's shape: BEGIN, claim, COMMIT per
 * message). Only the claims and the transaction statements are timed; ids
 * are real msgbus ids (UUIDv7) made beforehand.
 *
 *   bench_inbox [claims]          (default 100000; "single" cases use 1/5)
 *   PG cases need MSGBUS_TEST_PG_URL (source .brokers/env).
 *
 * Prints one line per case:
 *   RESULT case=<store>_<mode> claims_per_s=<n> claims=<n> seconds=<s> cpu_msgbus=<µs>
 * cpu_msgbus: this process's CPU time per claim over the timed part (one
 * run per case, so no median; there is no raw side to compare with, so no
 * cpu_raw=; PostgreSQL's and SQLite's own work in the server or the
 * kernel's fsync is not in it).
 */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "msgbus/inbox.h"

#define BATCH 1000

static char (*ids)[64];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_inbox: %s: %s\n", what, msgbus_last_error());
    exit(1);
}

static void make_ids(size_t n)
{
    ids = calloc(n, sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        msgbus_msg_t *m = NULL;
        if (msgbus_msg_new(&m, NULL, 0) != MSGBUS_OK)
            die("msgbus_msg_new");
        snprintf(ids[i], sizeof ids[i], "%s", msgbus_msg_id(m));
        msgbus_msg_free(m);
    }
}

/* The process's CPU time when the timed part of the last case began. */
static double g_c0;

static void result(const char *name, size_t n, double secs)
{
    double cpu_us = (bench_cpu_s() - g_c0) * 1e6 / (double)n;
    printf("RESULT case=%s claims_per_s=%.0f claims=%zu seconds=%.3f cpu_msgbus=%.2f\n", name,
           (double)n / secs, n, secs, cpu_us);
    fflush(stdout);
}

/* ---- SQLite ---- */

static void sq(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "bench_inbox: %s: %s\n", sql, err);
        exit(1);
    }
}

static void bench_sqlite(const char *name, const char *sync, size_t n, size_t per_tx)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/bench_inbox_%d.db", (int)getpid());
    unlink(path);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        die("sqlite3_open");
    sq(db, "PRAGMA journal_mode = WAL");
    sq(db, sync);
    msgbus_inbox_t *ib = NULL;
    if (msgbus_inbox_open_sqlite(&ib, db, "bench", NULL) != MSGBUS_OK)
        die("msgbus_inbox_open_sqlite");
    double t0 = now_s();
    g_c0 = bench_cpu_s();
    for (size_t i = 0; i < n; i += per_tx) {
        sq(db, "BEGIN IMMEDIATE");
        for (size_t j = i; j < i + per_tx && j < n; j++)
            if (msgbus_inbox_claim_id(ib, ids[j]) != MSGBUS_OK)
                die("claim");
        sq(db, "COMMIT");
    }
    result(name, n, now_s() - t0);
    msgbus_inbox_close(ib);
    sqlite3_close(db);
    char wal[160];
    unlink(path);
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(wal);
    snprintf(wal, sizeof wal, "%s-shm", path);
    unlink(wal);
}

/* ---- PostgreSQL ---- */

static void pq(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "bench_inbox: %s: %s\n", sql, PQerrorMessage(c));
        exit(1);
    }
    PQclear(r);
}

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static void bench_pg(const char *url, const char *name, size_t n, size_t per_tx)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bench_inbox: connect %s: %s\n", url, PQerrorMessage(c));
        exit(1);
    }
    PQsetNoticeProcessor(c, quiet, NULL);
    char table[64], sql[128];
    snprintf(table, sizeof table, "bench_inbox_%d", (int)getpid());
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", table);
    pq(c, sql);
    msgbus_inbox_t *ib = NULL;
    if (msgbus_inbox_open_pg(&ib, c, "bench", table) != MSGBUS_OK)
        die("msgbus_inbox_open_pg");
    double t0 = now_s();
    g_c0 = bench_cpu_s();
    for (size_t i = 0; i < n; i += per_tx) {
        pq(c, "BEGIN");
        for (size_t j = i; j < i + per_tx && j < n; j++)
            if (msgbus_inbox_claim_id(ib, ids[j]) != MSGBUS_OK)
                die("claim");
        pq(c, "COMMIT");
    }
    result(name, n, now_s() - t0);
    msgbus_inbox_close(ib);
    snprintf(sql, sizeof sql, "DROP TABLE %s", table);
    pq(c, sql);
    PQfinish(c);
}

/* ---- memory ---- */

static void bench_memory(size_t n)
{
    msgbus_inbox_t *ib = NULL;
    if (msgbus_inbox_open_memory(&ib, "bench", n, 0) != MSGBUS_OK)
        die("msgbus_inbox_open_memory");
    double t0 = now_s();
    g_c0 = bench_cpu_s();
    for (size_t i = 0; i < n; i++)
        if (msgbus_inbox_claim_id(ib, ids[i]) != MSGBUS_OK)
            die("claim");
    result("memory_claim", n, now_s() - t0);
    /* The same ids again: every claim is recognised as a duplicate. */
    double t1 = now_s();
    g_c0 = bench_cpu_s();
    size_t dups = 0;
    for (size_t i = 0; i < n; i++)
        dups += msgbus_inbox_claim_id(ib, ids[i]) == MSGBUS_ERR_DUPLICATE;
    result("memory_duplicate", n, now_s() - t1);
    if (dups != n)
        die("memory store lost ids");
    msgbus_inbox_close(ib);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 100000;
    if (n < BATCH)
        n = BATCH;
    size_t single = n / 5;
    make_ids(n);
    printf("# bench_inbox: %zu claims per batch case (%d per transaction), %zu per single case\n", n,
           BATCH, single);
    bench_memory(n);
    bench_sqlite("sqlite_batch", "PRAGMA synchronous = NORMAL", n, BATCH);
    bench_sqlite("sqlite_single", "PRAGMA synchronous = NORMAL", single, 1);
    bench_sqlite("sqlite_single_fsync", "PRAGMA synchronous = FULL", single / 4, 1);
    const char *pg = getenv("MSGBUS_TEST_PG_URL");
    if (pg && *pg) {
        bench_pg(pg, "pg_batch", n, BATCH);
        bench_pg(pg, "pg_single", single, 1);
    } else {
        printf("# pg cases not run: MSGBUS_TEST_PG_URL is not set (source .brokers/env)\n");
    }
    free(ids);
    return 0;
}
