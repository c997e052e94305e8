/*
 * billing.c — an idempotent consumer: bills each order of the "orders"
 * topic exactly once, even when the broker delivers it twice. The inbox
 * records the message id in the same SQLite transaction as the ledger row
 * (msgbus_inbox_handle), so a redelivery is recognised and skipped.
 *
 *   MSGBUS_URL=amqp://guest:guest@127.0.0.1:5672/ ./billing billing.db
 *
 * Build it with billing.h beside it. Arguments: DB_PATH (default:
 * billing.db), IDLE_MS (stop when no order came
 * for this long; default 5000). On a real broker start it before
 * ./order_service: subscribing declares the "billing" group, which keeps
 * orders for it from then on. Without MSGBUS_URL it runs on mem:// and
 * publishes a few sample orders itself (one of them twice).
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgbus/inbox.h>
#include <msgbus/msgbus.h>

#include "billing.h"

static int fail(const char *what, msgbus_err_t e)
{
    fprintf(stderr, "billing: %s: %s (%s)\n", what, msgbus_strerror(e), msgbus_last_error());
    return 1;
}

static int sql(sqlite3 *db, const char *q)
{
    char *err = NULL;
    if (sqlite3_exec(db, q, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "billing: sql '%s': %s\n", q, err ? err : "?");
        sqlite3_free(err);
        return 1;
    }
    return 0;
}

static long long query(sqlite3 *db, const char *q)
{
    sqlite3_stmt *st;
    long long n = -1;
    if (sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* The effect of one order, inside the inbox's transaction: a ledger row.
 * The cents are read from the JSON body with a plain search (an example
 * should not need a JSON library). */
static int apply_order(void *opaque, msgbus_msg_t *in)
{
    sqlite3 *db = opaque;
    size_t len;
    const char *p = msgbus_msg_payload(in, &len);
    char body[512];
    snprintf(body, sizeof body, "%.*s", (int)(len < sizeof body ? len : sizeof body - 1), p);
    const char *c = strstr(body, "\"cents\":");
    if (!c)
        return 1; /* not an order: rolled back and nacked */
    long long cents = atoll(c + 8);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "INSERT INTO ledger(msg_id, cents, order_json) VALUES(?, ?, ?)",
                           -1, &st, NULL) != SQLITE_OK)
        return 1;
    sqlite3_bind_text(st, 1, msgbus_msg_id(in), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, cents);
    sqlite3_bind_text(st, 3, body, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : 1;
}

int billing_run(const billing_opts_t *o, billing_report_t *r)
{
    memset(r, 0, sizeof *r);
    msgbus_t *bus = NULL;
    msgbus_sub_t *sub = NULL;
    msgbus_inbox_t *inbox = NULL;
    sqlite3 *db = NULL;
    int rc = 1;
    msgbus_err_t e;
    if ((e = msgbus_open(&bus, o->url, NULL)))
        return fail("open", e);
    if (sqlite3_open(o->db_path, &db) != SQLITE_OK) {
        fprintf(stderr, "billing: cannot open %s: %s\n", o->db_path, sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_busy_timeout(db, 5000);
    if (sql(db, "PRAGMA journal_mode=WAL") ||
        sql(db, "CREATE TABLE IF NOT EXISTS ledger(id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, "
                "cents INTEGER NOT NULL, order_json TEXT NOT NULL)"))
        goto out;
    if ((e = msgbus_inbox_open_sqlite(&inbox, db, "billing", NULL))) {
        fail("inbox", e);
        goto out;
    }
    if ((e = msgbus_subscribe(bus, "orders", "billing", &sub))) {
        fail("subscribe", e);
        goto out;
    }
    if (o->on_ready)
        o->on_ready(o->ready_arg);

    int idle = 0;
    for (;;) {
        int expect = o->expect ? atomic_load(o->expect) : 0;
        int all_in = expect > 0 && r->applied >= expect;
        /* Once every expected order is in, wait only briefly for repeats. */
        if (idle >= (all_in ? 500 : o->idle_ms))
            break;
        msgbus_msg_t *in;
        if ((e = msgbus_receive(sub, 100, &in)) == MSGBUS_ERR_TIMEOUT) {
            idle += 100;
            continue;
        }
        if (e) {
            fail("receive", e);
            goto out;
        }
        idle = 0;
        r->delivered++;
        if (o->duplicate_every > 0 && r->delivered % o->duplicate_every == 0 &&
            msgbus_msg_attempt(in) == 1) {
            /* As a broker may after a reconnect: the same message (same id) again. */
            if (msgbus_publish(bus, "orders", in, NULL, NULL) == MSGBUS_OK)
                r->sent_twice++;
        }
        msgbus_inbox_outcome_t outcome;
        e = msgbus_inbox_handle(inbox, in, apply_order, db, &outcome);
        msgbus_msg_free(in);
        if (e) {
            fail("inbox_handle", e);
            goto out;
        }
        r->applied += outcome == MSGBUS_INBOX_APPLIED;
        r->duplicates += outcome == MSGBUS_INBOX_DUPLICATE;
    }
    r->ledger_rows = query(db, "SELECT count(*) FROM ledger");
    r->ledger_distinct = query(db, "SELECT count(DISTINCT msg_id) FROM ledger");
    r->ledger_cents = query(db, "SELECT coalesce(sum(cents), 0) FROM ledger");
    rc = 0;
out:
    msgbus_sub_close(sub);
    msgbus_flush(bus, 10000, NULL); /* the repeats published above */
    msgbus_close(bus);
    msgbus_inbox_close(inbox);
    sqlite3_close(db);
    return rc;
}

#ifndef EXAMPLE_NO_MAIN
/* On mem:// nobody else can publish into this process: send a few sample
 * orders, the second one twice with the same id. */
static void publish_samples(void *arg)
{
    const char *url = arg;
    msgbus_t *bus;
    if (msgbus_open(&bus, url, NULL) != MSGBUS_OK)
        return;
    for (int i = 1; i <= 5; i++) {
        char body[96];
        snprintf(body, sizeof body, "{\"order\":%d,\"customer\":\"sample\",\"cents\":%d}", i,
                 i * 250);
        msgbus_msg_t *m;
        if (msgbus_msg_new(&m, body, strlen(body)) != MSGBUS_OK)
            break;
        msgbus_publish(bus, "orders", m, NULL, NULL);
        if (i == 2)
            msgbus_publish(bus, "orders", m, NULL, NULL); /* same id: a duplicate */
        msgbus_msg_free(m);
    }
    msgbus_flush(bus, 5000, NULL);
    msgbus_close(bus);
}

int main(int argc, char **argv)
{
    atomic_int expect = 0;
    billing_opts_t o = {NULL, "billing.db", 5000, &expect, 0, NULL, NULL};
    if (argc > 1)
        o.db_path = argv[1];
    if (argc > 2 && (o.idle_ms = atoi(argv[2])) <= 0) {
        fprintf(stderr, "usage: billing [DB_PATH] [IDLE_MS]\n");
        return 2;
    }
    const char *url = getenv("MSGBUS_URL");
    if (!url || !*url) {
        o.url = "mem://billing";
        o.on_ready = publish_samples;
        o.ready_arg = (void *)o.url;
        atomic_store(&expect, 5);
        printf("MSGBUS_URL is not set: using the in-process broker %s with 5 sample orders\n",
               o.url);
    }
    billing_report_t r;
    if (billing_run(&o, &r))
        return 1;
    printf("billing: %d delivered, %d applied, %d duplicates skipped; ledger %lld rows, "
           "%lld cents (database %s)\n",
           r.delivered, r.applied, r.duplicates, r.ledger_rows, r.ledger_cents, o.db_path);
    /* On the samples: five orders billed once each, the repeat skipped. */
    if (o.on_ready && (r.applied != 5 || r.duplicates != 1 || r.ledger_distinct != r.ledger_rows))
        return 1;
    return 0;
}
#endif
