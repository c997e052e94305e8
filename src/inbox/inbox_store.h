/*
 * inbox_store.h — the seam between the inbox's shared logic (inbox.c:
 * argument checks, the id rule, the handle sequence) and its stores
 * (inbox_sqlite.c, inbox_pg.c, inbox_mem.c). Each store fills one
 * `struct mb_inbox_ops`; nothing in inbox.c names a database.
 */
#ifndef MB_INBOX_STORE_H
#define MB_INBOX_STORE_H

#include "core/internal.h"
#include "msgbus/inbox.h"

/* Whether the application's connection has a transaction open. */
enum mb_inbox_tx {
    MB_INBOX_TX_NONE = 0,   /* autocommit: no transaction */
    MB_INBOX_TX_OPEN = 1,   /* a transaction is open and usable */
    MB_INBOX_TX_FAILED = 2  /* a transaction is open but failed (PG) / connection bad */
};

struct mb_inbox_ops {
    const char *name; /* "sqlite", "pg", "memory" */
    /* Inserts (consumer, id) unless present: MSGBUS_OK / MSGBUS_ERR_DUPLICATE.
     * `id` is valid. The SQL stores are called inside a transaction. */
    msgbus_err_t (*claim)(msgbus_inbox_t *ib, const char *id);
    /* Deletes (consumer, id): MSGBUS_OK / MSGBUS_ERR_NOT_FOUND. */
    msgbus_err_t (*forget)(msgbus_inbox_t *ib, const char *id);
    /* Deletes claims with claimed_at <= now - older_than_ms. */
    msgbus_err_t (*purge)(msgbus_inbox_t *ib, int64_t older_than_ms, size_t *purged);
    /* Transaction control for msgbus_inbox_handle and the claim check.
     * NULL for the memory store (claims are immediate). */
    enum mb_inbox_tx (*tx_state)(msgbus_inbox_t *ib);
    msgbus_err_t (*begin)(msgbus_inbox_t *ib);
    msgbus_err_t (*commit)(msgbus_inbox_t *ib);
    void (*rollback)(msgbus_inbox_t *ib); /* best effort; logs a failure */
    /* Frees the store's state (not the application's connection). */
    void (*close)(msgbus_inbox_t *ib);
};

struct msgbus_inbox {
    const struct mb_inbox_ops *ops;
    char *consumer;
    char *table; /* SQL stores; NULL for memory */
    void *store; /* the store's own state */
};

/* Shared by the stores' open functions. */
/* Checks `consumer` and, if non-NULL, copies both into a new inbox whose
 * table is `table` or the default. `allow_schema` permits one '.' (PG). */
MB_HIDDEN msgbus_err_t mb_inbox_new(msgbus_inbox_t **out, const struct mb_inbox_ops *ops,
                                    const char *consumer, const char *table, bool sql,
                                    bool allow_schema);
/* Frees what mb_inbox_new allocated (not the store). */
MB_HIDDEN void mb_inbox_free(msgbus_inbox_t *ib);

/* The unqualified part of a table name ("b" of "a.b"). */
MB_HIDDEN const char *mb_inbox_table_base(const char *table);

#endif
