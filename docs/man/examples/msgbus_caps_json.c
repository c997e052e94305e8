/* What the backend guarantees, as configured: one line per capability. */
#include <stdio.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK)
        return 1;
    for (uint64_t cap = 1; cap & MSGBUS_CAP_ALL; cap <<= 1)
        printf("%-22s %s\n", msgbus_cap_name(cap), (msgbus_caps(bus) & cap) ? "yes" : "no");
    char *json;
    if (msgbus_caps_json(bus, &json) == MSGBUS_OK) {
        printf("%s\n", json);
        msgbus_free(json);
    }
    msgbus_close(bus);
    return 0;
}
