/*
 * inbox_pg.c — the inbox store in the application's PostgreSQL database.
 *
 * One table (default "msgbus_inbox", contract in docs/inbox.md):
 *   consumer TEXT, message_id TEXT, claimed_at BIGINT (ms since epoch),
 *   PRIMARY KEY (consumer, message_id),
 *   index <table>_claimed_idx (consumer, claimed_at) for the purge.
 * Statements run on the application's own PGconn, inside its transaction.
 * They go through PQexecParams (one round trip, no named prepared
 * statements), so the inbox never collides with the application's own
 * statement names and survives a PQreset of the connection.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inbox/inbox_store.h"

struct mb_inbox_pg {
    PGconn *conn;
    char claim_sql[256];
    char forget_sql[256];
    char purge_sql[256];
};

static struct mb_inbox_pg *mb_inbox_pg_of(msgbus_inbox_t *ib)
{
    return ib->store;
}

/* Records the server's message (trailing newline trimmed) and SQLSTATE. */
static msgbus_err_t mb_inbox_pg_error(msgbus_inbox_t *ib, PGconn *conn, const PGresult *r, const char *what)
{
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(conn);
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    int len = (int)strlen(msg ? msg : "");
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    msgbus_err_t code = PQstatus(conn) == CONNECTION_OK ? MSGBUS_ERR_STORE : MSGBUS_ERR_CONNECT;
    return mb_error(code, "inbox (pg, table '%s', consumer '%s'): %s: %.*s%s%s%s", ib->table, ib->consumer,
                    what, len, msg ? msg : "", state ? " (SQLSTATE " : "", state ? state : "",
                    state ? ")" : "");
}

/* Runs `sql` with text parameters; on success *out holds the result (the
 * caller PQclears it) when out is non-NULL. */
static msgbus_err_t mb_inbox_pg_run(msgbus_inbox_t *ib, const char *sql, int n, const char *const *params,
                                    ExecStatusType want, const char *what, PGresult **out)
{
    PGconn *conn = mb_inbox_pg_of(ib)->conn;
    PGresult *r = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    if (!r || PQresultStatus(r) != want) {
        msgbus_err_t e = mb_inbox_pg_error(ib, conn, r, what);
        PQclear(r);
        return e;
    }
    if (out)
        *out = r;
    else
        PQclear(r);
    return MSGBUS_OK;
}

static msgbus_err_t mb_inbox_pg_affected(msgbus_inbox_t *ib, const char *sql, int n,
                                         const char *const *params, const char *what, long *rows)
{
    PGresult *r = NULL;
    msgbus_err_t e = mb_inbox_pg_run(ib, sql, n, params, PGRES_COMMAND_OK, what, &r);
    if (e != MSGBUS_OK)
        return e;
    *rows = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return MSGBUS_OK;
}

/* The table must have the three columns and exactly the primary key
 * (consumer, message_id): ON CONFLICT relies on it, and without it
 * duplicates would be inserted silently. */
static msgbus_err_t mb_inbox_pg_check_table(msgbus_inbox_t *ib)
{
    const char *params[1] = {ib->table};
    PGresult *r = NULL;
    msgbus_err_t e = mb_inbox_pg_run(ib,
                                     "SELECT attname FROM pg_attribute WHERE attrelid = $1::text::regclass"
                                     " AND attnum > 0 AND NOT attisdropped",
                                     1, params, PGRES_TUPLES_OK, "reading the table's columns", &r);
    if (e != MSGBUS_OK)
        return e;
    bool have_consumer = false, have_id = false, have_at = false;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *name = PQgetvalue(r, i, 0);
        have_consumer |= strcmp(name, "consumer") == 0;
        have_id |= strcmp(name, "message_id") == 0;
        have_at |= strcmp(name, "claimed_at") == 0;
    }
    PQclear(r);
    if (!have_consumer || !have_id || !have_at)
        return mb_error(MSGBUS_ERR_STORE,
                        "inbox (pg): table '%s' exists but is not an inbox table: missing column '%s' "
                        "(see docs/inbox.md)",
                        ib->table, !have_consumer ? "consumer" : !have_id ? "message_id" : "claimed_at");
    e = mb_inbox_pg_run(ib,
                        "SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM pg_index i"
                        " CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)"
                        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                        " WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
                        1, params, PGRES_TUPLES_OK, "reading the table's primary key", &r);
    if (e != MSGBUS_OK)
        return e;
    bool pk_ok = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "consumer,message_id") == 0;
    PQclear(r);
    if (!pk_ok)
        return mb_error(MSGBUS_ERR_STORE,
                        "inbox (pg): table '%s' exists but its primary key is not (consumer, "
                        "message_id); without it duplicates cannot be detected (see docs/inbox.md)",
                        ib->table);
    return MSGBUS_OK;
}

/* ---- ops ---- */

static msgbus_err_t mb_inbox_pg_claim(msgbus_inbox_t *ib, const char *id)
{
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)mb_now_ms());
    const char *params[3] = {ib->consumer, id, now};
    long rows = 0;
    msgbus_err_t e = mb_inbox_pg_affected(ib, mb_inbox_pg_of(ib)->claim_sql, 3, params, "claim", &rows);
    if (e != MSGBUS_OK)
        return e;
    /* ON CONFLICT DO NOTHING inserts no row for an id claimed before. */
    return rows == 1 ? MSGBUS_OK : MSGBUS_ERR_DUPLICATE;
}

static msgbus_err_t mb_inbox_pg_forget(msgbus_inbox_t *ib, const char *id)
{
    const char *params[2] = {ib->consumer, id};
    long rows = 0;
    msgbus_err_t e = mb_inbox_pg_affected(ib, mb_inbox_pg_of(ib)->forget_sql, 2, params, "forget", &rows);
    if (e != MSGBUS_OK)
        return e;
    if (rows != 1)
        return mb_error(MSGBUS_ERR_NOT_FOUND, "msgbus_inbox_forget: no claim of '%.64s' by '%s'", id,
                        ib->consumer);
    return MSGBUS_OK;
}

static msgbus_err_t mb_inbox_pg_purge(msgbus_inbox_t *ib, int64_t older_than_ms, size_t *purged)
{
    char cutoff[32];
    snprintf(cutoff, sizeof cutoff, "%lld", (long long)(mb_now_ms() - older_than_ms));
    const char *params[2] = {ib->consumer, cutoff};
    long rows = 0;
    msgbus_err_t e = mb_inbox_pg_affected(ib, mb_inbox_pg_of(ib)->purge_sql, 2, params, "purge", &rows);
    if (e == MSGBUS_OK)
        *purged = (size_t)rows;
    return e;
}

static enum mb_inbox_tx mb_inbox_pg_tx_state(msgbus_inbox_t *ib)
{
    switch (PQtransactionStatus(mb_inbox_pg_of(ib)->conn)) {
    case PQTRANS_IDLE:
        return MB_INBOX_TX_NONE;
    case PQTRANS_INTRANS:
        return MB_INBOX_TX_OPEN;
    default: /* INERROR, ACTIVE (a command in flight), UNKNOWN (bad connection) */
        return MB_INBOX_TX_FAILED;
    }
}

static msgbus_err_t mb_inbox_pg_begin(msgbus_inbox_t *ib)
{
    return mb_inbox_pg_run(ib, "BEGIN", 0, NULL, PGRES_COMMAND_OK, "BEGIN", NULL);
}

/* A COMMIT of a failed transaction "succeeds" with the tag ROLLBACK; check
 * the tag, or a lost claim and lost effects would be acked. */
static msgbus_err_t mb_inbox_pg_commit(msgbus_inbox_t *ib)
{
    PGresult *r = NULL;
    msgbus_err_t e = mb_inbox_pg_run(ib, "COMMIT", 0, NULL, PGRES_COMMAND_OK, "COMMIT", &r);
    if (e != MSGBUS_OK)
        return e;
    bool committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    if (!committed)
        return mb_error(MSGBUS_ERR_STORE, "inbox (pg, table '%s'): COMMIT rolled back instead", ib->table);
    return MSGBUS_OK;
}

static void mb_inbox_pg_rollback(msgbus_inbox_t *ib)
{
    PGconn *conn = mb_inbox_pg_of(ib)->conn;
    PGTransactionStatusType t = PQtransactionStatus(conn);
    if (t != PQTRANS_INTRANS && t != PQTRANS_INERROR)
        return; /* nothing open (a failed COMMIT already ended it) */
    PGresult *r = PQexec(conn, "ROLLBACK");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        mb_log(MSGBUS_LOG_ERROR, "inbox (pg, table '%s'): ROLLBACK failed: %s", ib->table,
               PQerrorMessage(conn));
    PQclear(r);
}

static void mb_inbox_pg_close(msgbus_inbox_t *ib)
{
    free(ib->store);
    ib->store = NULL;
}

static const struct mb_inbox_ops mb_inbox_pg_ops = {
    .name = "pg",
    .claim = mb_inbox_pg_claim,
    .forget = mb_inbox_pg_forget,
    .purge = mb_inbox_pg_purge,
    .tx_state = mb_inbox_pg_tx_state,
    .begin = mb_inbox_pg_begin,
    .commit = mb_inbox_pg_commit,
    .rollback = mb_inbox_pg_rollback,
    .close = mb_inbox_pg_close,
};

msgbus_err_t msgbus_inbox_open_pg(msgbus_inbox_t **out, struct pg_conn *conn, const char *consumer,
                                  const char *table)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_open_pg: out is NULL");
    if (!conn)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_open_pg: conn is NULL");
    if (PQstatus(conn) != CONNECTION_OK)
        return mb_error(MSGBUS_ERR_CONNECT, "msgbus_inbox_open_pg: the connection is not open: %s",
                        PQerrorMessage(conn));
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_inbox_open_pg: a transaction is open on the connection; open the inbox "
                        "outside one (it may create its table)");
    msgbus_inbox_t *ib = NULL;
    msgbus_err_t e = mb_inbox_new(&ib, &mb_inbox_pg_ops, consumer, table, true, true);
    if (e != MSGBUS_OK)
        return mb_error_prefix(e, "msgbus_inbox_open_pg");
    struct mb_inbox_pg *s = calloc(1, sizeof *s);
    if (!s) {
        mb_inbox_free(ib);
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_inbox_open_pg: out of memory");
    }
    s->conn = conn;
    ib->store = s;
    snprintf(s->claim_sql, sizeof s->claim_sql,
             "INSERT INTO %s (consumer, message_id, claimed_at) VALUES ($1, $2, $3::bigint)"
             " ON CONFLICT (consumer, message_id) DO NOTHING",
             ib->table);
    snprintf(s->forget_sql, sizeof s->forget_sql, "DELETE FROM %s WHERE consumer = $1 AND message_id = $2",
             ib->table);
    snprintf(s->purge_sql, sizeof s->purge_sql,
             "DELETE FROM %s WHERE consumer = $1 AND claimed_at <= $2::bigint", ib->table);

    /* Concurrent first opens race on CREATE TABLE IF NOT EXISTS (a unique
     * violation in the catalog); a transaction-scoped advisory lock keyed
     * on the table name serialises them. When the table exists, CREATE …
     * IF NOT EXISTS sends a NOTICE ("already exists, skipping") that the
     * application's notice receiver would get — printed to stderr by
     * libpq's default — on every open: SET LOCAL silences it for this
     * transaction only, and COMMIT puts the application's setting back. */
    size_t nstmt = mb_schema_count(MB_SCHEMA_INBOX, MB_STORE_PG);
    for (size_t i = 0; e == MSGBUS_OK && i < nstmt; i++) {
        char *stmt = mb_schema_stmt(MB_SCHEMA_INBOX, MB_STORE_PG, i, ib->table);
        char *sql = NULL;
        if (stmt) {
#define MB_INBOX_PG_DDL                                                        \
    "BEGIN;"                                                                   \
    "SET LOCAL client_min_messages TO warning;"                                \
    "SELECT pg_advisory_xact_lock(hashtext('msgbus_inbox:%s'));"               \
    "%s;"                                                                      \
    "COMMIT"
            size_t n = sizeof MB_INBOX_PG_DDL + strlen(ib->table) + strlen(stmt);
            if ((sql = malloc(n)))
                snprintf(sql, n, MB_INBOX_PG_DDL, ib->table, stmt);
#undef MB_INBOX_PG_DDL
        }
        free(stmt);
        if (!sql) {
            e = mb_error(MSGBUS_ERR_NOMEM, "msgbus_inbox_open_pg: out of memory");
            break;
        }
        PGresult *r = PQexec(conn, sql);
        free(sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            e = mb_inbox_pg_error(ib, conn, r, i ? "creating the purge index" : "creating the table");
        PQclear(r);
        if (PQtransactionStatus(conn) != PQTRANS_IDLE)
            mb_inbox_pg_rollback(ib);
        /* After the table, so a foreign table gets the clear message. */
        if (e == MSGBUS_OK && i == 0)
            e = mb_inbox_pg_check_table(ib);
    }
    if (e != MSGBUS_OK) {
        msgbus_inbox_close(ib);
        return e;
    }
    *out = ib;
    return MSGBUS_OK;
}
