/*
 * outbox.c — the store-independent part of the outbox: handle lifecycle,
 * argument checks, encoding a message into a row (headers as a JSON
 * object through jansson), retention, purge and stats. The relay pass and
 * its thread live in relay.c; the SQL lives in outbox_sqlite.c /
 * outbox_pg.c.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/bus.h"
#include "core/msg.h"
#include "outbox/outbox_store.h"

const char *const mb_outbox_columns[] = {"id",      "msg_id",     "topic", "msg_key",
                                         "headers", "payload",    "msg_ts", "created_at",
                                         "state",   "attempts",   "sent_at", "error",
                                         NULL};

msgbus_err_t mb_outbox_new(msgbus_outbox_t **out, const struct mb_outbox_ops *ops,
                           const char *table)
{
    if (!table)
        table = MSGBUS_OUTBOX_TABLE;
    if (!mb_valid_table(table, false))
        return mb_table_error(MB_SCHEMA_OUTBOX, false, table);
    msgbus_outbox_t *ob = calloc(1, sizeof *ob);
    if (!ob)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
    ob->table = mb_strdup(table);
    if (!ob->table) {
        free(ob);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening the outbox");
    }
    pthread_mutex_init(&ob->mu, NULL);
    ob->ops = ops;
    *out = ob;
    return MSGBUS_OK;
}

void mb_outbox_free(msgbus_outbox_t *ob)
{
    if (!ob)
        return;
    pthread_mutex_destroy(&ob->mu);
    free(ob->table);
    free(ob);
}

struct mb_outbox_row *mb_outbox_batch_add(struct mb_outbox_batch *b)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        struct mb_outbox_row *r = realloc(b->rows, cap * sizeof *r);
        if (!r)
            return NULL;
        b->rows = r;
        b->cap = cap;
    }
    struct mb_outbox_row *row = &b->rows[b->n++];
    memset(row, 0, sizeof *row);
    return row;
}

/* The batch's storage: chunks of at least 64 KiB, so a batch of small
 * rows costs a handful of allocations instead of five per row. */
struct mb_outbox_chunk {
    struct mb_outbox_chunk *next;
    size_t used, cap;
    char data[];
};

void *mb_outbox_batch_copy(struct mb_outbox_batch *b, const void *p, size_t n)
{
    struct mb_outbox_chunk *c = b->chunks;
    if (n >= SIZE_MAX / 2)
        return NULL;
    size_t need = (n + 1 + 15) & ~(size_t)15;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > 65536 ? need : 65536;
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = b->chunks;
        b->chunks = c;
    }
    char *d = c->data + c->used;
    c->used += need;
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

void mb_outbox_batch_clear(struct mb_outbox_batch *b)
{
    for (size_t i = 0; b->error && i < b->n; i++)
        free(b->error[i]);
    for (struct mb_outbox_chunk *c = b->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(b->rows);
    free(b->outcome);
    free(b->error);
    memset(b, 0, sizeof *b);
}

void mb_outbox_batch_drop_data(struct mb_outbox_batch *b)
{
    for (struct mb_outbox_chunk *c = b->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    b->chunks = NULL;
    for (size_t i = 0; i < b->n; i++) {
        struct mb_outbox_row *r = &b->rows[i];
        r->msg_id = r->topic = r->headers = NULL;
        r->key = r->payload = NULL;
        r->key_len = r->len = 0;
    }
}

/* ---- public: open stubs for stores not compiled in ---- */

#ifndef MSGBUS_HAVE_SQLITE
msgbus_err_t msgbus_outbox_open_sqlite(msgbus_outbox_t **out, struct sqlite3 *db,
                                       const char *table)
{
    return mb_error(MSGBUS_ERR_UNSUPPORTED, "msgbus was built without SQLite (MSGBUS_WITH_SQLITE=OFF)");
}
#endif
#ifndef MSGBUS_HAVE_PG
msgbus_err_t msgbus_outbox_open_pg(msgbus_outbox_t **out, struct pg_conn *conn, const char *table)
{
    return mb_error(MSGBUS_ERR_UNSUPPORTED, "msgbus was built without PostgreSQL (MSGBUS_WITH_PG=OFF)");
}
#endif

/* Defined in relay.c: stops the thread if running. */
MB_HIDDEN void mb_outbox_thread_stop_quiet(msgbus_outbox_t *ob);
/* Defined in relay.c: a last try at marking what the relay still holds;
 * says at error level what stays unmarked. */
MB_HIDDEN void mb_outbox_unmarked_close(msgbus_outbox_t *ob);

void msgbus_outbox_close(msgbus_outbox_t *ob)
{
    if (!ob)
        return;
    mb_outbox_thread_stop_quiet(ob);
    mb_outbox_unmarked_close(ob);
    ob->ops->close(ob);
    mb_outbox_free(ob);
}

/* ---- put ---- */

/* The headers as a compact JSON object {"name":"value",…} (insertion
 * order kept), and the message's own CloudEvents type, source and subject
 * under the names ce_type, ce_source and ce_subject (names no application
 * header may have: docs/outbox.md, "The table"). JSON strings must be
 * UTF-8, so a value that is not is refused here rather than stored
 * mangled. */
static msgbus_err_t mb_outbox_headers_json(const msgbus_msg_t *m, char **out)
{
    json_t *obj = json_object();
    if (!obj)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory encoding headers");
    const char *ce_names[3] = {"ce_type", "ce_source", "ce_subject"};
    const char *ce_values[3] = {m->ce_type, m->ce_source, m->ce_subject};
    for (int i = 0; i < 3; i++)
        if (ce_values[i])
            json_object_set_new(obj, ce_names[i], json_string(ce_values[i]));
    for (size_t i = 0; i < m->nheaders; i++) {
        json_t *v = json_string(m->headers[i].value);
        if (!v) {
            json_decref(obj);
            return mb_error(MSGBUS_ERR_INVALID,
                            "header '%s' has a value that is not valid UTF-8; the outbox "
                            "stores headers as JSON, which cannot hold it",
                            m->headers[i].name);
        }
        if (json_object_set_new(obj, m->headers[i].name, v) != 0) {
            json_decref(obj);
            return mb_error(MSGBUS_ERR_INVALID, "header name '%s' cannot be stored as JSON",
                            m->headers[i].name);
        }
    }
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!s)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory encoding headers");
    *out = s;
    return MSGBUS_OK;
}

msgbus_err_t msgbus_outbox_put(msgbus_outbox_t *ob, const char *topic, const msgbus_msg_t *m)
{
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_put: outbox is NULL");
    if (!topic)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_put: topic is NULL");
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_put: message is NULL");
    msgbus_err_t te = mb_check_name("topic", topic);
    if (te != MSGBUS_OK)
        return mb_error_prefix(te, "msgbus_outbox_put");
    if (!m->id)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_put: the message has no id");
    if (ob->thread)
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_outbox_put: this outbox handle runs the background relay; put "
                        "through an outbox opened on the application's own connection");
    char *headers = NULL;
    msgbus_err_t e = mb_outbox_headers_json(m, &headers);
    if (e != MSGBUS_OK)
        return e;
    struct mb_outbox_put p = {
        .msg_id = m->id,
        .topic = topic,
        .key = m->key,
        .key_len = m->key_len,
        .headers = headers,
        .payload = m->payload,
        .len = m->len,
        .msg_ts = m->timestamp,
        .created_at = mb_now_ms(),
    };
    e = ob->ops->put(ob, &p);
    free(headers);
    return e;
}

/* ---- retention, purge, stats ---- */

msgbus_err_t msgbus_outbox_set_retention(msgbus_outbox_t *ob, int64_t keep_ms)
{
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_set_retention: outbox is NULL");
    if (keep_ms < -1)
        return mb_error(MSGBUS_ERR_INVALID,
                        "msgbus_outbox_set_retention: keep_ms %lld is invalid (-1, 0 or > 0)",
                        (long long)keep_ms);
    pthread_mutex_lock(&ob->mu);
    ob->retention_ms = keep_ms;
    pthread_mutex_unlock(&ob->mu);
    return MSGBUS_OK;
}

msgbus_err_t msgbus_outbox_purge(msgbus_outbox_t *ob, size_t *n_deleted)
{
    if (n_deleted)
        *n_deleted = 0;
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_purge: outbox is NULL");
    pthread_mutex_lock(&ob->mu);
    msgbus_err_t e = MSGBUS_OK;
    if (ob->retention_ms >= 0) /* -1 keeps sent rows forever */
        e = ob->ops->purge(ob, mb_now_ms() - ob->retention_ms, n_deleted);
    pthread_mutex_unlock(&ob->mu);
    return e;
}

msgbus_err_t msgbus_outbox_retry_failed(msgbus_outbox_t *ob, size_t *n)
{
    if (n)
        *n = 0;
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_retry_failed: outbox is NULL");
    pthread_mutex_lock(&ob->mu);
    msgbus_err_t e = ob->ops->retry_failed(ob, n);
    pthread_mutex_unlock(&ob->mu);
    return e;
}

msgbus_err_t msgbus_outbox_stats(msgbus_outbox_t *ob, msgbus_outbox_stats_t *st)
{
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_stats: outbox is NULL");
    if (!st)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_stats: stats is NULL");
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&ob->mu);
    msgbus_err_t e = ob->ops->stats(ob, mb_now_ms(), st);
    pthread_mutex_unlock(&ob->mu);
    return e;
}
