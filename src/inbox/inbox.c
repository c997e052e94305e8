/*
 * inbox.c — the idempotent consumer's shared logic: argument checks, the
 * rule for messages without an id, and msgbus_inbox_handle's sequence
 * (begin, claim, handler, commit, settle). The stores behind
 * `struct mb_inbox_ops` live in inbox_sqlite.c, inbox_pg.c and inbox_mem.c.
 */
#include <stdlib.h>
#include <string.h>

#include "inbox/inbox_store.h"
#include "msgbus/inbox.h"

const char *mb_inbox_table_base(const char *table)
{
    const char *dot = strrchr(table, '.');
    return dot ? dot + 1 : table;
}

msgbus_err_t mb_inbox_new(msgbus_inbox_t **out, const struct mb_inbox_ops *ops, const char *consumer,
                          const char *table, bool sql, bool allow_schema)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "inbox open: out is NULL");
    if (!consumer)
        return mb_error(MSGBUS_ERR_INVALID, "inbox open: consumer is NULL");
    msgbus_err_t ce = mb_check_consumer(consumer);
    if (ce != MSGBUS_OK)
        return mb_error_prefix(ce, "inbox open");
    if (sql) {
        if (!table)
            table = MSGBUS_INBOX_TABLE;
        if (!mb_valid_table(table, allow_schema))
            return mb_error_prefix(mb_table_error(MB_SCHEMA_INBOX, allow_schema, table),
                                   "inbox open");
    }
    msgbus_inbox_t *ib = calloc(1, sizeof *ib);
    if (!ib)
        return mb_error(MSGBUS_ERR_NOMEM, "inbox open: out of memory");
    ib->ops = ops;
    ib->consumer = mb_strdup(consumer);
    ib->table = sql ? mb_strdup(table) : NULL;
    if (!ib->consumer || (sql && !ib->table)) {
        mb_inbox_free(ib);
        return mb_error(MSGBUS_ERR_NOMEM, "inbox open: out of memory");
    }
    *out = ib;
    return MSGBUS_OK;
}

void mb_inbox_free(msgbus_inbox_t *ib)
{
    if (!ib)
        return;
    free(ib->consumer);
    free(ib->table);
    free(ib);
}

void msgbus_inbox_close(msgbus_inbox_t *ib)
{
    if (!ib)
        return;
    ib->ops->close(ib);
    mb_inbox_free(ib);
}

const char *msgbus_inbox_consumer(const msgbus_inbox_t *ib)
{
    return ib ? ib->consumer : NULL;
}

const char *msgbus_inbox_store(const msgbus_inbox_t *ib)
{
    return ib ? ib->ops->name : NULL;
}

/* The documented rule for messages without an id: refuse, loudly. Deriving
 * an id from the broker position would need the core to expose one (it
 * does not publicly), and guessing from the payload could merge distinct
 * messages — both worse than making the application decide. */
static msgbus_err_t mb_inbox_msg_id(const msgbus_msg_t *msg, const char *what, const char **id)
{
    if (!msg)
        return mb_error(MSGBUS_ERR_INVALID, "%s: msg is NULL", what);
    const char *s = msgbus_msg_id(msg);
    if (!s)
        return mb_error(MSGBUS_ERR_INVALID,
                        "%s: message has no id (its producer is not msgbus?); the inbox cannot tell "
                        "a redelivery from a new message, so it refuses it rather than risk "
                        "processing it twice: set an id (msgbus_msg_set_id / msgbus_inbox_claim_id) "
                        "or dead-letter it",
                        what);
    *id = s;
    return MSGBUS_OK;
}

/* The claim must join a transaction: committed on its own, ahead of the
 * effects, a crash in between would mark a message processed that never
 * was — lost, which is worse than processed twice. */
static msgbus_err_t mb_inbox_check_tx(msgbus_inbox_t *ib, const char *what)
{
    if (!ib->ops->tx_state)
        return MSGBUS_OK;
    switch (ib->ops->tx_state(ib)) {
    case MB_INBOX_TX_OPEN:
        return MSGBUS_OK;
    case MB_INBOX_TX_NONE:
        return mb_error(MSGBUS_ERR_STATE,
                        "%s: no transaction is open on the %s connection; begin one first so the "
                        "claim commits together with the message's effects",
                        what, ib->ops->name);
    default:
        return mb_error(MSGBUS_ERR_STATE,
                        "%s: the transaction on the %s connection has failed (or the connection "
                        "is bad); roll it back",
                        what, ib->ops->name);
    }
}

static msgbus_err_t mb_inbox_claim_checked(msgbus_inbox_t *ib, const char *id, const char *what)
{
    msgbus_err_t e = mb_inbox_check_tx(ib, what);
    if (e != MSGBUS_OK)
        return e;
    return ib->ops->claim(ib, id);
}

msgbus_err_t msgbus_inbox_claim(msgbus_inbox_t *ib, const msgbus_msg_t *msg)
{
    if (!ib)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_claim: inbox is NULL");
    const char *id = NULL;
    msgbus_err_t e = mb_inbox_msg_id(msg, "msgbus_inbox_claim", &id);
    if (e != MSGBUS_OK)
        return e;
    return mb_inbox_claim_checked(ib, id, "msgbus_inbox_claim");
}

msgbus_err_t msgbus_inbox_claim_id(msgbus_inbox_t *ib, const char *id)
{
    if (!ib)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_claim_id: inbox is NULL");
    if (!id)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_claim_id: id is NULL");
    msgbus_err_t e = mb_check_id(id);
    if (e != MSGBUS_OK)
        return mb_error_prefix(e, "msgbus_inbox_claim_id");
    return mb_inbox_claim_checked(ib, id, "msgbus_inbox_claim_id");
}

msgbus_err_t msgbus_inbox_forget(msgbus_inbox_t *ib, const msgbus_msg_t *msg)
{
    if (!ib)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_forget: inbox is NULL");
    const char *id = NULL;
    msgbus_err_t e = mb_inbox_msg_id(msg, "msgbus_inbox_forget", &id);
    if (e != MSGBUS_OK)
        return e;
    if (ib->ops->tx_state && ib->ops->tx_state(ib) == MB_INBOX_TX_FAILED)
        return mb_inbox_check_tx(ib, "msgbus_inbox_forget");
    return ib->ops->forget(ib, id);
}

msgbus_err_t msgbus_inbox_purge(msgbus_inbox_t *ib, int64_t older_than_ms, size_t *purged)
{
    if (purged)
        *purged = 0;
    if (!ib)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_purge: inbox is NULL");
    if (older_than_ms < 0)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_purge: older_than_ms is negative (%lld)",
                        (long long)older_than_ms);
    size_t n = 0;
    msgbus_err_t e = ib->ops->purge(ib, older_than_ms, &n);
    if (e == MSGBUS_OK && purged)
        *purged = n;
    return e;
}

/* Settles and folds the settle error into the result: the database part
 * is already final by then, so the outcome stays reported. */
static msgbus_err_t mb_inbox_settle(msgbus_msg_t *msg, bool ack, msgbus_err_t result)
{
    msgbus_err_t e = ack ? msgbus_ack(msg) : msgbus_nack(msg);
    if (e != MSGBUS_OK)
        return mb_error_prefix(e, "msgbus_inbox_handle: %s after the database work was done",
                               ack ? "ack" : "nack");
    return result;
}

/* The memory store has no transaction: the claim is the only state, so a
 * failed handler forgets it to let the redelivery through. */
static msgbus_err_t mb_inbox_handle_memory(msgbus_inbox_t *ib, msgbus_msg_t *msg, const char *id,
                                           msgbus_inbox_handler_fn handler, void *opaque,
                                           msgbus_inbox_outcome_t *outcome)
{
    msgbus_err_t e = ib->ops->claim(ib, id);
    if (e == MSGBUS_ERR_DUPLICATE) {
        *outcome = MSGBUS_INBOX_DUPLICATE;
        return mb_inbox_settle(msg, true, MSGBUS_OK);
    }
    if (e != MSGBUS_OK)
        return e; /* memory stores fail only on out of memory: leave it unsettled */
    if (handler(opaque, msg) != 0) {
        (void)ib->ops->forget(ib, id);
        *outcome = MSGBUS_INBOX_REJECTED;
        return mb_inbox_settle(msg, false, MSGBUS_OK);
    }
    *outcome = MSGBUS_INBOX_APPLIED;
    return mb_inbox_settle(msg, true, MSGBUS_OK);
}

msgbus_err_t msgbus_inbox_handle(msgbus_inbox_t *ib, msgbus_msg_t *msg, msgbus_inbox_handler_fn handler,
                                 void *opaque, msgbus_inbox_outcome_t *outcome)
{
    msgbus_inbox_outcome_t dummy;
    if (!outcome)
        outcome = &dummy;
    if (!ib)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_handle: inbox is NULL");
    if (!handler)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_handle: handler is NULL");
    const char *id = NULL;
    msgbus_err_t e = mb_inbox_msg_id(msg, "msgbus_inbox_handle", &id);
    if (e != MSGBUS_OK)
        return e;
    if (!ib->ops->begin)
        return mb_inbox_handle_memory(ib, msg, id, handler, opaque, outcome);

    /* The helper owns the transaction from BEGIN to COMMIT; joining one the
     * application left open would commit the application's work too. */
    if (ib->ops->tx_state(ib) != MB_INBOX_TX_NONE)
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_inbox_handle: a transaction is already open on the %s connection; "
                        "the helper runs its own (commit or roll back yours first)",
                        ib->ops->name);

    e = ib->ops->begin(ib);
    if (e != MSGBUS_OK) {
        *outcome = MSGBUS_INBOX_REJECTED;
        return mb_inbox_settle(msg, false, e);
    }
    e = ib->ops->claim(ib, id);
    if (e == MSGBUS_ERR_DUPLICATE) {
        ib->ops->rollback(ib);
        *outcome = MSGBUS_INBOX_DUPLICATE;
        return mb_inbox_settle(msg, true, MSGBUS_OK);
    }
    if (e != MSGBUS_OK) {
        ib->ops->rollback(ib);
        *outcome = MSGBUS_INBOX_REJECTED;
        return mb_inbox_settle(msg, false, e);
    }
    int rc = handler(opaque, msg);
    enum mb_inbox_tx tx = ib->ops->tx_state(ib);
    if (tx == MB_INBOX_TX_NONE) {
        /* The handler committed or rolled back behind our back: we cannot
         * know whether the claim and effects are durable, so let the
         * broker redeliver and the inbox decide then. */
        *outcome = MSGBUS_INBOX_REJECTED;
        e = mb_error(MSGBUS_ERR_STATE,
                     "msgbus_inbox_handle: the handler ended the transaction; it must only apply "
                     "effects on the connection, never BEGIN/COMMIT/ROLLBACK");
        return mb_inbox_settle(msg, false, e);
    }
    if (rc != 0 || tx != MB_INBOX_TX_OPEN) {
        ib->ops->rollback(ib);
        *outcome = MSGBUS_INBOX_REJECTED;
        return mb_inbox_settle(msg, false, MSGBUS_OK);
    }
    e = ib->ops->commit(ib);
    if (e != MSGBUS_OK) {
        ib->ops->rollback(ib);
        *outcome = MSGBUS_INBOX_REJECTED;
        return mb_inbox_settle(msg, false, e);
    }
    *outcome = MSGBUS_INBOX_APPLIED;
    return mb_inbox_settle(msg, true, MSGBUS_OK);
}

/* Stores left out of the build still link, and say so. */
#ifndef MSGBUS_HAVE_SQLITE
msgbus_err_t msgbus_inbox_open_sqlite(msgbus_inbox_t **out, struct sqlite3 *db, const char *consumer,
                                      const char *table)
{
    return mb_error(MSGBUS_ERR_UNSUPPORTED, "msgbus_inbox_open_sqlite: msgbus was built without SQLite "
                                            "(MSGBUS_WITH_SQLITE=OFF)");
}
#endif
#ifndef MSGBUS_HAVE_PG
msgbus_err_t msgbus_inbox_open_pg(msgbus_inbox_t **out, struct pg_conn *conn, const char *consumer,
                                  const char *table)
{
    return mb_error(MSGBUS_ERR_UNSUPPORTED, "msgbus_inbox_open_pg: msgbus was built without PostgreSQL "
                                            "(MSGBUS_WITH_PG=OFF)");
}
#endif
