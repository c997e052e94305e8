/*
 * outbox_store.h — the seam between the outbox's shared logic (outbox.c:
 * argument checks, header JSON, the relay pass and its thread) and its
 * stores (outbox_sqlite.c, outbox_pg.c). Each store fills one
 * `struct mb_outbox_ops`; nothing in outbox.c names a database.
 */
#ifndef MB_OUTBOX_STORE_H
#define MB_OUTBOX_STORE_H

#include <stdatomic.h>
#include <pthread.h>

#include "core/internal.h"
#include "msgbus/outbox.h"

/* One claimed row, as the relay publishes it. Strings and blobs are
 * NUL-terminated copies in the batch's own storage (mb_outbox_batch_copy),
 * freed together by mb_outbox_batch_clear. */
struct mb_outbox_row {
    int64_t id;
    char *msg_id;
    char *topic;
    unsigned char *key; /* NULL: no key */
    size_t key_len;
    char *headers;      /* JSON text, may be NULL (= no headers) */
    unsigned char *payload;
    size_t len;
    int64_t msg_ts;     /* ms since epoch */
};

/* What the relay decided for one row, applied by ops->finish. */
enum mb_outbox_outcome {
    MB_OUTBOX_KEEP = 0,   /* not published (or held back): stays pending, untouched */
    MB_OUTBOX_SENT = 1,   /* confirmed: mark sent / delete */
    MB_OUTBOX_RETRY = 2,  /* published, failed transiently: stays pending, attempts+1 */
    MB_OUTBOX_FAILED = 3  /* never deliverable: state 'failed' with error */
};

struct mb_outbox_chunk; /* outbox.c */

/* A claim stops taking rows once their payloads add up to this many bytes
 * (it always takes one) and sets the batch's `capped`: a pass then holds
 * at most (slices in flight) x this much row data, whatever max_rows and
 * the rows' sizes. It caps 1 KiB rows at ~1,000 a slice (of 2,048 at most). */
#define MB_OUTBOX_SLICE_BYTES ((size_t)1 << 20)

struct mb_outbox_batch {
    struct mb_outbox_row *rows;
    size_t n, cap;
    struct mb_outbox_chunk *chunks; /* the rows' strings and blobs */
    /* Set by a claim that took every pending row with an id between the
     * batch's first and last: the store may then mark the batch by that
     * id range instead of by a list of ids. */
    bool dense;
    /* Set by a claim that stopped at MB_OUTBOX_SLICE_BYTES: fewer rows than
     * asked for does not mean that no more are pending. */
    bool capped;
    enum mb_outbox_outcome *outcome; /* filled by the relay, n entries */
    char **error;                    /* error text per row (RETRY/FAILED), or NULL */
};

/* One pending row for ops->put. */
struct mb_outbox_put {
    const char *msg_id;
    const char *topic;
    const void *key; /* NULL: none */
    size_t key_len;
    const char *headers; /* JSON text */
    const void *payload;
    size_t len;
    int64_t msg_ts;
    int64_t created_at;
};

struct mb_outbox_ops {
    const char *name; /* "sqlite", "pg" */
    /* INSERT one pending row with the application's connection. */
    msgbus_err_t (*put)(msgbus_outbox_t *ob, const struct mb_outbox_put *p);
    /* MSGBUS_ERR_STATE unless the connection is outside any transaction. */
    msgbus_err_t (*check_idle)(msgbus_outbox_t *ob);
    /* Claims up to `max` publishable rows with ids above `after`, in id
     * order, into `b` (which is empty on entry). May leave a transaction
     * open (PG holds its claim until finish/abort). */
    msgbus_err_t (*claim)(msgbus_outbox_t *ob, size_t max, int64_t after,
                          struct mb_outbox_batch *b);
    /* Whether a new claim may start while earlier claimed batches are
     * still unfinished (no transaction held between claim and finish).
     * Then the relay keeps two slices of a pass in flight. */
    bool overlap;
    /* Applies the outcomes in one transaction and commits (ends the claim). */
    msgbus_err_t (*finish)(msgbus_outbox_t *ob, const struct mb_outbox_batch *b, int64_t now_ms);
    /* Gives the claim up (rollback); best effort. */
    void (*abort)(msgbus_outbox_t *ob);
    /* After a failed finish: whether it failed on something a retry after
     * a short wait may get past — a lock another transaction holds
     * (SQLITE_BUSY, a PostgreSQL lock, deadlock or serialization error) or
     * a dropped connection — rather than on the rows or the schema. May be
     * NULL (never). */
    bool (*busy)(msgbus_outbox_t *ob);
    msgbus_err_t (*purge)(msgbus_outbox_t *ob, int64_t before_ms, size_t *n);
    msgbus_err_t (*retry_failed)(msgbus_outbox_t *ob, size_t *n);
    msgbus_err_t (*stats)(msgbus_outbox_t *ob, int64_t now_ms, msgbus_outbox_stats_t *st);
    /* Frees the store's state (not the application's connection). */
    void (*close)(msgbus_outbox_t *ob);
};

struct mb_outbox_thread;   /* relay.c */
struct mb_outbox_unmarked; /* relay.c */

struct msgbus_outbox {
    const struct mb_outbox_ops *ops;
    char *table;
    void *store;          /* the store's own state */
    int64_t retention_ms; /* 0 delete at once, > 0 keep, -1 forever */
    /* Serialises use of the connection between the relay thread and
     * stats/purge called from other threads. */
    pthread_mutex_t mu;
    struct mb_outbox_thread *thread; /* background relay, NULL when stopped */
    /* Slices the relay published whose outcomes it could not record yet
     * (relay.c), oldest first, under mu. While one is held the relay
     * claims nothing: its rows are still pending in the table, and a claim
     * would publish them again. */
    struct mb_outbox_unmarked *unmarked;
    /* msgbus_outbox_relay_counters: written by whoever runs a pass (under
     * mu), read from any thread. */
    _Atomic uint64_t passes, failures, relayed;
    _Atomic int64_t last_success_ms;
};

/* Checks `table` and copies it into a new outbox (NULL: the default). */
MB_HIDDEN msgbus_err_t mb_outbox_new(msgbus_outbox_t **out, const struct mb_outbox_ops *ops,
                                     const char *table);
/* Frees what mb_outbox_new allocated (not the store). */
MB_HIDDEN void mb_outbox_free(msgbus_outbox_t *ob);

/* Batch helpers for the stores. */
MB_HIDDEN struct mb_outbox_row *mb_outbox_batch_add(struct mb_outbox_batch *b);
MB_HIDDEN void mb_outbox_batch_clear(struct mb_outbox_batch *b);
/* Frees the rows' strings and blobs and clears their pointers, keeping
 * what ops->finish reads (ids, outcomes, errors, dense). */
MB_HIDDEN void mb_outbox_batch_drop_data(struct mb_outbox_batch *b);
/* A NUL-terminated copy of n bytes at p in the batch's storage; NULL when
 * out of memory. */
MB_HIDDEN void *mb_outbox_batch_copy(struct mb_outbox_batch *b, const void *p, size_t n);

/* The column names every outbox table must have (NULL-terminated), for
 * the stores' table checks. */
MB_HIDDEN extern const char *const mb_outbox_columns[];

#endif
