/* A subscription with its own retry policy: three deliveries, then the
 * dead-letter topic orders.dlq. */
#include <stdio.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    msgbus_sub_t *sub;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK)
        return 1;
    msgbus_err_t e = msgbus_subscribe_ex(bus, "orders", "billing",
                                         "retry_max_attempts=3&retry_initial_ms=50", &sub);
    if (e != MSGBUS_OK) {
        /* a mistyped option is MSGBUS_ERR_CONFIG naming it */
        fprintf(stderr, "subscribe: %s\n", msgbus_last_error());
        return 1;
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return 0;
}
