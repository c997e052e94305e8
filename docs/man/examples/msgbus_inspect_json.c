/* What the broker holds: topics, their groups and each group's lag. */
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
    msgbus_err_t e = msgbus_inspect_json(bus, "orders", NULL, 5000, &json);
    if (e != MSGBUS_OK) {
        fprintf(stderr, "inspect: %s\n", msgbus_last_error());
        return 1;
    }
    /* {"backend":"mem","topics":[{"name":"orders",...,"groups":[{"name":"billing",
     * "members":0,"ready":1,"unacked":0,"lag":1}],...}]} */
    printf("%s\n", json);
    int ok = strstr(json, "\"billing\"") != NULL;
    msgbus_free(json);
    msgbus_close(bus);
    return ok ? 0 : 1;
}
