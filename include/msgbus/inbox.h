/*
 * inbox.h — the idempotent consumer: remember which messages a consumer has
 * processed, in the application's own database transaction, so that a
 * message the broker delivers twice has its effect applied once.
 *
 *     msgbus_inbox_t *ib;
 *     msgbus_inbox_open_sqlite(&ib, app_db, "billing", NULL);
 *     sqlite3_exec(app_db, "BEGIN IMMEDIATE", 0, 0, 0);
 *     if (msgbus_inbox_claim(ib, in) == MSGBUS_ERR_DUPLICATE) {   // seen before
 *         sqlite3_exec(app_db, "ROLLBACK", 0, 0, 0);
 *         msgbus_ack(in);
 *     } else {
 *         apply_effects(app_db, in);                              // same transaction
 *         sqlite3_exec(app_db, "COMMIT", 0, 0, 0);
 *         msgbus_ack(in);
 *     }
 *
 * or let msgbus_inbox_handle() run that whole sequence.
 *
 * The claim commits with the effects: a crash before COMMIT forgets both
 * (the broker redelivers, the message is processed), a crash after COMMIT
 * keeps both (the redelivery is recognised and skipped).
 *
 * Stores: SQLite and PostgreSQL (a table in the application's database,
 * contract in docs/inbox.md), and a bounded in-memory store for services
 * without a database, which forgets everything when the process ends.
 *
 * Messages without an id (sent by a producer that is not msgbus) are
 * refused with MSGBUS_ERR_INVALID: without an id a redelivery cannot be
 * told from a new message. Give such a message an id of your own
 * (msgbus_msg_set_id, or msgbus_inbox_claim_id) or dead-letter it.
 *
 * Threads: an inbox may be used by one thread at a time for the SQL stores
 * (it uses the application's connection, which has the same rule); the
 * memory store may be used from any number of threads at once.
 */
#ifndef MSGBUS_INBOX_H
#define MSGBUS_INBOX_H

#include <stddef.h>
#include <stdint.h>

#include "msgbus/msgbus.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Declared here so users need not include sqlite3.h or libpq-fe.h. */
struct sqlite3;
struct pg_conn;

/* An inbox: one consumer's record of the message ids it processed, in one
 * store (msgbus_inbox_open_sqlite, _open_pg, _open_memory;
 * msgbus_inbox_close). */
typedef struct msgbus_inbox msgbus_inbox_t;

/* Default table name of the SQL stores. */
#define MSGBUS_INBOX_TABLE "msgbus_inbox"

/* The SQL that creates the inbox table `table` (NULL: "msgbus_inbox") and
 * its purge index on `store` ("sqlite" or "pg"; on "pg" the name may be
 * schema.table): exactly what msgbus_inbox_open_sqlite / _open_pg run, as
 * statements each ended by ";\n", in *sql (free it with msgbus_free).
 * MSGBUS_ERR_INVALID for an unknown store or a table name the open would
 * refuse (then *sql is NULL). Any thread. */
MSGBUS_API msgbus_err_t msgbus_inbox_schema(const char *store, const char *table, char **sql);

/* Opens an inbox for consumer `consumer` (1..255 bytes of [A-Za-z0-9._-];
 * usually the group name) on the application's SQLite connection `db`.
 * `table` (NULL: "msgbus_inbox") is created with its index if missing; an
 * existing table is checked against the contract of docs/inbox.md
 * (MSGBUS_ERR_STORE naming what differs). Table names: 1..50 bytes of
 * [A-Za-z0-9_], not starting with a digit. Call it outside a transaction
 * (MSGBUS_ERR_STATE otherwise).
 * The inbox borrows `db`: close the inbox before sqlite3_close(db).
 * Statements run on `db` with whatever busy timeout the application set.
 * MSGBUS_ERR_UNSUPPORTED when msgbus was built without SQLite. */
MSGBUS_API msgbus_err_t msgbus_inbox_open_sqlite(msgbus_inbox_t **out, struct sqlite3 *db,
                                                 const char *consumer, const char *table);

/* The same on the application's PostgreSQL connection `conn` (a PGconn *).
 * `table` may be schema-qualified ("billing.msgbus_inbox"). Concurrent
 * consumers may share one table: a second claim of the same id waits for
 * the first transaction and then reports MSGBUS_ERR_DUPLICATE (or succeeds
 * if that transaction rolled back). MSGBUS_ERR_UNSUPPORTED when msgbus was
 * built without PostgreSQL. */
MSGBUS_API msgbus_err_t msgbus_inbox_open_pg(msgbus_inbox_t **out, struct pg_conn *conn,
                                             const char *consumer, const char *table);

/* Opens an in-memory inbox remembering at most `capacity` (>= 1) ids, each
 * for at most `ttl_ms` milliseconds (0: no time limit, capacity only).
 * When full, the oldest claim is forgotten to make room. It forgets
 * everything when the process ends, so it suppresses redeliveries only
 * within its window: use it where processing twice is harmless but
 * wasteful. Claims take effect at once (there is no transaction): if the
 * processing fails after a claim, call msgbus_inbox_forget. */
MSGBUS_API msgbus_err_t msgbus_inbox_open_memory(msgbus_inbox_t **out, const char *consumer,
                                                 size_t capacity, int64_t ttl_ms);

/* Closes the inbox; it does not touch the application's connection or its
 * rows. NULL is a no-op. */
MSGBUS_API void msgbus_inbox_close(msgbus_inbox_t *ib);

/* Records that this consumer processes message `msg` (by msgbus_msg_id),
 * inside the transaction the application has open on its connection —
 * msgbus never begins, commits or rolls back. Returns MSGBUS_OK the first
 * time, MSGBUS_ERR_DUPLICATE when the id was claimed (and committed, or
 * claimed earlier in this same transaction) before.
 * MSGBUS_ERR_STATE when no transaction is open on the SQL connection (a
 * claim committed on its own, before the effects, would lose the message
 * on a crash) or the transaction has already failed.
 * MSGBUS_ERR_INVALID when `msg` has no id. MSGBUS_ERR_STORE for database
 * errors (detail has the database's text). Blocks on the database. */
MSGBUS_API msgbus_err_t msgbus_inbox_claim(msgbus_inbox_t *ib, const msgbus_msg_t *msg);

/* The same with an id of the application's choosing (1..255 printable
 * ASCII bytes, no spaces), e.g. one derived from the payload of a message
 * whose producer set none. */
MSGBUS_API msgbus_err_t msgbus_inbox_claim_id(msgbus_inbox_t *ib, const char *id);

/* Removes the claim of `msg` (its id). For the memory store, whose claims
 * are not transactional, call it when processing failed after the claim.
 * On the SQL stores it deletes the row inside the open transaction (rolling
 * back is usually what you want instead). MSGBUS_ERR_NOT_FOUND when there
 * was no claim. */
MSGBUS_API msgbus_err_t msgbus_inbox_forget(msgbus_inbox_t *ib, const msgbus_msg_t *msg);

/* What msgbus_inbox_handle did with a message. */
typedef enum msgbus_inbox_outcome {
    MSGBUS_INBOX_APPLIED = 0,   /* handler succeeded, committed, acked */
    MSGBUS_INBOX_DUPLICATE = 1, /* processed before: acked, handler not called */
    MSGBUS_INBOX_REJECTED = 2   /* handler failed: rolled back, nacked (redelivered) */
} msgbus_inbox_outcome_t;

/* The application's processing of one message. Runs inside the inbox's
 * transaction on the application's connection: apply the effects with that
 * same connection, and do not begin, commit or roll back. Returns 0 on
 * success, anything else to have the message rolled back and nacked. */
typedef int (*msgbus_inbox_handler_fn)(void *opaque, msgbus_msg_t *msg);

/* Processes one received message effectively once:
 *   begin; claim; duplicate → roll back, ack, handler not called;
 *   handler(opaque, msg); failure → roll back, nack;
 *   commit; ack.
 * SQLite begins with BEGIN IMMEDIATE, PostgreSQL with BEGIN. On the memory
 * store: claim; handler; failure → forget the claim, nack; success → ack.
 * Returns MSGBUS_OK when the message was settled as planned; *outcome (may
 * be NULL) says which way. Otherwise:
 *   MSGBUS_ERR_INVALID — NULL argument, or `msg` has no id: the message is
 *     left unsettled, the handler not called (see the top of inbox.h);
 *   MSGBUS_ERR_STATE — a transaction was already open on the connection
 *     (message left unsettled), or the handler ended the transaction
 *     (nacked);
 *   MSGBUS_ERR_STORE (MSGBUS_ERR_CONNECT when the PG connection is lost) —
 *     begin, claim or commit failed: rolled back, nacked;
 *   MSGBUS_ERR_NOMEM — memory store out of memory: message left unsettled;
 *   an error of msgbus_ack / msgbus_nack — the database part is done (and
 *     *outcome set); the broker will redeliver, and the inbox will
 *     recognise the redelivery of an applied message.
 * Does not free `msg`. Blocks on the database and the handler. */
MSGBUS_API msgbus_err_t msgbus_inbox_handle(msgbus_inbox_t *ib, msgbus_msg_t *msg,
                                            msgbus_inbox_handler_fn handler, void *opaque,
                                            msgbus_inbox_outcome_t *outcome);

/* Deletes this consumer's claims made at least `older_than_ms` ago (>= 0);
 * *purged (may be NULL) gets how many. On the SQL stores it runs on the
 * application's connection: inside its transaction if one is open,
 * otherwise as a statement of its own. Choose a window longer than any
 * redelivery can take (broker retention, retries, consumer downtime): a
 * message redelivered after its claim was purged is processed again. */
MSGBUS_API msgbus_err_t msgbus_inbox_purge(msgbus_inbox_t *ib, int64_t older_than_ms,
                                           size_t *purged);

/* The consumer name and the store ("sqlite", "pg", "memory"). Static for
 * the inbox's life. */
MSGBUS_API const char *msgbus_inbox_consumer(const msgbus_inbox_t *ib);
MSGBUS_API const char *msgbus_inbox_store(const msgbus_inbox_t *ib);

#ifdef __cplusplus
}
#endif

#endif /* MSGBUS_INBOX_H */
