/*
 * outbox.h — the transactional outbox: publish exactly what the service
 * committed.
 *
 * The application writes a message into an outbox table with its OWN
 * database handle, inside its OWN transaction (msgbus_outbox_put), so the
 * business change and the message commit or roll back together. A relay
 * (msgbus_outbox_relay, or the background thread of msgbus_outbox_relay_start)
 * later publishes the pending rows in commit order, waits for the broker's
 * confirms and marks them sent. A crash between publish and mark publishes
 * the same message (same message id) again: delivery is at-least-once, and
 * the idempotent consumer (inbox.h) absorbs the duplicate.
 *
 * Stores: SQLite (sqlite3 *) and PostgreSQL (PGconn *). The table contract
 * (columns, indexes, states, the headers JSON) is in docs/outbox.md, so
 * any language can write rows with its own connection.
 *
 * Two handles, two connections: open one outbox on the application's
 * connection for msgbus_outbox_put, and a second one on a connection of its
 * own for the relay. The relay begins and commits transactions on its
 * handle's connection, which must never be inside one of the
 * application's transactions (msgbus_outbox_relay checks this).
 *
 * Threads: an outbox handle is used by one thread at a time, like the
 * connection under it, except msgbus_outbox_relay_wake (any thread) and,
 * while the background relay runs, msgbus_outbox_stats / _purge /
 * _relay_stop (any thread; they take turns with the relay thread).
 */
#ifndef MSGBUS_OUTBOX_H
#define MSGBUS_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "msgbus/msgbus.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Declared here so users need not include sqlite3.h / libpq-fe.h
 * (libpq's PGconn is `typedef struct pg_conn PGconn`). */
struct sqlite3;
struct pg_conn;

/* An outbox handle: one outbox table on one database connection
 * (msgbus_outbox_open_sqlite, _open_pg; msgbus_outbox_close). */
typedef struct msgbus_outbox msgbus_outbox_t;

/* Default table name when `table` is NULL. */
#define MSGBUS_OUTBOX_TABLE "msgbus_outbox"

/* The SQL that creates the outbox table `table` (NULL: "msgbus_outbox")
 * and its indexes on `store` ("sqlite" or "pg"): exactly what
 * msgbus_outbox_open_sqlite / _open_pg run, as statements each ended by
 * ";\n", in *sql (free it with msgbus_free). For writers in other languages
 * and for migrations: create the table before the relay first opens.
 * MSGBUS_ERR_INVALID for an unknown store or a table name the open would
 * refuse (then *sql is NULL). Any thread. */
MSGBUS_API msgbus_err_t msgbus_outbox_schema(const char *store, const char *table, char **sql);

/* Opens an outbox on SQLite connection `db` (not owned: the caller closes
 * it after msgbus_outbox_close). Creates the table `table` (NULL:
 * "msgbus_outbox"; [A-Za-z_][A-Za-z0-9_]*, 1..50 bytes, else
 * MSGBUS_ERR_INVALID: the index names append up to 11 bytes, and
 * PostgreSQL cuts identifiers at 63) and its indexes if missing; checks
 * an existing table and fails with MSGBUS_ERR_STORE naming a missing
 * column. Call outside a transaction. MSGBUS_ERR_UNSUPPORTED when msgbus
 * was built without SQLite. Blocks on the database. */
MSGBUS_API msgbus_err_t msgbus_outbox_open_sqlite(msgbus_outbox_t **out, struct sqlite3 *db,
                                                  const char *table);

/* The same on a PostgreSQL connection (PGconn *, not owned). The table is
 * created in the connection's current schema; only what is missing is
 * created, so opening an existing outbox sends the connection no NOTICE.
 * The connection's settings are left as they were. */
MSGBUS_API msgbus_err_t msgbus_outbox_open_pg(msgbus_outbox_t **out, struct pg_conn *conn,
                                              const char *table);

/* Stops the background relay if running (as msgbus_outbox_relay_stop),
 * frees the handle; the connection stays open. Rows the relay published
 * but could not mark yet (see msgbus_outbox_relay) get one more attempt,
 * without waiting; if that fails they stay pending, to be published
 * again by the next relay (same ids), and an error-level log line says
 * how many confirmed rows remain unmarked. NULL is a no-op. */
MSGBUS_API void msgbus_outbox_close(msgbus_outbox_t *ob);

/* Writes message `m` for `topic` as a pending outbox row, with the
 * handle's connection, inside the transaction the application has open on
 * it. Never begins, commits or rolls back: the row becomes visible to the
 * relay when the application commits, and vanishes if it rolls back. In
 * autocommit mode (no transaction open) the INSERT is its own one-statement
 * transaction and commits at once. Stores payload, key, headers (as JSON),
 * the message id — so every re-publish carries the same id — and the
 * timestamp. `m` is not kept. MSGBUS_ERR_INVALID for a bad topic or a
 * header value that is not UTF-8 (JSON cannot hold it); MSGBUS_ERR_STATE
 * when the handle's background relay is running or the PG transaction has
 * failed; MSGBUS_ERR_STORE for a database error (detail has its text).
 * Blocks on the database. */
MSGBUS_API msgbus_err_t msgbus_outbox_put(msgbus_outbox_t *ob, const char *topic,
                                          const msgbus_msg_t *m);

/* One relay pass: publishes up to `max_rows` pending rows to `bus` in id
 * (= commit) order and waits up to `timeout_ms` (-1: forever, for the
 * whole pass) for the broker's confirms. It works in slices of at most
 * 2048 rows, each recorded in ONE transaction once its confirms are in:
 * confirmed rows marked sent (or deleted, see retention), rows the broker
 * will never take (MSGBUS_ERR_TOO_LARGE, MSGBUS_ERR_INVALID, a malformed
 * row) moved aside as state 'failed' with their error, every other row
 * left pending. On SQLite up to four slices are in flight at once (one
 * being confirmed while the next are read and published); on PostgreSQL
 * one at a time (a claim holds row locks). When the call returns, every
 * row it published has been recorded — unless recording failed: then the
 * handle keeps those rows' outcomes in memory (not their payloads),
 * retries the marking while the pass has time (timeout_ms; -1: until it
 * works) after 10 ms, doubling to 1 s, when the database was only busy
 * (locked past its busy timeout, a lock timeout, a dropped connection),
 * and otherwise returns MSGBUS_ERR_STORE
 * with the database's text and how many rows wait. They are never
 * published again by this handle: every later pass marks them first and
 * claims nothing new until that has worked.
 * Per-key order: a row is never published while an earlier row with the
 * same key is unsent (pending or failed): a failed row blocks its key —
 * and only its key — until an operator deletes or retries it.
 * *n_published (may be NULL) gets the number of rows marked sent.
 * Returns MSGBUS_OK (also when nothing was pending, or only poison rows
 * failed), or the first transient failure (MSGBUS_ERR_CONNECT,
 * MSGBUS_ERR_TIMEOUT, …): those rows stay pending for the next pass.
 * MSGBUS_ERR_STATE when the handle's connection is inside a transaction or
 * its background relay runs. Needs its own connection (see the top of
 * outbox.h). Blocks. */
MSGBUS_API msgbus_err_t msgbus_outbox_relay(msgbus_outbox_t *ob, msgbus_t *bus, size_t max_rows,
                                            int timeout_ms, size_t *n_published);

/* Options of the background relay; zero fields take the defaults. */
typedef struct msgbus_outbox_relay_opts {
    size_t batch_max;       /* rows per pass (default 10000); see below */
    int confirm_timeout_ms; /* per pass (default 10000) */
    int poll_interval_ms;   /* idle re-check without a wake-up (default 1000) */
    int backoff_min_ms;     /* first retry delay after a failure (default 100) */
    int backoff_max_ms;     /* retry delay cap, doubling up to it (default 30000) */
} msgbus_outbox_relay_opts_t;

/* Starts a background thread that runs relay passes on this handle (its
 * connection must be the relay's own) into `bus` until stopped: passes
 * back to back while full batches come, then waits for a wake-up or
 * `poll_interval_ms`; after a failed pass it backs off (doubling, capped),
 * so a broker outage leaves rows pending and is retried. On SQLite a pass
 * is a stream: once it has claimed `batch_max` rows it goes on claiming
 * while full slices come, for up to half of `confirm_timeout_ms` (so its
 * last slices keep the other half for their confirms) or until
 * msgbus_outbox_relay_stop, instead of ending — and waiting for its last
 * confirms and marks with nothing else to do — every `batch_max` rows.
 * With a retention time set it also purges. `opts` may be NULL
 * (defaults); it is copied. `bus` must stay open until
 * msgbus_outbox_relay_stop returns.
 * MSGBUS_ERR_STATE if already running. */
MSGBUS_API msgbus_err_t msgbus_outbox_relay_start(msgbus_outbox_t *ob, msgbus_t *bus,
                                                  const msgbus_outbox_relay_opts_t *opts);

/* Nudges the background relay to run a pass now (e.g. right after the
 * application committed rows). Cheap; any thread; no-op if not running.
 * Does not cut a failure back-off short. */
MSGBUS_API void msgbus_outbox_relay_wake(msgbus_outbox_t *ob);

/* Stops the background relay: lets the pass in flight finish (publish,
 * confirms, marking; a stream claims nothing more), then joins the
 * thread. Returns the last pass's error (MSGBUS_OK when it succeeded);
 * MSGBUS_ERR_STATE if not running. Blocks up to one pass's confirms and
 * marks. */
MSGBUS_API msgbus_err_t msgbus_outbox_relay_stop(msgbus_outbox_t *ob);

/* Retention of sent rows: 0 (the default) deletes a row as soon as it is
 * confirmed; > 0 keeps it as state 'sent' for `keep_ms` milliseconds
 * (msgbus_outbox_purge deletes older ones); -1 keeps sent rows forever.
 * Applies to the relay running on this handle. */
MSGBUS_API msgbus_err_t msgbus_outbox_set_retention(msgbus_outbox_t *ob, int64_t keep_ms);

/* Deletes sent rows older than the retention time (sent_at <= now -
 * keep_ms). *n_deleted (may be NULL) gets how many. Blocks. */
MSGBUS_API msgbus_err_t msgbus_outbox_purge(msgbus_outbox_t *ob, size_t *n_deleted);

/* Moves every 'failed' row back to 'pending' (after the operator fixed the
 * cause, e.g. created the topic); *n (may be NULL) gets how many. Their
 * keys flow again. Blocks. */
MSGBUS_API msgbus_err_t msgbus_outbox_retry_failed(msgbus_outbox_t *ob, size_t *n);

/* Figures for alerts. */
typedef struct msgbus_outbox_stats {
    uint64_t pending;              /* rows waiting to be published */
    uint64_t failed;               /* rows moved aside */
    uint64_t sent;                 /* sent rows still kept (retention) */
    int64_t oldest_pending_age_ms; /* age of the oldest pending row; 0 when none */
} msgbus_outbox_stats_t;

/* Reads the figures of msgbus_outbox_stats_t with one query on the
 * handle's connection. Blocks. */
MSGBUS_API msgbus_err_t msgbus_outbox_stats(msgbus_outbox_t *ob, msgbus_outbox_stats_t *st);

/* What the relay did on this handle since it was opened: passes run (by
 * the background relay and msgbus_outbox_relay alike), how many failed,
 * rows published and marked sent, and when a pass last succeeded. For
 * metrics (the CLI's `outbox relay --metrics`). */
typedef struct msgbus_outbox_relay_counters {
    uint64_t passes;
    uint64_t failures;
    uint64_t relayed;        /* rows; a long pass on SQLite adds its rows as
                              * it marks them, any other pass at its end */
    int64_t last_success_ms; /* ms since the Unix epoch; 0: none yet */
} msgbus_outbox_relay_counters_t;

/* Reads them; never blocks (no database access). Any thread. */
MSGBUS_API msgbus_err_t msgbus_outbox_relay_counters(msgbus_outbox_t *ob,
                                                     msgbus_outbox_relay_counters_t *out);

#ifdef __cplusplus
}
#endif

#endif /* MSGBUS_OUTBOX_H */
