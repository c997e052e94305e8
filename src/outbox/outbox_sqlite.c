/*
 * outbox_sqlite.c — the SQLite outbox store.
 *
 * Commit order is id order here for free: SQLite has one writer at a time
 * and AUTOINCREMENT hands out ids in insert order, never reusing one, so a
 * transaction that commits later holds larger ids.
 *
 * The relay reads pending rows without holding a transaction (SQLite has a
 * single writer: a write lock held across publish + confirm would stall
 * the application's writes for that long) and records the outcomes in one
 * BEGIN IMMEDIATE … COMMIT. That is safe with ONE relay per database; two
 * relays on one SQLite outbox could publish the same rows twice (still
 * at-least-once, same ids) — see docs/outbox.md.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/outbox_store.h"

struct mb_outbox_sqlite {
    sqlite3 *db;
    sqlite3_stmt *put;
    sqlite3_stmt *claim;
    sqlite3_stmt *claim_plain; /* when no row is 'failed': no per-key check needed */
    sqlite3_stmt *first_pending;
    sqlite3_stmt *any_failed;
    sqlite3_stmt *mark_retry;
    sqlite3_stmt *mark_failed;
    sqlite3_stmt *mark_sent_many;   /* ids as a JSON array: one statement per batch */
    sqlite3_stmt *mark_delete_many;
    sqlite3_stmt *mark_sent_range; /* a dense batch: by its id range */
    sqlite3_stmt *mark_delete_range;
    bool busy_set;
    bool busy; /* the last finish failed on a lock (SQLITE_BUSY / SQLITE_LOCKED) */
};

static struct mb_outbox_sqlite *mb_outbox_sqlite_of(msgbus_outbox_t *ob)
{
    return ob->store;
}

static msgbus_err_t mb_outbox_sqlite_err(msgbus_outbox_t *ob, sqlite3 *db, const char *what)
{
    return mb_error(MSGBUS_ERR_STORE, "outbox table '%s' (SQLite): %s: %s", ob->table, what,
                    sqlite3_errmsg(db));
}

static msgbus_err_t mb_outbox_sqlite_exec(msgbus_outbox_t *ob, sqlite3 *db, const char *sql,
                                          const char *what)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        msgbus_err_t e = mb_error(MSGBUS_ERR_STORE, "outbox table '%s' (SQLite): %s: %s",
                                  ob->table, what, err ? err : sqlite3_errmsg(db));
        sqlite3_free(err);
        return e;
    }
    return MSGBUS_OK;
}

static msgbus_err_t mb_outbox_sqlite_prepare(msgbus_outbox_t *ob, sqlite3 *db, sqlite3_stmt **st,
                                             const char *fmt)
{
    char *sql = sqlite3_mprintf(fmt, ob->table, ob->table, ob->table, ob->table);
    if (!sql)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory preparing outbox SQL");
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    sqlite3_free(sql);
    if (rc != SQLITE_OK)
        return mb_outbox_sqlite_err(ob, db, "preparing a statement");
    return MSGBUS_OK;
}

/* Every column of the contract must exist; extra columns are the
 * application's business. */
static msgbus_err_t mb_outbox_sqlite_check(msgbus_outbox_t *ob, sqlite3 *db)
{
    char *sql = sqlite3_mprintf("PRAGMA table_info(\"%w\")", ob->table);
    sqlite3_stmt *st = NULL;
    if (!sql)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory checking the outbox table");
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    sqlite3_free(sql);
    if (rc != SQLITE_OK)
        return mb_outbox_sqlite_err(ob, db, "reading the table's columns");
    bool have[16] = {false};
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 1);
        for (size_t i = 0; name && mb_outbox_columns[i]; i++)
            if (strcmp(name, mb_outbox_columns[i]) == 0)
                have[i] = true;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return mb_outbox_sqlite_err(ob, db, "reading the table's columns");
    for (size_t i = 0; mb_outbox_columns[i]; i++)
        if (!have[i])
            return mb_error(MSGBUS_ERR_STORE,
                            "outbox table '%s' (SQLite) exists but has no column '%s' "
                            "(see docs/outbox.md for the table contract)",
                            ob->table, mb_outbox_columns[i]);
    return MSGBUS_OK;
}

static void mb_outbox_sqlite_close(msgbus_outbox_t *ob)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    if (!s)
        return;
    sqlite3_finalize(s->put);
    sqlite3_finalize(s->claim);
    sqlite3_finalize(s->claim_plain);
    sqlite3_finalize(s->first_pending);
    sqlite3_finalize(s->any_failed);
    sqlite3_finalize(s->mark_retry);
    sqlite3_finalize(s->mark_failed);
    sqlite3_finalize(s->mark_sent_many);
    sqlite3_finalize(s->mark_delete_many);
    sqlite3_finalize(s->mark_sent_range);
    sqlite3_finalize(s->mark_delete_range);
    free(s);
    ob->store = NULL;
}

/* ---- put ---- */

static int mb_outbox_sqlite_bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    /* A NULL pointer would bind SQL NULL; an empty value must stay a
     * zero-length blob (an empty key is a key). */
    if (n == 0)
        return sqlite3_bind_zeroblob(st, i, 0);
    return sqlite3_bind_blob64(st, i, p, n, SQLITE_STATIC);
}

static msgbus_err_t mb_outbox_sqlite_put(msgbus_outbox_t *ob, const struct mb_outbox_put *p)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    sqlite3_stmt *st = s->put;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, p->msg_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p->topic, -1, SQLITE_STATIC);
    if (p->key)
        mb_outbox_sqlite_bind_blob(st, 3, p->key, p->key_len);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_text(st, 4, p->headers, -1, SQLITE_STATIC);
    mb_outbox_sqlite_bind_blob(st, 5, p->payload, p->len);
    sqlite3_bind_int64(st, 6, p->msg_ts);
    sqlite3_bind_int64(st, 7, p->created_at);
    int rc = sqlite3_step(st);
    msgbus_err_t e = MSGBUS_OK;
    if (rc != SQLITE_DONE)
        e = mb_outbox_sqlite_err(ob, s->db, "inserting the outbox row");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return e;
}

/* ---- relay side ---- */

static msgbus_err_t mb_outbox_sqlite_check_idle(msgbus_outbox_t *ob)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    if (!sqlite3_get_autocommit(s->db))
        return mb_error(MSGBUS_ERR_STATE,
                        "outbox relay: its SQLite connection is inside a transaction; the relay "
                        "needs a connection of its own (open a second outbox on it)");
    return MSGBUS_OK;
}

static msgbus_err_t mb_outbox_sqlite_claim(msgbus_outbox_t *ob, size_t max, int64_t after,
                                           struct mb_outbox_batch *b)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    if (!s->busy_set) {
        /* The relay's writes queue behind the application's: wait for the
         * write lock rather than fail the pass at once. */
        sqlite3_busy_timeout(s->db, 5000);
        s->busy_set = true;
    }
    /* The per-key check against failed rows costs an index probe per
     * row; with no failed row at all (the normal case) it is skipped. */
    sqlite3_reset(s->any_failed);
    int rc = sqlite3_step(s->any_failed);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(s->any_failed);
        return mb_outbox_sqlite_err(ob, s->db, "looking for failed rows");
    }
    bool any_failed = sqlite3_column_int(s->any_failed, 0) != 0;
    sqlite3_reset(s->any_failed);
    if (!any_failed && after == 0) {
        /* claim_plain walks the table by id from `after`, skipping the
         * rows that are not pending; start it at the first pending row
         * (one probe of the _pending index) rather than at the retained
         * sent rows below it. */
        sqlite3_reset(s->first_pending);
        rc = sqlite3_step(s->first_pending);
        if (rc != SQLITE_ROW) {
            sqlite3_reset(s->first_pending);
            return mb_outbox_sqlite_err(ob, s->db, "looking for the first pending row");
        }
        bool none = sqlite3_column_type(s->first_pending, 0) == SQLITE_NULL;
        after = sqlite3_column_int64(s->first_pending, 0) - 1;
        sqlite3_reset(s->first_pending);
        if (none)
            return MSGBUS_OK;
    }
    sqlite3_stmt *st = any_failed ? s->claim : s->claim_plain;
    /* Without failed rows the claim skips no pending row, and no row can
     * become pending below the largest id read: ids are handed out in
     * commit order by the single writer (top of this file). */
    b->dense = !any_failed;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)(max > INT64_MAX ? INT64_MAX : max));
    sqlite3_bind_int64(st, 2, after);
    msgbus_err_t e = MSGBUS_OK;
    size_t payload_bytes = 0;
    while (!b->capped && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct mb_outbox_row *r = mb_outbox_batch_add(b);
        if (!r) {
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory reading outbox rows");
            break;
        }
        r->id = sqlite3_column_int64(st, 0);
        /* Text columns are used as C strings (an id, a topic, JSON), so
         * strlen gives the length that matters: cheaper than another
         * sqlite3_column_bytes call, each of which takes the connection's
         * mutex. */
        const char *t = (const char *)sqlite3_column_text(st, 1);
        r->msg_id = t ? mb_outbox_batch_copy(b, t, strlen(t)) : NULL;
        t = (const char *)sqlite3_column_text(st, 2);
        r->topic = t ? mb_outbox_batch_copy(b, t, strlen(t)) : NULL;
        bool has_key = sqlite3_column_type(st, 3) != SQLITE_NULL;
        if (has_key) {
            const void *k = sqlite3_column_blob(st, 3);
            r->key_len = (size_t)sqlite3_column_bytes(st, 3);
            r->key = mb_outbox_batch_copy(b, k, r->key_len);
        }
        t = (const char *)sqlite3_column_text(st, 4);
        r->headers = t ? mb_outbox_batch_copy(b, t, strlen(t)) : NULL;
        const void *pl = sqlite3_column_blob(st, 5);
        r->len = (size_t)sqlite3_column_bytes(st, 5);
        r->payload = mb_outbox_batch_copy(b, pl, r->len);
        r->msg_ts = sqlite3_column_int64(st, 6);
        if (!r->msg_id || !r->topic || !r->payload || (has_key && !r->key) ||
            (!r->headers && sqlite3_column_type(st, 4) != SQLITE_NULL)) {
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory reading outbox rows (or NULL msg_id/topic)");
            break;
        }
        payload_bytes += r->len;
        b->capped = payload_bytes >= MB_OUTBOX_SLICE_BYTES;
    }
    if (e == MSGBUS_OK && rc != SQLITE_DONE && !b->capped)
        e = mb_outbox_sqlite_err(ob, s->db, "reading pending rows");
    sqlite3_reset(st);
    return e;
}

static msgbus_err_t mb_outbox_sqlite_step(msgbus_outbox_t *ob, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return mb_outbox_sqlite_err(ob, sqlite3_db_handle(st), "marking outbox rows");
    return MSGBUS_OK;
}

/* The sent rows' ids as a JSON array "[1,2,3]" (sqlite's json_each reads
 * it), so a batch is marked by one statement instead of one per row. */
static char *mb_outbox_sqlite_sent_ids(const struct mb_outbox_batch *b, size_t *count)
{
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++)
        n += b->outcome[i] == MB_OUTBOX_SENT;
    *count = n;
    char *s = malloc(n * 21 + 3);
    if (!s)
        return NULL;
    size_t at = 0;
    s[at++] = '[';
    for (size_t i = 0; i < b->n; i++) {
        if (b->outcome[i] != MB_OUTBOX_SENT)
            continue;
        if (at > 1)
            s[at++] = ',';
        at += (size_t)sprintf(s + at, "%lld", (long long)b->rows[i].id);
    }
    s[at++] = ']';
    s[at] = '\0';
    return s;
}

/* Whether the last failure on db was a lock held elsewhere past the busy
 * timeout (goes away) rather than, say, a trigger or constraint refusing
 * the change (does not). */
static bool mb_outbox_sqlite_locked(sqlite3 *db)
{
    int rc = sqlite3_errcode(db) & 0xff;
    return rc == SQLITE_BUSY || rc == SQLITE_LOCKED;
}

static msgbus_err_t mb_outbox_sqlite_finish(msgbus_outbox_t *ob, const struct mb_outbox_batch *b,
                                            int64_t now_ms)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    s->busy = false;
    bool any = false;
    for (size_t i = 0; i < b->n; i++)
        any |= b->outcome[i] != MB_OUTBOX_KEEP;
    if (!any)
        return MSGBUS_OK;
    size_t nsent = 0;
    for (size_t i = 0; i < b->n; i++)
        nsent += b->outcome[i] == MB_OUTBOX_SENT;
    /* The common case, every row of a dense batch sent: one range. */
    bool range = b->dense && nsent == b->n;
    char *ids = range ? NULL : mb_outbox_sqlite_sent_ids(b, &nsent);
    if (!range && !ids)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory marking outbox rows");
    msgbus_err_t e = mb_outbox_sqlite_exec(ob, s->db, "BEGIN IMMEDIATE", "starting the mark transaction");
    if (e != MSGBUS_OK) {
        s->busy = mb_outbox_sqlite_locked(s->db);
        free(ids);
        return e;
    }
    if (range) {
        sqlite3_stmt *st = ob->retention_ms == 0 ? s->mark_delete_range : s->mark_sent_range;
        sqlite3_bind_int64(st, 1, b->rows[0].id);
        sqlite3_bind_int64(st, 2, b->rows[b->n - 1].id);
        if (ob->retention_ms != 0)
            sqlite3_bind_int64(st, 3, now_ms);
        e = mb_outbox_sqlite_step(ob, st);
        /* Fewer: the application deleted some (harmless). More: a pending
         * row this batch never read has an id in the range (written with
         * an explicit id?): roll back rather than mark it unpublished. */
        if (e == MSGBUS_OK && (size_t)sqlite3_changes(s->db) > nsent)
            e = mb_error(MSGBUS_ERR_STORE,
                         "outbox table '%s' (SQLite): marking rows %lld..%lld would change %d "
                         "rows, not %zu: a pending row was written with an explicit id "
                         "(let the database assign ids; see docs/outbox.md)",
                         ob->table, (long long)b->rows[0].id, (long long)b->rows[b->n - 1].id,
                         sqlite3_changes(s->db), nsent);
        sqlite3_clear_bindings(st);
    } else if (nsent) {
        sqlite3_stmt *st = ob->retention_ms == 0 ? s->mark_delete_many : s->mark_sent_many;
        sqlite3_bind_text(st, 1, ids, -1, SQLITE_STATIC);
        if (ob->retention_ms != 0)
            sqlite3_bind_int64(st, 2, now_ms);
        e = mb_outbox_sqlite_step(ob, st);
        sqlite3_clear_bindings(st);
    }
    for (size_t i = 0; i < b->n && e == MSGBUS_OK; i++) {
        sqlite3_stmt *st = NULL;
        switch (b->outcome[i]) {
        case MB_OUTBOX_KEEP:
        case MB_OUTBOX_SENT:
            continue;
        case MB_OUTBOX_RETRY:
            st = s->mark_retry;
            break;
        case MB_OUTBOX_FAILED:
            st = s->mark_failed;
            break;
        }
        sqlite3_bind_int64(st, 1, b->rows[i].id);
        sqlite3_bind_text(st, 2, b->error[i] ? b->error[i] : "", -1, SQLITE_STATIC);
        e = mb_outbox_sqlite_step(ob, st);
        sqlite3_clear_bindings(st);
    }
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_exec(ob, s->db, "COMMIT", "committing the mark transaction");
    if (e != MSGBUS_OK) {
        s->busy = mb_outbox_sqlite_locked(s->db); /* before the ROLLBACK resets it */
    }
    if (e != MSGBUS_OK && !sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    free(ids);
    return e;
}

static bool mb_outbox_sqlite_busy(msgbus_outbox_t *ob)
{
    return mb_outbox_sqlite_of(ob)->busy;
}

static void mb_outbox_sqlite_abort(msgbus_outbox_t *ob)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    sqlite3_reset(s->claim);
    sqlite3_reset(s->claim_plain);
}

static msgbus_err_t mb_outbox_sqlite_run(msgbus_outbox_t *ob, const char *fmt, int64_t arg,
                                         bool bind, size_t *n, const char *what)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    sqlite3_stmt *st = NULL;
    msgbus_err_t e = mb_outbox_sqlite_prepare(ob, s->db, &st, fmt);
    if (e != MSGBUS_OK)
        return e;
    if (bind)
        sqlite3_bind_int64(st, 1, arg);
    if (sqlite3_step(st) != SQLITE_DONE)
        e = mb_outbox_sqlite_err(ob, s->db, what);
    else if (n)
        *n = (size_t)sqlite3_changes(s->db);
    sqlite3_finalize(st);
    return e;
}

static msgbus_err_t mb_outbox_sqlite_purge(msgbus_outbox_t *ob, int64_t before_ms, size_t *n)
{
    return mb_outbox_sqlite_run(ob, "DELETE FROM \"%w\" WHERE state = 'sent' AND sent_at <= ?1",
                                before_ms, true, n, "purging sent rows");
}

static msgbus_err_t mb_outbox_sqlite_retry_failed(msgbus_outbox_t *ob, size_t *n)
{
    return mb_outbox_sqlite_run(ob, "UPDATE \"%w\" SET state = 'pending' WHERE state = 'failed'", 0,
                                false, n, "retrying failed rows");
}

static msgbus_err_t mb_outbox_sqlite_stats(msgbus_outbox_t *ob, int64_t now_ms,
                                           msgbus_outbox_stats_t *out)
{
    struct mb_outbox_sqlite *s = mb_outbox_sqlite_of(ob);
    sqlite3_stmt *st = NULL;
    msgbus_err_t e = mb_outbox_sqlite_prepare(
        ob, s->db, &st,
        "SELECT (SELECT count(*) FROM \"%w\" WHERE state = 'pending'),"
        " (SELECT created_at FROM \"%w\" WHERE state = 'pending' ORDER BY id LIMIT 1),"
        " (SELECT count(*) FROM \"%w\" WHERE state = 'failed'),"
        " (SELECT count(*) FROM \"%w\" WHERE state = 'sent')");
    if (e != MSGBUS_OK)
        return e;
    if (sqlite3_step(st) == SQLITE_ROW) {
        out->pending = (uint64_t)sqlite3_column_int64(st, 0);
        if (sqlite3_column_type(st, 1) != SQLITE_NULL) {
            int64_t age = now_ms - sqlite3_column_int64(st, 1);
            out->oldest_pending_age_ms = age > 0 ? age : 0;
        }
        out->failed = (uint64_t)sqlite3_column_int64(st, 2);
        out->sent = (uint64_t)sqlite3_column_int64(st, 3);
    } else {
        e = mb_outbox_sqlite_err(ob, s->db, "reading stats");
    }
    sqlite3_finalize(st);
    return e;
}

static const struct mb_outbox_ops mb_outbox_sqlite_ops = {
    .name = "sqlite",
    .put = mb_outbox_sqlite_put,
    .check_idle = mb_outbox_sqlite_check_idle,
    .claim = mb_outbox_sqlite_claim,
    .overlap = true, /* claims read without a transaction (see the top of this file) */
    .finish = mb_outbox_sqlite_finish,
    .abort = mb_outbox_sqlite_abort,
    .busy = mb_outbox_sqlite_busy,
    .purge = mb_outbox_sqlite_purge,
    .retry_failed = mb_outbox_sqlite_retry_failed,
    .stats = mb_outbox_sqlite_stats,
    .close = mb_outbox_sqlite_close,
};

msgbus_err_t msgbus_outbox_open_sqlite(msgbus_outbox_t **out, struct sqlite3 *db,
                                       const char *table)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_open_sqlite: out is NULL");
    if (!db)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_open_sqlite: db is NULL");
    msgbus_outbox_t *ob = NULL;
    msgbus_err_t e = mb_outbox_new(&ob, &mb_outbox_sqlite_ops, table);
    if (e != MSGBUS_OK)
        return e;
    struct mb_outbox_sqlite *s = calloc(1, sizeof *s);
    if (!s) {
        mb_outbox_free(ob);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
    }
    s->db = db;
    ob->store = s;
    /* The contract in SQL (src/core/rules.c; docs/outbox.md is its prose
     * twin): the table, checked, then its indexes. */
    size_t nstmt = mb_schema_count(MB_SCHEMA_OUTBOX, MB_STORE_SQLITE);
    for (size_t i = 0; e == MSGBUS_OK && i < nstmt; i++) {
        char *sql = mb_schema_stmt(MB_SCHEMA_OUTBOX, MB_STORE_SQLITE, i, ob->table);
        e = sql ? mb_outbox_sqlite_exec(ob, db, sql, i ? "creating an index" : "creating the table")
                : mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
        free(sql);
        if (e == MSGBUS_OK && i == 0)
            e = mb_outbox_sqlite_check(ob, db);
    }
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(
            ob, db, &s->put,
            "INSERT INTO \"%w\" (msg_id, topic, msg_key, headers, payload, msg_ts, created_at, state)"
            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')");
    if (e == MSGBUS_OK)
        /* A keyed row waits while an earlier row of its key is 'failed';
         * earlier pending rows of the key come first in id order anyway. */
        e = mb_outbox_sqlite_prepare(
            ob, db, &s->claim,
            "SELECT id, msg_id, topic, msg_key, headers, payload, coalesce(msg_ts, created_at)"
            " FROM \"%w\" AS o WHERE state = 'pending' AND id > ?2 AND (msg_key IS NULL OR NOT EXISTS"
            " (SELECT 1 FROM \"%w\" AS f WHERE f.state = 'failed' AND f.msg_key = o.msg_key"
            " AND f.id < o.id)) ORDER BY id LIMIT ?1");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(
            ob, db, &s->claim_plain,
            /* By id, not through the _pending index: one b-tree walk
             * instead of an index walk plus a table probe per row. */
            "SELECT id, msg_id, topic, msg_key, headers, payload, coalesce(msg_ts, created_at)"
            " FROM \"%w\" NOT INDEXED WHERE id > ?2 AND state = 'pending' ORDER BY id LIMIT ?1");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->first_pending,
                                     "SELECT min(id) FROM \"%w\" WHERE state = 'pending'");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->any_failed,
                                     "SELECT EXISTS (SELECT 1 FROM \"%w\" WHERE state = 'failed')");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->mark_delete_range,
                                     "DELETE FROM \"%w\" WHERE id BETWEEN ?1 AND ?2"
                                     " AND state = 'pending'");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->mark_sent_range,
                                     "UPDATE \"%w\" SET state = 'sent', sent_at = ?3, error = NULL"
                                     " WHERE id BETWEEN ?1 AND ?2 AND state = 'pending'");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->mark_delete_many,
                                     "DELETE FROM \"%w\" WHERE id IN (SELECT value FROM json_each(?1))");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->mark_sent_many,
                                     "UPDATE \"%w\" SET state = 'sent', sent_at = ?2, error = NULL"
                                     " WHERE id IN (SELECT value FROM json_each(?1))");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->mark_retry,
                                     "UPDATE \"%w\" SET attempts = attempts + 1, error = ?2"
                                     " WHERE id = ?1");
    if (e == MSGBUS_OK)
        e = mb_outbox_sqlite_prepare(ob, db, &s->mark_failed,
                                     "UPDATE \"%w\" SET state = 'failed', attempts = attempts + 1,"
                                     " error = ?2 WHERE id = ?1");
    if (e != MSGBUS_OK) {
        mb_outbox_sqlite_close(ob);
        mb_outbox_free(ob);
        return e;
    }
    *out = ob;
    return MSGBUS_OK;
}
