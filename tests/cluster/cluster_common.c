/* cluster_common.c — helpers of test_cluster: failures, clocks,
 * PostgreSQL, the stream's messages. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster.h"

volatile sig_atomic_t g_stop;

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* Wall-clock microseconds: the payloads carry them from one process to
 * another and PostgreSQL's clock_timestamp() is compared with them. */
int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

const char *env_or_die(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        die("%s is not set: this test needs it (scripts/brokers up, scripts/brokers cluster up, "
            "then source .brokers/env; scripts/test does all of that)",
            name);
    return v;
}

int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : def;
}

/* ---- PostgreSQL ------------------------------------------------------------ */

PGconn *pg_connect(void)
{
    PGconn *c = PQconnectdb(env_or_die("MSGBUS_TEST_PG_URL"));
    if (PQstatus(c) != CONNECTION_OK)
        die("PostgreSQL: %s", PQerrorMessage(c));
    return c;
}

/* Runs one statement of any length; dies on failure. */
void pg_run(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        die("%.300s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

void pg_exec(PGconn *c, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof sql)
        die("statement too long for pg_exec: %.100s…", sql);
    pg_run(c, sql);
}

/* One number from a query (NULL reads as -1). */
double pg_num(PGconn *c, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        die("%s: %s", sql, PQresultErrorMessage(r));
    double v = PQgetisnull(r, 0, 0) ? -1 : atof(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* ---- messages -------------------------------------------------------------- */

/* Message i of a source ('d' direct, 'o' outbox): key i % NKEYS, per-key
 * seq i / NKEYS; id "<src>-<key>-<seq>" so that a stray is recognisable;
 * payload "<src> <key> <seq> <publish time µs>". */
msgbus_msg_t *make_msg(char src, int i, int64_t pub_us)
{
    int key = i % NKEYS, seq = i / NKEYS;
    char id[64], k[16], text[96];
    snprintf(id, sizeof id, "%c-%d-%d", src, key, seq);
    snprintf(k, sizeof k, "k%d", key);
    snprintf(text, sizeof text, "%c %d %d %" PRId64, src, key, seq, pub_us);
    msgbus_msg_t *m = NULL;
    if (msgbus_msg_new(&m, text, strlen(text)) != MSGBUS_OK || msgbus_msg_set_id(m, id) != MSGBUS_OK ||
        msgbus_msg_set_key(m, k, strlen(k)) != MSGBUS_OK)
        die("making message %s: %s", id, msgbus_last_error());
    return m;
}
