/*
 * inbox_sqlite.c — the inbox store in the application's SQLite database.
 *
 * One table (default "msgbus_inbox", contract in docs/inbox.md):
 *   consumer TEXT, message_id TEXT, claimed_at INTEGER (ms since epoch),
 *   PRIMARY KEY (consumer, message_id), WITHOUT ROWID,
 *   index <table>_claimed_idx (consumer, claimed_at) for the purge.
 * Statements run on the application's own connection, so a claim is part
 * of whatever transaction the application has open there.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inbox/inbox_store.h"

struct mb_inbox_sqlite {
    sqlite3 *db;
    sqlite3_stmt *claim;
    sqlite3_stmt *forget;
    sqlite3_stmt *purge;
};

static struct mb_inbox_sqlite *mb_inbox_sqlite_of(msgbus_inbox_t *ib)
{
    return ib->store;
}

static msgbus_err_t mb_inbox_sqlite_error(msgbus_inbox_t *ib, sqlite3 *db, const char *what)
{
    return mb_error(MSGBUS_ERR_STORE, "inbox (sqlite, table '%s', consumer '%s'): %s: %s (code %d)",
                    ib->table, ib->consumer, what, sqlite3_errmsg(db), sqlite3_extended_errcode(db));
}

static msgbus_err_t mb_inbox_sqlite_exec(msgbus_inbox_t *ib, sqlite3 *db, const char *sql, const char *what)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return mb_inbox_sqlite_error(ib, db, what);
    return MSGBUS_OK;
}

/* An existing table must have the three columns and the primary key
 * (consumer, message_id): the claim's ON CONFLICT relies on that key, and
 * without it duplicates would be inserted silently. */
static msgbus_err_t mb_inbox_sqlite_check_table(msgbus_inbox_t *ib, sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT name, pk FROM pragma_table_info(?1)", -1, &st, NULL) != SQLITE_OK)
        return mb_inbox_sqlite_error(ib, db, "reading the table's columns");
    sqlite3_bind_text(st, 1, ib->table, -1, SQLITE_STATIC);
    int have_consumer = 0, have_id = 0, have_at = 0, npk = 0, ncols = 0;
    int pk_consumer = 0, pk_id = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        int pk = sqlite3_column_int(st, 1);
        ncols++;
        if (pk)
            npk++;
        if (name && strcmp(name, "consumer") == 0) {
            have_consumer = 1;
            pk_consumer = pk;
        } else if (name && strcmp(name, "message_id") == 0) {
            have_id = 1;
            pk_id = pk;
        } else if (name && strcmp(name, "claimed_at") == 0) {
            have_at = 1;
        }
    }
    msgbus_err_t e = MSGBUS_OK;
    if (rc != SQLITE_DONE)
        e = mb_inbox_sqlite_error(ib, db, "reading the table's columns");
    sqlite3_finalize(st);
    if (e != MSGBUS_OK)
        return e;
    if (ncols == 0)
        return mb_error(MSGBUS_ERR_STORE, "inbox (sqlite): table '%s' is missing after CREATE TABLE",
                        ib->table);
    if (!have_consumer || !have_id || !have_at)
        return mb_error(MSGBUS_ERR_STORE,
                        "inbox (sqlite): table '%s' exists but is not an inbox table: missing column "
                        "'%s' (see docs/inbox.md)",
                        ib->table, !have_consumer ? "consumer" : !have_id ? "message_id" : "claimed_at");
    if (npk != 2 || pk_consumer != 1 || pk_id != 2)
        return mb_error(MSGBUS_ERR_STORE,
                        "inbox (sqlite): table '%s' exists but its primary key is not (consumer, "
                        "message_id); without it duplicates cannot be detected (see docs/inbox.md)",
                        ib->table);
    return MSGBUS_OK;
}

static msgbus_err_t mb_inbox_sqlite_prepare(msgbus_inbox_t *ib, sqlite3 *db, const char *fmt,
                                            sqlite3_stmt **out)
{
    char sql[512];
    snprintf(sql, sizeof sql, fmt, ib->table);
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK)
        return mb_inbox_sqlite_error(ib, db, "preparing a statement");
    return MSGBUS_OK;
}

/* ---- ops ---- */

static msgbus_err_t mb_inbox_sqlite_claim(msgbus_inbox_t *ib, const char *id)
{
    struct mb_inbox_sqlite *s = mb_inbox_sqlite_of(ib);
    sqlite3_stmt *st = s->claim;
    sqlite3_bind_text(st, 1, ib->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, mb_now_ms());
    int rc = sqlite3_step(st);
    msgbus_err_t e;
    if (rc == SQLITE_DONE)
        /* ON CONFLICT DO NOTHING changes no row for an id claimed before. */
        e = sqlite3_changes(s->db) == 1 ? MSGBUS_OK : MSGBUS_ERR_DUPLICATE;
    else
        e = mb_inbox_sqlite_error(ib, s->db, "claim");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return e;
}

static msgbus_err_t mb_inbox_sqlite_forget(msgbus_inbox_t *ib, const char *id)
{
    struct mb_inbox_sqlite *s = mb_inbox_sqlite_of(ib);
    sqlite3_stmt *st = s->forget;
    sqlite3_bind_text(st, 1, ib->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    msgbus_err_t e;
    if (rc == SQLITE_DONE)
        e = sqlite3_changes(s->db) == 1
                ? MSGBUS_OK
                : mb_error(MSGBUS_ERR_NOT_FOUND, "msgbus_inbox_forget: no claim of '%.64s' by '%s'", id,
                           ib->consumer);
    else
        e = mb_inbox_sqlite_error(ib, s->db, "forget");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return e;
}

static msgbus_err_t mb_inbox_sqlite_purge(msgbus_inbox_t *ib, int64_t older_than_ms, size_t *purged)
{
    struct mb_inbox_sqlite *s = mb_inbox_sqlite_of(ib);
    sqlite3_stmt *st = s->purge;
    sqlite3_bind_text(st, 1, ib->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, mb_now_ms() - older_than_ms);
    int rc = sqlite3_step(st);
    msgbus_err_t e = MSGBUS_OK;
    if (rc == SQLITE_DONE)
        *purged = (size_t)sqlite3_changes(s->db);
    else
        e = mb_inbox_sqlite_error(ib, s->db, "purge");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return e;
}

static enum mb_inbox_tx mb_inbox_sqlite_tx_state(msgbus_inbox_t *ib)
{
    return sqlite3_get_autocommit(mb_inbox_sqlite_of(ib)->db) ? MB_INBOX_TX_NONE : MB_INBOX_TX_OPEN;
}

/* IMMEDIATE takes the write lock up front: a deferred transaction that
 * reads and then writes can fail with SQLITE_BUSY mid-way when another
 * process writes, which busy_timeout cannot retry. */
static msgbus_err_t mb_inbox_sqlite_begin(msgbus_inbox_t *ib)
{
    return mb_inbox_sqlite_exec(ib, mb_inbox_sqlite_of(ib)->db, "BEGIN IMMEDIATE", "BEGIN IMMEDIATE");
}

static msgbus_err_t mb_inbox_sqlite_commit(msgbus_inbox_t *ib)
{
    return mb_inbox_sqlite_exec(ib, mb_inbox_sqlite_of(ib)->db, "COMMIT", "COMMIT");
}

static void mb_inbox_sqlite_rollback(msgbus_inbox_t *ib)
{
    sqlite3 *db = mb_inbox_sqlite_of(ib)->db;
    if (sqlite3_get_autocommit(db))
        return; /* SQLite already rolled back (e.g. after SQLITE_FULL) */
    if (sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
        mb_log(MSGBUS_LOG_ERROR, "inbox (sqlite, table '%s'): ROLLBACK failed: %s", ib->table,
               sqlite3_errmsg(db));
}

static void mb_inbox_sqlite_close(msgbus_inbox_t *ib)
{
    struct mb_inbox_sqlite *s = mb_inbox_sqlite_of(ib);
    if (!s)
        return;
    sqlite3_finalize(s->claim);
    sqlite3_finalize(s->forget);
    sqlite3_finalize(s->purge);
    free(s);
    ib->store = NULL;
}

static const struct mb_inbox_ops mb_inbox_sqlite_ops = {
    .name = "sqlite",
    .claim = mb_inbox_sqlite_claim,
    .forget = mb_inbox_sqlite_forget,
    .purge = mb_inbox_sqlite_purge,
    .tx_state = mb_inbox_sqlite_tx_state,
    .begin = mb_inbox_sqlite_begin,
    .commit = mb_inbox_sqlite_commit,
    .rollback = mb_inbox_sqlite_rollback,
    .close = mb_inbox_sqlite_close,
};

msgbus_err_t msgbus_inbox_open_sqlite(msgbus_inbox_t **out, struct sqlite3 *db, const char *consumer,
                                      const char *table)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_open_sqlite: out is NULL");
    if (!db)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_open_sqlite: db is NULL");
    if (!sqlite3_get_autocommit(db))
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_inbox_open_sqlite: a transaction is open on the connection; open the "
                        "inbox outside one (it may create its table)");
    msgbus_inbox_t *ib = NULL;
    msgbus_err_t e = mb_inbox_new(&ib, &mb_inbox_sqlite_ops, consumer, table, true, false);
    if (e != MSGBUS_OK)
        return mb_error_prefix(e, "msgbus_inbox_open_sqlite");
    struct mb_inbox_sqlite *s = calloc(1, sizeof *s);
    if (!s) {
        mb_inbox_free(ib);
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_inbox_open_sqlite: out of memory");
    }
    s->db = db;
    ib->store = s;

    /* The contract in SQL (src/core/rules.c; docs/inbox.md): the table,
     * checked (so a foreign table gets the clear message), then the purge
     * index. */
    size_t nstmt = mb_schema_count(MB_SCHEMA_INBOX, MB_STORE_SQLITE);
    for (size_t i = 0; e == MSGBUS_OK && i < nstmt; i++) {
        char *sql = mb_schema_stmt(MB_SCHEMA_INBOX, MB_STORE_SQLITE, i, ib->table);
        e = sql ? mb_inbox_sqlite_exec(ib, db, sql,
                                       i ? "creating the purge index" : "creating the table")
                : mb_error(MSGBUS_ERR_NOMEM, "msgbus_inbox_open_sqlite: out of memory");
        free(sql);
        if (e == MSGBUS_OK && i == 0)
            e = mb_inbox_sqlite_check_table(ib, db);
    }
    if (e == MSGBUS_OK)
        e = mb_inbox_sqlite_prepare(ib, db,
                                    "INSERT INTO %s (consumer, message_id, claimed_at) VALUES (?1, ?2, ?3)"
                                    " ON CONFLICT (consumer, message_id) DO NOTHING",
                                    &s->claim);
    if (e == MSGBUS_OK)
        e = mb_inbox_sqlite_prepare(ib, db, "DELETE FROM %s WHERE consumer = ?1 AND message_id = ?2",
                                    &s->forget);
    if (e == MSGBUS_OK)
        e = mb_inbox_sqlite_prepare(ib, db, "DELETE FROM %s WHERE consumer = ?1 AND claimed_at <= ?2",
                                    &s->purge);
    if (e != MSGBUS_OK) {
        msgbus_inbox_close(ib);
        return e;
    }
    *out = ib;
    return MSGBUS_OK;
}
