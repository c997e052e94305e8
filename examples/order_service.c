/*
 * order_service.c — a service that takes orders into SQLite and announces
 * each one with a transactional outbox: the order row and its message
 * commit in ONE transaction (msgbus_outbox_put), so a rolled-back order is
 * never announced and a committed one always is. A relay thread publishes
 * the committed outbox rows to the broker.
 *
 *   MSGBUS_URL=amqp://guest:guest@127.0.0.1:5672/ ./order_service orders.db 100
 *
 * Build it with order_service.h beside it. Arguments: DB_PATH (default:
 * order_service.db), ORDERS (default 100).
 * Start ./billing first on a real broker: it declares the "billing" group,
 * which keeps the orders until billing reads them. Instead of the relay
 * thread you can run the relay as a process of its own:
 *   msgbus outbox relay sqlite:///path/to/orders.db
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <msgbus/msgbus.h>
#include <msgbus/outbox.h>

#include "order_service.h"

static int fail(const char *what, msgbus_err_t e)
{
    fprintf(stderr, "order_service: %s: %s (%s)\n", what, msgbus_strerror(e),
            msgbus_last_error());
    return 1;
}

static int sql(sqlite3 *db, const char *q)
{
    char *err = NULL;
    if (sqlite3_exec(db, q, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "order_service: sql '%s': %s\n", q, err ? err : "?");
        sqlite3_free(err);
        return 1;
    }
    return 0;
}

static sqlite3 *open_db(const char *path)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "order_service: cannot open %s: %s\n", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    if (sql(db, "PRAGMA journal_mode=WAL")) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One order: its row and its message in one transaction. */
static int take_order(sqlite3 *db, msgbus_outbox_t *outbox, int n, int roll_back,
                      long long *cents)
{
    if (sql(db, "BEGIN"))
        return 1;
    *cents = 100LL * n + 99;
    char customer[16];
    snprintf(customer, sizeof customer, "c%d", n % 17);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "INSERT INTO orders(customer, cents) VALUES(?, ?)", -1, &st,
                           NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, customer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, *cents);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        goto fail;

    char body[160];
    snprintf(body, sizeof body, "{\"order\":%lld,\"customer\":\"%s\",\"cents\":%lld}",
             (long long)sqlite3_last_insert_rowid(db), customer, *cents);
    msgbus_msg_t *m;
    msgbus_err_t e = msgbus_msg_new(&m, body, strlen(body));
    if (e) {
        fail("msg_new", e);
        goto fail;
    }
    msgbus_msg_set_key(m, customer, strlen(customer)); /* one customer's orders stay in order */
    msgbus_msg_set_header(m, "content-type", "application/json");
    e = msgbus_outbox_put(outbox, "orders", m); /* same transaction as the order row */
    msgbus_msg_free(m);
    if (e) {
        fail("outbox_put", e);
        goto fail;
    }
    return sql(db, roll_back ? "ROLLBACK" : "COMMIT");
fail:
    sql(db, "ROLLBACK");
    return 1;
}

int order_service_run(const order_service_opts_t *o, order_service_report_t *r)
{
    memset(r, 0, sizeof *r);
    msgbus_t *bus = NULL;
    sqlite3 *db = NULL, *relay_db = NULL;
    msgbus_outbox_t *outbox = NULL, *relay = NULL;
    int rc = 1;
    msgbus_err_t e;
    if ((e = msgbus_open(&bus, o->url, NULL)))
        return fail("open", e);
    /* Two connections: the application's, and the relay's own (the relay
     * begins and commits transactions on it). */
    if (!(db = open_db(o->db_path)) || !(relay_db = open_db(o->db_path)))
        goto out;
    if (sql(db, "CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "customer TEXT NOT NULL, cents INTEGER NOT NULL)"))
        goto out;
    if ((e = msgbus_outbox_open_sqlite(&outbox, db, NULL)) ||
        (e = msgbus_outbox_open_sqlite(&relay, relay_db, NULL))) {
        fail("outbox", e);
        goto out;
    }
    if ((e = msgbus_outbox_relay_start(relay, bus, NULL))) {
        fail("relay", e);
        goto out;
    }
    for (int i = 1; i <= o->orders; i++) {
        int roll_back = o->rollback_every > 0 && i % o->rollback_every == 0;
        long long cents;
        if (take_order(db, outbox, i, roll_back, &cents))
            goto out;
        if (roll_back) { /* the business rule failed: nothing may leave */
            r->rolled_back++;
        } else {
            r->committed++;
            r->committed_cents += cents;
        }
        if (i % 100 == 0)
            msgbus_outbox_relay_wake(relay); /* committed rows are waiting */
    }
    msgbus_outbox_relay_wake(relay);

    /* Done when the relay has emptied the outbox. */
    msgbus_outbox_stats_t st = {0};
    for (int waited = 0;; waited += 50) {
        if ((e = msgbus_outbox_stats(relay, &st))) {
            fail("stats", e);
            goto out;
        }
        if (st.pending == 0 || waited >= o->drain_timeout_ms)
            break;
        msgbus_outbox_relay_wake(relay);
        sleep_ms(50);
    }
    r->pending_left = st.pending;
    r->failed = st.failed;
    if (st.pending || st.failed)
        fprintf(stderr, "order_service: %llu rows still pending, %llu failed\n",
                (unsigned long long)st.pending, (unsigned long long)st.failed);
    else
        rc = 0;
out:
    if (relay)
        msgbus_outbox_relay_stop(relay); /* finishes the pass in flight */
    msgbus_outbox_close(relay);
    msgbus_outbox_close(outbox);
    msgbus_close(bus);
    sqlite3_close(relay_db);
    sqlite3_close(db);
    return rc;
}

#ifndef EXAMPLE_NO_MAIN
int main(int argc, char **argv)
{
    order_service_opts_t o = {NULL, "order_service.db", 100, 10, 30000};
    if (argc > 1)
        o.db_path = argv[1];
    if (argc > 2 && (o.orders = atoi(argv[2])) <= 0) {
        fprintf(stderr, "usage: order_service [DB_PATH] [ORDERS]\n");
        return 2;
    }
    const char *url = getenv("MSGBUS_URL");
    if (!url || !*url) {
        o.url = "mem://orders";
        printf("MSGBUS_URL is not set: using the in-process broker %s (nobody else can read "
               "it; see examples/demo.c)\n",
               o.url);
    }
    order_service_report_t r;
    int rc = order_service_run(&o, &r);
    printf("order_service: %d orders committed and announced, %d rolled back and never "
           "announced (database %s)\n",
           r.committed, r.rolled_back, o.db_path);
    return rc;
}
#endif
