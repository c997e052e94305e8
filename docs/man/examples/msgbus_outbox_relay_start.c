/* The relay as a background thread: the application commits rows and
 * wakes it; stopping lets the pass in flight finish. */
#include <stdio.h>
#include <time.h>
#include <sqlite3.h>
#include <msgbus/msgbus.h>
#include <msgbus/outbox.h>

int main(void)
{
    const char *path = "relay-example.db";
    sqlite3 *app, *relay_db;
    msgbus_outbox_t *ob, *relay;
    msgbus_t *bus;
    msgbus_sub_t *sub;
    remove(path);
    sqlite3_open(path, &app);
    sqlite3_open(path, &relay_db);
    sqlite3_busy_timeout(app, 5000);
    sqlite3_busy_timeout(relay_db, 5000);
    if (msgbus_outbox_open_sqlite(&ob, app, NULL) != MSGBUS_OK ||
        msgbus_outbox_open_sqlite(&relay, relay_db, NULL) != MSGBUS_OK ||
        msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK ||
        msgbus_subscribe(bus, "orders", "billing", &sub) != MSGBUS_OK) {
        fprintf(stderr, "%s\n", msgbus_last_error());
        return 1;
    }
    msgbus_outbox_relay_opts_t opts = {.poll_interval_ms = 200}; /* zeros: defaults */
    if (msgbus_outbox_relay_start(relay, bus, &opts) != MSGBUS_OK)
        return 1;

    msgbus_msg_t *m;
    msgbus_msg_new(&m, "order 1", 7);
    msgbus_outbox_put(ob, "orders", m); /* autocommit: its own transaction */
    msgbus_msg_free(m);
    msgbus_outbox_relay_wake(relay);

    msgbus_msg_t *in;
    int got = msgbus_receive(sub, 10000, &in) == MSGBUS_OK;
    if (got) {
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    msgbus_err_t e = msgbus_outbox_relay_stop(relay); /* before closing the bus */
    printf("received %d, relay %s\n", got, msgbus_strerror(e));
    msgbus_outbox_close(relay);
    msgbus_outbox_close(ob);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    sqlite3_close(relay_db);
    sqlite3_close(app);
    remove(path);
    return got && e == MSGBUS_OK ? 0 : 1;
}
