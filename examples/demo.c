/*
 * demo.c — two services and the broker between them, in one program:
 *
 *   order service:  each order row and its message commit in ONE SQLite
 *                   transaction (msgbus_outbox_put); some transactions roll
 *                   back, and their messages must never leave.
 *   relay:          a background thread publishes committed outbox rows.
 *   billing:        consumes "orders" through the inbox and writes a ledger;
 *                   a message the broker delivers twice is applied once.
 *
 * Runs on $MSGBUS_URL, or on the embedded default mem:// when it is unset.
 * Prints what happened and exits non-zero if the ledger does not match the
 * committed orders exactly.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgbus/inbox.h>
#include <msgbus/msgbus.h>
#include <msgbus/outbox.h>

#define ORDERS 1000

static void die(const char *what, msgbus_err_t e)
{
    fprintf(stderr, "demo: %s: %s (%s)\n", what, msgbus_strerror(e), msgbus_last_error());
    exit(1);
}

static void sql(sqlite3 *db, const char *q)
{
    char *err = NULL;
    if (sqlite3_exec(db, q, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "demo: sql '%s': %s\n", q, err);
        exit(1);
    }
}

static long count(sqlite3 *db, const char *q)
{
    sqlite3_stmt *st;
    long n = -1;
    if (sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static sqlite3 *open_db(const char *path)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "demo: cannot open %s\n", path);
        exit(1);
    }
    sqlite3_busy_timeout(db, 5000);
    sql(db, "PRAGMA journal_mode=WAL");
    sql(db, "PRAGMA synchronous=NORMAL"); /* demo: consistent after a crash, may lose the last commits on power loss */
    return db;
}

/* Billing's effect: one ledger row per order, in the inbox's transaction. */
static int apply_order(void *opaque, msgbus_msg_t *in)
{
    sqlite3 *db = opaque;
    size_t len;
    const char *p = msgbus_msg_payload(in, &len);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "INSERT INTO ledger(order_json, msg_id) VALUES(?, ?)", -1, &st,
                           NULL) != SQLITE_OK)
        return 1;
    sqlite3_bind_text(st, 1, p, (int)len, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, msgbus_msg_id(in), -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : 1;
}

int main(void)
{
    const char *url = getenv("MSGBUS_URL");
    if (!url || !*url) {
        url = "mem://demo";
        printf("MSGBUS_URL is not set: using the embedded broker %s\n", url);
    }
    char dir[] = "/tmp/msgbus-demo-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char orders_path[256], billing_path[256];
    snprintf(orders_path, sizeof orders_path, "%s/orders.db", dir);
    snprintf(billing_path, sizeof billing_path, "%s/billing.db", dir);

    msgbus_t *bus;
    msgbus_err_t e;
    if ((e = msgbus_open(&bus, url, NULL)))
        die("open", e);
    printf("bus: %s (%s); databases in %s\n", msgbus_url(bus), msgbus_backend(bus), dir);
    /* Billing's group exists before the first order is published. */
    if ((e = msgbus_declare(bus, "orders", "billing")))
        die("declare", e);

    /* Order service: its connection, and the relay's own connection. */
    sqlite3 *orders_db = open_db(orders_path), *relay_db = open_db(orders_path);
    sql(orders_db, "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, cents INTEGER)");
    msgbus_outbox_t *outbox, *relay;
    if ((e = msgbus_outbox_open_sqlite(&outbox, orders_db, NULL)) ||
        (e = msgbus_outbox_open_sqlite(&relay, relay_db, NULL)))
        die("outbox", e);
    if ((e = msgbus_outbox_relay_start(relay, bus, NULL)))
        die("relay", e);

    /* Billing service. */
    sqlite3 *billing_db = open_db(billing_path);
    sql(billing_db, "CREATE TABLE ledger(id INTEGER PRIMARY KEY, order_json TEXT, msg_id TEXT)");
    msgbus_inbox_t *inbox;
    if ((e = msgbus_inbox_open_sqlite(&inbox, billing_db, "billing", NULL)))
        die("inbox", e);
    msgbus_sub_t *sub;
    if ((e = msgbus_subscribe(bus, "orders", "billing", &sub)))
        die("subscribe", e);

    int committed = 0, rolled_back = 0;
    for (int i = 1; i <= ORDERS; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"order\":%d,\"customer\":\"c%d\",\"cents\":%d}", i, i % 17,
                 i * 100);
        sql(orders_db, "BEGIN");
        char q[128];
        snprintf(q, sizeof q, "INSERT INTO orders VALUES(%d, 'c%d', %d)", i, i % 17, i * 100);
        sql(orders_db, q);
        msgbus_msg_t *m;
        if ((e = msgbus_msg_new(&m, body, strlen(body))))
            die("msg_new", e);
        char key[16];
        snprintf(key, sizeof key, "c%d", i % 17); /* per-customer order */
        msgbus_msg_set_key(m, key, strlen(key));
        msgbus_msg_set_header(m, "content-type", "application/json");
        if ((e = msgbus_outbox_put(outbox, "orders", m)))
            die("outbox_put", e);
        msgbus_msg_free(m);
        if (i % 10 == 0) { /* the business rule failed: nothing may leave */
            sql(orders_db, "ROLLBACK");
            rolled_back++;
        } else {
            sql(orders_db, "COMMIT");
            committed++;
        }
        if (i % 100 == 0)
            msgbus_outbox_relay_wake(relay);
    }
    msgbus_outbox_relay_wake(relay);
    printf("order service: %d orders committed, %d rolled back\n", committed, rolled_back);

    /* Billing consumes until every committed order is in the ledger. Every
     * 50th message is also delivered a second time (as a broker may after a
     * reconnect): the inbox must absorb it. */
    int delivered = 0, applied = 0, duplicates = 0, redelivered = 0;
    int idle_ms = 0;
    while (applied < committed && idle_ms < 30000) {
        msgbus_msg_t *in;
        if (msgbus_receive(sub, 100, &in) != MSGBUS_OK) {
            idle_ms += 100;
            continue;
        }
        idle_ms = 0;
        delivered++;
        if (delivered % 50 == 0 && msgbus_msg_attempt(in) == 1) {
            msgbus_publish(bus, "orders", in, NULL, NULL); /* same id, again */
            redelivered++;
        }
        msgbus_inbox_outcome_t outcome;
        if ((e = msgbus_inbox_handle(inbox, in, apply_order, billing_db, &outcome)))
            die("inbox_handle", e);
        if (outcome == MSGBUS_INBOX_APPLIED)
            applied++;
        else if (outcome == MSGBUS_INBOX_DUPLICATE)
            duplicates++;
        msgbus_msg_free(in);
    }
    /* Drain the last repeats. */
    msgbus_msg_t *in;
    while (msgbus_receive(sub, 500, &in) == MSGBUS_OK) {
        delivered++;
        msgbus_inbox_outcome_t outcome;
        if ((e = msgbus_inbox_handle(inbox, in, apply_order, billing_db, &outcome)))
            die("inbox_handle", e);
        applied += outcome == MSGBUS_INBOX_APPLIED;
        duplicates += outcome == MSGBUS_INBOX_DUPLICATE;
        msgbus_msg_free(in);
    }

    msgbus_outbox_stats_t st;
    msgbus_outbox_stats(relay, &st);
    long ledger = count(billing_db, "SELECT count(*) FROM ledger");
    long distinct = count(billing_db, "SELECT count(DISTINCT msg_id) FROM ledger");
    printf("relay: %llu pending, %llu failed\n", (unsigned long long)st.pending,
           (unsigned long long)st.failed);
    printf("billing: %d delivered (%d sent twice on purpose), %d applied, %d duplicates "
           "suppressed\n",
           delivered, redelivered, applied, duplicates);
    printf("ledger: %ld rows for %d committed orders, %ld distinct messages\n", ledger, committed,
           distinct);

    msgbus_sub_close(sub);
    msgbus_outbox_relay_stop(relay);
    msgbus_outbox_close(relay);
    msgbus_outbox_close(outbox);
    msgbus_inbox_close(inbox);
    msgbus_close(bus);
    sqlite3_close(relay_db);
    sqlite3_close(orders_db);
    sqlite3_close(billing_db);

    int ok = ledger == committed && distinct == committed && duplicates == redelivered;
    printf("%s\n", ok ? "demo: every committed order billed exactly once; no rolled-back order "
                        "left the service"
                      : "demo: MISMATCH");
    if (ok) { /* keep the databases when something is wrong, for a look */
        char p[300];
        const char *files[] = {"orders.db", "orders.db-wal", "orders.db-shm", "billing.db",
                               "billing.db-wal", "billing.db-shm"};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            snprintf(p, sizeof p, "%s/%s", dir, files[i]);
            unlink(p);
        }
        rmdir(dir);
    }
    return ok ? 0 : 1;
}
