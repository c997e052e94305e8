/* Process each message once, even when the broker delivers it twice: the
 * inbox claim commits in the same SQLite transaction as the effects. */
#include <stdio.h>
#include <sqlite3.h>
#include <msgbus/inbox.h>
#include <msgbus/msgbus.h>

static int apply(void *opaque, msgbus_msg_t *msg)
{
    sqlite3 *db = opaque;
    size_t len;
    const char *p = msgbus_msg_payload(msg, &len);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "INSERT INTO invoices(text) VALUES (?)", -1, &st, NULL))
        return -1;
    sqlite3_bind_text(st, 1, p, (int)len, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    return rc; /* non-zero: rolled back and nacked */
}

int main(void)
{
    sqlite3 *db;
    msgbus_t *bus;
    msgbus_sub_t *sub;
    msgbus_inbox_t *ib;
    sqlite3_open(":memory:", &db);
    sqlite3_exec(db, "CREATE TABLE invoices(text TEXT)", NULL, NULL, NULL);
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK ||
        msgbus_subscribe(bus, "orders", "billing", &sub) != MSGBUS_OK ||
        msgbus_inbox_open_sqlite(&ib, db, "billing", NULL) != MSGBUS_OK) {
        fprintf(stderr, "%s\n", msgbus_last_error());
        return 1;
    }
    msgbus_msg_t *m;
    msgbus_msg_new(&m, "order 1", 7);
    msgbus_publish(bus, "orders", m, NULL, NULL);
    msgbus_publish(bus, "orders", m, NULL, NULL); /* the same id twice */
    msgbus_msg_free(m);
    msgbus_flush(bus, 10000, NULL);

    int applied = 0, duplicates = 0;
    msgbus_msg_t *in;
    while (applied + duplicates < 2 && msgbus_receive(sub, 5000, &in) == MSGBUS_OK) {
        msgbus_inbox_outcome_t how;
        if (msgbus_inbox_handle(ib, in, apply, db, &how) == MSGBUS_OK) {
            applied += how == MSGBUS_INBOX_APPLIED;
            duplicates += how == MSGBUS_INBOX_DUPLICATE;
        }
        msgbus_msg_free(in);
    }
    printf("applied %d, duplicates %d\n", applied, duplicates);
    msgbus_inbox_close(ib);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    sqlite3_close(db);
    return applied == 1 && duplicates == 1 ? 0 : 1;
}
