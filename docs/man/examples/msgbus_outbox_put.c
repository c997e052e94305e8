/* Write a business row and its message in one transaction; a relay on a
 * second connection publishes what was committed. */
#include <stdio.h>
#include <string.h>
#include <sqlite3.h>
#include <msgbus/msgbus.h>
#include <msgbus/outbox.h>

int main(void)
{
    const char *path = "outbox-example.db";
    sqlite3 *app, *relay_db;
    msgbus_outbox_t *ob, *relay;
    msgbus_t *bus;
    remove(path);
    sqlite3_open(path, &app);
    sqlite3_open(path, &relay_db);
    sqlite3_exec(app, "CREATE TABLE orders(id INTEGER PRIMARY KEY, total INT)", NULL, NULL, NULL);
    if (msgbus_outbox_open_sqlite(&ob, app, NULL) != MSGBUS_OK ||
        msgbus_outbox_open_sqlite(&relay, relay_db, NULL) != MSGBUS_OK ||
        msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK) {
        fprintf(stderr, "%s\n", msgbus_last_error());
        return 1;
    }
    msgbus_declare(bus, "orders", "billing");

    sqlite3_exec(app, "BEGIN", NULL, NULL, NULL);
    sqlite3_exec(app, "INSERT INTO orders(total) VALUES (42)", NULL, NULL, NULL);
    msgbus_msg_t *m;
    msgbus_msg_new(&m, "{\"order\":1,\"total\":42}", 22);
    msgbus_err_t e = msgbus_outbox_put(ob, "orders", m); /* inside the transaction */
    msgbus_msg_free(m);
    sqlite3_exec(app, e == MSGBUS_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);

    size_t sent = 0;
    e = msgbus_outbox_relay(relay, bus, 100, 10000, &sent);
    printf("relayed %zu (%s)\n", sent, msgbus_strerror(e));

    msgbus_outbox_close(relay);
    msgbus_outbox_close(ob);
    msgbus_close(bus);
    sqlite3_close(relay_db);
    sqlite3_close(app);
    remove(path);
    return e == MSGBUS_OK && sent == 1 ? 0 : 1;
}
