/* Headers: set, read one, list them all in insertion order. */
#include <stdio.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_msg_t *m;
    if (msgbus_msg_new(&m, "{\"order\":1}", 11) != MSGBUS_OK)
        return 1;
    msgbus_msg_set_header(m, "content-type", "application/json");
    msgbus_msg_set_header(m, "tenant", "acme");
    if (msgbus_msg_set_header(m, "msgbus-attempt", "9") != MSGBUS_OK)
        printf("refused: %s\n", msgbus_last_error()); /* reserved name */

    printf("tenant = %s\n", msgbus_msg_header(m, "tenant"));
    const char *name, *value;
    for (size_t i = 0; msgbus_msg_header_at(m, i, &name, &value) == MSGBUS_OK; i++)
        printf("%zu: %s: %s\n", i, name, value);
    size_t n = msgbus_msg_header_count(m);
    msgbus_msg_free(m);
    return n == 2 ? 0 : 1;
}
