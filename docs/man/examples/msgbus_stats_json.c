/* A snapshot of the bus's counters as JSON (docs/stats.md has every
 * field). */
#include <stdio.h>
#include <string.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK)
        return 1;
    msgbus_declare(bus, "orders", "billing");
    msgbus_msg_t *m;
    msgbus_msg_new(&m, "order 1", 7);
    msgbus_publish(bus, "orders", m, NULL, NULL);
    msgbus_msg_free(m);
    msgbus_flush(bus, 10000, NULL);

    char *json;
    msgbus_err_t e = msgbus_stats_json(bus, &json);
    if (e == MSGBUS_OK) {
        printf("%s\n", json);
        msgbus_stats_free(json);
    }
    msgbus_close(bus);
    return e == MSGBUS_OK ? 0 : 1;
}
