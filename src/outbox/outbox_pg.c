/*
 * outbox_pg.c — the PostgreSQL outbox store.
 *
 * Several relay processes may work one outbox at once. A pass runs in one
 * transaction held across claim, publish, confirm and mark:
 *  1. read a window of the oldest pending rows (id, key);
 *  2. take per-key transaction-scoped advisory locks with
 *     pg_try_advisory_xact_lock(hashtext('<table>'), hashtext(hex(key))),
 *     oldest key first, skipping keys another relay holds, until enough
 *     rows are covered — the key lock is what keeps per-key order across
 *     relays: only the holder of a key's lock publishes that key, and it
 *     always starts from the key's oldest pending row;
 *  3. claim the chosen rows with SELECT … FOR UPDATE SKIP LOCKED (keyless
 *     rows rely on the row lock alone; a re-read under the new statement's
 *     snapshot drops rows another relay marked meanwhile);
 *  4. the relay publishes and waits for confirms; then the same
 *     transaction marks them and COMMITs, releasing all locks.
 * A relay that dies mid-pass loses its connection, PostgreSQL rolls its
 * transaction back and the rows are pending again: re-published later
 * with the same ids.
 *
 * "Commit order" is approximated by id order: a bigserial id is taken at
 * INSERT time, so with concurrent writers a transaction that commits
 * later can hold a smaller id. The relay may then publish a row before an
 * earlier-committed row with a larger id. Per-key order is exact as long
 * as one key is written by one transaction at a time (the usual case: the
 * key is an aggregate id whose row the transaction also locks).
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/outbox_store.h"

struct mb_outbox_pg {
    PGconn *conn;
    char *qt; /* the table name, double-quoted */
    char *sql_put, *sql_cand, *sql_lock, *sql_fetch, *sql_delete, *sql_sent, *sql_retry,
        *sql_failed;
    bool in_tx;
    char sqlstate[6]; /* of the last failed statement ("" when none was given) */
};

static struct mb_outbox_pg *mb_outbox_pg_of(msgbus_outbox_t *ob)
{
    return ob->store;
}

static msgbus_err_t mb_outbox_pg_err(msgbus_outbox_t *ob, PGconn *c, const PGresult *r,
                                     const char *what)
{
    const char *msg = r ? PQresultErrorMessage(r) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(c);
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (s)
        snprintf(s->sqlstate, sizeof s->sqlstate, "%s", state ? state : "");
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    return mb_error(MSGBUS_ERR_STORE, "outbox table '%s' (PostgreSQL): %s: %.*s", ob->table, what,
                    (int)n, msg);
}

/* Runs a command; returns its result (caller clears) or NULL with the
 * error recorded. */
static PGresult *mb_outbox_pg_run(msgbus_outbox_t *ob, const char *sql, int n,
                                  const char *const *vals, const int *lens, const int *fmts,
                                  int binary, const char *what, msgbus_err_t *e)
{
    PGconn *c = mb_outbox_pg_of(ob)->conn;
    PGresult *r = PQexecParams(c, sql, n, NULL, vals, lens, fmts, binary);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        *e = mb_outbox_pg_err(ob, c, r, what);
        PQclear(r);
        return NULL;
    }
    *e = MSGBUS_OK;
    return r;
}

static msgbus_err_t mb_outbox_pg_cmd(msgbus_outbox_t *ob, const char *sql, const char *what)
{
    msgbus_err_t e;
    PGresult *r = mb_outbox_pg_run(ob, sql, 0, NULL, NULL, NULL, 0, what, &e);
    PQclear(r);
    return e;
}

static char *mb_outbox_pg_sql(const char *fmt, const char *qt)
{
    size_t n = strlen(fmt) + 8 * strlen(qt) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, fmt, qt, qt, qt, qt, qt, qt, qt, qt);
    return s;
}

static void mb_outbox_pg_close(msgbus_outbox_t *ob)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    if (!s)
        return;
    if (s->in_tx)
        PQclear(PQexec(s->conn, "ROLLBACK"));
    free(s->qt);
    free(s->sql_put);
    free(s->sql_cand);
    free(s->sql_lock);
    free(s->sql_fetch);
    free(s->sql_delete);
    free(s->sql_sent);
    free(s->sql_retry);
    free(s->sql_failed);
    free(s);
    ob->store = NULL;
}

/* ---- put ---- */

static msgbus_err_t mb_outbox_pg_put(msgbus_outbox_t *ob, const struct mb_outbox_put *p)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    PGTransactionStatusType ts = PQtransactionStatus(s->conn);
    if (ts == PQTRANS_INERROR)
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_outbox_put: the PostgreSQL transaction has failed; roll it back");
    if (ts == PQTRANS_ACTIVE || ts == PQTRANS_UNKNOWN)
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_outbox_put: the PostgreSQL connection is busy or broken");
    char ts_buf[24], created_buf[24];
    snprintf(ts_buf, sizeof ts_buf, "%lld", (long long)p->msg_ts);
    snprintf(created_buf, sizeof created_buf, "%lld", (long long)p->created_at);
    /* key and payload go binary (bytea needs no escaping that way). */
    const char *vals[7] = {p->msg_id, p->topic, p->key ? (const char *)p->key : NULL,
                           p->headers, p->len ? (const char *)p->payload : "",
                           ts_buf, created_buf};
    int lens[7] = {0, 0, (int)p->key_len, 0, (int)p->len, 0, 0};
    int fmts[7] = {0, 0, 1, 0, 1, 0, 0};
    if (p->key_len > 0x7fffffff || p->len > 0x7fffffff)
        return mb_error(MSGBUS_ERR_TOO_LARGE, "msgbus_outbox_put: message larger than 2 GiB");
    msgbus_err_t e;
    PGresult *r = mb_outbox_pg_run(ob, s->sql_put, 7, vals, lens, fmts, 0,
                                   "inserting the outbox row", &e);
    PQclear(r);
    return e;
}

/* ---- relay side ---- */

static msgbus_err_t mb_outbox_pg_check_idle(msgbus_outbox_t *ob)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    if (PQstatus(s->conn) == CONNECTION_BAD) {
        /* The relay's connection is dedicated to it, so reconnecting it
         * (same parameters) is ours to do; the next pass works again once
         * the server is back. */
        PQreset(s->conn);
        if (PQstatus(s->conn) == CONNECTION_BAD)
            return mb_outbox_pg_err(ob, s->conn, NULL, "the relay's connection is down");
        s->in_tx = false;
    }
    if (PQtransactionStatus(s->conn) != PQTRANS_IDLE)
        return mb_error(MSGBUS_ERR_STATE,
                        "outbox relay: its PostgreSQL connection is inside a transaction; the "
                        "relay needs a connection of its own (open a second outbox on it)");
    return MSGBUS_OK;
}

/* A small string set (hex keys) for one claim; each key carries a count. */
struct mb_outbox_pg_set {
    const char **slot;
    size_t *count;
    size_t cap;
};

static uint64_t mb_outbox_pg_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Adds s (or counts it again); returns its slot's counter. */
static size_t *mb_outbox_pg_set_add(struct mb_outbox_pg_set *set, const char *s)
{
    size_t i = mb_outbox_pg_hash(s) & (set->cap - 1);
    while (set->slot[i]) {
        if (strcmp(set->slot[i], s) == 0) {
            set->count[i]++;
            return &set->count[i];
        }
        i = (i + 1) & (set->cap - 1);
    }
    set->slot[i] = s;
    set->count[i] = 1;
    return &set->count[i];
}

static bool mb_outbox_pg_set_has(const struct mb_outbox_pg_set *set, const char *s)
{
    size_t i = mb_outbox_pg_hash(s) & (set->cap - 1);
    while (set->slot[i]) {
        if (strcmp(set->slot[i], s) == 0)
            return true;
        i = (i + 1) & (set->cap - 1);
    }
    return false;
}

/* Appends to a growing string; false on out of memory. */
struct mb_outbox_pg_buf {
    char *p;
    size_t n, cap;
};

static bool mb_outbox_pg_buf_add(struct mb_outbox_pg_buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

/* A text[] literal element: quoted, with " and \ escaped. */
static bool mb_outbox_pg_buf_quoted(struct mb_outbox_pg_buf *b, const char *s)
{
    if (!mb_outbox_pg_buf_add(b, "\"", 1))
        return false;
    for (; *s; s++) {
        if ((*s == '"' || *s == '\\') && !mb_outbox_pg_buf_add(b, "\\", 1))
            return false;
        if (!mb_outbox_pg_buf_add(b, s, 1))
            return false;
    }
    return mb_outbox_pg_buf_add(b, "\"", 1);
}

static int64_t mb_outbox_pg_int8(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | (unsigned char)p[i];
    return (int64_t)v;
}

static void *mb_outbox_pg_copy(struct mb_outbox_batch *b, const PGresult *r, int row, int col,
                               size_t *len)
{
    int n = PQgetlength(r, row, col);
    if (len)
        *len = (size_t)n;
    return mb_outbox_batch_copy(b, PQgetvalue(r, row, col), (size_t)n);
}

static msgbus_err_t mb_outbox_pg_claim(msgbus_outbox_t *ob, size_t max, int64_t after,
                                       struct mb_outbox_batch *b)
{
    (void)after; /* one claim per pass here (ops.overlap is false): it starts at the oldest row */
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    msgbus_err_t e = mb_outbox_pg_cmd(ob, "BEGIN", "starting the relay transaction");
    if (e != MSGBUS_OK)
        return e;
    s->in_tx = true;

    /* 1. the window of oldest pending rows. Larger than the batch, so a
     * relay whose first keys are held by another still finds work. */
    char window[24], keys_needed[24];
    snprintf(window, sizeof window, "%zu", max * 4 < 64 ? 64 : max * 4);
    const char *v1[1] = {window};
    PGresult *cand = mb_outbox_pg_run(ob, s->sql_cand, 1, v1, NULL, NULL, 0,
                                      "reading pending rows", &e);
    if (!cand)
        return e;
    int nc = PQntuples(cand);
    if (nc == 0) {
        PQclear(cand);
        return MSGBUS_OK;
    }

    /* 2. distinct keys, oldest first, and how many of them cover `max`
     * rows of the window. Taking all of a key's window rows (rather than
     * one row of every key) leaves the other keys to the other relays. */
    struct mb_outbox_pg_set seen = {0}, locked = {0};
    size_t cap = 16;
    while (cap < (size_t)nc * 2)
        cap *= 2;
    seen.cap = locked.cap = cap;
    seen.slot = calloc(cap, sizeof *seen.slot);
    seen.count = calloc(cap, sizeof *seen.count);
    locked.slot = calloc(cap, sizeof *locked.slot);
    locked.count = calloc(cap, sizeof *locked.count);
    size_t **order = calloc((size_t)nc, sizeof *order); /* per distinct key: its counter */
    struct mb_outbox_pg_buf arr = {0}, ids = {0};
    PGresult *lk = NULL;
    size_t nkeys = 0, need = 0;
    bool ok = seen.slot && seen.count && locked.slot && locked.count && order &&
              mb_outbox_pg_buf_add(&arr, "{", 1) && mb_outbox_pg_buf_add(&ids, "{", 1);
    for (int i = 0; ok && i < nc; i++) {
        if (PQgetisnull(cand, i, 1))
            continue;
        const char *k = PQgetvalue(cand, i, 1);
        size_t *cnt = mb_outbox_pg_set_add(&seen, k);
        if (*cnt == 1) {
            ok = (nkeys == 0 || mb_outbox_pg_buf_add(&arr, ",", 1)) &&
                 mb_outbox_pg_buf_quoted(&arr, k);
            order[nkeys++] = cnt;
        }
    }
    for (size_t j = 0, rows = 0; ok && j < nkeys && rows < max; j++) {
        rows += *order[j];
        need = j + 1;
    }
    ok = ok && mb_outbox_pg_buf_add(&arr, "}", 1);
    if (!ok) {
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory claiming outbox rows");
        goto out;
    }
    if (nkeys) {
        snprintf(keys_needed, sizeof keys_needed, "%zu", need ? need : 1);
        const char *v2[2] = {arr.p, keys_needed};
        lk = mb_outbox_pg_run(ob, s->sql_lock, 2, v2, NULL, NULL, 0, "locking keys", &e);
        if (!lk)
            goto out;
        for (int i = 0; i < PQntuples(lk); i++)
            mb_outbox_pg_set_add(&locked, PQgetvalue(lk, i, 0));
    }

    /* 3. the rows to claim, in id order, up to max rows and
     * MB_OUTBOX_SLICE_BYTES of payload (octet_length reads a stored
     * value's size without fetching it). Rows left out are later than
     * every row taken, so each key still goes out oldest first. */
    size_t chosen = 0, payload_bytes = 0;
    for (int i = 0; i < nc && chosen < max; i++) {
        if (!PQgetisnull(cand, i, 1) && !mb_outbox_pg_set_has(&locked, PQgetvalue(cand, i, 1)))
            continue;
        if (payload_bytes >= MB_OUTBOX_SLICE_BYTES) {
            b->capped = true;
            break;
        }
        payload_bytes += (size_t)strtoull(PQgetvalue(cand, i, 2), NULL, 10);
        const char *id = PQgetvalue(cand, i, 0);
        if (!((chosen == 0 || mb_outbox_pg_buf_add(&ids, ",", 1)) &&
              mb_outbox_pg_buf_add(&ids, id, strlen(id)))) {
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory claiming outbox rows");
            goto out;
        }
        chosen++;
    }
    if (!mb_outbox_pg_buf_add(&ids, "}", 1)) {
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory claiming outbox rows");
        goto out;
    }
    if (chosen == 0)
        goto out;
    const char *v3[1] = {ids.p};
    PGresult *rr = mb_outbox_pg_run(ob, s->sql_fetch, 1, v3, NULL, NULL, 1, "claiming rows", &e);
    if (!rr)
        goto out;
    for (int i = 0; i < PQntuples(rr); i++) {
        struct mb_outbox_row *r = mb_outbox_batch_add(b);
        if (!r) {
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory reading outbox rows");
            break;
        }
        r->id = mb_outbox_pg_int8(PQgetvalue(rr, i, 0));
        r->msg_id = mb_outbox_pg_copy(b, rr, i, 1, NULL);
        r->topic = mb_outbox_pg_copy(b, rr, i, 2, NULL);
        if (!PQgetisnull(rr, i, 3))
            r->key = mb_outbox_pg_copy(b, rr, i, 3, &r->key_len);
        r->headers = mb_outbox_pg_copy(b, rr, i, 4, NULL);
        r->payload = mb_outbox_pg_copy(b, rr, i, 5, &r->len);
        r->msg_ts = mb_outbox_pg_int8(PQgetvalue(rr, i, 6));
        if (!r->msg_id || !r->topic || !r->headers || !r->payload ||
            (!PQgetisnull(rr, i, 3) && !r->key)) {
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory reading outbox rows");
            break;
        }
    }
    PQclear(rr);
out:
    PQclear(cand);
    PQclear(lk);
    free(seen.slot);
    free(seen.count);
    free(locked.slot);
    free(locked.count);
    free(order);
    free(arr.p);
    free(ids.p);
    return e;
}

static msgbus_err_t mb_outbox_pg_finish(msgbus_outbox_t *ob, const struct mb_outbox_batch *b,
                                        int64_t now_ms)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    struct mb_outbox_pg_buf sent = {0}, rid = {0}, rerr = {0}, fid = {0}, ferr = {0};
    size_t nsent = 0, nretry = 0, nfail = 0;
    bool ok = mb_outbox_pg_buf_add(&sent, "{", 1) && mb_outbox_pg_buf_add(&rid, "{", 1) &&
              mb_outbox_pg_buf_add(&rerr, "{", 1) && mb_outbox_pg_buf_add(&fid, "{", 1) &&
              mb_outbox_pg_buf_add(&ferr, "{", 1);
    for (size_t i = 0; ok && i < b->n; i++) {
        char id[24];
        int idn = snprintf(id, sizeof id, "%lld", (long long)b->rows[i].id);
        const char *err = b->error[i] ? b->error[i] : "";
        switch (b->outcome[i]) {
        case MB_OUTBOX_KEEP:
            break;
        case MB_OUTBOX_SENT:
            ok = (nsent++ == 0 || mb_outbox_pg_buf_add(&sent, ",", 1)) &&
                 mb_outbox_pg_buf_add(&sent, id, (size_t)idn);
            break;
        case MB_OUTBOX_RETRY:
            ok = (nretry++ == 0 || (mb_outbox_pg_buf_add(&rid, ",", 1) &&
                                    mb_outbox_pg_buf_add(&rerr, ",", 1))) &&
                 mb_outbox_pg_buf_add(&rid, id, (size_t)idn) && mb_outbox_pg_buf_quoted(&rerr, err);
            break;
        case MB_OUTBOX_FAILED:
            ok = (nfail++ == 0 || (mb_outbox_pg_buf_add(&fid, ",", 1) &&
                                   mb_outbox_pg_buf_add(&ferr, ",", 1))) &&
                 mb_outbox_pg_buf_add(&fid, id, (size_t)idn) && mb_outbox_pg_buf_quoted(&ferr, err);
            break;
        }
    }
    ok = ok && mb_outbox_pg_buf_add(&sent, "}", 1) && mb_outbox_pg_buf_add(&rid, "}", 1) &&
         mb_outbox_pg_buf_add(&rerr, "}", 1) && mb_outbox_pg_buf_add(&fid, "}", 1) &&
         mb_outbox_pg_buf_add(&ferr, "}", 1);
    msgbus_err_t e = MSGBUS_OK;
    s->sqlstate[0] = '\0';
    if (!ok)
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory marking outbox rows");
    /* Outside the claim's transaction (rows the relay published in an
     * earlier pass and could not mark then: relay.c), the outcomes still
     * go in one transaction of their own. */
    if (e == MSGBUS_OK && !s->in_tx && (nsent || nretry || nfail)) {
        e = mb_outbox_pg_cmd(ob, "BEGIN", "starting the mark transaction");
        s->in_tx = e == MSGBUS_OK;
    }
    if (e == MSGBUS_OK && nsent) {
        char now[24];
        snprintf(now, sizeof now, "%lld", (long long)now_ms);
        const char *v[2] = {sent.p, now};
        bool del = ob->retention_ms == 0;
        PQclear(mb_outbox_pg_run(ob, del ? s->sql_delete : s->sql_sent, del ? 1 : 2, v, NULL,
                                 NULL, 0, "marking rows sent", &e));
    }
    if (e == MSGBUS_OK && nretry) {
        const char *v[2] = {rid.p, rerr.p};
        PQclear(mb_outbox_pg_run(ob, s->sql_retry, 2, v, NULL, NULL, 0, "counting retries", &e));
    }
    if (e == MSGBUS_OK && nfail) {
        const char *v[2] = {fid.p, ferr.p};
        PQclear(mb_outbox_pg_run(ob, s->sql_failed, 2, v, NULL, NULL, 0, "moving rows aside", &e));
    }
    if (e == MSGBUS_OK && s->in_tx) {
        e = mb_outbox_pg_cmd(ob, "COMMIT", "committing the relay transaction");
        s->in_tx = false;
    }
    free(sent.p);
    free(rid.p);
    free(rerr.p);
    free(fid.p);
    free(ferr.p);
    return e;
}

/* Errors a retry after a short wait may get past: a dropped connection
 * (check_idle reconnects), class 40 (serialization failure, deadlock),
 * 55P03 (lock_not_available: lock_timeout) and 57014 (query_canceled:
 * statement_timeout, typically while waiting for a lock). */
static bool mb_outbox_pg_busy(msgbus_outbox_t *ob)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    if (PQstatus(s->conn) != CONNECTION_OK)
        return true;
    return strncmp(s->sqlstate, "40", 2) == 0 || strcmp(s->sqlstate, "55P03") == 0 ||
           strcmp(s->sqlstate, "57014") == 0;
}

static void mb_outbox_pg_abort(msgbus_outbox_t *ob)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    if (PQtransactionStatus(s->conn) == PQTRANS_INTRANS ||
        PQtransactionStatus(s->conn) == PQTRANS_INERROR)
        PQclear(PQexec(s->conn, "ROLLBACK"));
    s->in_tx = false;
}

static msgbus_err_t mb_outbox_pg_simple(msgbus_outbox_t *ob, const char *fmt, const char *arg,
                                        size_t *n, const char *what)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    char *sql = mb_outbox_pg_sql(fmt, s->qt);
    if (!sql)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    const char *v[1] = {arg};
    msgbus_err_t e;
    PGresult *r = mb_outbox_pg_run(ob, sql, arg ? 1 : 0, v, NULL, NULL, 0, what, &e);
    free(sql);
    if (r && n)
        *n = (size_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return e;
}

static msgbus_err_t mb_outbox_pg_purge(msgbus_outbox_t *ob, int64_t before_ms, size_t *n)
{
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)before_ms);
    return mb_outbox_pg_simple(ob, "DELETE FROM %s WHERE state = 'sent' AND sent_at <= $1", b, n,
                               "purging sent rows");
}

static msgbus_err_t mb_outbox_pg_retry_failed(msgbus_outbox_t *ob, size_t *n)
{
    return mb_outbox_pg_simple(ob, "UPDATE %s SET state = 'pending' WHERE state = 'failed'", NULL,
                               n, "retrying failed rows");
}

static msgbus_err_t mb_outbox_pg_stats(msgbus_outbox_t *ob, int64_t now_ms,
                                       msgbus_outbox_stats_t *out)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    char *sql = mb_outbox_pg_sql(
        "SELECT (SELECT count(*) FROM %s WHERE state = 'pending'),"
        " (SELECT created_at FROM %s WHERE state = 'pending' ORDER BY id LIMIT 1),"
        " (SELECT count(*) FROM %s WHERE state = 'failed'),"
        " (SELECT count(*) FROM %s WHERE state = 'sent')",
        s->qt);
    if (!sql)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    msgbus_err_t e;
    PGresult *r = mb_outbox_pg_run(ob, sql, 0, NULL, NULL, NULL, 0, "reading stats", &e);
    free(sql);
    if (r) {
        out->pending = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        if (!PQgetisnull(r, 0, 1)) {
            int64_t age = now_ms - strtoll(PQgetvalue(r, 0, 1), NULL, 10);
            out->oldest_pending_age_ms = age > 0 ? age : 0;
        }
        out->failed = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
        out->sent = strtoull(PQgetvalue(r, 0, 3), NULL, 10);
    }
    PQclear(r);
    return e;
}

static const struct mb_outbox_ops mb_outbox_pg_ops = {
    .name = "pg",
    .put = mb_outbox_pg_put,
    .check_idle = mb_outbox_pg_check_idle,
    .claim = mb_outbox_pg_claim,
    .overlap = false, /* a claim is a transaction holding row locks until finish */
    .finish = mb_outbox_pg_finish,
    .abort = mb_outbox_pg_abort,
    .busy = mb_outbox_pg_busy,
    .purge = mb_outbox_pg_purge,
    .retry_failed = mb_outbox_pg_retry_failed,
    .stats = mb_outbox_pg_stats,
    .close = mb_outbox_pg_close,
};

/* Whether relation `name` (quoted as needed, resolved on the search path
 * like the CREATE statements) exists: *exists gets the answer. Asked
 * before each CREATE … IF NOT EXISTS because that statement, when the
 * relation is there, sends the application's connection a NOTICE
 * ("already exists, skipping") that libpq's default receiver prints to
 * stderr — on every open. */
static msgbus_err_t mb_outbox_pg_exists(msgbus_outbox_t *ob, const char *name, bool *exists)
{
    const char *v[1] = {name};
    msgbus_err_t e;
    PGresult *r = mb_outbox_pg_run(ob, "SELECT to_regclass($1) IS NOT NULL", 1, v, NULL, NULL, 0,
                                   "looking the table up", &e);
    if (!r)
        return e;
    *exists = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    return MSGBUS_OK;
}

/* Creates relation `name` with `sql` unless it exists. A failure is
 * forgiven when the relation exists afterwards (another process created
 * it meanwhile) and the connection is not inside a failed transaction. */
/* The (quoted) name a CREATE … IF NOT EXISTS <name> statement creates. */
static void mb_outbox_pg_created_name(const char *sql, char *name, size_t n)
{
    const char *p = strstr(sql, "IF NOT EXISTS ");
    p = p ? p + 14 : "";
    size_t k = strcspn(p, " ");
    snprintf(name, n, "%.*s", (int)k, p);
}

static msgbus_err_t mb_outbox_pg_create(msgbus_outbox_t *ob, const char *name, const char *sql,
                                        const char *what)
{
    PGconn *conn = mb_outbox_pg_of(ob)->conn;
    bool exists = false;
    msgbus_err_t e = mb_outbox_pg_exists(ob, name, &exists);
    if (e != MSGBUS_OK || exists)
        return e;
    e = mb_outbox_pg_cmd(ob, sql, what);
    if (e != MSGBUS_OK && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        char why[512];
        snprintf(why, sizeof why, "%s", msgbus_last_error());
        if (mb_outbox_pg_exists(ob, name, &exists) == MSGBUS_OK && exists)
            return MSGBUS_OK;
        return mb_error(MSGBUS_ERR_STORE, "%s", why);
    }
    return e;
}

static msgbus_err_t mb_outbox_pg_check(msgbus_outbox_t *ob)
{
    struct mb_outbox_pg *s = mb_outbox_pg_of(ob);
    const char *v[1] = {s->qt};
    msgbus_err_t e;
    PGresult *r = mb_outbox_pg_run(ob,
                                   "SELECT attname FROM pg_attribute WHERE attrelid = "
                                   "to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                                   1, v, NULL, NULL, 0, "reading the table's columns", &e);
    if (!r)
        return e;
    for (size_t i = 0; mb_outbox_columns[i] && e == MSGBUS_OK; i++) {
        bool have = false;
        for (int j = 0; j < PQntuples(r) && !have; j++)
            have = strcmp(PQgetvalue(r, j, 0), mb_outbox_columns[i]) == 0;
        if (!have)
            e = mb_error(MSGBUS_ERR_STORE,
                         "outbox table '%s' (PostgreSQL) exists but has no column '%s' "
                         "(see docs/outbox.md for the table contract)",
                         ob->table, mb_outbox_columns[i]);
    }
    PQclear(r);
    return e;
}

msgbus_err_t msgbus_outbox_open_pg(msgbus_outbox_t **out, struct pg_conn *conn, const char *table)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_open_pg: out is NULL");
    if (!conn)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_open_pg: conn is NULL");
    if (PQstatus(conn) != CONNECTION_OK)
        return mb_error(MSGBUS_ERR_STORE, "msgbus_outbox_open_pg: the connection is not open: %s",
                        PQerrorMessage(conn));
    msgbus_outbox_t *ob = NULL;
    msgbus_err_t e = mb_outbox_new(&ob, &mb_outbox_pg_ops, table);
    if (e != MSGBUS_OK)
        return e;
    struct mb_outbox_pg *s = calloc(1, sizeof *s);
    if (!s) {
        mb_outbox_free(ob);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
    }
    s->conn = conn;
    ob->store = s;
    size_t qn = strlen(ob->table) + 3;
    s->qt = malloc(qn);
    if (s->qt)
        snprintf(s->qt, qn, "\"%s\"", ob->table);
    /* The contract in SQL (src/core/rules.c; docs/outbox.md is its prose
     * twin): the table, checked, then its indexes, one statement each
     * (PQexecParams takes one command per call). No transaction of
     * msgbus's own around them: the caller may have one open, and then
     * the table commits with it. */
    if (!s->qt)
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
    size_t nstmt = mb_schema_count(MB_SCHEMA_OUTBOX, MB_STORE_PG);
    for (size_t i = 0; e == MSGBUS_OK && i < nstmt; i++) {
        char *sql = mb_schema_stmt(MB_SCHEMA_OUTBOX, MB_STORE_PG, i, ob->table);
        char name[80];
        if (sql)
            mb_outbox_pg_created_name(sql, name, sizeof name);
        e = sql ? mb_outbox_pg_create(ob, name, sql, i ? "creating an index" : "creating the table")
                : mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
        free(sql);
        if (e == MSGBUS_OK && i == 0)
            e = mb_outbox_pg_check(ob);
    }
    struct {
        char **dst;
        const char *fmt;
    } q[] = {
        {&s->sql_put, "INSERT INTO %s (msg_id, topic, msg_key, headers, payload, msg_ts, created_at)"
                      " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)"},
        {&s->sql_cand, "SELECT id, encode(msg_key, 'hex'), octet_length(payload) FROM %s"
                       " WHERE state = 'pending' ORDER BY id LIMIT $1"},
        {&s->sql_lock, NULL},
        {&s->sql_fetch,
         "SELECT o.id, o.msg_id, o.topic, o.msg_key, o.headers::text, o.payload,"
         " coalesce(o.msg_ts, o.created_at) FROM %s AS o WHERE o.id = ANY($1::bigint[])"
         " AND o.state = 'pending' AND (o.msg_key IS NULL OR NOT EXISTS (SELECT 1 FROM %s AS f"
         " WHERE f.state = 'failed' AND f.msg_key = o.msg_key AND f.id < o.id))"
         " ORDER BY o.id FOR UPDATE OF o SKIP LOCKED"},
        {&s->sql_delete, "DELETE FROM %s WHERE id = ANY($1::bigint[])"},
        {&s->sql_sent, "UPDATE %s SET state = 'sent', sent_at = $2::bigint, error = NULL"
                       " WHERE id = ANY($1::bigint[])"},
        {&s->sql_retry, "UPDATE %s AS o SET attempts = o.attempts + 1, error = u.err FROM"
                        " unnest($1::bigint[], $2::text[]) AS u(id, err) WHERE o.id = u.id"},
        {&s->sql_failed, "UPDATE %s AS o SET state = 'failed', attempts = o.attempts + 1,"
                         " error = u.err FROM unnest($1::bigint[], $2::text[]) AS u(id, err)"
                         " WHERE o.id = u.id"},
    };
    for (size_t i = 0; e == MSGBUS_OK && i < sizeof q / sizeof q[0]; i++) {
        if (!q[i].fmt)
            continue;
        *q[i].dst = mb_outbox_pg_sql(q[i].fmt, s->qt);
        if (!*q[i].dst)
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
    }
    if (e == MSGBUS_OK) {
        /* Keys in oldest-first order; the LIMIT stops the scan (and so the
         * locking) once enough keys are held: no lock is taken on a key the
         * pass will not use. The table name salts the lock space. */
        char lock[400];
        snprintf(lock, sizeof lock,
                 "SELECT k FROM unnest($1::text[]) AS k WHERE "
                 "pg_try_advisory_xact_lock(hashtext('%s'), hashtext(k)) LIMIT $2::bigint",
                 ob->table);
        s->sql_lock = mb_strdup(lock);
        if (!s->sql_lock)
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
    }
    if (e != MSGBUS_OK) {
        mb_outbox_pg_close(ob);
        mb_outbox_free(ob);
        return e;
    }
    *out = ob;
    return MSGBUS_OK;
}
